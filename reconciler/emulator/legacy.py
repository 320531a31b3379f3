"""The legacy API families on ``oapi``: the chat calls (``/gettoken``, ``/chat/*``) and the contact API.

Both answer HTTP 200 with an ``errcode``; they differ in how they say "no":
the chat calls with a plain errcode, ``/topapi`` with errcode 88 and a
``sub_code`` for token and permission problems, and ``request_id`` on every
answer. Choices where dingtalk-api.md is silent:

* ``Faults.no_permission`` on a chat path answers ``{"errcode": 60011,
  "errmsg": "没有调用该接口的权限：[<permission point>]"}``; new-app mode
  (``EmulatorServer(new_app=True)``) answers the closed calls (``/chat/create``,
  ``/chat/update``, ``/chat/send``, ``/chat/getReadList``) with
  ``{"errcode": 60011, "errmsg": "没有调用该接口的权限"}``. 60011 is the global
  "no permission for this API" code; the reference gives no specific code for
  the refusal of a call closed to new apps *(unverified)*.
* A ``fail_chatids`` value ``"HTTP:code"`` (meant for v1.0) answers the
  nearest legacy errcode on a chat path (``wire.LEGACY_FOR_V1_CODE``), else
  40035.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from .directory import (
    ERRMSGS,
    HANDLERS,
    USER_GET,
    bad_token,
    lookup_keys,
    permission_denied,
    user_get_without_org,
)
from .faults import BUSY, HTTP500, IP_BAN, Faults, lookup_failure
from .org import Org
from .store import ApiError, ChatStore, TokenBook
from .wire import (
    LEGACY_FOR_V1_CODE,
    Reply,
    Request,
    as_processed,
    ban_reply,
    dumps,
    html_500,
    json_reply,
    legacy_error,
)

ChatHandler = Callable[[ChatStore, Mapping[str, Any]], dict]

#: The chat calls: endpoint -> (HTTP method, store call).
CHAT_ROUTES: Mapping[str, tuple[str, ChatHandler]] = {
    "/chat/create": ("POST", ChatStore.create),
    "/chat/update": ("POST", ChatStore.update),
    "/chat/get": ("GET", ChatStore.get),
    "/chat/send": ("POST", ChatStore.send),
    "/chat/getReadList": ("GET", ChatStore.read_list),
}

NO_PERMISSION_ERRMSG = "没有调用该接口的权限"


def gateway_fault(kind: str, faults: Faults) -> Reply:
    """An "every Nth" fault as the legacy gateway shows it: the ban body, an HTML 500, or errcode -1."""
    if kind == IP_BAN:
        return ban_reply(faults.ban_wait, faults.ip_ban_html)
    if kind == HTTP500:
        return html_500()
    assert kind == BUSY
    return legacy_error(-1, "系统繁忙")


class ChatDialect:
    """The chat calls' refusals: plain errcodes."""

    def token(self, req: Request) -> str | None:
        return req.query.get("access_token")

    def wrong_method(self, expected: str, req: Request) -> Reply:
        return legacy_error(43001, "需要GET请求") if expected == "GET" else legacy_error(43002, "需要POST请求")

    def token_error(self, err: ApiError, missing: bool, req: Request) -> Reply:
        return legacy_error(err.errcode, err.errmsg)

    def no_permission(self, permission: str, req: Request) -> Reply:
        return legacy_error(60011, f"{NO_PERMISSION_ERRMSG}：[{permission}]")

    def closed_to_new_apps(self, req: Request) -> Reply:
        return legacy_error(60011, NO_PERMISSION_ERRMSG)

    def rate_limited(self, req: Request) -> Reply:
        return legacy_error(90018, "接口调用超过限制: this app exceeded its per-API frequency limit")

    def quota_used_up(self, req: Request) -> Reply:
        return legacy_error(90020, "当月API调用量已用完: the org's monthly API quota is used up")

    def gateway_fault(self, kind: str, req: Request) -> Reply:
        return gateway_fault(kind, req.faults)


class TopapiDialect:
    """The contact API's refusals: errcode 88 with a ``sub_code`` for token and permission, ``request_id`` always."""

    def token(self, req: Request) -> str | None:
        return req.query.get("access_token")

    def wrong_method(self, expected: str, req: Request) -> Reply:
        return topapi_reply({"errcode": 43002, "errmsg": "需要POST请求"}, req.faults)

    def token_error(self, err: ApiError, missing: bool, req: Request) -> Reply:
        return topapi_reply(bad_token(), req.faults)

    def no_permission(self, permission: str, req: Request) -> Reply:
        return topapi_reply(permission_denied(req.endpoint), req.faults)

    def closed_to_new_apps(self, req: Request) -> Reply:
        return self.no_permission("", req)

    def rate_limited(self, req: Request) -> Reply:
        answer = {"errcode": 90018, "errmsg": "接口调用超过限制: this app exceeded its per-API frequency limit"}
        return topapi_reply(answer, req.faults)

    def quota_used_up(self, req: Request) -> Reply:
        answer = {"errcode": 90020, "errmsg": "当月API调用量已用完: the org's monthly API quota is used up"}
        return topapi_reply(answer, req.faults)

    def gateway_fault(self, kind: str, req: Request) -> Reply:
        return gateway_fault(kind, req.faults)


