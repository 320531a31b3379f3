"""The contact API (``/topapi/...``) of dingtalk-api.md, answered from an ``Org``.

Each handler validates the body and returns the answer's fields besides
``errcode``/``errmsg``/``request_id`` (the server adds those), or raises
``ApiError``. Choices where dingtalk-api.md is silent:

* ``dept_id`` must be a JSON integer > 0: anything else is 400002 on
  ``listid``/``listsubid`` and 40009 on ``department/get``; strings such as
  ``"100"`` are refused so a client that sends them is caught.
* ``role/simplelist``: ``role_id`` missing or not an integer is 400002, an
  unknown one 33011. ``offset``/``size`` take effect only when both are sent
  (as documented); then a non-integer or negative offset is 40068 and a size
  outside 1..100 is 40069. Holders are listed in the org file's order.
  Its answer has no ``errmsg`` (as in the reference).
* ``role/list``: ``offset``/``size`` each default (0, 20) on their own; pages
  are over role *groups*; a size outside 1..200 is 40069.
* ``getbymobile``: ``mobile`` missing or not a string is 400002; a string
  that is not 1..15 digits (``+86``, spaces, dashes) is 40104; a number no
  active user has is 60121.
* ``v2/user/get``: ``userid`` missing, empty or not a string is 400002; an id
  the org does not have (never had, or left) is 33012. Invited users who have
  not joined are found, with ``active: false`` (they are valid chat members).
  ``language`` is optional. Without an org the emulator accepts any user id
  in chats, so user/get finds any id then; with a fixed ``users`` list it
  finds exactly those: it always agrees with what create and update accept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .limits import (
    MOBILE_MAX,
    ROLE_LIST_PAGE_DEFAULT,
    ROLE_LIST_PAGE_MAX,
    ROLE_USERS_PAGE_DEFAULT,
    ROLE_USERS_PAGE_MAX,
)
from .org import MOBILE_RE, Org
from .store import ApiError

USER_LISTID = "/topapi/user/listid"
DEPT_LISTSUBID = "/topapi/v2/department/listsubid"
DEPT_GET = "/topapi/v2/department/get"
ROLE_SIMPLELIST = "/topapi/role/simplelist"
ROLE_LIST = "/topapi/role/list"
USER_GETBYMOBILE = "/topapi/v2/user/getbymobile"
USER_GET = "/topapi/v2/user/get"

#: DingTalk's texts for the codes the directory answers (decide by errcode, never by these).
ERRMSGS: Mapping[int, str] = {
    -1: "系统繁忙",
    33011: "无效的角色id",
    33012: "无效的userId",
    40009: "不合法的部门id",
    40068: "不合法的偏移量",
    40069: "不合法的分页大小",
    40104: "无效手机号",
    60003: "部门不存在",
    60121: "找不到该用户",
    400002: "无效的参数",
}

#: The permission each endpoint needs, named in a 60011 ``sub_msg``.
PERMISSIONS: Mapping[str, str] = {
    USER_LISTID: "qyapi_get_department_member",
    DEPT_LISTSUBID: "qyapi_get_department_list",
    DEPT_GET: "qyapi_get_department_list",
    ROLE_SIMPLELIST: "qyapi_get_member",
    ROLE_LIST: "qyapi_get_member",
    USER_GETBYMOBILE: "qyapi_get_member_by_mobile",
    USER_GET: "qyapi_get_member",
}


def _error(code: int) -> ApiError:
    return ApiError(code, ERRMSGS.get(code, "error"))


def _dept_id(body: Mapping[str, Any], code: int) -> int:
    value = body.get("dept_id")
    if type(value) is not int or value <= 0:
        raise _error(code)
    return value


def _page(body: Mapping[str, Any], default: int, maximum: int, both_required: bool) -> tuple[int, int]:
    """(offset, size) from the body, with the endpoint's defaults and limits."""
    has_offset, has_size = body.get("offset") is not None, body.get("size") is not None
    if both_required and not (has_offset and has_size):
        return 0, default
    offset, size = body.get("offset", 0) if has_offset else 0, body.get("size") if has_size else default
    if type(offset) is not int or offset < 0:
        raise _error(40068)
    if type(size) is not int or not 1 <= size <= maximum:
        raise _error(40069)
    return offset, size


def user_listid(org: Org, body: Mapping[str, Any]) -> dict[str, Any]:
    """Direct members of one department, no paging."""
    members = org.members(_dept_id(body, 400002))
    if members is None:
        raise _error(60003)
    return {"result": {"userid_list": members}}


def department_listsubid(org: Org, body: Mapping[str, Any]) -> dict[str, Any]:
    """Direct sub-departments (next level only)."""
    children = org.sub_departments(_dept_id(body, 400002))
    if children is None:
        raise _error(60003)
    return {"result": {"dept_id_list": children}}


def department_get(org: Org, body: Mapping[str, Any]) -> dict[str, Any]:
    """One department; extra keys on purpose, since real answers carry many."""
    dept = org.department(_dept_id(body, 40009))
    if dept is None:
        raise _error(60003)
    result: dict[str, Any] = {"dept_id": dept.id, "name": dept.name}
    if dept.parent is not None:
        result["parent_id"] = dept.parent
    result.update({"auto_add_user": True, "create_dept_group": False, "order": dept.id})
    return {"result": result}


