"""``apply --notify``: the short message posted in each changed chat saying what dtchat changed.

The backend posts it (through the app's robot); this module only words it.

People notice being added or removed; a line in the chat saying it was the
config (and what else changed) saves a round of "who did this?". The text is a
template (YAML ``defaults.notify`` or a chat's ``notify``) because the chats
are mostly Chinese-speaking and teams word such notices their own way.
"""

from __future__ import annotations

from collections.abc import Sequence

from .plan import Action, ChatChange, show_value

#: Name at most this many people per placeholder, then "等 N 人".
MAX_NAMES = 10

#: The built-in template. Placeholders: {key} {name} {summary} {added} {removed} {added_count} {removed_count}.
DEFAULT_TEMPLATE = "【dtchat】本群已按配置更新：{summary}"
PLACEHOLDERS = ("key", "name", "summary", "added", "removed", "added_count", "removed_count")


def _names(ids: Sequence[str]) -> str:
    shown = "、".join(ids[:MAX_NAMES])
    rest = len(ids) - MAX_NAMES
    return f"{shown} 等 {len(ids)} 人" if rest > 0 else shown


def _summary(change: ChatChange) -> str:
    if change.action is Action.CREATE:
        return f"创建本群，共 {len(change.add)} 名成员"
    parts: list[str] = []
    if change.add:
        parts.append(f"加入 {_names(change.add)}")
    if change.remove:
        parts.append(f"移出 {_names(change.remove)}")
    if change.name:
        parts.append(f"群名改为「{change.name[1]}」")
    if change.owner:
        parts.append(f"群主改为 {change.owner[1]}")
    parts.extend(f"{s.name} → {show_value(s.new)}" for s in change.settings)
    return "；".join(parts) or "无变化"


def message_for(change: ChatChange, template: str | None = None, name: str = "") -> str:
    """The text posted into the chat after ``change`` is applied: ``template`` (or the built-in one) filled in.

    The planner calls this (it knows the chat's template and name) and keeps the result on the change.
    """
    values = {
        "key": change.key,
        "name": name or change.new_name or "",
        "summary": _summary(change),
        "added": _names(change.add),
        "removed": _names(change.remove),
        "added_count": len(change.add),
        "removed_count": len(change.remove),
    }
    return (template or DEFAULT_TEMPLATE).format(**values)
