"""The DingTalk API client and its typed errors.

The client (and with it ``requests``/``urllib3``, ~100 ms of imports) loads
on first use of :class:`DingTalkClient`, so commands that never call the API
(``--help``, ``validate``) start fast while ``from reconciler.dingtalk import
DingTalkClient`` keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AmbiguousCreateError,
    AuthError,
    DingTalkError,
    InvalidParameterError,
    InvalidUserError,
    IpBanError,
    NotFoundError,
    QuotaExhaustedError,
    ReadTimeoutError,
    ThrottledError,
    TransportError,
    is_fatal,
)
from .redact import redact

if TYPE_CHECKING:
    from .client import DingTalkClient, normalize_mobile

#: Names served lazily from .client.
_CLIENT_NAMES = ("DingTalkClient", "normalize_mobile")

__all__ = [
    "AmbiguousCreateError",
    "AuthError",
    "DingTalkClient",
    "DingTalkError",
    "InvalidParameterError",
    "InvalidUserError",
    "IpBanError",
    "NotFoundError",
    "QuotaExhaustedError",
    "ReadTimeoutError",
    "ThrottledError",
    "TransportError",
    "is_fatal",
    "normalize_mobile",
    "redact",
]


def __getattr__(name: str) -> Any:
    """Import the client module on first use of one of its names."""
    if name in _CLIENT_NAMES:
        from . import client

        value = getattr(client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
