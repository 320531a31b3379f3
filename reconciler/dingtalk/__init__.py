"""The DingTalk API client and its typed errors."""
from .client import DingTalkClient
from .errors import (
    AmbiguousCreateError,
    AuthError,
    DingTalkError,
    InvalidParameterError,
    InvalidUserError,
    NotFoundError,
    QuotaExhaustedError,
    ThrottledError,
    TransportError,
)
from .redact import redact

__all__ = [
    "AmbiguousCreateError",
    "AuthError",
    "DingTalkClient",
    "DingTalkError",
    "InvalidParameterError",
    "InvalidUserError",
    "NotFoundError",
    "QuotaExhaustedError",
    "ThrottledError",
    "TransportError",
    "redact",
]
