"""DingTalk's v1.0 API (``api.dingtalk.com``), served on the emulator's one port beside the legacy API.

Written from dingtalk-api.md ("The v1.0 API", "Who can call what", "The
monthly quota"): the token call, group create and update, chatid ->
openConversationId, and the app robot's group message. Success is HTTP 200
with the result object; failure is HTTP 4xx/5xx with ``{"code", "message",
"requestid"}``. The token travels in the ``x-acs-dingtalk-access-token``
header, never in the URL.

Choices where the reference is silent or unsure (also in docs/emulator.md):

* **One token book** for both generations: a token from ``/gettoken`` works
  on ``/v1.0/`` paths and one from ``/v1.0/oauth2/accessToken`` works on
  ``/chat/get`` and ``/topapi`` *(assumption: the reference's tutorial passes
  the v1.0 token to /chat/get; no page says so in words)*. Asking the v1.0
  call again while the app's v1.0 token is valid returns the same token with
  its lifetime extended (the reference); ``/gettoken`` keeps making a fresh
  one each time, as it always did here.
* A missing or empty token header is HTTP 401 ``{"message": "Unauthorized",
  "requestid"}`` (no ``code``); an unknown or expired token is 400
  ``InvalidAuthentication``. A token in ``?access_token=`` on a v1.0 path is
  ignored (so it is a 401).
* An unknown ``/v1.0/`` path or the wrong HTTP method is 404
  ``InvalidAction.NotFound`` *(unverified)*; never counted by the meter.
* ``group/create``: ``owner`` must be in ``useridlist`` (stated for legacy
  create and v1.0 update, not for v1.0 create: the emulator is strict);
  ``useridlist`` 1..40 ids as sent, names 1..20 characters, known users only
  (an unknown id is 400 ``parameter.invalid`` naming the ids,
  *unverified*); ``conversationTag`` 2 (default) or 0, which is refused with
  400 ``parameter.invalid`` "普通群需要找技术支持加白" (needs DingTalk's
  whitelisting); ``ownerType`` must be ``emp`` or ``ext`` and is otherwise
  ignored; ``extidlist`` must be a list of strings and is ignored (chats have
  no external members here); ``icon`` (a string) is stored.
* ``managementOptions`` holds the six legacy setting names, each the int 0 or
  1 (``null`` = not sent); another key or value is 400 ``parameter.invalid``.
  The six names at the **top level** of a body (the page's table lists them
  there, every sample nests them) are **ignored**, not applied.
* **Settings on update, the worst-case reading on purpose**: when
  ``managementOptions`` is present, every one of the six settings it does not
  carry is reset to 0 (the page says of ``showHistoryType`` "如果不传值，代表不
  可查看", no value = cannot see history); when ``managementOptions`` is
  absent, no setting changes. A client that sends a partial
  ``managementOptions`` is caught resetting the rest. On create an absent
  setting is 0 either way.
* ``group/update``: the legacy update's rules (``store.py``): owner must
  already be a member and cannot be deleted, 40 ids per list, 1000 members,
  deletions before additions. Every failure, including an unknown chatid
  (the page lists no not-found code for update), is 400 ``parameter.invalid``.
* ``convertToOpenConversationId``: the chat's one stable id from its creation
  (legacy and v1.0 creates answer it, seeded chats have one too), also for a
  dissolved chat; an unknown or malformed chatid is 400 ``invalideChatId``
  (spelled so). Logged under the template path
  ``/v1.0/im/chat/{chatId}/convertToOpenConversationId`` with
  ``params["chatid"]``.
* ``robot/groupMessages/send``: checked in this order: ``robotCode``
  missing/empty (400 ``invalidParameter.robotCode.empty``, *unverified*) or
  not this app's robot (``EmulatorServer(robot_code=...)``; None = any
  non-empty code is this app's; 400 ``invalidParameter.robotCode.auth``);
  ``openConversationId`` missing (400 ``invalid.openConversationId``);
  ``msgKey`` one of ``ROBOT_MSG_KEYS`` and ``msgParam`` a JSON *string* of at
  most 15,000 UTF-8 bytes holding an object with that template's keys as
  non-empty strings (else 400 ``parameter.invalid``); then the chat: unknown
  openConversationId (400 ``invalid.openConversationId``), dissolved,
  ``chat_info.status`` 2 (400 ``group.disbanded``), robot not in it (400
  ``invalidParameter.robotCode.empty`` "请检查机器人是否在群内").
  ``coolAppCode`` and other extra keys are accepted and ignored.
* Gateway faults on v1.0 paths: "busy" is 429 ``system.busy``, "HTTP 500" is
  500 ``system.error`` (JSON: the official SDK parses every error body as
  JSON), the IP ban the same answer as on the legacy host. The rate limit is
  403 ``Forbidden.AccessDenied.QpsLimitForAppkeyAndApi``, the used-up quota
  403 ``Forbidden.AccessDenied.ApiCountLimitForOrg`` (the reference names it
  with no HTTP status), a missing permission 403
  ``Forbidden.AccessDenied.AccessTokenPermissionDenied`` naming the
  permission point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .faults import BUSY, HTTP500, IP_BAN, V1_TOKEN_ENDPOINT, v1_failure
from .limits import (
    CONVERSATION_TAG_INTERNAL,
    CONVERSATION_TAG_ORDINARY,
    OWNER_TYPES,
    ROBOT_MSG_KEYS,
    ROBOT_MSG_PARAM_MAX_BYTES,
    SETTING_FIELDS,
)
from .store import ApiError, ChatStore, TokenBook, V1Error
from .wire import (
    CHAT_NOT_FOUND_ERRCODES,
    Reply,
    Request,
    as_processed,
    ban_reply,
    json_reply,
    v1_error,
    v1_unauthorized,
)

PREFIX = "/v1.0/"
TOKEN = V1_TOKEN_ENDPOINT
CREATE = "/v1.0/im/group/create"
UPDATE = "/v1.0/im/group/update"
CONVERT = "/v1.0/im/chat/{chatId}/convertToOpenConversationId"
ROBOT_SEND = "/v1.0/robot/groupMessages/send"
TOKEN_HEADER = "x-acs-dingtalk-access-token"

_CONVERT_RE = re.compile(r"/v1\.0/im/chat/([^/]+)/convertToOpenConversationId")
#: The keys of a v1.0 update the legacy update's rules apply to as they are.
_UPDATE_KEYS = ("chatid", "name", "owner", "add_useridlist", "del_useridlist", "icon")


@dataclass(frozen=True)
class V1Call:
    """What a v1.0 handler sees: the JSON body, the chatid from the path, and the app's robot code."""

    body: Mapping[str, Any]
    chatid: str | None = None
    robot_code: str | None = None


