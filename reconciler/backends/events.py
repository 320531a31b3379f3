"""DingTalk's events (Stream mode) in domain terms: which chat, or which part of the directory, changed.

The event types and their ``data`` fields are the reference's ("Events (Stream mode)"); this is the one
place that knows them. ``dtchat watch`` sees only :class:`ChatEvent` and :class:`DirectoryEvent`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Chat events (群会话事件): fired for chats created through the server API.
CHAT_EVENTS = frozenset(
    {
        "chat_add_member",
        "chat_remove_member",
        "chat_quit",
        "chat_update_owner",
        "chat_update_title",
        "chat_disband",
    }
)
#: Directory events (通讯录事件): people and departments; any of them can change what a selector gives.
DIRECTORY_EVENTS = frozenset(
    {
        "user_add_org",
        "user_leave_org",
        "user_modify_org",
        "user_active_org",
        "org_dept_create",
        "org_dept_modify",
        "org_dept_remove",
        "label_user_change",
        "label_conf_add",
        "label_conf_modify",
        "label_conf_del",
    }
)

#: How each chat event reads in an alert.
_HOW = {
    "chat_add_member": "added in DingTalk",
    "chat_remove_member": "removed in DingTalk",
    "chat_quit": "left the chat in DingTalk",
    "chat_update_owner": "owner changed in DingTalk",
    "chat_update_title": "renamed in DingTalk",
    "chat_disband": "dissolved in DingTalk",
}


@dataclass(frozen=True)
class ChatEvent:
    """Something happened to one chat in DingTalk."""

    event_id: str
    kind: str
    #: The chat's id, when the event names it (``chat_update_owner`` does not).
    chatid: str | None
    open_conversation_id: str | None
    #: The people the event is about (added, removed, who quit), if it says.
    users: tuple[str, ...] = ()
    #: Who did it, if the event says.
    operator: str | None = None

    @property
    def how(self) -> str:
        return _HOW.get(self.kind, self.kind)


@dataclass(frozen=True)
class DirectoryEvent:
    """Something changed in the org directory: selectors may resolve to other people now."""

    event_id: str
    kind: str
    users: tuple[str, ...] = ()
    departments: tuple[int, ...] = ()


Event = ChatEvent | DirectoryEvent


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str) and v) if isinstance(value, list) else ()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_event(event_type: str | None, event_id: str | None, data: Any) -> Event | None:
    """The domain event for one pushed event, or None for an event dtchat does not act on.

    ``data`` is the frame's ``data`` (a JSON string) or already a dict; anything malformed is None (an
    event is a hint to look, never trusted as the chat's state).
    """
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if not isinstance(data, Mapping) or not event_type:
        return None
    eid = event_id or ""
    if event_type in CHAT_EVENTS:
        users = _strings(data.get("userId"))
        if event_type == "chat_quit" and not users and _text(data.get("operator")):
            users = (str(data["operator"]),)
        return ChatEvent(
            eid,
            event_type,
            _text(data.get("chatId")),
            _text(data.get("openConversationId")),
            users,
            _text(data.get("operator")),
        )
    if event_type in DIRECTORY_EVENTS:
        users = _strings(data.get("userId")) or _strings(data.get("userIdList"))
        depts = (
            tuple(d for d in data.get("deptId") or () if type(d) is int) if isinstance(data.get("deptId"), list) else ()
        )
        return DirectoryEvent(eid, event_type, users, depts)
    return None
