"""The applier: executes a Plan's calls, up to ``parallelism`` chats at once, recording every new chatid at once.

Each chat's calls go strictly in order (the owner rules depend on it); chats
are independent, so several converge side by side through the one client
(one token, one rate limiter) and the one state file (its writes are
serialized). One chat's failure is reported and the others go on; a failure
no other chat would escape (quota, credentials, unreachable API, a long IP
ban) stops new chats from starting. Results come back in plan order, so the
summary, the end state and the exit code do not depend on the parallelism.

Creates are write-ahead (design §6): the key is recorded as pending before the
create is sent, replaced by the chatid the moment it answers, and cleared on a
definite refusal. A crash, a kill or an unknown outcome leaves it pending, so
no later run creates the chat a second time.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .batching import CREATE, calls_for
from .dingtalk.errors import AmbiguousCreateError, DingTalkError, is_fatal
from .errors import DtchatError
from .notify import notify_call
from .plan import Action, ChatChange, Plan
from .state import StateError, StateFile

if TYPE_CHECKING:  # the client pulls in requests; the applier only needs its interface
    from .dingtalk import DingTalkClient

OnCall = Callable[[str, str], None]
OnResult = Callable[["ChatResult"], None]


@dataclass(frozen=True)
class ChatResult:
    key: str
    action: Action
    ok: bool
    calls: int = 0
    chatid: str | None = None
    error: str | None = None
    #: A problem that did not fail the chat (e.g. the --notify message could not be sent).
    warning: str | None = None
    #: The failure would hit every other chat too (quota used up, credentials, API unreachable).
    fatal: bool = False
    #: The chat was not started, or stopped between two calls, because the run was interrupted.
    interrupted: bool = False

    @property
    def done(self) -> bool:
        """Something was changed (a call made, or a binding dropped)."""
        return self.ok and (self.calls > 0 or self.action is Action.FORGET)


@dataclass(frozen=True)
class ApplyResult:
    #: One per plan entry, in plan order.
    results: tuple[ChatResult, ...]
    #: Ctrl-C stopped the run: what is in ``results`` is what was done.
    interrupted: bool = False

    @classmethod
    def unchanged(cls, plan: Plan) -> ApplyResult:
        """The result of a plan with nothing to apply (its errors still fail it)."""
        return cls(
            tuple(
                ChatResult(c.key, c.action, ok=c.action is not Action.ERROR, chatid=c.chatid, error=c.error)
                for c in plan.changes
            )
        )

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.ok for r in self.results)

    @property
    def failed(self) -> tuple[ChatResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.results)

    def summary(self) -> str:
        done = dict.fromkeys((Action.CREATE, Action.UPDATE, Action.FORGET), 0)
        for r in self.results:
            if r.ok and r.action in done:
                done[r.action] += 1
        return (
            f"Apply: {done[Action.CREATE]} created, {done[Action.UPDATE]} updated, "
            f"{done[Action.FORGET]} forgotten, {len(self.failed)} failed "
            f"({self.calls} API call{'s' if self.calls != 1 else ''})."
        )


class _Stop:
    """Why new work must not start: a fatal error, or Ctrl-C. Shared by every worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.interrupted = False

    def fatal(self, reason: str) -> None:
        with self._lock:
            self.reason = self.reason or reason

    def interrupt(self) -> None:
        with self._lock:
            self.interrupted = True
            self.reason = self.reason or "interrupted (Ctrl-C)"


def _pending_hint(key: str, flag: str) -> str:
    return (
        f"The chat may now exist in DingTalk; dtchat will not create it again. If it exists, run "
        f"`dtchat import {key} CHATID{flag}`; if not, run `dtchat forget {key}{flag}` and apply again"
    )