def role_simplelist(org: Org, body: Mapping[str, Any]) -> dict[str, Any]:
    """One page of a role's holders."""
    role_id = body.get("role_id")
    if type(role_id) is not int:
        raise _error(400002)
    offset, size = _page(body, ROLE_USERS_PAGE_DEFAULT, ROLE_USERS_PAGE_MAX, both_required=True)
    role = org.role(role_id)
    if role is None:
        raise _error(33011)
    page = role.holders[offset : offset + size]
    users = [org.user(u) for u in page]
    listed = [{"userid": u.userid, "name": u.name, "manageScopes": []} for u in users if u is not None]
    return {"result": {"hasMore": offset + size < len(role.holders), "list": listed}}


def role_list(org: Org, body: Mapping[str, Any]) -> dict[str, Any]:
    """One page of role groups, each with its roles."""
    offset, size = _page(body, ROLE_LIST_PAGE_DEFAULT, ROLE_LIST_PAGE_MAX, both_required=False)
    groups = org.role_groups()
    page = [
        {"groupId": gid, "name": name, "roles": [{"id": r.id, "name": r.name} for r in roles]}
        for gid, name, roles in groups[offset : offset + size]
    ]
    return {"result": {"hasMore": offset + size < len(groups), "list": page}}


def user_getbymobile(org: Org, body: Mapping[str, Any]) -> dict[str, Any]:
    """The active user with this mobile number."""
    mobile = body.get("mobile")
    if not isinstance(mobile, str):
        raise _error(400002)
    if len(mobile) > MOBILE_MAX or not MOBILE_RE.fullmatch(mobile):
        raise _error(40104)
    user = org.user_by_mobile(mobile)
    if user is None:
        raise _error(60121)
    return {"result": {"userid": user.userid}}


def _userid(body: Mapping[str, Any]) -> str:
    userid = body.get("userid")
    if not isinstance(userid, str) or not userid:
        raise _error(400002)
    return userid


def _user_result(userid: str, name: str, departments: list[int], active: bool) -> dict[str, Any]:
    """``result`` of user/get; extra keys on purpose, since real answers carry many."""
    return {
        "result": {
            "userid": userid,
            "name": name,
            "dept_id_list": departments,
            "active": active,
            "admin": False,
            "boss": False,
            "title": "",
        }
    }


def user_get(org: Org, body: Mapping[str, Any]) -> dict[str, Any]:
    """One user of the org, or 33012."""
    user = org.user(_userid(body))
    if user is None:
        raise _error(33012)
    return _user_result(user.userid, user.name, list(user.departments), user.active)


def user_get_without_org(users: frozenset[str] | None, body: Mapping[str, Any]) -> dict[str, Any]:
    """user/get when no org is loaded: the fixed ``users`` list, or (None) any id, as chats then accept."""
    userid = _userid(body)
    if users is not None and userid not in users:
        raise _error(33012)
    return _user_result(userid, userid, [], True)


def lookup_keys(endpoint: str, body: Mapping[str, Any]) -> list[str]:
    """The ``Faults.fail_lookups`` keys that name this request: its endpoint and what it looks up."""
    keys = [endpoint]
    if endpoint in (USER_LISTID, DEPT_LISTSUBID, DEPT_GET) and body.get("dept_id") is not None:
        keys.append(f"dept:{body['dept_id']}")
    elif endpoint == ROLE_SIMPLELIST and body.get("role_id") is not None:
        keys.append(f"role:{body['role_id']}")
    elif endpoint == USER_GETBYMOBILE and body.get("mobile") is not None:
        keys.append(f"mobile:{body['mobile']}")
    elif endpoint == USER_GET and body.get("userid") is not None:
        keys.append(f"user:{body['userid']}")
    return keys


Handler = Callable[[Org, Mapping[str, Any]], dict]

#: endpoint -> (handler, whether the answer carries ``errmsg``).
HANDLERS: Mapping[str, tuple[Handler, bool]] = {
    USER_LISTID: (user_listid, True),
    DEPT_LISTSUBID: (department_listsubid, True),
    DEPT_GET: (department_get, True),
    ROLE_SIMPLELIST: (role_simplelist, False),
    ROLE_LIST: (role_list, True),
    USER_GETBYMOBILE: (user_getbymobile, True),
    USER_GET: (user_get, True),
}


def permission_denied(endpoint: str, note: str | None = None) -> dict[str, Any]:
    """The 88 / 60011 answer body (without request_id)."""
    sub_msg = f"应用尚未开通所需的权限：[{PERMISSIONS.get(endpoint, 'qyapi_get_member')}]"
    if note:
        sub_msg += f" ({note})"
    return {
        "errcode": 88,
        "errmsg": f"ding talk error[subcode=60011,submsg={sub_msg}]",
        "sub_code": "60011",
        "sub_msg": sub_msg,
    }


def bad_token() -> dict[str, Any]:
    """The 88 / 40014 answer body (without request_id): /topapi's word for a bad or expired token."""
    sub_msg = "不合法的access_token"
    return {
        "errcode": 88,
        "errmsg": f"ding talk error[subcode=40014,submsg={sub_msg}]",
        "sub_code": "40014",
        "sub_msg": sub_msg,
    }
