"""Drift: where live chats differ from the YAML, as an audit report (read-only).

Drift is the plan seen from the other side: the same single read and the same
pure diff, reported as "expected vs actual" rather than "what apply would do".
``additive`` chats never report extra members; undeclared settings are never
compared.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .plan import Action, ChatChange, Plan
from .quota import Rotation


class Status(str, enum.Enum):
    IN_SYNC = "in_sync"
    DRIFTED = "drifted"
    #: In the YAML, but no chat exists for it yet (never applied).
    MISSING = "missing"
    #: Could not be read or resolved.
    ERROR = "error"
    #: ``--rotate``: outside today's slice and unchanged since it was last verified, so not read today.
    NOT_READ = "not_read"


@dataclass(frozen=True)
class SettingDrift:
    name: str
    expected: Any
    actual: Any


@dataclass(frozen=True)
class ChatDrift:
    key: str
    status: Status
    chatid: str | None = None
    #: Live members not in the YAML (exact chats only).
    unexpected: tuple[str, ...] = ()
    #: YAML members not in the live chat.
    missing: tuple[str, ...] = ()
    settings: tuple[SettingDrift, ...] = ()
    #: (expected, actual) when different.
    name: tuple[str, str] | None = None
    owner: tuple[str, str] | None = None
    error: str | None = None
    #: NOT_READ: when it was last verified.
    verified_at: str | None = None


@dataclass(frozen=True)
class DriftReport:
    chats: tuple[ChatDrift, ...]
    #: ``--rotate``: today's slice; None when every chat was read.
    rotation: Rotation | None = None
    #: Metered reads this audit made.
    reads: int = 0

    def of(self, status: Status) -> tuple[ChatDrift, ...]:
        return tuple(c for c in self.chats if c.status is status)

    @property
    def has_drift(self) -> bool:
        return any(c.status in (Status.DRIFTED, Status.MISSING) for c in self.chats)

    @property
    def has_errors(self) -> bool:
        return any(c.status is Status.ERROR for c in self.chats)

    def counts(self) -> dict[str, int]:
        return {s.value: len(self.of(s)) for s in Status}

    def summary(self) -> str:
        n = self.counts()
        line = (
            f"Drift: {n['drifted']} drifted, {n['missing']} missing, {n['error']} unreadable, {n['in_sync']} in sync."
        )
        if self.rotation is not None:
            line += (
                f" Rotation {self.rotation.describe()}: {self.reads} read, {n['not_read']} not read today "
                "(unchanged since verified, in another day's slice)."
            )
        return line


def _chat_drift(c: ChatChange) -> ChatDrift | None:
    if c.action is Action.NOOP:
        return ChatDrift(c.key, Status.IN_SYNC, c.chatid)
    if c.action is Action.UNREAD:
        return ChatDrift(c.key, Status.NOT_READ, c.chatid, verified_at=c.verified_at)
    if c.action is Action.ERROR:
        return ChatDrift(c.key, Status.ERROR, c.chatid, error=c.error)
    if c.action is Action.CREATE:
        return ChatDrift(c.key, Status.MISSING)
    if c.action is Action.UPDATE:
        return ChatDrift(
            c.key,
            Status.DRIFTED,
            c.chatid,
            unexpected=c.remove,
            missing=c.add,
            settings=tuple(SettingDrift(s.name, s.new, s.old) for s in c.settings),
            name=(c.name[1], c.name[0] or "") if c.name else None,
            owner=(c.owner[1], c.owner[0] or "") if c.owner else None,
        )
    return None  # ORPHAN, FORGET: not in the YAML, so nothing to audit


def drift_report(plan: Plan, rotation: Rotation | None = None) -> DriftReport:
    """The audit view of a plan; ordering follows the plan (sorted by key)."""
    chats = tuple(d for d in map(_chat_drift, plan.changes) if d is not None)
    return DriftReport(chats, rotation, plan.reads)
