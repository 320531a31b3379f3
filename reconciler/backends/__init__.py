"""The one seam between dtchat and DingTalk's wire (design §10).

Everything that knows an endpoint, a body key, a wire field, an error code or
which calls are metered lives in this package: the transport (HTTP, tokens,
retries, rate limits, the meter, redaction), the two API generations
(``legacy``, ``v1``), the contact API (``contacts``) and the error tables. The
engine depends on :class:`ChatBackend`, :class:`Directory`, :class:`WireCall`
and the error classes re-exported here.

``requests`` loads only with :mod:`.transport`, so planning, dry-run rendering
and ``validate`` never import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backend import Backend
from .base import CHATID, OPEN_CONVERSATION_ID, ChatBackend, Directory, WireCall, placeholder
from .errors import (
    AmbiguousCreateError,
    AmbiguousOutcomeError,
    ApiClosedError,
    AuthError,
    DingTalkError,
    InvalidParameterError,
    InvalidUserError,
    IpBanError,
    MalformedAnswerError,
    NotFoundError,
    QuotaExhaustedError,
    ReadTimeoutError,
    ThrottledError,
    TransportError,
    is_fatal,
)
from .legacy import LegacyBackend
from .packing import UnreachableError
from .redact import redact
from .v1 import V1Backend

if TYPE_CHECKING:
    from .contacts import Contacts
    from .transport import Transport

#: ``--api`` values: the v1.0 API (what a new app can write with; the default) and the legacy chat API.
V1 = "v1"
LEGACY = "legacy"
API_NAMES = (V1, LEGACY)
DEFAULT_API = V1

_BACKENDS: dict[str, type[Backend]] = {V1: V1Backend, LEGACY: LegacyBackend}


def backend_for(api: str, transport: Transport | None = None, *, robot_code: str | None = None) -> Backend:
    """The ChatBackend for ``--api`` (``transport`` None: one that can only plan calls, for plans and tests)."""
    try:
        cls = _BACKENDS[api]
    except KeyError:
        raise ValueError(f"unknown API generation {api!r}; one of {', '.join(API_NAMES)}") from None
    return cls(transport, robot_code=robot_code)


def open_backends(
    api: str, app_key: str, app_secret: str, *, robot_code: str | None = None, **transport_options: Any
) -> tuple[Transport, Backend, Contacts]:
    """One run's wire for ``--api``: a Transport serving both hosts (the legacy host takes the token that
    ``api`` gets: the legacy one, or the v1.0 one a new app has), the generation's ChatBackend and the Contacts
    directory over it. The caller closes the transport (a context manager)."""
    from .contacts import Contacts
    from .transport import LEGACY_TOKEN, V1_TOKEN_KIND, Transport

    if api not in _BACKENDS:
        raise ValueError(f"unknown API generation {api!r}; one of {', '.join(API_NAMES)}")
    token = LEGACY_TOKEN if api == LEGACY else V1_TOKEN_KIND
    transport = Transport(app_key, app_secret, oapi_token=token, **transport_options)
    return transport, backend_for(api, transport, robot_code=robot_code), Contacts(transport)


__all__ = [
    "API_NAMES",
    "CHATID",
    "DEFAULT_API",
    "LEGACY",
    "OPEN_CONVERSATION_ID",
    "V1",
    "AmbiguousCreateError",
    "AmbiguousOutcomeError",
    "ApiClosedError",
    "AuthError",
    "Backend",
    "ChatBackend",
    "DingTalkError",
    "Directory",
    "InvalidParameterError",
    "InvalidUserError",
    "IpBanError",
    "LegacyBackend",
    "MalformedAnswerError",
    "NotFoundError",
    "QuotaExhaustedError",
    "ReadTimeoutError",
    "ThrottledError",
    "TransportError",
    "UnreachableError",
    "V1Backend",
    "WireCall",
    "backend_for",
    "is_fatal",
    "open_backends",
    "placeholder",
    "redact",
]
