"""A Plan: a typed list of per-chat changes, what the planner returns and the applier executes."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import DesiredChat, LiveChat, MemberSource


class Action(str, enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    NOOP = "noop"
    #: A key in the state but not in the YAML given to this run: its binding is kept (design §6).
    ORPHAN = "orphan"
    #: ``apply --prune``: drop an orphan's binding; the chat stays in DingTalk.
    FORGET = "forget"
    #: The chat cannot be planned (unreadable, conflicting chatids, …).
    ERROR = "error"
    #: ``--refresh changed``: converged to this very desired chat before (same digest), so not read (design §11).
    UNREAD = "unread"


@dataclass(frozen=True)
class SettingChange:
    name: str
    #: The live value, or None when unknown (create, or not reported by the API).
    old: Any
    new: Any


@dataclass(frozen=True)
class ChatChange:
    """What one chat needs. Member tuples are sorted; ``add`` of a create lists every member."""

    key: str
    action: Action
    chatid: str | None = None
    #: (old, new) when the name changes; (None, name) on create.
    name: tuple[str | None, str] | None = None
    #: (old, new) when the owner changes; (None, owner) on create.
    owner: tuple[str | None, str] | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    settings: tuple[SettingChange, ...] = ()
    #: Members the chat has now (0 for a create).
    live_count: int = 0
    #: additive chats: live members not in the YAML, kept by policy.
    kept: tuple[str, ...] = ()
    error: str | None = None
    #: Digest of the live state the change was computed from (saved plans).
    fingerprint: str | None = None
    #: Where directory-drawn members came from (one entry per selector).
    sources: tuple[MemberSource, ...] = ()
    #: The ``--notify`` message for this change, from the chat's template. Not part of the plan's JSON.
    notify: str | None = field(default=None, compare=False)
    #: ORPHAN/FORGET of a key whose create is still pending (outcome unknown).
    pending: bool = False
    #: The digest of the resolved desired chat (``desired_digest``); recorded in the state once it converges.
    digest: str | None = None
    #: UNREAD: when the chat was last converged to (or found in sync with) ``digest``.
    verified_at: str | None = None
    #: Every setting the live chat reported (an update through the v1.0 API must restate the unchanged ones).
    #: Covered by ``fingerprint``; not part of the plan's JSON.
    live_settings: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def changed(self) -> bool:
        return self.action in (Action.CREATE, Action.UPDATE, Action.FORGET)

    @property
    def new_name(self) -> str | None:
        return self.name[1] if self.name else None

    @property
    def new_owner(self) -> str | None:
        return self.owner[1] if self.owner else None


@dataclass(frozen=True)
class Plan:
    changes: tuple[ChatChange, ...]
    #: The ``--state F`` that follow-up commands in hints need (see ``state.StateLocation``).
    flag: str = field(default="", compare=False)
    #: Chats read to make this plan (metered calls: the same ``apply`` will make before it writes).
    reads: int = field(default=0, compare=False)
    #: The write calls ``apply`` of this plan will make (without ``--notify``), by the backend's packing.
    writes: int = field(default=0, compare=False)

    @property
    def forecast(self) -> int:
        """The metered calls ``apply`` of this plan will make: its reads and its writes (design §11)."""
        return self.reads + self.writes

    def of(self, *actions: Action) -> tuple[ChatChange, ...]:
        return tuple(c for c in self.changes if c.action in actions)

    @property
    def has_changes(self) -> bool:
        return any(c.changed for c in self.changes)

    @property
    def has_errors(self) -> bool:
        return any(c.action is Action.ERROR for c in self.changes)

    def counts(self) -> dict[str, int]:
        out = {a.value: 0 for a in Action}
        for c in self.changes:
            out[c.action.value] += 1
        out["members_added"] = sum(len(c.add) for c in self.changes)
        out["members_removed"] = sum(len(c.remove) for c in self.changes)
        return out

    @property
    def rename_hint(self) -> bool:
        """Creates next to orphans often mean a key was renamed in YAML: ``dtchat mv`` keeps its chat."""
        return bool(self.of(Action.CREATE)) and bool(self.of(Action.ORPHAN))

    def summary(self) -> str:
        n = self.counts()
        line = (
            f"Plan: {n['create']} to create, {n['update']} to update, {n['forget']} to forget; "
            f"+{n['members_added']} / -{n['members_removed']} members."
        )
        if n["orphan"]:
            line += f" {n['orphan']} orphaned key{'s' if n['orphan'] != 1 else ''} kept."
        if n["unread"]:
            line += f" {n['unread']} unchanged since last verified, not read."
        if n["error"]:
            line += f" {n['error']} chat{'s' if n['error'] != 1 else ''} could not be planned."
        return line


def show_value(value: Any) -> str:
    """YAML spelling of a setting value (true/false, owner/everyone, ? when unknown)."""
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def desired_digest(chat: DesiredChat) -> str:
    """A stable digest of the resolved desired chat (after groups and directory selectors): equal digests mean
    nothing the YAML or the directory says about that chat changed (design §11). Which chat it is, is the
    state's binding (re-pointing a key drops its digest)."""
    if chat.needs_directory:
        raise ValueError(f"{chat.key}: resolve the directory selectors first")
    settings = "\x1f".join(f"{k}={v!r}" for k, v in sorted(chat.settings.items()))
    blob = "\x1e".join((chat.name, chat.owner, chat.members_policy, "\x1f".join(chat.members), settings))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def live_fingerprint(live: LiveChat) -> str:
    """A stable digest of everything dtchat compares, so a saved plan can tell if the chat moved.

    Fields are joined with separators that cannot occur in them (0x1e/0x1f), which is
    several times cheaper than canonical JSON on 10,000-chat plans.
    """
    settings = "\x1f".join(f"{k}={v!r}" for k, v in sorted(live.settings.items()))
    blob = "\x1e".join((live.chatid, live.name, live.owner, "\x1f".join(live.members), settings))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
