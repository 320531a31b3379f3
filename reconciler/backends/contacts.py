"""The org directory through DingTalk's contact API (``/topapi/…``): the :class:`Directory` both generations use.

These calls are exempt from the monthly quota and open to every app; they
take the token of the oapi host (the v1.0 token under ``--api v1``). Every
answer is checked: a successful answer without its list is malformed, never
"nobody" (members are never removed on the strength of a lost page).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .endpoints import (
    DEPT_GET,
    DEPT_SUB_IDS,
    DEPT_USER_IDS,
    ROLE_LIST,
    ROLE_USERS,
    USER_BY_MOBILE,
    USER_GET,
    Endpoint,
)
from .errors import (
    NO_PERMISSION_ERRCODE,
    TOKEN_ERRCODES,
    UNKNOWN_USERID_ERRCODE,
    USER_NOT_FOUND_ERRCODE,
    AuthError,
    InvalidUserError,
    MalformedAnswerError,
    NotFoundError,
    errcode_of,
    is_fatal,
)

if TYPE_CHECKING:
    from .transport import Transport

#: Page sizes: the API's maximum for role members, the documented size for the role list.
ROLE_USERS_PAGE = 100
ROLE_LIST_PAGE = 200
#: A paged answer that never ends is a broken server, not a big org: stop after this many pages.
MAX_PAGES = 10_000
MOBILE_MAX = 15
#: ``user_exists``: a lookup whose token was still rejected after a refresh is asked afresh this many times.
TOKEN_RACE_RETRIES = 3

_MOBILE_JUNK = re.compile(r"[\s\-()]+")
_MAINLAND = re.compile(r"1[0-9]{10}")


def normalize_mobile(text: str) -> str:
    """A mobile number as ``getbymobile`` wants it: ``"+86 138-0000-0000"`` -> ``"13800000000"``.

    Spaces, dashes and parentheses go; ``+86`` / ``0086`` before an 11-digit
    mainland number goes. Anything else that is not 1..15 ASCII digits raises
    ValueError (the number itself is not echoed: it is personal data).
    """
    number = _MOBILE_JUNK.sub("", str(text))
    for prefix in ("+86", "0086"):
        if number.startswith(prefix) and _MAINLAND.fullmatch(number[len(prefix) :]):
            number = number[len(prefix) :]
            break
    if not number:
        raise ValueError("empty mobile number")
    if not (number.isascii() and number.isdigit()):
        raise ValueError("a mobile number may only hold digits, spaces, dashes, parentheses and a leading +86")
    if len(number) > MOBILE_MAX:
        raise ValueError(f"a mobile number has at most {MOBILE_MAX} digits")
    return number


def _dedupe(items: Iterable[Any]) -> list:
    """Each item once, first occurrence kept (a user may be listed in several places)."""
    return list(dict.fromkeys(items))


def _int_id(value: Any, name: str) -> int:
    """Ids go out as JSON numbers; a bool or text here is a caller bug, caught before any call."""
    if type(value) is not int:
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _str_list(result: Mapping[str, Any], endpoint: Endpoint, key: str) -> list[str]:
    """A list of user ids that must be there: an answer without it is malformed, never "nobody"."""
    ids = result.get(key)
    if not isinstance(ids, list) or not all(isinstance(u, str) and u for u in ids):
        raise MalformedAnswerError(endpoint.path, f"malformed response: {key} is not a list of user ids")
    return ids


class Contacts:
    """A Directory over the contact API."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    normalize_mobile = staticmethod(normalize_mobile)

    def department_user_ids(self, dept_id: int) -> list[str]:
        result = self._topapi(DEPT_USER_IDS, {"dept_id": _int_id(dept_id, "dept_id")})
        return _dedupe(_str_list(result, DEPT_USER_IDS, "userid_list"))

    def sub_department_ids(self, dept_id: int) -> list[int]:
        result = self._topapi(DEPT_SUB_IDS, {"dept_id": _int_id(dept_id, "dept_id")})
        ids = result.get("dept_id_list")
        if ids is None:
            return []
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise MalformedAnswerError(DEPT_SUB_IDS.path, "malformed response: dept_id_list is not a list of numbers")
        return _dedupe(ids)

    def department_name(self, dept_id: int) -> str:
        result = self._topapi(DEPT_GET, {"dept_id": _int_id(dept_id, "dept_id"), "language": "zh_CN"})
        answered, name = result.get("dept_id"), result.get("name")
        if answered is not None and (type(answered) is not int or answered != dept_id):
            raise MalformedAnswerError(DEPT_GET.path, "malformed response: the answer describes another department")
        if name is not None and not isinstance(name, str):
            raise MalformedAnswerError(DEPT_GET.path, "malformed response: the department's name is not text")
        return name or ""

    def role_user_ids(self, role_id: int) -> list[str]:
        role_id = _int_id(role_id, "role_id")
        users: list[str] = []
        for page in self._pages(ROLE_USERS, {"role_id": role_id}, ROLE_USERS_PAGE):
            for item in page:
                uid = item.get("userid") if isinstance(item, dict) else None
                if not isinstance(uid, str) or not uid:
                    raise MalformedAnswerError(ROLE_USERS.path, "malformed response: a list entry without a userid")
                users.append(uid)
        return _dedupe(users)

    def role_names(self) -> dict[int, str]:
        roles: dict[int, str] = {}
        for page in self._pages(ROLE_LIST, {}, ROLE_LIST_PAGE):
            for group in page:
                members = group.get("roles", []) if isinstance(group, dict) else None
                if not isinstance(members, list):
                    raise MalformedAnswerError(ROLE_LIST.path, "malformed response: a role group without a roles list")
                for role in members:
                    rid = role.get("id") if isinstance(role, dict) else None
                    if type(rid) is not int:
                        raise MalformedAnswerError(ROLE_LIST.path, "malformed response: a role without a numeric id")
                    name = role.get("name")
                    if name is not None and not isinstance(name, str):
                        raise MalformedAnswerError(ROLE_LIST.path, "malformed response: a role name that is not text")
                    roles[rid] = name or ""
        return roles

    def user_id_by_mobile(self, mobile: str) -> str:
        try:
            result = self._topapi(USER_BY_MOBILE, {"mobile": mobile})
        except InvalidUserError as exc:
            if exc.errcode != USER_NOT_FOUND_ERRCODE:
                raise
            raise NotFoundError(
                USER_BY_MOBILE.path,
                f"no active user has mobile {mobile}",
                exc.errcode,
            ) from None
        userid = result.get("userid")
        if not isinstance(userid, str) or not userid:
            raise MalformedAnswerError(USER_BY_MOBILE.path, "malformed response: no userid in a successful answer")
        return userid

    def user_exists(self, userid: str) -> bool:
        """``/topapi/v2/user/get``: True when the org has ``userid``, False when it answers "invalid userId".

        33012 is the reference's answer for an unknown id; 60121 ("user not found", what the older user
        call and the mobile lookup say) is taken to mean the same. Any other failure raises: "cannot tell"
        is never "exists". A success must describe the user that was asked for.
        """
        if not isinstance(userid, str) or not userid:
            raise ValueError("userid must be a non-empty string")
        try:
            result = self._user_get(userid)
        except (NotFoundError, InvalidUserError) as exc:
            if exc.errcode in (UNKNOWN_USERID_ERRCODE, USER_NOT_FOUND_ERRCODE):
                return False
            raise
        except AuthError as exc:
            no_permission = NO_PERMISSION_ERRCODE in (exc.errcode, errcode_of(exc.sub_code))
            if not no_permission or is_fatal(exc):
                raise
            # every chat that adds someone says this: one short line, not the answer's text twice over
            raise AuthError(
                USER_GET.path,
                f"the app lacks the permission {USER_GET.permission} (成员信息读) that checks user ids exist: "
                "grant it in the developer console (权限管理) and publish the app",
                exc.errcode,
                sub_code=exc.sub_code,
            ) from None
        answered = result.get("userid")
        if not isinstance(answered, str) or not answered:
            raise MalformedAnswerError(USER_GET.path, "malformed response: no userid in a successful answer")
        if answered != userid:
            raise MalformedAnswerError(USER_GET.path, "malformed response: the answer describes another user")
        return True

    def _user_get(self, userid: str) -> dict:
        """One user/get. These come in bursts (every id a plan adds), so a lookup whose token was rejected
        even after the transport's refresh (the others of the burst used the new one up, or it expired
        meanwhile) is asked afresh a few times: it is read-only, exempt and safe to repeat."""
        for _ in range(TOKEN_RACE_RETRIES):
            try:
                return self._topapi(USER_GET, {"userid": userid, "language": "zh_CN"})
            except AuthError as exc:
                token = exc.errcode in TOKEN_ERRCODES or errcode_of(exc.sub_code) in TOKEN_ERRCODES
                if not token or is_fatal(exc):
                    raise
        return self._topapi(USER_GET, {"userid": userid, "language": "zh_CN"})

    def _topapi(self, endpoint: Endpoint, body: Mapping[str, Any]) -> dict:
        """One directory call; returns its ``result`` object."""
        result = self._transport.call(endpoint, body=body).get("result")
        if not isinstance(result, dict):
            raise MalformedAnswerError(endpoint.path, "malformed response: no result object in a successful answer")
        return result

    def _pages(self, endpoint: Endpoint, body: Mapping[str, Any], size: int) -> Iterator[list]:
        """``result.list`` of each page while ``result.hasMore``, with ``offset += size``."""
        offset = 0
        for _ in range(MAX_PAGES):
            result = self._topapi(endpoint, {**body, "offset": offset, "size": size})
            items = result.get("list")
            if not isinstance(items, list):  # missing too: a lost page must not read as fewer people
                raise MalformedAnswerError(endpoint.path, "malformed response: result.list is missing or not a list")
            more = result.get("hasMore")
            if more is not None and not isinstance(more, bool):  # "true" read as "no more" would lose people
                raise MalformedAnswerError(endpoint.path, "malformed response: hasMore is not true or false")
            yield items
            if more is not True:
                return
            if not items:
                raise MalformedAnswerError(endpoint.path, "malformed response: hasMore with an empty page")
            offset += size
        raise MalformedAnswerError(endpoint.path, f"malformed response: still hasMore after {MAX_PAGES} pages")
