"""The planner: a pure function from (desired chats, state, live chats) to a Plan.

No I/O here. Everything is sorted so two runs over the same inputs print the
same plan, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Optional, Sequence, Union

from .model import DesiredChat, LiveChat, ReadFailure
from .plan import Action, ChatChange, Plan, SettingChange, live_fingerprint
from .state import Binding


LiveResult = Union[LiveChat, ReadFailure]


@dataclass(frozen=True)
class Resolution:
    """Which chatid each desired key means, and the keys that cannot be resolved."""

    chatids: Mapping[str, str]
    errors: Mapping[str, str]


def resolve(desired: Sequence[DesiredChat], state: Mapping[str, Binding]) -> Resolution:
    """Match keys to chatids: a YAML pin wins, the state file fills in, disagreement is an error."""
    chatids: dict[str, str] = {}
    errors: dict[str, str] = {}
    for chat in desired:
        bound = state.get(chat.key)
        if chat.chatid:
            if bound and bound.chatid and bound.chatid != chat.chatid:
                errors[chat.key] = (
                    f"YAML pins chatid {chat.chatid} but the state file records {bound.chatid}; "
                    f"run `dtchat import {chat.key} {chat.chatid}` to re-point the state, or remove the pin"
                )
                continue
            chatids[chat.key] = chat.chatid
        elif bound and bound.pending:
            errors[chat.key] = (
                f"an earlier create of this chat (at {bound.created_at or 'an unknown time'}) may have succeeded; "
                f"if the chat exists run `dtchat import {chat.key} CHATID`, "
                f"otherwise run `dtchat forget {chat.key}` to allow creating it"
            )
        elif bound and bound.chatid:
            chatids[chat.key] = bound.chatid
    owners: dict[str, list[str]] = {}
    for key, chatid in chatids.items():
        owners.setdefault(chatid, []).append(key)
    for chatid, keys in owners.items():
        if len(keys) > 1:
            for key in keys:
                others = ", ".join(k for k in sorted(keys) if k != key)
                errors[key] = f"chatid {chatid} is also bound to {others}; one chat cannot have two keys"
                chatids.pop(key, None)
    return Resolution(chatids=chatids, errors=errors)


def diff_chat(chat: DesiredChat, live: LiveChat) -> ChatChange:
    """The UPDATE (or NOOP) that turns ``live`` into ``chat``. Only declared settings are compared."""
    desired_members = set(chat.members)
    live_members = set(live.members)
    add = tuple(sorted(desired_members - live_members))
    extra = tuple(sorted(live_members - desired_members))
    remove, kept = (extra, ()) if chat.members_policy == "exact" else ((), extra)
    settings = tuple(
        SettingChange(name, live.settings.get(name), value)
        for name, value in chat.settings.items()
        if live.settings.get(name) != value
    )
    name = (live.name, chat.name) if live.name != chat.name else None
    owner = (live.owner, chat.owner) if live.owner != chat.owner else None
    changed = bool(add or remove or settings or name or owner)
    return ChatChange(
        key=chat.key,
        action=Action.UPDATE if changed else Action.NOOP,
        chatid=live.chatid,
        name=name,
        owner=owner,
        add=add,
        remove=remove,
        settings=settings,
        live_count=len(live_members),
        kept=kept,
        fingerprint=live_fingerprint(live),
    )


def create_chat(chat: DesiredChat) -> ChatChange:
    return ChatChange(
        key=chat.key,
        action=Action.CREATE,
        name=(None, chat.name),
        owner=(None, chat.owner),
        add=chat.members,
        settings=tuple(SettingChange(n, None, v) for n, v in chat.settings.items()),
    )


def make_plan(
    desired: Sequence[DesiredChat],
    state: Mapping[str, Binding],
    live: Mapping[str, LiveResult],
    *,
    targets: Optional[Collection[str]] = None,
) -> Plan:
    """Plan every desired chat (or only ``targets``), plus FORGET for state keys gone from the YAML.

    ``live`` maps chatid -> what ``/chat/get`` said for every chatid that
    :func:`resolve` produced. A chat whose chatid was not read is an error,
    never silently a create.
    """
    wanted = [c for c in desired if targets is None or c.key in targets]
    resolution = resolve(desired, state)
    changes: list[ChatChange] = []
    for chat in wanted:
        if chat.key in resolution.errors:
            changes.append(ChatChange(chat.key, Action.ERROR, chatid=chat.chatid, error=resolution.errors[chat.key]))
            continue
        chatid = resolution.chatids.get(chat.key)
        if chatid is None:
            changes.append(create_chat(chat))
            continue
        result = live.get(chatid)
        if isinstance(result, LiveChat):
            changes.append(diff_chat(chat, result))
        else:
            message = result.message if result else "live state was not read"
            changes.append(ChatChange(chat.key, Action.ERROR, chatid=chatid, error=message))
    desired_keys = {c.key for c in desired}
    for key in sorted(state):
        if key not in desired_keys and (targets is None or key in targets):
            changes.append(ChatChange(key, Action.FORGET, chatid=state[key].chatid))
    changes.sort(key=lambda c: c.key)
    return Plan(changes=tuple(changes))
