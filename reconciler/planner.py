"""The planner: a pure function from (desired chats, state, live chats) to a Plan.

No I/O here. Everything is sorted so two runs over the same inputs print the
same plan, byte for byte. A change the API's rules cannot reach (an additive
chat that would end above 1,000 members, an owner swap in a full chat) is an
error for that chat here, with the real reason, never discovered half-way
through an apply.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from .backends.base import ChatBackend
from .errors import DtchatError
from .live import LiveResult
from .model import DesiredChat, LiveChat, MemberSource
from .notify import message_for
from .plan import Action, ChatChange, Plan, SettingChange, desired_digest, live_fingerprint
from .rules import ADDITIVE, MEMBER_CAP
from .state import Binding


@dataclass(frozen=True)
class Resolution:
    """Which chatid each desired key means, and the keys that cannot be resolved."""

    chatids: Mapping[str, str]
    errors: Mapping[str, str]


def resolve(desired: Sequence[DesiredChat], state: Mapping[str, Binding], *, flag: str = "") -> Resolution:
    """Match keys to chatids: a YAML pin wins, the state file fills in, disagreement is an error.

    ``flag`` is the ``--state F`` that the hints' commands need to find this run's state file.
    """
    chatids: dict[str, str] = {}
    errors: dict[str, str] = {}
    for chat in desired:
        bound = state.get(chat.key)
        if bound and bound.pending:
            errors[chat.key] = (
                f"an earlier create of this chat (at {bound.created_at or 'an unknown time'}) may have succeeded; "
                f"if the chat exists run `dtchat import {chat.key} CHATID{flag}`, "
                f"otherwise run `dtchat forget {chat.key}{flag}` to allow creating it"
            )
        elif chat.chatid:
            if bound and bound.chatid != chat.chatid:
                errors[chat.key] = (
                    f"YAML pins chatid {chat.chatid} but the state file records {bound.chatid}; "
                    f"run `dtchat import {chat.key} {chat.chatid}{flag}` to re-point the state, or remove the pin"
                )
                continue
            chatids[chat.key] = chat.chatid
        elif bound and bound.chatid:
            chatids[chat.key] = bound.chatid
    owners: dict[str, list[str]] = {}
    for key, chatid in chatids.items():
        owners.setdefault(chatid, []).append(key)
    desired_keys = {chat.key for chat in desired}
    for key, bound in state.items():  # an orphan still owns its chat: a pin may not take it over
        if key not in desired_keys and bound.chatid in owners:
            owners[bound.chatid].append(key)
    for chatid, keys in owners.items():
        if len(keys) > 1:
            for key in set(keys) & desired_keys:
                others = ", ".join(k for k in sorted(keys) if k != key)
                errors[key] = (
                    f"chatid {chatid} is also bound to {others}; one chat cannot have two keys "
                    f"(`dtchat forget` or `dtchat mv` the other key{flag and ' with' + flag})"
                )
                chatids.pop(key, None)
    return Resolution(chatids=chatids, errors=errors)


def plan_update(chat: DesiredChat, live: LiveChat, *, backend: ChatBackend) -> ChatChange:
    """The UPDATE (or NOOP) that turns ``live`` into ``chat``, or an ERROR when ``backend``'s API cannot get there."""
    desired_members = set(chat.members)
    live_members = set(live.members)
    add = tuple(sorted(desired_members - live_members))
    extra = tuple(sorted(live_members - desired_members))
    remove, kept = ((), extra) if chat.members_policy == ADDITIVE else (extra, ())
    settings = tuple(
        SettingChange(name, live.settings.get(name), value)
        for name, value in chat.settings.items()
        if live.settings.get(name) != value
    )
    name = (live.name, chat.name) if live.name != chat.name else None
    owner = (live.owner, chat.owner) if live.owner != chat.owner else None
    changed = bool(add or remove or settings or name or owner)
    change = ChatChange(
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
        live_settings=live.settings,
    )
    if change.action is Action.UPDATE:
        problem = _unreachable(chat, change, backend)
        if problem:
            return ChatChange(chat.key, Action.ERROR, chatid=live.chatid, error=problem, fingerprint=change.fingerprint)
        return _with_message(change, chat)
    return change


def _unreachable(chat: DesiredChat, change: ChatChange, backend: ChatBackend) -> str | None:
    """Why the API's rules cannot take the chat where the YAML says, or None."""
    final = change.live_count + len(change.add) - len(change.remove)
    if final > MEMBER_CAP:
        return (
            f"cannot apply: the chat would end with {final} members, above DingTalk's {MEMBER_CAP}: "
            f"{len(chat.members)} in the YAML plus {len(change.kept)} not in the YAML kept by "
            f"`members_policy: {chat.members_policy}`; remove people from the YAML or use `members_policy: exact`"
        )
    try:
        backend.calls(change)
    except DtchatError as exc:  # UnreachableError
        return f"cannot apply: {exc}"
    return None


def _with_message(change: ChatChange, chat: DesiredChat) -> ChatChange:
    """The change with its ``--notify`` text rendered from the chat's template."""
    return replace(change, notify=message_for(change, chat.notify, chat.name))


def plan_create(chat: DesiredChat) -> ChatChange:
    """The CREATE for a key no chat is bound to yet."""
    return _with_message(
        ChatChange(
            key=chat.key,
            action=Action.CREATE,
            name=(None, chat.name),
            owner=(None, chat.owner),
            add=chat.members,
            settings=tuple(SettingChange(n, None, v) for n, v in chat.settings.items()),
        ),
        chat,
    )


