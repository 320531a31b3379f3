"""What the emulator writes back: one ``Reply`` type and the answer shapes of both API generations.

* Legacy (``oapi``): HTTP 200 and ``{"errcode", "errmsg", ...}``.
* v1.0: success = HTTP 200 and the result object (no ``errcode``); failure =
  HTTP 4xx/5xx and ``{"code", "message", "requestid"}``. ``requestid`` is in
  no page of the reference *(unverified)*; the emulator sends one (32 upper-case
  hex digits) on every v1.0 error so a client that logs it has one to log.
* The gateway's IP ban is the same on both hosts (the per-IP rule covers any
  API): HTTP 200 with ``{"status": 1111, "wait", "punish": "deny", ...}`` or
  an HTML page.
* ``fail_chatids`` speaks both generations: an int errcode becomes 400
  ``invalideChatId`` (34001/34013/40016) or 400 ``parameter.invalid`` (any
  other) on v1.0; an ``"HTTP:code"`` string becomes the nearest legacy
  errcode (``LEGACY_FOR_V1_CODE``, else 40035) on the legacy API.

A ``Dialect`` renders the refusals every request can meet before its API runs
(wrong method, token, permission, rate, quota, the gateway's faults) in one
API family's words; the server applies the same gates to all three.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .faults import Faults
from .meter import processed
from .store import ApiError

JSON_TYPE = "application/json;charset=utf-8"
HTML_TYPE = "text/html;charset=utf-8"

HTML_500 = (
    b"<html><head><title>500 Internal Server Error</title></head><body><h1>500 Internal Server Error</h1></body></html>"
)
_HTML_BAN = (
    "<html><head><title>访问被拒绝</title></head><body><h1>Access denied</h1><p>wait {wait} seconds</p></body></html>"
)


@dataclass(frozen=True)
class Reply:
    """One answer, with what the call log and the meter need to know about it."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    errcode: int | None = None
    #: Close the connection without answering at all.
    drop: bool = False
    sub_code: str | None = None
    #: The v1.0 ``code`` of an error answer.
    code: str | None = None
    #: The API processed the call (the meter counts it when its endpoint is metered).
    processed: bool = False

    def dropped(self) -> Reply:
        """The same outcome, but the connection is closed unanswered."""
        return replace(self, status=0, body=b"", drop=True)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_reply(obj: Any, status: int = 200) -> Reply:
    """A JSON answer; ``errcode`` / ``sub_code`` / ``code`` are read from it for the call log."""
    is_dict = isinstance(obj, dict)
    errcode = obj.get("errcode") if is_dict else None
    sub_code = obj.get("sub_code") if is_dict else None
    code = obj.get("code") if is_dict and status >= 400 else None
    return Reply(
        status,
        dumps(obj),
        errcode=int(errcode) if errcode is not None else None,
        sub_code=sub_code,
        code=code if isinstance(code, str) else None,
    )


def legacy_error(errcode: int, errmsg: str) -> Reply:
    return json_reply({"errcode": errcode, "errmsg": errmsg})


def request_id() -> str:
    return secrets.token_hex(16).upper()


def v1_error(status: int, code: str, message: str) -> Reply:
    """A v1.0 failure: HTTP ``status`` and ``{"code", "message", "requestid"}``."""
    return json_reply({"code": code, "message": message, "requestid": request_id()}, status=status)


def v1_unauthorized() -> Reply:
    """No token header at all: HTTP 401 with no ``code`` (the reference: "none (Unauthorized)")."""
    return json_reply({"message": "Unauthorized", "requestid": request_id()}, status=401)


def parse_json(raw: bytes) -> Any:
    """The decoded body, or None when it is not JSON (the caller decides what that means)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def ban_reply(wait: int, html: bool) -> Reply:
    """The gateway's IP-ban answer: HTTP 200 with no errcode, as a JSON body or an HTML page."""
    if html:
        return Reply(200, _HTML_BAN.format(wait=wait).encode("utf-8"), HTML_TYPE)
    return json_reply(
        {
            "status": 1111,
            "wait": wait,
            "punish": "deny",
            "message": "Too many requests from your IP; access denied for a while",
        }
    )


def html_500() -> Reply:
    """The legacy gateway's HTTP 500: an HTML page, no JSON."""
    return Reply(500, HTML_500, HTML_TYPE)


def as_processed(reply: Reply) -> Reply:
    """Mark an answer the API itself gave: processed unless its code says the API never ran it."""
    return replace(reply, processed=processed(reply.status, reply.errcode, reply.code))


@dataclass
class Request:
    """One API request on its way through the gates: what was asked, with which faults in force."""

    method: str
    #: The endpoint as logged and counted (for a path with parameters, its template).
    endpoint: str
    query: Mapping[str, str]
    #: Header names in lower case.
    headers: Mapping[str, str]
    #: The parsed JSON body (None for GET or when it is not JSON).
    body: Any
    faults: Faults
    #: Parameters taken from the path (``chatid`` of the convert call).
    path_params: Mapping[str, str] = field(default_factory=dict)
    #: The monthly quota reserved for this call (see ``Meter.reserve``).
    reserved: bool | None = None


class Dialect(Protocol):
    """One API family's answers to the refusals the server's gates produce."""

    def token(self, req: Request) -> str | None:
        """The access token the request carries, or None."""

    def wrong_method(self, expected: str, req: Request) -> Reply: ...

    def token_error(self, err: ApiError, missing: bool, req: Request) -> Reply: ...

    def no_permission(self, permission: str, req: Request) -> Reply: ...

    def closed_to_new_apps(self, req: Request) -> Reply: ...

    def rate_limited(self, req: Request) -> Reply: ...

    def quota_used_up(self, req: Request) -> Reply: ...

    def gateway_fault(self, kind: str, req: Request) -> Reply: ...


#: v1.0 code -> the legacy errcode meaning the same (a ``fail_chatids`` string on a legacy path).
LEGACY_FOR_V1_CODE: Mapping[str, int] = {
    "invalideChatId": 34013,
    "parameter.invalid": 40035,
    "system.error": -1,
    "system.busy": -1,
    "systemBusy": -1,
    "InvalidAuthentication": 40014,
    "permession.checkFailed": 60011,
    "permission.checkFailed": 60011,
    "Forbidden.AccessDenied.AccessTokenPermissionDenied": 60011,
    "Forbidden.AccessDenied.IpNotInWhiteList": 60020,
    "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi": 90018,
    "Forbidden.AccessDenied.QpsLimitForApi": 90002,
    "Forbidden.AccessDenied.ApiCountLimitForOrg": 90020,
}
#: Legacy errcodes meaning "no such chat": a ``fail_chatids`` int on v1.0 answers ``invalideChatId``.
CHAT_NOT_FOUND_ERRCODES = frozenset({34001, 34013, 40016})
