"""``apply --notify``: one short message in each changed chat saying what dtchat changed.

People notice being added or removed; a line in the chat saying it was the
config (and what else changed) saves a round of "who did this?".
"""
from __future__ import annotations

from typing import Sequence

from .plan import Action, ChatChange, show_value

#: Name at most this many people per line, then "and N more".
MAX_NAMES = 10


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:MAX_NAMES])
    rest = len(ids) - MAX_NAMES
    return f"{shown} and {rest} more" if rest > 0 else shown


def message_for(change: ChatChange) -> str:
    """The text posted into the chat after ``change`` was applied."""
    if change.action is Action.CREATE:
        return f"[dtchat] This chat was created from the chats-as-code configuration with {len(change.add)} members."
    parts: list[str] = []
    if change.add:
        parts.append(f"added {_names(change.add)}")
    if change.remove:
        parts.append(f"removed {_names(change.remove)}")
    if change.name:
        parts.append(f"renamed to {change.name[1]}")
    if change.owner:
        parts.append(f"owner is now {change.owner[1]}")
    parts.extend(f"{s.name} → {show_value(s.new)}" for s in change.settings)
    return "[dtchat] Updated from the chats-as-code configuration: " + "; ".join(parts) + "."