def endpoint_of(path: str) -> tuple[str, dict[str, str]]:
    """The endpoint a v1.0 path is logged and counted as (a template for the convert call) and its path params."""
    match = _CONVERT_RE.fullmatch(path)
    if match:
        return CONVERT, {"chatid": unquote(match.group(1))}
    return path, {}


def _invalid(message: str) -> V1Error:
    return V1Error(400, "parameter.invalid", message)


@contextmanager
def _parameter_invalid() -> Iterator[None]:
    """The legacy store's refusals (40035, 40032, 60121, 34013, ...) as v1.0's one code for a bad call."""
    try:
        yield
    except ApiError as err:
        raise _invalid(err.errmsg) from None


def _check_owner_type(body: Mapping[str, Any]) -> None:
    value = body.get("ownerType")
    if value is not None and value not in OWNER_TYPES:
        raise _invalid(f"ownerType must be one of {', '.join(OWNER_TYPES)}")


def _check_string_list(body: Mapping[str, Any], key: str) -> None:
    """Accepted and ignored, but it must at least be a list of non-empty strings."""
    value = body.get(key)
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
        raise _invalid(f"{key} must be a list of ids")


def management_options(body: Mapping[str, Any]) -> dict[str, int] | None:
    """The settings ``managementOptions`` carries (None when it is absent); bad keys or values raise."""
    value = body.get("managementOptions")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid("managementOptions must be an object")
    unknown = sorted(set(value) - set(SETTING_FIELDS))
    if unknown:
        raise _invalid(f"managementOptions: unknown field(s) {', '.join(unknown)}; known: {', '.join(SETTING_FIELDS)}")
    out = {}
    for name, setting in value.items():
        if setting is None:
            continue
        if type(setting) is not int or setting not in (0, 1):
            raise _invalid(f"managementOptions.{name} must be 0 or 1")
        out[name] = setting
    return out


def _check_conversation_tag(body: Mapping[str, Any]) -> None:
    tag = body.get("conversationTag")
    if tag is None or (type(tag) is int and tag == CONVERSATION_TAG_INTERNAL):
        return
    if type(tag) is int and tag == CONVERSATION_TAG_ORDINARY:
        raise _invalid("普通群需要找技术支持加白 (an ordinary group, conversationTag 0, needs whitelisting)")
    raise _invalid(
        f"conversationTag must be {CONVERSATION_TAG_INTERNAL} (or {CONVERSATION_TAG_ORDINARY} when whitelisted)"
    )


