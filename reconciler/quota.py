"""What the organisation's monthly call quota asks of a run (design §11): a budget, and the drift rotation.

Every metered call counts against a quota that all of a company's apps share (5,000 a month on standard
plans), so a run can be capped (``--budget N``): it stops before the first call it cannot afford rather
than half-way, and says what it left undone. ``drift --rotate DAYS`` audits one stable slice of the chats a
day, so every chat is read at least once per DAYS days for a DAYSth of the cost.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import DtchatError, UsageError

ENV_BUDGET = "DTCHAT_BUDGET"
#: The UTC day ``--rotate`` takes its slice for (``YYYY-MM-DD``): to re-run a missed day, or to test.
ENV_TODAY = "DTCHAT_TODAY"


class BudgetError(DtchatError):
    """The run would spend more metered calls than ``--budget`` allows; nothing (more) was done."""


def _undone(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:10])
    return shown + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")


@dataclass(frozen=True)
class Budget:
    """At most ``limit`` metered calls in this run."""

    limit: int

    def check_reads(self, needed: int, command: str, keys: Sequence[str]) -> None:
        """Before the first read: refuse a plan or drift that would need more reads than the budget."""
        if needed > self.limit:
            raise BudgetError(
                f"--budget {self.limit}: this {command} needs {needed} metered reads; nothing was read "
                f"(left undone: {_undone(keys)}); raise the budget, narrow it with --target, or use "
                + ("--refresh changed" if command != "drift" else "--rotate DAYS")
            )

    def check_apply(self, spent: int, writes: int, keys: Sequence[str]) -> None:
        """After planning, before the first write: refuse an apply whose forecast is above the budget."""
        if spent + writes > self.limit:
            raise BudgetError(
                f"--budget {self.limit}: this apply needs {spent + writes} metered calls ({spent} reads made, "
                f"{writes} writes to come); nothing was changed (left undone: {_undone(keys)})"
            )

    def guard(self, spent: Callable[[], int]) -> BudgetGuard:
        """The guard for an apply's writes, from the metered calls ``spent`` so far (its reads)."""
        return BudgetGuard(self.limit, spent())


class BudgetGuard:
    """During apply: a chat starts only if its calls fit in what is left, counting the chats still in flight.

    It keeps its own account (what was spent when the writes began, plus every chat's reservation, trued up
    to the calls it made when it finishes) rather than adding the live meter to the reservations: the meter
    already holds the calls of the chats in flight, so that would count them twice and stop runs that fit.
    """

    def __init__(self, limit: int, spent: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._committed = spent

    def reserve(self, calls: int) -> bool:
        """Reserve ``calls`` for a chat about to start; False (nothing reserved) when they could cross the budget."""
        with self._lock:
            if self._committed + calls > self.limit:
                return False
            self._committed += calls
            return True

    def release(self, reserved: int, used: int) -> None:
        """The chat finished after ``used`` of its ``reserved`` calls: give back what it did not use."""
        with self._lock:
            self._committed -= reserved - min(used, reserved)


def budget_from(given: int | None, env: Mapping[str, str] | None = None) -> Budget | None:
    """``--budget N``, else ``$DTCHAT_BUDGET``, else no budget."""
    if given is not None:
        return Budget(given)
    raw = ((os.environ if env is None else env).get(ENV_BUDGET) or "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise UsageError(f"{ENV_BUDGET}={raw!r}: must be a whole number of metered calls")
    return Budget(int(raw))


def _stable(key: str) -> int:
    """The same number for a key on every machine and every run (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


@dataclass(frozen=True)
class Rotation:
    """``drift --rotate DAYS``: the keys of today's slice (a stable hash of the key, modulo DAYS)."""

    days: int
    #: Days since 0001-01-01 (UTC), ``date.toordinal()``.
    day: int

    @property
    def slice(self) -> int:
        return self.day % self.days

    @property
    def date(self) -> str:
        return _dt.date.fromordinal(self.day).isoformat()

    def includes(self, key: str) -> bool:
        return _stable(key) % self.days == self.slice

    def describe(self) -> str:
        return f"slice {self.slice + 1} of {self.days} ({self.date}, UTC)"


def today(env: Mapping[str, str] | None = None) -> int:
    """Today's UTC day number, or the ``$DTCHAT_TODAY`` one."""
    raw = ((os.environ if env is None else env).get(ENV_TODAY) or "").strip()
    if raw:
        try:
            return _dt.date.fromisoformat(raw).toordinal()
        except ValueError:
            raise UsageError(f"{ENV_TODAY}={raw!r}: must be a date, YYYY-MM-DD") from None
    return _dt.datetime.now(_dt.timezone.utc).date().toordinal()
