"""Typed DingTalk errors, and the tables that map both generations' error answers to them.

Callers decide what to do by exception class (report a missing chat per chat,
stop the run on a fatal error, tell the user to ``import`` after an ambiguous
create), so one meaning has one class whatever the wire said: the legacy API's
``errcode`` and the v1.0 API's HTTP status + ``code`` are both classified here
and nowhere else (design §10, "Errors mean the same in both").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DtchatError
from .endpoints import Endpoint
from .redact import redact

_INT_TEXT = re.compile(r"\s*-?[0-9]{1,12}\s*")


class DingTalkError(DtchatError):
    """A DingTalk call failed; ``str()`` is one line and never holds a secret."""

    def __init__(
        self,
        endpoint: str,
        errmsg: str,
        errcode: int | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        sub_code: Any = None,
        sub_msg: str | None = None,
        detail: str = "",
        requestid: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        #: The legacy API's errcode, or None.
        self.errcode = errcode
        #: The v1.0 API's error code (``"Forbidden.AccessDenied.QpsLimitForApi"``), or None.
        self.code = code
        #: The HTTP status of a v1.0 error answer, or None.
        self.status = status
        self.errmsg = redact(str(errmsg))
        self.sub_code = sub_code
        self.sub_msg = redact(str(sub_msg)) if sub_msg is not None else None
        self.requestid = requestid
        what = self.code_text
        what = f"{what}: {self.errmsg}" if what and self.errmsg else what or self.errmsg
        extra = "; ".join(x for x in (detail, f"requestid {requestid}" if requestid else "") if x)
        text = f"{endpoint} failed: {what}" + (f" ({extra})" if extra else "")
        super().__init__(redact(" ".join(text.split())))

    @property
    def text(self) -> str:
        """What the API said (or what went wrong), without the endpoint and the code."""
        return self.errmsg

    @property
    def code_text(self) -> str:
        """How the answer named the error: ``errcode 60003``, ``HTTP 403 Forbidden.AccessDenied…``, or ""."""
        if self.errcode is not None:
            return f"errcode {self.errcode}"
        if self.code is not None:
            return f"HTTP {self.status} {self.code}" if self.status else self.code
        return ""


class AuthError(DingTalkError):
    """Credentials, token, permission or IP whitelist problem: retrying will not help."""


class ApiClosedError(AuthError):
    """A legacy write the app may not call: DingTalk closed it to apps created since its change. Fatal."""


class NotFoundError(DingTalkError):
    """The chat (department, role, user) does not exist (any more) or is not visible to this app."""


class ThrottledError(DingTalkError):
    """Rate limited or busy, and the retry budget is used up."""


class QuotaExhaustedError(DingTalkError):
    """The organisation's monthly API quota is used up; never retried, and it stops the run."""


class InvalidUserError(DingTalkError):
    """A user id in the request is unknown or invalid."""

    def __init__(self, *args: Any, userids: Sequence[str] = (), **kwargs: Any) -> None:
        self.userids = tuple(userids)
        super().__init__(*args, **kwargs)


class InvalidParameterError(DingTalkError):
    """The server rejected a parameter (name length, owner not a member, ...)."""


class MalformedAnswerError(DingTalkError):
    """A success answer that is not the documented shape: never trusted, an error for that call."""


class TransportError(DingTalkError):
    """No usable answer: connection error, timeout, HTTP 5xx or a garbled body."""


class ReadTimeoutError(TransportError):
    """The server took the request but did not answer in time. It is reachable: only this call failed."""


class DeadlineError(ReadTimeoutError):
    """No whole answer within the deadline of one request (a server dribbling or stalling its answer)."""


class OversizedAnswerError(TransportError):
    """An answer larger than any DingTalk sends (the transport's cap): refused unread, only this call failed."""


class AmbiguousOutcomeError(TransportError):
    """A call that must not be repeated may or may not have been carried out (a robot message)."""


class AmbiguousCreateError(AmbiguousOutcomeError):
    """A create may or may not have created the chat."""


class IpBanError(ThrottledError):
    """DingTalk banned this egress IP (a ``status 1111`` body or a ban page) past the retry budget.

    A ban answer is a definite refusal (creates included are sent again after
    ``wait``); this is raised only when the ban outlasts the budget, and it is
    fatal: every other call from this IP would be refused too.
    """


# -- the legacy API: errcode -> class ---------------------------------------------------------

#: Codes mapped to ThrottledError are the transient ones the client retries with backoff.
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
    33012: NotFoundError,  # invalid userId (user/get)
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
#: "No permission for this API", plain or as errcode 88's sub_code.
NO_PERMISSION_ERRCODE = 60011
#: "User not found": what a mobile lookup answers for nobody (or a leaver).
USER_NOT_FOUND_ERRCODE = 60121
#: "Invalid userId" (无效的userId): what ``/topapi/v2/user/get`` answers for an id the org does not have.
UNKNOWN_USERID_ERRCODE = 33012

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