def create_group(store: ChatStore, call: V1Call) -> dict[str, Any]:
    """``POST /v1.0/im/group/create``: the legacy create's rules, plus v1.0's own fields."""
    body = call.body
    _check_owner_type(body)
    _check_string_list(body, "extidlist")
    _check_conversation_tag(body)
    icon = body.get("icon")
    if icon is not None and not isinstance(icon, str):
        raise _invalid("icon must be a mediaId string")
    settings = management_options(body) or {}
    legacy = {"name": body.get("name"), "owner": body.get("owner"), "useridlist": body.get("useridlist"), **settings}
    with _parameter_invalid():
        created = store.create(legacy, icon=icon or "")
    return {
        "openConversationId": created["openConversationId"],
        "chatid": created["chatid"],
        "conversationTag": CONVERSATION_TAG_INTERNAL,
    }


def update_group(store: ChatStore, call: V1Call) -> dict[str, Any]:
    """``POST /v1.0/im/group/update``: keyed by chatid; a present managementOptions sets all six settings."""
    body = call.body
    chatid = body.get("chatid")
    if not isinstance(chatid, str) or not chatid:
        raise _invalid("chatid is required")
    _check_owner_type(body)
    _check_string_list(body, "add_extidlist")
    _check_string_list(body, "del_extidlist")
    options = management_options(body)
    settings = {} if options is None else {name: options.get(name, 0) for name in SETTING_FIELDS}
    legacy = {key: body[key] for key in _UPDATE_KEYS if key in body}
    with _parameter_invalid():
        store.update({**legacy, **settings})
    return {"success": True}


def convert(store: ChatStore, call: V1Call) -> dict[str, Any]:
    """``POST /v1.0/im/chat/{chatId}/convertToOpenConversationId``: the id stored at creation."""
    ocid = store.open_conversation_id(call.chatid or "")
    if ocid is None:
        raise V1Error(400, "invalideChatId", "无效的chatId (no such chat)")
    return {"openConversationId": ocid}


def _robot_params(msg_key: Any, msg_param: Any) -> dict[str, Any]:
    """``msgParam`` parsed and checked against its template (``msgKey``)."""
    if not isinstance(msg_key, str) or msg_key not in ROBOT_MSG_KEYS:
        raise _invalid(f"msgKey must be one of {', '.join(ROBOT_MSG_KEYS)}")
    if not isinstance(msg_param, str):
        raise _invalid("msgParam must be a JSON string")
    size = len(msg_param.encode("utf-8"))
    if size > ROBOT_MSG_PARAM_MAX_BYTES:
        raise _invalid(f"msgParam is {size} bytes; at most {ROBOT_MSG_PARAM_MAX_BYTES}")
    try:
        params = json.loads(msg_param)
    except (json.JSONDecodeError, RecursionError):
        raise _invalid("msgParam is not valid JSON") from None
    needed = ROBOT_MSG_KEYS[msg_key]
    if not isinstance(params, dict) or not all(isinstance(params.get(k), str) and params[k] for k in needed):
        raise _invalid(f"msgParam of {msg_key} needs {', '.join(needed)}")
    return params


def robot_send(store: ChatStore, call: V1Call) -> dict[str, Any]:
    """``POST /v1.0/robot/groupMessages/send``: this app's robot, in a live chat it is a member of."""
    body = call.body
    robot = body.get("robotCode")
    if not isinstance(robot, str) or not robot:
        raise V1Error(400, "invalidParameter.robotCode.empty", "robotCode 不能为空 (robotCode is required)")
    if call.robot_code is not None and robot != call.robot_code:
        raise V1Error(400, "invalidParameter.robotCode.auth", "robotCode 不属于当前应用 (not this app's robot)")
    ocid = body.get("openConversationId")
    if not isinstance(ocid, str) or not ocid:
        raise V1Error(400, "invalid.openConversationId", "openConversationId is required")
    params = _robot_params(body.get("msgKey"), body.get("msgParam"))
    return store.robot_send(ocid, {"robotCode": robot, "msgKey": body["msgKey"], "params": params})


Handler = Callable[[ChatStore, V1Call], dict]

#: The v1.0 calls besides the token, by endpoint (all POST, all metered).
HANDLERS: Mapping[str, Handler] = {
    CREATE: create_group,
    UPDATE: update_group,
    CONVERT: convert,
    ROBOT_SEND: robot_send,
}


