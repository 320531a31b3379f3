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

from .endpoints import DEPT_GET, DEPT_SUB_IDS, DEPT_USER_IDS, ROLE_LIST, ROLE_USERS, USER_BY_MOBILE, Endpoint
from .errors import USER_NOT_FOUND_ERRCODE, DingTalkError, InvalidUserError, NotFoundError

if TYPE_CHECKING:
    from .transport import Transport

#: Page sizes: the API's maximum for role members, the documented size for the role list.
ROLE_USERS_PAGE = 100
ROLE_LIST_PAGE = 200
#: A paged answer that never ends is a broken server, not a big org: stop after this many pages.
MAX_PAGES = 10_000
MOBILE_MAX = 15

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
        raise DingTalkError(endpoint.path, f"malformed response: {key} is not a list of user ids")
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
            raise DingTalkError(DEPT_SUB_IDS.path, "malformed response: dept_id_list is not a list of numbers")
        return _dedupe(ids)

    def department_name(self, dept_id: int) -> str:
        result = self._topapi(DEPT_GET, {"dept_id": _int_id(dept_id, "dept_id"), "language": "zh_CN"})
        return str(result.get("name") or "")

    def role_user_ids(self, role_id: int) -> list[str]:
        role_id = _int_id(role_id, "role_id")
        users: list[str] = []
        for page in self._pages(ROLE_USERS, {"role_id": role_id}, ROLE_USERS_PAGE):
            for item in page:
                uid = item.get("userid") if isinstance(item, dict) else None
                if not isinstance(uid, str) or not uid:
                    raise DingTalkError(ROLE_USERS.path, "malformed response: a list entry without a userid")
                users.append(uid)
        return _dedupe(users)

    def role_names(self) -> dict[int, str]:
        roles: dict[int, str] = {}
        for page in self._pages(ROLE_LIST, {}, ROLE_LIST_PAGE):
            for group in page:
                members = group.get("roles", []) if isinstance(group, dict) else None
                if not isinstance(members, list):
                    raise DingTalkError(ROLE_LIST.path, "malformed response: a role group without a roles list")
                for role in members:
                    rid = role.get("id") if isinstance(role, dict) else None
                    if type(rid) is not int:
                        raise DingTalkError(ROLE_LIST.path, "malformed response: a role without a numeric id")
                    roles[rid] = str(role.get("name") or "")
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
            raise DingTalkError(USER_BY_MOBILE.path, "malformed response: no userid in a successful answer")
        return userid

    def _topapi(self, endpoint: Endpoint, body: Mapping[str, Any]) -> dict:
        """One directory call; returns its ``result`` object."""
        result = self._transport.call(endpoint, body=body).get("result")
        if not isinstance(result, dict):
            raise DingTalkError(endpoint.path, "malformed response: no result object in a successful answer")
        return result

    def _pages(self, endpoint: Endpoint, body: Mapping[str, Any], size: int) -> Iterator[list]:
        """``result.list`` of each page while ``result.hasMore``, with ``offset += size``."""
        offset = 0
        for _ in range(MAX_PAGES):
            result = self._topapi(endpoint, {**body, "offset": offset, "size": size})
            items = result.get("list")
            if not isinstance(items, list):  # missing too: a lost page must not read as fewer people
                raise DingTalkError(endpoint.path, "malformed response: result.list is missing or not a list")
            yield items
            if result.get("hasMore") is not True:
                return
            if not items:
                raise DingTalkError(endpoint.path, "malformed response: hasMore with an empty page")
            offset += size
        raise DingTalkError(endpoint.path, f"malformed response: still hasMore after {MAX_PAGES} pages")