# -- the v1.0 API: code -> class ----------------------------------------------------------------

V1_QUOTA_CODE = "Forbidden.AccessDenied.ApiCountLimitForOrg"
#: Throttling: lower the rate and retry (the per-minute limit waits longer).
V1_THROTTLE_CODES = frozenset(
    {
        "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
        "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi",
        "Forbidden.AccessDenied.QpsLimitForApi",
        "system.busy",
        "systemBusy",
        "send.too.fast",
    }
)
V1_PER_MINUTE_CODE = "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi"
#: The server failed: retry what is safe to repeat, never a create whose outcome is unknown.
V1_SERVER_ERROR_CODES = frozenset({"system.error"})
#: The token was refused: fetch a new one and retry once.
V1_TOKEN_CODES = frozenset({"InvalidAuthentication"})
#: Robot sends: DingTalk could not tell whether the message went out.
V1_UNKNOWN_OUTCOME_CODES = frozenset({"unknown.send.result"})

V1_CODE_CLASSES: Mapping[str, type[DingTalkError]] = {
    "parameter.invalid": InvalidParameterError,
    "permession.checkFailed": AuthError,  # sic: "permission check failed" or "owner outside the app's visible range"
    "permission.checkFailed": AuthError,
    "InvalidAuthentication": AuthError,
    "invalidClientIdOrSecret": AuthError,
    "Forbidden.AccessDenied.AccessTokenPermissionDenied": AuthError,
    "Forbidden.AccessDenied.IpNotInWhiteList": AuthError,
    V1_QUOTA_CODE: QuotaExhaustedError,
    "invalideChatId": NotFoundError,  # sic
    "invalid.openConversationId": NotFoundError,
    "group.disbanded": NotFoundError,
    "invalidParameter.robotCode.empty": InvalidParameterError,
    "invalidParameter.robotCode.auth": AuthError,
    **dict.fromkeys(V1_THROTTLE_CODES, ThrottledError),
}

_V1_HINTS: Mapping[str, str] = {
    "Forbidden.AccessDenied.IpNotInWhiteList": "the caller's IP address is not in the app's IP whitelist",
    V1_QUOTA_CODE: "the organisation's monthly DingTalk API quota is used up; calls fail until it renews",
    "invalidParameter.robotCode.empty": "is the app's robot in this chat? add it in the chat's settings",
    "invalidParameter.robotCode.auth": "DTCHAT_ROBOT_CODE is not this app's robot",
    "permession.checkFailed": "the app lacks the permission, or the owner is outside the app's visible range",
}


@dataclass(frozen=True)
class Refusal:
    """A definite error answer, classified: what it is and what the client does about it."""

    error: DingTalkError
    #: The token was refused: fetch a new one and retry once.
    token: bool = False
    #: Throttled: lower this endpoint's rate.
    throttle: bool = False
    #: Transient: another attempt may succeed.
    retry: bool = False
    #: The server may have carried the call out anyway (a v1.0 system.error): never repeat a create.
    ambiguous: bool = False
    #: Wait at least this long before the next attempt (a per-minute limit).
    wait: float | None = None
    #: The quota meters this answer (the API processed the request; design §11).
    counted: bool = False


def is_fatal(exc: DingTalkError) -> bool:
    """True for errors no other chat would escape: credentials, reachability, quota, a long IP ban,
    a legacy write closed to this app.

    Callers stop starting new work on these instead of reporting one identical
    failure per chat. A permission error on one API is not fatal: other calls may be allowed.
    """
    if isinstance(exc, (ReadTimeoutError, OversizedAnswerError)):  # one slow or huge answer: that call, not the run
        return False
    if isinstance(exc, (QuotaExhaustedError, TransportError, IpBanError, ApiClosedError)):
        return True
    return isinstance(exc, AuthError) and exc.endpoint in _TOKEN_PATHS


_TOKEN_PATHS = frozenset({"/gettoken", "/v1.0/oauth2/accessToken"})


def errcode_of(value: Any) -> int | None:
    """An answer's errcode as an int (some APIs print it as a string, ``"0"``); None when absent or not a number."""
    if type(value) is int:
        return value
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value)
    return None


def _counted(cls: type[DingTalkError]) -> bool:
    """The request reached the API and was answered about itself (bad parameter, not found, unknown user)."""
    return cls in (InvalidParameterError, InvalidUserError, NotFoundError, DingTalkError)


def _permission_detail(endpoint: Endpoint) -> str:
    where = f" ({endpoint.permission})" if endpoint.permission else ""
    return f"the app lacks the permission{where}: grant it in the developer console (权限管理) and publish the app"


def _closed(endpoint: Endpoint, errmsg: str, errcode: int, sub_code: Any) -> ApiClosedError:
    return ApiClosedError(
        endpoint.path,
        errmsg,
        errcode,
        sub_code=sub_code,
        detail=(
            "DingTalk's legacy chat API refuses this app: apps created since DingTalk closed it can no longer "
            "be granted it; run with --api v1 (an older app that lost the permission can re-grant "
            f"{endpoint.permission})"
        ),
    )