class V1Dialect:
    """v1.0's refusals: HTTP 4xx/5xx with ``{"code", "message", "requestid"}``."""

    def token(self, req: Request) -> str | None:
        return req.headers.get(TOKEN_HEADER) or None

    def wrong_method(self, expected: str, req: Request) -> Reply:
        return not_found(req)

    def token_error(self, err: ApiError, missing: bool, req: Request) -> Reply:
        if missing:
            return v1_unauthorized()
        return v1_error(400, "InvalidAuthentication", "不合法的access_token")

    def no_permission(self, permission: str, req: Request) -> Reply:
        message = f"没有调用该接口的权限，接口权限申请参考：requiredScopes=[{permission}]"
        return v1_error(403, "Forbidden.AccessDenied.AccessTokenPermissionDenied", message)

    def closed_to_new_apps(self, req: Request) -> Reply:
        return self.no_permission("", req)

    def rate_limited(self, req: Request) -> Reply:
        message = "当前应用调用该接口的频率超过限制 (this app exceeded its per-API limit per second)"
        return v1_error(403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", message)

    def quota_used_up(self, req: Request) -> Reply:
        message = "当前企业的月度API调用量已用完 (the org's monthly API quota is used up)"
        return v1_error(403, "Forbidden.AccessDenied.ApiCountLimitForOrg", message)

    def gateway_fault(self, kind: str, req: Request) -> Reply:
        if kind == IP_BAN:
            return ban_reply(req.faults.ban_wait, req.faults.ip_ban_html)
        if kind == HTTP500:
            return v1_error(500, "system.error", "系统错误")
        assert kind == BUSY
        return v1_error(429, "system.busy", "系统繁忙")


def not_found(req: Request) -> Reply:
    """An unknown v1.0 path, or a known one with the wrong method."""
    return v1_error(404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method.")


def issue_token(tokens: TokenBook, req: Request, credentials_ok: Callable[[str, str], bool]) -> Reply:
    """``POST /v1.0/oauth2/accessToken``: the app's token (the same one while it is valid, extended)."""
    body = req.body if isinstance(req.body, dict) else {}
    key, secret = body.get("appKey"), body.get("appSecret")
    if not isinstance(key, str) or not isinstance(secret, str) or not credentials_ok(key, secret):
        return as_processed(v1_error(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret"))
    token, expire_in = tokens.issue_for_app(key, req.faults.token_uses)
    return as_processed(json_reply({"accessToken": token, "expireIn": expire_in}))


def run(store: ChatStore, req: Request, robot_code: str | None, take_drop: Callable[[], bool]) -> Reply:
    """A v1.0 call past the gates: the body, ``fail_chatids``, the handler (and ``drop_after_create``)."""
    try:
        body: Mapping[str, Any] = {}
        if req.endpoint != CONVERT:  # the convert call has no body
            if not isinstance(req.body, dict):
                raise _invalid("the body must be a JSON object")
            body = req.body
        failing = req.faults.fail_chatids.get(_named_chat(store, req, body) or "")
        if failing is not None:
            raise _injected(failing)
        result = HANDLERS[req.endpoint](store, V1Call(body, req.path_params.get("chatid"), robot_code))
    except V1Error as err:
        return as_processed(v1_error(err.status, err.code, err.message))
    reply = as_processed(json_reply(result))
    if req.endpoint == CREATE and take_drop():
        return reply.dropped()
    return reply


def _named_chat(store: ChatStore, req: Request, body: Mapping[str, Any]) -> str | None:
    """The chatid a call names, for ``fail_chatids`` (a robot send names its chat by openConversationId)."""
    if req.endpoint == CONVERT:
        return req.path_params.get("chatid")
    if req.endpoint == ROBOT_SEND:
        ocid = body.get("openConversationId")
        return store.chatid_for(ocid) if isinstance(ocid, str) else None
    chatid = body.get("chatid")
    return chatid if isinstance(chatid, str) else None


def _injected(failing: int | str) -> V1Error:
    """A ``fail_chatids`` value as the v1.0 error it stands for."""
    if isinstance(failing, int):
        code = "invalideChatId" if failing in CHAT_NOT_FOUND_ERRCODES else "parameter.invalid"
        return V1Error(400, code, f"injected failure for this chatid (errcode {failing})")
    status, code = v1_failure(failing)
    return V1Error(status, code, "injected failure for this chatid")