def make_plan(
    desired: Sequence[DesiredChat],
    state: Mapping[str, Binding],
    live: Mapping[str, LiveResult],
    *,
    targets: Collection[str] | None = None,
    prune: bool = False,
    errors: Mapping[str, str] = {},
    sources: Mapping[str, tuple[MemberSource, ...]] = {},
    flag: str = "",
    resolution: Resolution | None = None,
    backend: ChatBackend,
    unread: Collection[str] = (),
) -> Plan:
    """Plan every desired chat (or only ``targets``), plus ORPHAN (or, with ``prune``, FORGET) for state keys
    that the YAML of this run does not define.

    ``live`` maps chatid -> what the backend read for every chatid that :func:`resolve` produced; a chat
    whose chatid was not read is an error, never silently a create. ``errors`` are chats that failed
    earlier (a directory lookup): they are errors here and never touched. ``sources`` say where each
    chat's directory members came from. ``resolution`` is :func:`resolve`'s answer when the caller already
    has it (it chose the chats to read with it). ``backend`` says whether its API can make each update
    (its ``calls`` are pure). ``unread`` are keys not read because :func:`unchanged` says so (UNREAD).
    Every planned chat carries its desired digest; the plan counts its write calls.
    """
    wanted = [c for c in desired if targets is None or c.key in targets]
    if resolution is None:
        resolution = resolve(desired, state, flag=flag)
    changes: list[ChatChange] = []
    for chat in wanted:
        chatid = resolution.chatids.get(chat.key)
        problem = resolution.errors.get(chat.key) or errors.get(chat.key)
        if problem:
            changes.append(
                ChatChange(
                    chat.key,
                    Action.ERROR,
                    chatid=chatid or chat.chatid,
                    error=problem,
                    sources=sources.get(chat.key, ()),
                )
            )
            continue
        digest = None if chat.needs_directory else desired_digest(chat)
        if chat.key in unread:
            bound = state[chat.key]
            changes.append(
                ChatChange(
                    chat.key,
                    Action.UNREAD,
                    chatid=chatid,
                    digest=digest,
                    verified_at=bound.verified_at,
                    sources=sources.get(chat.key, ()),
                )
            )
            continue
        if chatid is None:
            change = plan_create(chat)
        else:
            result = live.get(chatid)
            if isinstance(result, LiveChat):
                change = plan_update(chat, result, backend=backend)
            else:
                message = result.message if result else "live state was not read"
                change = ChatChange(chat.key, Action.ERROR, chatid=chatid, error=message)
        changes.append(replace(change, sources=sources.get(chat.key, ()), digest=digest))
    desired_keys = {c.key for c in desired}
    for key in sorted(state):
        if key not in desired_keys and (targets is None or key in targets):
            bound = state[key]
            # --prune never drops a pending create: it is the only record that the chat may exist
            action = Action.FORGET if prune and not bound.pending else Action.ORPHAN
            changes.append(ChatChange(key, action, chatid=bound.chatid, pending=bound.pending))
    changes.sort(key=lambda c: c.key)
    writes = sum(len(backend.calls(c)) for c in changes if c.action in (Action.CREATE, Action.UPDATE))
    return Plan(changes=tuple(changes), flag=flag, writes=writes)


def users_to_check(plan: Plan, known: Collection[str] = ()) -> dict[str, tuple[str, ...]]:
    """chat key -> the user ids its change would add or make owner, except ``known`` ones (sorted).

    Only creates and updates add anyone; an id already in the live chat is not added, and ``known`` (ids a
    directory answer of this run named) exist already. These are the ids to confirm before any write.
    """
    known = known if isinstance(known, (set, frozenset)) else frozenset(known)
    out: dict[str, tuple[str, ...]] = {}
    for change in plan.of(Action.CREATE, Action.UPDATE):
        ids = set(change.add)
        if change.action is Action.CREATE and change.new_owner:
            ids.add(change.new_owner)  # a member too; said twice in case a caller built the change by hand
        # an update's new owner is in ``add`` unless they are a live member (DingTalk has them)
        ids.difference_update(known)
        if ids:
            out[change.key] = tuple(sorted(ids))
    return out


def with_errors(plan: Plan, errors: Mapping[str, str], *, backend: ChatBackend) -> Plan:
    """The plan with each chat in ``errors`` turned into an ERROR (its writes taken off the count) (pure)."""
    if not errors:
        return plan
    changes: list[ChatChange] = []
    writes = plan.writes
    for change in plan.changes:
        problem = errors.get(change.key)
        if problem is None or change.action not in (Action.CREATE, Action.UPDATE, Action.NOOP):
            changes.append(change)
            continue
        if change.action is not Action.NOOP:
            writes -= len(backend.calls(change))
        changes.append(
            ChatChange(
                change.key,
                Action.ERROR,
                chatid=change.chatid,
                error=problem,
                fingerprint=change.fingerprint,
                sources=change.sources,
            )
        )
    return replace(plan, changes=tuple(changes), writes=writes)


def unchanged(chat: DesiredChat, binding: Binding | None, chatid: str | None) -> bool:
    """The chat was converged to exactly this resolved desired chat before: ``--refresh changed`` need
    not read it (design §11). Never true for a pending create, an unbound key or an unresolved chat."""
    if binding is None or binding.pending or not binding.digest or not chatid or chat.needs_directory:
        return False
    return binding.chatid == chatid and binding.digest == desired_digest(chat)
