"""The events the emulator's own changes cause, with the ``data`` fields of dingtalk-api.md ("Events (Stream mode)").

Pure functions: a chat before and after a change, or the org before and
after an edit, in; ``(eventType, data)`` pairs out. The gateway
(``stream.py``) pushes them. Written from the reference's tables, never from
dtchat's client.

Chat events. Every ``data`` has ``openConversationId``, ``corpId``,
``timeStamp`` and ``operatorUnionId``; all but ``chat_update_owner`` also
``chatId`` and ``operator``:

* ``chat_add_member`` / ``chat_remove_member``: ``userId[]`` and ``unionId[]``;
* ``chat_quit``: nothing more (``operator`` is who left);
* ``chat_update_owner``: ``owner`` (the new one), and no ``chatId``/``operator``;
* ``chat_update_title``: ``title``;
* ``chat_disband``: nothing more.

Choices where the reference is silent:

* One change makes at most one event of each type, in this order: quit,
  remove, add, owner, title, disband. Settings, icon and robot changes make
  none (the reference: no event exists for them).
* ``timeStamp`` of a chat event is a number (milliseconds since the epoch);
  the reference gives its type only for directory events, where it is a
  string, and so it is there.
* unionIds: the emulator has none of its own, so every userId has a stable
  made-up one (``union_id``): 16 URL-safe base64 characters then ``iEiE``.
* The operator of a change made through the API is ``API_OPERATOR``
  (``"app"``): the app, not a person.

Directory events (``org_events``: the org before and after, in the org file
format):

* ``user_add_org`` / ``user_leave_org``: ``{userId[], timeStamp}``
  (``timeStamp`` a string, as the reference says); one event for all the
  users an edit adds (or removes). A leaver's role holdings vanish with them
  and raise no ``label_user_change``.
* ``user_modify_org``: one per changed user, ``{userId: [u], timeStamp,
  diffInfo: {userid, prev, curr}}``; ``prev``/``curr`` hold only the fields
  that changed, by the names ``name``, ``mobile`` and ``deptIdList`` (a
  department move raises it: the reference does not say whether DingTalk
  does, ``deptIdList`` is the emulator's name).
* ``user_active_org``: ``{userId[]}`` for users who became active
  (``active: false`` → ``true``); becoming inactive raises nothing.
* ``org_dept_create`` / ``org_dept_modify`` (name or parent changed) /
  ``org_dept_remove``: ``{deptId[], timeStamp}`` (only ``POST
  /__emulator__/org`` and ``set_org`` change departments).
* ``label_user_change``: ``{userIdList, labelIdList: [role id], action}``, one
  per role and direction, ``action`` ``"add"`` (the reference's sample) or
  ``"remove"`` (*unverified*). ``label_conf_add`` / ``label_conf_modify``
  (name or group changed) / ``label_conf_del``: ``{labelIdList}``.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

#: The ``operator`` of a change made through the API (the app, not a person).
API_OPERATOR = "app"
#: The org's corpId in every event (``corpId`` in chat events' data, ``eventCorpId`` in the headers).
CORP_ID = "ding5e6d0a3c9b7f41e2"

Event = tuple[str, dict[str, Any]]


def union_id(userid: str) -> str:
    """A stable made-up unionId for a userId (the emulator has no unionIds of its own)."""
    digest = hashlib.sha256(("unionId:" + userid).encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:16] + "iEiE"


def now_ms() -> int:
    return int(time.time() * 1000)


def chat_events(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    open_conversation_id: str,
    operator: str,
    *,
    quit: str | None = None,
) -> list[Event]:
    """The chat events that turn ``before`` into ``after`` (``quit``: the member who left by themselves)."""
    stamp = now_ms()
    common: dict[str, Any] = {
        "openConversationId": open_conversation_id,
        "corpId": CORP_ID,
        "timeStamp": stamp,
    }

    def by(who: str, **extra: Any) -> dict[str, Any]:
        return {**common, "chatId": after["chatid"], "operator": who, "operatorUnionId": union_id(who), **extra}

    old, new = list(before["useridlist"]), list(after["useridlist"])
    old_set, new_set = set(old), set(new)
    out: list[Event] = []
    if quit is not None and quit in old_set and quit not in new_set:
        out.append(("chat_quit", by(quit)))
    removed = [u for u in old if u not in new_set and u != quit]
    added = [u for u in new if u not in old_set]
    if removed:
        out.append(("chat_remove_member", by(operator, userId=removed, unionId=[union_id(u) for u in removed])))
    if added:
        out.append(("chat_add_member", by(operator, userId=added, unionId=[union_id(u) for u in added])))
    if after.get("owner") != before.get("owner"):
        out.append(
            ("chat_update_owner", {**common, "operatorUnionId": union_id(operator), "owner": after.get("owner")})
        )
    if after.get("name") != before.get("name"):
        out.append(("chat_update_title", by(operator, title=after.get("name"))))
    if after.get("status") == 2 and before.get("status") != 2:
        out.append(("chat_disband", by(operator)))
    return out


def _by_key(entries: Iterable[Mapping[str, Any]], key: str) -> dict[Any, Mapping[str, Any]]:
    return {entry[key]: entry for entry in entries}


def org_events(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Event]:
    """The directory events that turn one org (file format, ``Org.to_data()``) into another."""
    stamp = str(now_ms())
    out: list[Event] = []
    old_depts, new_depts = _by_key(before["departments"], "id"), _by_key(after["departments"], "id")
    created = [d for d in new_depts if d not in old_depts]
    changed = [
        d
        for d in new_depts
        if d in old_depts
        and (new_depts[d]["name"], new_depts[d].get("parent")) != (old_depts[d]["name"], old_depts[d].get("parent"))
    ]
    gone = [d for d in old_depts if d not in new_depts]
    for event_type, ids in (("org_dept_create", created), ("org_dept_modify", changed), ("org_dept_remove", gone)):
        if ids:
            out.append((event_type, {"deptId": ids, "timeStamp": stamp}))

    old_users, new_users = _by_key(before["users"], "userid"), _by_key(after["users"], "userid")
    joined = [u for u in new_users if u not in old_users]
    left = [u for u in old_users if u not in new_users]
    if joined:
        out.append(("user_add_org", {"userId": joined, "timeStamp": stamp}))
    if left:
        out.append(("user_leave_org", {"userId": left, "timeStamp": stamp}))
    for userid, user in new_users.items():
        previous = old_users.get(userid)
        if previous is None:
            continue
        prev, curr = _user_diff(previous, user)
        if prev or curr:
            diff = {"userid": userid, "prev": prev, "curr": curr}
            out.append(("user_modify_org", {"userId": [userid], "timeStamp": stamp, "diffInfo": diff}))
    activated = [
        u
        for u, user in new_users.items()
        if user.get("active", True) and not old_users.get(u, user).get("active", True)
    ]
    if activated:
        out.append(("user_active_org", {"userId": activated}))

    old_roles, new_roles = _by_key(before.get("roles") or [], "id"), _by_key(after.get("roles") or [], "id")
    for event_type, ids in (
        ("label_conf_add", [r for r in new_roles if r not in old_roles]),
        (
            "label_conf_modify",
            [
                r
                for r in new_roles
                if r in old_roles
                and (new_roles[r]["name"], new_roles[r]["group"]) != (old_roles[r]["name"], old_roles[r]["group"])
            ],
        ),
        ("label_conf_del", [r for r in old_roles if r not in new_roles]),
    ):
        if ids:
            out.append((event_type, {"labelIdList": ids}))
    for role_id, role in new_roles.items():
        held_before = list(old_roles[role_id]["holders"]) if role_id in old_roles else []
        held_now = list(role["holders"])
        added = [u for u in held_now if u not in held_before]
        removed = [u for u in held_before if u not in held_now and u in new_users]  # leavers: user_leave_org
        for action, ids in (("add", added), ("remove", removed)):
            if ids:
                out.append(("label_user_change", {"userIdList": ids, "labelIdList": [role_id], "action": action}))
    return out


def _user_diff(previous: Mapping[str, Any], user: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The changed profile fields, as (prev, curr)."""
    prev: dict[str, Any] = {}
    curr: dict[str, Any] = {}
    for key, name in (("name", "name"), ("mobile", "mobile"), ("departments", "deptIdList")):
        was, now = previous.get(key), user.get(key)
        if was != now:
            prev[name], curr[name] = was, now
    return prev, curr