def apply_change(
    change: ChatChange,
    client: DingTalkClient,
    state: StateFile,
    *,
    on_call: OnCall | None = None,
    notify: bool = False,
    stop: _Stop | None = None,
) -> ChatResult:
    """Converge one chat. Never raises for API or state errors: they become a failed ChatResult."""
    key = change.key
    chatid = change.chatid
    done = 0

    def failed(error: str, *, sent: int = 0, fatal: bool = False, interrupted: bool = False) -> ChatResult:
        """The chat's result after ``done`` calls and ``sent`` more that failed."""
        return ChatResult(
            key,
            change.action,
            ok=False,
            calls=done + sent,
            chatid=chatid,
            error=error,
            fatal=fatal,
            interrupted=interrupted,
        )

    if change.action is Action.ERROR:
        return failed(change.error or "cannot be planned")
    if change.action in (Action.NOOP, Action.ORPHAN):
        return ChatResult(key, change.action, ok=True, chatid=chatid)
    try:
        if change.action is Action.FORGET:
            state.forget(key)
            return ChatResult(key, change.action, ok=True, chatid=chatid)
        calls = calls_for(change)
    except DtchatError as exc:  # StateError, BatchingError
        return failed(str(exc), fatal=isinstance(exc, StateError))
    for call in calls:
        if stop is not None and stop.interrupted:
            return failed(f"interrupted (Ctrl-C) after {done} of {len(calls)} calls", interrupted=True)
        call = call.bound(chatid) if chatid else call
        if on_call:
            on_call(key, call.describe(key))
        creating = call.endpoint == CREATE
        try:
            if creating:
                state.begin_create(key)  # write-ahead: durable before the create leaves
            payload = client.write(call.endpoint, call.body)
        except StateError as exc:
            return failed(f"not created, nothing was sent: {exc}", fatal=True)
        except AmbiguousCreateError as exc:  # also a success answer without a chatid
            return failed(f"{exc}. {_pending_hint(key, state.flag)}", sent=1)
        except DingTalkError as exc:
            if creating:
                try:
                    state.abort_create(key)  # a definite refusal: no chat was made
                except StateError as state_exc:
                    return failed(f"{exc}; and {state_exc}", sent=1, fatal=True)
            return failed(str(exc), sent=1, fatal=is_fatal(exc))
        done += 1
        if creating:
            chatid = payload["chatid"]
            try:
                state.record(key, chatid, created=True)  # before any further call
            except StateError as exc:
                return failed(
                    f"chat created as {chatid}, but {exc}; once the file is writable, run "
                    f"`dtchat import {key} {chatid}{state.flag}` so it is not created again",
                    fatal=True,
                )
    warning = None
    if notify and calls and chatid:
        try:
            done += 1
            client.write(*notify_call(change, chatid))
        except DingTalkError as exc:
            warning = f"changes applied, but the --notify message was not sent: {exc}"
    return ChatResult(key, change.action, ok=True, calls=done, chatid=chatid, warning=warning)


@contextlib.contextmanager
def _sigint_stops(stop: _Stop) -> Iterator[None]:
    """While chats are applied, Ctrl-C only asks the run to stop (no KeyboardInterrupt mid-bookkeeping)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.interrupt())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _chain_length(change: ChatChange) -> int:
    try:
        return len(calls_for(change))
    except DtchatError:
        return 0


def apply_plan(
    plan: Plan,
    client: DingTalkClient,
    state: StateFile,
    *,
    parallelism: int = 1,
    on_call: OnCall | None = None,
    on_result: OnResult | None = None,
    notify: bool = False,
) -> ApplyResult:
    """Apply every change, up to ``parallelism`` chats at once; the caller holds the state lock.

    ``on_result`` is called in this thread as each chat finishes. Ctrl-C (SIGINT, caught here while the
    chats run) lets the calls in flight finish, starts nothing new and returns what was done with
    ``interrupted`` set. Any other exception also stops new chats from starting before it propagates.
    """
    stop = _Stop()
    results: dict[str, ChatResult] = {}

    def run(change: ChatChange) -> ChatResult:
        if stop.reason is not None and change.action not in (Action.NOOP, Action.ORPHAN, Action.ERROR):
            return ChatResult(
                change.key,
                change.action,
                ok=False,
                chatid=change.chatid,
                interrupted=stop.interrupted,
                error=f"not attempted: {stop.reason}",
            )
        result = apply_change(change, client, state, on_call=on_call, notify=notify, stop=stop)
        if result.fatal:
            stop.fatal(result.error or "a fatal error")
        return result

    def collect(future: Future[ChatResult]) -> None:
        result = future.result()
        results[result.key] = result
        if on_result:
            on_result(result)

    with _sigint_stops(stop), ThreadPoolExecutor(max(1, parallelism), thread_name_prefix="dtchat-apply") as pool:
        # Longest chains first (a stable sort: ties keep plan order): a 440-member create is 11 calls that must
        # run one after another, and started last it would trail alone while the other workers idle.
        # Results are still reported in plan order.
        longest_first = sorted(plan.changes, key=_chain_length, reverse=True)
        pending = {pool.submit(run, change) for change in longest_first}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                for future in finished:
                    collect(future)
        except BaseException:  # a bug, or Ctrl-C outside the main thread's handler: start nothing more
            stop.interrupt()
            for future in pending:
                future.cancel()
            raise
    ordered = tuple(results[c.key] for c in plan.changes)
    return ApplyResult(ordered, interrupted=stop.interrupted)
