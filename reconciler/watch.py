"""``dtchat watch``: DingTalk's events turned into drift alerts, or into a re-converged chat, within seconds.

An event is a hint to look, never trusted as the chat's state: a chat event makes watch read that one chat
(apply's rules decide what to do, exactly as ``apply --target KEY`` would); a directory event makes it
re-resolve the selectors (exempt calls) and look at each chat whose resolved members changed.

* **Coalesced per chat.** At most one handling of a chat runs at a time. A handling waits ``SETTLE``
  seconds before it reads, and every event on that chat arriving meanwhile shares it (DingTalk delivers a
  burst one frame at a time); events arriving once it reads share the next one. A burst of 50 events on
  one chat costs at most two reads.
* **Deduplicated by event id**, and **acknowledged only after handling**: :meth:`Watcher.submit` returns a
  future the Stream glue waits on before it acks (redeliveries of an event in flight share its future).
* **Within a budget**: ``--budget N`` is per rolling hour here; a handling it cannot afford is skipped, said
  in one line, and the event acknowledged (the next nightly drift still audits the chat).
* ``reload()`` (SIGHUP) swaps in a new configuration only if it validates; ``close()`` (SIGTERM) lets the
  chat in progress finish (its state written by apply, under the lock) and starts nothing new.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from .backends.events import ChatEvent, DirectoryEvent, parse_event
from .config import Config, ConfigError, load_config
from .drift import ChatDrift, Status, drift_report
from .errors import DtchatError
from .manager import REFRESH_ALL, ApplyOptions, Manager, Outcome
from .plan import Action, desired_digest
from .safety import Thresholds
from .state import StateError, StateFile, StateLocation

log = logging.getLogger("reconciler.watch")

#: Event ids remembered for deduplication.
SEEN_EVENTS = 10_000
#: The key under which directory re-resolutions are coalesced (not a valid chat key).
_DIRECTORY = "<directory>"
#: Seconds a handling waits before it reads, so that the events of a burst share it.
SETTLE = 0.2


@dataclass(frozen=True)
class Alert:
    """What one handling of a chat found (and, with ``--enforce``, did)."""

    key: str
    chatid: str | None
    #: Why it was looked at: the event's words ("added in DingTalk") or "the directory changed".
    cause: str
    drift: ChatDrift | None
    enforced: bool = False
    #: With --enforce: why it was not re-converged (a removal threshold, a failed call).
    problem: str | None = None
    #: Metered calls this handling made.
    metered: int = 0

    @property
    def drifted(self) -> bool:
        return self.drift is not None and self.drift.status in (Status.DRIFTED, Status.ERROR)


def _done(value: bool) -> Future[bool]:
    fut: Future[bool] = Future()
    fut.set_result(value)
    return fut


class _Slot:
    __slots__ = ("running", "settling", "current", "next", "next_work")

    def __init__(self) -> None:
        self.running = False
        #: The running round has not started its work yet: a submission now is covered by it.
        self.settling = False
        self.current: Future[Any] | None = None
        self.next: Future[Any] | None = None
        #: The next round's work: the first submission's after the running round started (its cause).
        self.next_work: Callable[[], Any] | None = None


class Rounds:
    """Per key, one round at a time. A round waits ``settle`` seconds before its work starts, and submissions
    meanwhile share it; submissions once its work has started share the next round."""

    def __init__(self, pool: ThreadPoolExecutor, settle: float = 0.0) -> None:
        self._pool = pool
        self._settle = settle
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    def submit(self, key: str, work: Callable[[], Any]) -> Future[Any]:
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
            if slot.running:
                if slot.settling and slot.current is not None:
                    return slot.current
                if slot.next is None:
                    slot.next, slot.next_work = Future(), work
                return slot.next
            fut: Future[Any] = Future()
            slot.running, slot.settling, slot.current = True, True, fut
        self._pool.submit(self._drive, slot, work, fut)
        return fut

    def _drive(self, slot: _Slot, work: Callable[[], Any], fut: Future[Any]) -> None:
        while True:
            if self._settle > 0:
                time.sleep(self._settle)
            with self._lock:
                slot.settling = False
            try:
                fut.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                fut.set_exception(exc)
            with self._lock:
                if slot.next is None:
                    slot.running, slot.current = False, None
                    return
                fut, slot.next = slot.next, None
                work, slot.next_work = slot.next_work or work, None
                slot.current, slot.settling = fut, True


class HourlyBudget:
    """``--budget N`` for a long-running watch: at most N metered calls in any rolling hour."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._spent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def left(self) -> int:
        with self._lock:
            now = self._clock()
            while self._spent and self._spent[0][0] <= now - 3600:
                self._spent.popleft()
            return self.limit - sum(n for _, n in self._spent)

    def spend(self, calls: int) -> None:
        if calls:
            with self._lock:
                self._spent.append((self._clock(), calls))


