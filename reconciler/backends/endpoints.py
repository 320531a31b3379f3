"""Every DingTalk endpoint dtchat calls, and what the reference says about each: one table.

Which host it is on (the oapi host speaks ``errcode`` answers and takes the
token in the query; the v1.0 host speaks HTTP statuses with ``{code, message}``
and takes the token in a header), whether the organisation's monthly quota
meters it, whether a repeat could do it twice, and which permission point the
developer console must grant for it. The transport, the error mapping and the
meter read this table; nothing else in dtchat names a path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

#: The legacy host (``--api-base``): HTTP 200 + ``errcode``, token in ``?access_token=``.
OAPI = "oapi"
#: The v1.0 host (``--openapi-base``): HTTP status + ``{code, message}``, token in a header.
OPENAPI = "openapi"

#: Where each host is, unless ``--api-base`` / ``--openapi-base`` (or their environment variables) say otherwise.
DEFAULT_API_BASE = "https://oapi.dingtalk.com"
DEFAULT_OPENAPI_BASE = "https://api.dingtalk.com"

#: The flag that points dtchat at each host, named in "check --api-base" messages.
BASE_FLAG: Mapping[str, str] = {OAPI: "--api-base", OPENAPI: "--openapi-base"}


@dataclass(frozen=True)
class Endpoint:
    """One API call as the reference describes it."""

    method: str
    #: The path; ``{chatid}`` where the chat's id goes into it.
    path: str
    host: str
    #: Counted against the organisation's monthly quota (dingtalk-api.md, "The monthly quota").
    metered: bool
    #: Sending it twice could do it twice (a second chat, a second message): an unknown outcome is never retried.
    repeat_unsafe: bool = False
    #: Creates a chat (the write-ahead record in the state file exists for these).
    creates: bool = False
    #: The permission point a missing-permission message names.
    permission: str | None = None
    #: Closed to apps created since DingTalk's change ("Who can call what").
    closed_to_new_apps: bool = False
    #: Issues an access token.
    token: bool = False

    def url_path(self, chatid: str | None = None) -> str:
        """The path with its ``{chatid}`` filled in (URL-quoted), if it has one."""
        if "{chatid}" in self.path:
            if not chatid:
                raise ValueError(f"{self.path} needs a chatid")
            return self.path.replace("{chatid}", quote(chatid, safe=""))
        return self.path

    def __str__(self) -> str:
        return self.path


# -- tokens (exempt) ---------------------------------------------------------------------------
GETTOKEN = Endpoint("GET", "/gettoken", OAPI, metered=False, token=True)
V1_TOKEN = Endpoint("POST", "/v1.0/oauth2/accessToken", OPENAPI, metered=False, token=True)

# -- the legacy chat API (oapi) ----------------------------------------------------------------
CHAT_GET = Endpoint("GET", "/chat/get", OAPI, metered=True, permission="qyapi_chat_read")
CHAT_CREATE = Endpoint(
    "POST",
    "/chat/create",
    OAPI,
    metered=True,
    repeat_unsafe=True,
    creates=True,
    permission="qyapi_chat_manage",
    closed_to_new_apps=True,
)
CHAT_UPDATE = Endpoint(
    "POST", "/chat/update", OAPI, metered=True, permission="qyapi_chat_manage", closed_to_new_apps=True
)

# -- the v1.0 API ------------------------------------------------------------------------------
GROUP_CREATE = Endpoint(
    "POST",
    "/v1.0/im/group/create",
    OPENAPI,
    metered=True,
    repeat_unsafe=True,
    creates=True,
    permission="qyapi_chat_manage",
)
GROUP_UPDATE = Endpoint("POST", "/v1.0/im/group/update", OPENAPI, metered=True, permission="qyapi_chat_manage")
CONVERT_ID = Endpoint(
    "POST",
    "/v1.0/im/chat/{chatid}/convertToOpenConversationId",
    OPENAPI,
    metered=True,
    permission="qyapi_chat_read",
)
ROBOT_SEND = Endpoint(
    "POST",
    "/v1.0/robot/groupMessages/send",
    OPENAPI,
    metered=True,
    repeat_unsafe=True,
    permission="qyapi_robot_sendmsg",
)

# -- the contact API (exempt from the quota) ---------------------------------------------------
DEPT_USER_IDS = Endpoint("POST", "/topapi/user/listid", OAPI, metered=False, permission="qyapi_get_member")
DEPT_SUB_IDS = Endpoint(
    "POST", "/topapi/v2/department/listsubid", OAPI, metered=False, permission="qyapi_get_department_list"
)
DEPT_GET = Endpoint("POST", "/topapi/v2/department/get", OAPI, metered=False, permission="qyapi_get_department_list")
ROLE_USERS = Endpoint("POST", "/topapi/role/simplelist", OAPI, metered=False, permission="qyapi_get_department_member")
ROLE_LIST = Endpoint("POST", "/topapi/role/list", OAPI, metered=False, permission="qyapi_get_department_list")
USER_BY_MOBILE = Endpoint(
    "POST", "/topapi/v2/user/getbymobile", OAPI, metered=False, permission="qyapi_get_member_by_mobile"
)
USER_GET = Endpoint("POST", "/topapi/v2/user/get", OAPI, metered=False, permission="qyapi_get_member")

# (the permission points as each page of the mirrored docs names them, 权限要求)

#: Every endpoint, by path: the metering table ``bench/`` and the docs read.
ALL: Mapping[str, Endpoint] = {
    e.path: e
    for e in (
        GETTOKEN,
        V1_TOKEN,
        CHAT_GET,
        CHAT_CREATE,
        CHAT_UPDATE,
        GROUP_CREATE,
        GROUP_UPDATE,
        CONVERT_ID,
        ROBOT_SEND,
        DEPT_USER_IDS,
        DEPT_SUB_IDS,
        DEPT_GET,
        ROLE_USERS,
        ROLE_LIST,
        USER_BY_MOBILE,
        USER_GET,
    )
}