def classify_oapi(endpoint: Endpoint, payload: Mapping[str, Any], userids: Sequence[str] = ()) -> Refusal | None:
    """Classify an errcode answer of the oapi host; None when it is a success (errcode 0)."""
    errcode = errcode_of(payload.get("errcode"))
    if errcode == 0:
        return None
    errmsg = str(payload.get("errmsg") or "")
    sub_code, sub_msg = payload.get("sub_code"), payload.get("sub_msg")
    no_permission = errcode == NO_PERMISSION_ERRCODE or (errcode == 88 and str(sub_code) == str(NO_PERMISSION_ERRCODE))
    if no_permission and endpoint.closed_to_new_apps:
        return Refusal(_closed(endpoint, errmsg, NO_PERMISSION_ERRCODE if errcode is None else errcode, sub_code))
    cls = ERRCODE_CLASSES.get(errcode, DingTalkError) if errcode is not None else DingTalkError
    if endpoint.token and cls not in (ThrottledError, QuotaExhaustedError):
        cls = AuthError  # any definite refusal to issue a token is a credentials problem
    details = []
    if no_permission:
        details.append(_permission_detail(endpoint))
    elif errcode is not None and errcode in _HINTS:
        details.append(_HINTS[errcode])
    elif errcode == 88 and str(sub_code) in _SUB_HINTS:
        details.append(_SUB_HINTS[str(sub_code)])
    if sub_msg:
        details.append(f"sub_code {sub_code}: {sub_msg}" if sub_code is not None else str(sub_msg))
    if cls is AuthError and endpoint.token and errcode not in _HINTS:
        details.append("check the app key and app secret")
    if cls is InvalidUserError and userids:
        details.append("user ids in the request: " + ", ".join(userids))
    kwargs: dict[str, Any] = {"sub_code": sub_code, "sub_msg": sub_msg, "detail": "; ".join(details)}
    if cls is InvalidUserError:
        kwargs["userids"] = userids
    error = cls(endpoint.path, errmsg, errcode, **kwargs)
    token = errcode is not None and (errcode in TOKEN_ERRCODES or (errcode == 88 and str(sub_code) in TOKEN_SUB_CODES))
    return Refusal(
        error,
        token=token and not endpoint.token,
        throttle=errcode in THROTTLE_ERRCODES,
        retry=cls is ThrottledError,
        counted=_counted(cls) and not token,
    )


def classify_v1(endpoint: Endpoint, status: int, payload: Mapping[str, Any], userids: Sequence[str] = ()) -> Refusal:
    """Classify an error answer of the v1.0 host (an HTTP status >= 400, ``{code, message, requestid}``)."""
    raw_code = payload.get("code")
    code = str(raw_code) if isinstance(raw_code, (str, int)) and not isinstance(raw_code, bool) else None
    message = str(payload.get("message") or "")
    requestid = payload.get("requestid") or payload.get("requestId")
    requestid = str(requestid)[:64] if isinstance(requestid, (str, int)) else None
    if code is None and status == 401:
        code = "Unauthorized"
    cls = V1_CODE_CLASSES.get(code or "", DingTalkError)
    if code in V1_SERVER_ERROR_CODES or (code is None and status >= 500):
        cls = TransportError
    if endpoint.token and cls not in (ThrottledError, QuotaExhaustedError, TransportError):
        cls = AuthError
    detail = ""
    if code == "Forbidden.AccessDenied.AccessTokenPermissionDenied":
        detail = _permission_detail(endpoint)
    elif code == "permession.checkFailed" and endpoint.permission:  # sic: create/update's permission refusal
        detail = (
            f"the app lacks the permission ({endpoint.permission}), or the owner is outside the app's visible "
            "range: grant it in the developer console (权限管理), check 可见范围, and publish the app"
        )
    elif code is not None and code in _V1_HINTS:
        detail = _V1_HINTS[code]
    elif cls is AuthError and endpoint.token:
        detail = "check the app key and app secret"
    if code in V1_UNKNOWN_OUTCOME_CODES:
        error: DingTalkError = AmbiguousOutcomeError(
            endpoint.path, message, code=code, status=status, detail="the message may or may not have been sent"
        )
        return Refusal(error, ambiguous=True, counted=True)
    error = cls(endpoint.path, message, code=code, status=status, detail=detail, requestid=requestid)
    token = code in V1_TOKEN_CODES or code == "Unauthorized"
    server_error = cls is TransportError
    return Refusal(
        error,
        token=token and not endpoint.token,
        throttle=code in V1_THROTTLE_CODES,
        retry=cls is ThrottledError or server_error,
        ambiguous=server_error,
        wait=5.0 if code == V1_PER_MINUTE_CODE else None,
        counted=_counted(cls) and not token,
    )