class Watcher:
    """The event handling of ``dtchat watch`` over one Manager (backend, directory) and one state file."""

    def __init__(
        self,
        manager: Manager,
        paths: Sequence[str],
        location: StateLocation,
        *,
        emit: Callable[[Alert], None],
        enforce: bool = False,
        thresholds: Thresholds | None = None,
        budget: HourlyBudget | None = None,
        workers: int = 4,
        settle: float = SETTLE,
    ) -> None:
        self.manager = manager
        self.paths = tuple(paths)
        self.location = location
        self.emit = emit
        self.enforce = enforce
        self.thresholds = thresholds or Thresholds()
        self.budget = budget
        self.config: Config = load_config(self.paths)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dtchat-watch")
        self._rounds = Rounds(self._pool, settle)
        self._seen: collections.OrderedDict[str, Future[bool]] = collections.OrderedDict()
        self._lock = threading.Lock()
        #: One enforcement at a time: the state file's lock is per process-wide open file.
        self._apply_lock = threading.Lock()
        self._closed = False
        #: Desired digests of the chats built from the directory, as last resolved.
        self._baseline: dict[str, str] = {}
        self.ignored = 0
        self.handled = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Watcher:
        """Check the credentials, and resolve the directory once so later events can say what changed."""
        self.manager.backend.authenticate()
        self._baseline = self._directory_digests()
        return self

    def reload(self) -> bool:
        """SIGHUP: use the configuration on disk now, if it is valid; else keep the old one (one line)."""
        try:
            config = load_config(self.paths)
        except ConfigError as exc:
            issues = getattr(exc, "issues", ())
            first = str(issues[0]) if issues else str(exc)
            log.warning("reload refused, the configuration is invalid (%s); keeping the previous one", first)
            return False
        self.config = config
        try:
            self._baseline = self._directory_digests()
        except DtchatError as exc:
            log.warning("reloaded; the directory could not be resolved (%s)", exc)
        log.warning("reloaded the configuration: %d chats", len(config.chats))
        return True

    def close(self) -> None:
        """Start nothing new; let the handling in progress finish."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- events ----------------------------------------------------------------------------------

    def submit(self, event_type: str | None, event_id: str | None, data: Any) -> Future[bool]:
        """Handle one pushed event; the future is True once it is handled (ack it), False to have it redelivered."""
        event = parse_event(event_type, event_id, data)
        with self._lock:
            if self._closed:
                return _done(False)
            if event_id and event_id in self._seen:  # a redelivery: handled once (or being handled) ...
                cached = self._seen[event_id]
                if not cached.done() or (cached.exception() is None and cached.result()):
                    log.info("event %s delivered again; handled once", event_id)
                    return cached
                del self._seen[event_id]  # ... unless its handling failed: that is why it came again
        if event is None:
            self.ignored += 1
            log.info("ignored an event of type %s (%d ignored so far)", event_type, self.ignored)
            fut = _done(True)
        elif isinstance(event, ChatEvent):
            fut = self._chat_event(event)
        else:
            fut = self._directory_event(event)
        if event_id:
            with self._lock:
                self._seen[event_id] = fut
                while len(self._seen) > SEEN_EVENTS:
                    self._seen.popitem(last=False)
        return fut

    def _chat_event(self, event: ChatEvent) -> Future[bool]:
        try:
            key = self._key_of(event)
        except StateError as exc:  # cannot tell whether dtchat manages it: not acknowledged, so redelivered
            log.warning("cannot read the state file (%s); the event will be looked at when redelivered", exc)
            return _done(False)
        if key is None:
            self.ignored += 1
            log.info(
                "ignored %s on a chat dtchat does not manage (%s); %d ignored so far",
                event.kind,
                event.chatid or event.open_conversation_id,
                self.ignored,
            )
            return _done(True)
        return self._rounds.submit(key, lambda: self._handle(key, event.how))

    def _directory_event(self, event: DirectoryEvent) -> Future[bool]:
        return self._rounds.submit(_DIRECTORY, self._directory_round)

    def _key_of(self, event: ChatEvent) -> str | None:
        """The managed chat's key; None when dtchat does not manage it; StateError when it cannot tell."""
        bindings = StateFile(self.location.path).bindings
        wanted = {c.key for c in self.config.chats}
        for key, binding in bindings.items():
            if key not in wanted or binding.pending:
                continue
            if event.chatid and binding.chatid == event.chatid:
                return key
            if event.open_conversation_id and binding.open_conversation_id == event.open_conversation_id:
                return key
        return None

    # -- handling --------------------------------------------------------------------------------

    def _directory_digests(self) -> dict[str, str]:
        chats = [c for c in self.config.chats if c.needs_directory]
        if not chats:
            return {}
        result = self.manager._directory(chats)
        return {c.key: desired_digest(c) for c in result.chats if c.key not in result.errors}

    def _directory_round(self) -> bool:
        """Re-resolve the selectors (exempt calls); look at each bound chat whose resolved members changed."""
        before, after = self._baseline, self._directory_digests()
        try:
            bindings = StateFile(self.location.path).bindings
        except StateError as exc:  # the baseline stays: the redelivered event finds the same change again
            log.warning("cannot read the state file (%s); the event will be looked at when redelivered", exc)
            return False
        changed = [
            key
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key) and key in bindings and bindings[key].chatid
        ]
        futures = {
            key: self._rounds.submit(key, partial(self._handle, key, "the directory changed")) for key in changed
        }
        baseline = dict(after)
        for key, future in futures.items():
            try:
                handled = future.result() is True
            except Exception:  # noqa: BLE001 - logged by the Stream glue; here it only means "not handled"
                handled = False
            if not handled:  # keep the old digest, so the redelivered event sees this chat as changed again
                if key in before:
                    baseline[key] = before[key]
                else:
                    baseline.pop(key, None)
        self._baseline = baseline
        if not changed:
            log.info("a directory change that no chat's members depend on")
        return all(baseline.get(key) == after.get(key) for key in changed)

    def _handle(self, key: str, cause: str) -> bool:
        """Read the one chat (and with --enforce converge it); True when done, False to retry later."""
        if key not in {c.key for c in self.config.chats}:  # reloaded away since the event
            return True
        if self.budget is not None and self.budget.left() < 1:
            log.warning("%s: the hourly --budget of %d metered calls is spent; not read", key, self.budget.limit)
            return True
        spent = self.manager.meter().metered
        try:
            alert = self._converge(key, cause) if self.enforce else self._look(key, cause)
        except StateError as exc:  # another run holds the lock: DingTalk redelivers, we look again then
            log.warning("%s: %s; will look again when the event is redelivered", key, exc)
            return False
        except DtchatError as exc:  # (the meter is shared: other chats' calls meanwhile may be counted)
            alert = Alert(key, None, cause, None, problem=str(exc), metered=self.manager.meter().metered - spent)
        metered = alert.metered
        if self.budget is not None:
            self.budget.spend(metered)
        self.handled += 1
        self.emit(alert)
        log.info("%s: handled (%s metered call%s)", key, metered, "" if metered == 1 else "s")
        return True

    def _look(self, key: str, cause: str) -> Alert:
        state = StateFile(self.location.path, flag=self.location.flag)
        # an alert reports drift, as `drift` does: a member missing from the chat is drift, not an unknown id
        plan = self.manager.plan(self.config, state, targets={key}, refresh=REFRESH_ALL, check_users=False)
        chatid = plan.changes[0].chatid if plan.changes else None
        return Alert(key, chatid, cause, _drift_of(plan, key), metered=plan.reads)

    def _converge(self, key: str, cause: str) -> Alert:
        bound = StateFile(self.location.path).get(key)
        if bound is None or not bound.chatid or bound.pending:
            return Alert(key, None, cause, None, problem="not enforced: watch never creates a chat")
        options = ApplyOptions(targets=(key,), refresh=REFRESH_ALL, thresholds=self.thresholds)
        seen: dict[str, Any] = {}

        def on_plan(plan: Any, warnings: tuple[str, ...]) -> None:
            seen["plan"] = plan

        def no_creates(plan: Any) -> bool:  # the state changed under us: never create from an event
            return not any(c.action is Action.CREATE for c in plan.changes)

        # Every metered call of an enforcement is made under the lock: what the meter moved is this chat's.
        metered = 0
        try:
            with self._apply_lock:
                spent = self.manager.meter().metered
                try:
                    outcome = self.manager.apply(
                        self.config, self.location, options, on_plan=on_plan, confirm=no_creates
                    )
                finally:
                    metered = self.manager.meter().metered - spent
        except StateError:
            raise
        except DtchatError as exc:  # a removal threshold, …: alert, never force
            plan = seen.get("plan")
            drift = _drift_of(plan, key) if plan is not None else None
            return Alert(key, bound.chatid, cause, drift, problem=f"not enforced: {exc}", metered=metered)
        plan = outcome.plan
        drift = _drift_of(plan, key)
        change = next((c for c in plan.changes if c.key == key), None)
        if outcome.outcome is Outcome.CANCELLED:
            return Alert(
                key, bound.chatid, cause, drift, problem="not enforced: watch never creates a chat", metered=metered
            )
        result = outcome.result
        problem = None
        if result is not None and not result.ok:
            problem = "; ".join(r.error or "failed" for r in result.failed)
        return Alert(
            key,
            change.chatid if change else None,
            cause,
            drift,
            enforced=outcome.outcome is Outcome.APPLIED and problem is None,
            problem=problem,
            metered=metered,
        )


def _drift_of(plan: Any, key: str) -> ChatDrift | None:
    return next((d for d in drift_report(plan).chats if d.key == key), None)
