"""Typed DingTalk errors and the one table that maps an errcode to its class.

Callers decide what to do by exception class (report a missing chat per chat,
stop on auth failures, tell the user to ``import`` after an ambiguous create),
so every errcode the API documents is classified here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import DtchatError
from .redact import redact

GETTOKEN = "/gettoken"
_INT_TEXT = re.compile(r"\s*-?[0-9]{1,12}\s*")


class DingTalkError(DtchatError):
    """A DingTalk call failed; ``str()`` is one line and never holds a secret."""

    def __init__(
        self,
        endpoint: str,
        errmsg: str,
        errcode: int | None = None,
        *,
        sub_code: Any = None,
        sub_msg: str | None = None,
        detail: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.errcode = errcode
        self.errmsg = redact(str(errmsg))
        self.sub_code = sub_code
        self.sub_msg = redact(str(sub_msg)) if sub_msg is not None else None
        code = f"errcode {errcode}" if errcode is not None else ""
        what = f"{code}: {self.errmsg}" if code and self.errmsg else code or self.errmsg
        text = f"{endpoint} failed: {what}" + (f" ({detail})" if detail else "")
        super().__init__(redact(" ".join(text.split())))


class AuthError(DingTalkError):
    """Credentials, token, permission or IP whitelist problem: retrying will not help."""


class NotFoundError(DingTalkError):
    """The chat does not exist (any more) or is not visible to this app."""


class ThrottledError(DingTalkError):
    """Rate limited or busy, and the retry budget is used up."""


class QuotaExhaustedError(DingTalkError):
    """The organisation's monthly API quota is used up; never retried."""


class InvalidUserError(DingTalkError):
    """A user id in the request is unknown or invalid."""

    def __init__(self, *args: Any, userids: Sequence[str] = (), **kwargs: Any) -> None:
        self.userids = tuple(userids)
        super().__init__(*args, **kwargs)


class InvalidParameterError(DingTalkError):
    """The server rejected a parameter (name length, owner not a member, ...)."""


class TransportError(DingTalkError):
    """No usable answer: connection error, timeout, HTTP 5xx or a garbled body."""


class ReadTimeoutError(TransportError):
    """The server took the request but did not answer in time. It is reachable: only this call failed."""


class AmbiguousCreateError(TransportError):
    """``/chat/create`` may or may not have created the chat."""


class IpBanError(ThrottledError):
    """DingTalk banned this egress IP (a ``status 1111`` body or a ban page) past the retry budget.

    A ban answer is a definite refusal (creates included are sent again after
    ``wait``); this is raised only when the ban outlasts the budget, and it is
    fatal: every other call from this IP would be refused too.
    """


#: The errcode -> class table. Codes mapped to ThrottledError are the transient
#: ones the client retries with backoff.
ERRCODE_CLASSES: Mapping[int, type[DingTalkError]] = {
    -1: ThrottledError,  # system busy
    45009: ThrottledError,  # API call limit exceeded
    90002: ThrottledError,  # platform-wide limit for this API
    90018: ThrottledError,  # this app's per-API frequency limit
    90019: ThrottledError,  # third-party app per-org limit
    90020: QuotaExhaustedError,
    88: AuthError,  # the sub_code says which (a token one is refreshed first: is_token_error)
    43007: AuthError,  # authorisation required (directory)
    50002: AuthError,  # user outside the app's contact scope
    50004: AuthError,  # department outside the app's contact scope
    33001: AuthError,
    40001: AuthError,
    40014: AuthError,
    40089: AuthError,
    42001: AuthError,
    60011: AuthError,
    60020: AuthError,
    34001: NotFoundError,
    34013: NotFoundError,
    40016: NotFoundError,
    60003: NotFoundError,  # department not found
    40009: NotFoundError,  # invalid department id
    33011: NotFoundError,  # invalid role id
    40003: InvalidUserError,
    40031: InvalidUserError,
    40032: InvalidUserError,
    60111: InvalidUserError,
    60121: InvalidUserError,
    40035: InvalidParameterError,
    40104: InvalidParameterError,  # invalid mobile for this org
    400002: InvalidParameterError,  # invalid parameter (directory)
    40068: InvalidParameterError,  # invalid offset
    40069: InvalidParameterError,  # invalid size
}

