"""DingTalk's own rules, as dingtalk-api.md states them, for the emulator alone.

The emulator deliberately does not import the client's constants
(``reconciler/rules.py``): it plays the other side of the wire, so a wrong
number in the client must meet DingTalk's number here and fail a test, not
silently move the emulator along with it. Change a value only when the
reference (``dingtalk-api.md``) changes.
"""

from __future__ import annotations

# ---- chats ------------------------------------------------------------------------------------

#: ``useridlist`` (create) and each of ``add_useridlist`` / ``del_useridlist`` (update): ids per call.
IDS_PER_CALL = 40
#: A chat holds at most this many members, owner included.
MEMBER_CAP = 1000
#: A chat name is NAME_MIN..NAME_MAX characters (characters, not bytes).
NAME_MIN = 1
NAME_MAX = 20
#: The six chat settings; each is the integer 0 or 1, omitted = 0 on create.
SETTING_FIELDS: tuple[str, ...] = (
    "chatBannedType",
    "searchable",
    "validationType",
    "mentionAllAuthority",
    "managementType",
    "showHistoryType",
)
#: ``/chat/getReadList``: ``size`` is at most this.
READ_LIST_PAGE_MAX = 100
#: v1.0 ``conversationTag``: 2 = internal group (the default); 0 = ordinary group, which needs
#: DingTalk support to whitelist the app ("找技术支持加白"), so the emulator refuses it.
CONVERSATION_TAG_INTERNAL = 2
CONVERSATION_TAG_ORDINARY = 0
#: v1.0 ``ownerType``: employee or external contact.
OWNER_TYPES: tuple[str, ...] = ("emp", "ext")

# ---- robot messages (v1.0 /robot/groupMessages/send) -----------------------------------------

#: ``msgParam`` is a JSON string of at most this many bytes (UTF-8).
ROBOT_MSG_PARAM_MAX_BYTES = 15_000
#: The message templates (``msgKey``) the emulator knows -> keys their ``msgParam`` object must carry.
ROBOT_MSG_KEYS: dict[str, tuple[str, ...]] = {
    "sampleText": ("content",),
    "sampleMarkdown": ("title", "text"),
}

# ---- tokens, rates, quotas --------------------------------------------------------------------

#: ``/gettoken`` and ``/v1.0/oauth2/accessToken`` announce (and the emulator enforces) this lifetime.
TOKEN_TTL_SECONDS = 7200
#: Calls per second per API for one app on a standard org (90018 above it).
QPS_PER_API = 20
#: Per egress IP, all APIs together: more than IP_LIMIT_CALLS in IP_LIMIT_WINDOW seconds
#: earns an IP ban of IP_BAN_SECONDS.
IP_LIMIT_CALLS = 10_000
IP_LIMIT_WINDOW = 20.0
IP_BAN_SECONDS = 300.0
#: Metered calls a standard org gets per month (since 2025-11-19); the directory calls are exempt.
MONTHLY_QUOTA = 5000

# ---- the monthly meter: which calls are metered, which answers count -------------------------

#: Endpoints exempt from the monthly quota besides every ``/topapi/...`` (contact) call: the token
#: calls ("获取访问凭证"; legacy /gettoken is assumed exempt) and the Stream gateway.
METER_EXEMPT_ENDPOINTS = frozenset({"/gettoken", "/v1.0/oauth2/accessToken", "/v1.0/gateway/connections/open"})
#: The contact API's prefix: exempt from the quota.
CONTACT_API_PREFIX = "/topapi/"
#: Legacy errcodes of answers the API never processed (throttling, busy, token, permission, quota,
#: wrong HTTP method): a metered call answered with one of these is not counted.
UNCOUNTED_ERRCODES = frozenset(
    {-1, 88, 33001, 40001, 40014, 42001, 43001, 43002, 45009, 60011, 60020, 90002, 90018, 90019, 90020}
)
#: v1.0 codes of answers the API never processed. Besides these, every 401, 403, 429 and 5xx
#: answer is not counted either.
UNCOUNTED_V1_CODES = frozenset(
    {
        "InvalidAuthentication",
        "InvalidAction.NotFound",
        "permession.checkFailed",
        "permission.checkFailed",
        "system.busy",
        "systemBusy",
        "system.error",
        "send.too.fast",
    }
)

# ---- permission points ------------------------------------------------------------------------

#: The permission each chat / v1.0 endpoint needs, named when it is refused (``Faults.no_permission``).
#: /chat/send and /chat/getReadList: not stated in the reference (unverified).
PERMISSION_POINTS: dict[str, str] = {
    "/chat/create": "qyapi_chat_manage",
    "/chat/update": "qyapi_chat_manage",
    "/chat/send": "qyapi_chat_manage",
    "/chat/get": "qyapi_chat_read",
    "/chat/getReadList": "qyapi_chat_read",
    "/v1.0/im/group/create": "qyapi_chat_manage",
    "/v1.0/im/group/update": "qyapi_chat_manage",
    "/v1.0/im/chat/{chatId}/convertToOpenConversationId": "qyapi_chat_read",
    "/v1.0/robot/groupMessages/send": "qyapi_robot_sendmsg",
}
#: Legacy calls a newly created app cannot be granted ("不再支持新应用接入/申请").
CLOSED_TO_NEW_APPS = frozenset({"/chat/create", "/chat/update", "/chat/send", "/chat/getReadList"})

# ---- the org directory (contact API) ----------------------------------------------------------

#: The root department's id.
ROOT_DEPT_ID = 1
#: ``/topapi/role/simplelist``: ``size`` default and maximum.
ROLE_USERS_PAGE_DEFAULT = 20
ROLE_USERS_PAGE_MAX = 100
#: ``/topapi/role/list``: ``size`` default and maximum.
ROLE_LIST_PAGE_DEFAULT = 20
ROLE_LIST_PAGE_MAX = 200
#: ``/topapi/v2/user/getbymobile``: ``mobile`` is at most this many characters.
MOBILE_MAX = 15

# ---- events (Stream mode) ---------------------------------------------------------------------

#: The Stream gateway's connection call (exempt from the monthly quota, like the token calls).
GATEWAY_OPEN_ENDPOINT = "/v1.0/gateway/connections/open"
#: A pushed message must be acked within this many seconds, or it is pushed again.
STREAM_ACK_TIMEOUT_SECONDS = 3.0
#: Webhook & Stream pushes a standard org gets per month (since 2025-11-19); directory events are exempt.
MONTHLY_PUSH_QUOTA = 3000
#: Chat events (群会话事件): they count against the monthly push quota.
CHAT_EVENT_TYPES = frozenset(
    {"chat_add_member", "chat_remove_member", "chat_quit", "chat_update_owner", "chat_update_title", "chat_disband"}
)


def push_exempt(event_type: str) -> bool:
    """Events on 不纳入使用量限制的事件清单: ``user_*_org``, ``org_dept_*``, ``org_change``, ``label_*``, ``org_admin_*``."""
    return (
        (event_type.startswith("user_") and event_type.endswith("_org"))
        or event_type.startswith(("org_dept_", "label_", "org_admin_"))
        or event_type == "org_change"
    )