def gettoken(tokens: TokenBook, req: Request, credentials_ok: Callable[[str, str], bool]) -> Reply:
    """``/gettoken``: a fresh token for any non-empty pair, or for exactly the configured one."""
    key, secret = req.query.get("appkey", ""), req.query.get("appsecret", "")
    if not credentials_ok(key, secret):
        return as_processed(legacy_error(40089, "invalid appkey or appsecret"))
    return as_processed(json_reply({"errcode": 0, "errmsg": "ok", **tokens.issue()}))


def credentials_match(key: str, secret: str, app_key: str | None, app_secret: str | None) -> bool:
    """Non-empty, and equal to the configured key / secret where one is configured (constant time)."""
    if not key or not secret:
        return False
    if app_key is not None and not hmac.compare_digest(key.encode(), app_key.encode()):
        return False
    return app_secret is None or hmac.compare_digest(secret.encode(), app_secret.encode())


def run_chat(store: ChatStore, req: Request, take_drop: Callable[[], bool]) -> Reply:
    """A chat call past the gates: the body, ``fail_chatids``, then the store (and ``drop_after_create``)."""
    method, handler = CHAT_ROUTES[req.endpoint]
    try:
        if method == "POST" and not isinstance(req.body, dict):
            raise ApiError(40035, "invalid json")
        payload: Mapping[str, Any] = req.body if method == "POST" else req.query
        failing = req.faults.fail_chatids.get(str(payload.get("chatid") or req.query.get("chatid") or ""))
        if failing is not None:
            raise _injected(failing)
        result = handler(store, payload)
    except ApiError as err:
        return as_processed(legacy_error(err.errcode, err.errmsg))
    reply = as_processed(json_reply({"errcode": 0, "errmsg": "ok", **result}))
    if req.endpoint == "/chat/create" and take_drop():
        return reply.dropped()
    return reply


def _injected(failing: int | str) -> ApiError:
    """A ``fail_chatids`` value as the legacy error it stands for."""
    if isinstance(failing, int):
        return ApiError(failing, "injected failure for this chatid")
    code = failing.partition(":")[2]
    return ApiError(LEGACY_FOR_V1_CODE.get(code, 40035), f"injected failure for this chatid ({failing})")


def run_directory(org: Org | None, req: Request, users: frozenset[str] | None = None) -> Reply:
    """A contact-API call past the gates: the body, ``fail_lookups``, then the org, in /topapi's format.

    Without an org only user/get answers (from the fixed ``users``, or for any id: as chats accept them).
    """
    handler, with_errmsg = HANDLERS[req.endpoint]
    faults, body = req.faults, req.body
    try:
        if not isinstance(body, dict):
            raise ApiError(400002, ERRMSGS[400002])
        for key in lookup_keys(req.endpoint, body):
            failing = faults.fail_lookups.get(key)
            if failing is not None:
                code, sub_code = lookup_failure(failing)
                if sub_code is not None:
                    return as_processed(topapi_reply(_sub_error(code, sub_code, req.endpoint), faults))
                raise ApiError(code, ERRMSGS.get(code, f"injected failure for {key}"))
        if org is None and req.endpoint == USER_GET:
            result = user_get_without_org(users, body)
        elif org is None:
            note = "emulator: no org loaded; start it with an org file"
            return as_processed(topapi_reply(permission_denied(req.endpoint, note), faults))
        else:
            result = handler(org, body)
    except ApiError as err:
        return as_processed(topapi_reply({"errcode": err.errcode, "errmsg": err.errmsg}, faults))
    answer = {"errcode": 0, "errmsg": "ok", **result} if with_errmsg else {"errcode": 0, **result}
    return as_processed(topapi_reply(answer, faults))


def topapi_reply(answer: dict[str, Any], faults: Faults) -> Reply:
    """Add ``request_id``; print errcode as a string when ``faults.string_errcode`` asks for it."""
    answer = {**answer, "request_id": secrets.token_hex(7)[:13]}
    reply = json_reply(answer)
    if faults.string_errcode:
        answer["errcode"] = str(answer["errcode"])
        reply = Reply(reply.status, dumps(answer), errcode=reply.errcode, sub_code=reply.sub_code)
    return reply


def _sub_error(errcode: int, sub_code: str, endpoint: str) -> dict[str, Any]:
    """An errcode-88-style answer body for an injected ``"88:SUB"`` lookup failure."""
    if sub_code == "60011":
        return permission_denied(endpoint)
    if sub_code == "40014":
        return bad_token()
    sub_msg = "injected failure"
    return {
        "errcode": errcode,
        "errmsg": f"ding talk error[subcode={sub_code},submsg={sub_msg}]",
        "sub_code": sub_code,
        "sub_msg": sub_msg,
    }