#: Token invalid or expired: fetch a new token and retry the call once.
TOKEN_ERRCODES = frozenset({40001, 40014, 42001, 33001})
#: The /topapi endpoints say "bad token" as errcode 88 with one of these sub_codes (strings).
TOKEN_SUB_CODES = frozenset(str(code) for code in TOKEN_ERRCODES)
#: Answers that mean "too fast": the client lowers that endpoint's rate (busy, -1, is not one).
THROTTLE_ERRCODES = frozenset({45009, 90002, 90018, 90019})

#: Plain-language explanations for errcodes whose errmsg is not enough.
_HINTS: Mapping[int, str] = {
    60011: "the app has no permission for this API",
    60020: "the caller's IP address is not in the app's IP whitelist",
    90020: "the organisation's monthly DingTalk API quota is used up; calls fail until it renews",
    43007: "the app needs authorisation for this API",
    50002: "the user is outside the app's contact scope",
    50004: "the department is outside the app's contact scope",
}
#: The same for errcode 88's sub_codes (strings), which is how /topapi endpoints say it.
_SUB_HINTS: Mapping[str, str] = {
    str(code): hint for code, hint in _HINTS.items() if code in (60011, 43007, 50002, 50004)
}


def is_retryable(errcode: int) -> bool:
    """True for busy / rate-limit errcodes that a later attempt may get past."""
    return ERRCODE_CLASSES.get(errcode) is ThrottledError


def is_token_error(errcode: int, sub_code: Any = None) -> bool:
    """True when the access token was rejected and a fresh one may work."""
    return errcode in TOKEN_ERRCODES or (errcode == 88 and str(sub_code) in TOKEN_SUB_CODES)


def is_fatal(exc: DingTalkError) -> bool:
    """True for errors no other chat would escape: credentials, reachability, quota, a long IP ban.

    Callers stop starting new work on these instead of reporting one identical
    failure per chat. A permission error on one API (errcode 88 / 60011 on a
    call) is not fatal: other calls may be allowed.
    """
    if isinstance(exc, ReadTimeoutError):  # one slow answer (a huge department): that call, not the run
        return False
    if isinstance(exc, (QuotaExhaustedError, TransportError, IpBanError)):
        return True
    return isinstance(exc, AuthError) and exc.endpoint == GETTOKEN


def errcode_of(value: Any) -> int | None:
    """An answer's errcode as an int (some APIs print it as a string, ``"0"``); None when absent or not a number."""
    if type(value) is int:
        return value
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value)
    return None


def error_from_payload(
    endpoint: str, payload: Mapping[str, Any], userids: Sequence[str] = (), *, token_refreshed: bool = False
) -> DingTalkError:
    """Build the typed error for a non-zero errcode answer."""
    errcode = errcode_of(payload.get("errcode"))
    errmsg = str(payload.get("errmsg") or "")
    sub_code, sub_msg = payload.get("sub_code"), payload.get("sub_msg")
    cls = ERRCODE_CLASSES.get(errcode, DingTalkError)
    if endpoint == GETTOKEN and cls not in (ThrottledError, QuotaExhaustedError):
        cls = AuthError  # any definite refusal to issue a token is a credentials problem
    details = []
    if errcode in _HINTS:
        details.append(_HINTS[errcode])
    elif errcode == 88 and str(sub_code) in _SUB_HINTS:
        details.append(_SUB_HINTS[str(sub_code)])
    if sub_msg:
        details.append(f"sub_code {sub_code}: {sub_msg}" if sub_code is not None else str(sub_msg))
    if cls is AuthError and endpoint == GETTOKEN and errcode not in _HINTS:
        details.append("check the app key and app secret")
    elif token_refreshed and errcode is not None and is_token_error(errcode, sub_code):
        details.append("the access token was rejected again after a refresh")
    if cls is InvalidUserError and userids:
        details.append("user ids in the request: " + ", ".join(userids))
    kwargs: dict[str, Any] = {"sub_code": sub_code, "sub_msg": sub_msg, "detail": "; ".join(details)}
    if cls is InvalidUserError:
        kwargs["userids"] = userids
    return cls(endpoint, errmsg, errcode, **kwargs)
