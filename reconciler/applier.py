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

from .backends import (
    CHATID,
    OPEN_CONVERSATION_ID,
    AmbiguousCreateError,
    AmbiguousOutcomeError,
    ChatBackend,
    DingTalkError,
    WireCall,
    is_fatal,
    placeholder,
)
from .errors import DtchatError
from .notify import message_for
from .plan import Action, ChatChange, Plan
from .quota import BudgetGuard
from .state import Binding, StateError, StateFile

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
    #: Not started at all: a fatal error (or Ctrl-C) stopped the run first; nothing was sent for it.
    stopped: bool = False

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

    @property
    def not_started(self) -> tuple[str, ...]:
        """Keys the run stopped before (a fatal error or Ctrl-C): nothing was sent for them."""
        return tuple(r.key for r in self.results if r.stopped)

    def summary(self) -> str:
        done = dict.fromkeys((Action.CREATE, Action.UPDATE, Action.FORGET), 0)
        for r in self.results:
            if r.ok and r.action in done:
                done[r.action] += 1
        return (
            f"Apply: {done[Action.CREATE]} created, {done[Action.UPDATE]} updated, "
            f"{done[Action.FORGET]} forgotten, {len(self.failed)} failed "
            f"({self.calls} write call{'s' if self.calls != 1 else ''})."
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


def _known(change: ChatChange, binding: Binding | None) -> dict[str, str | None]:
    """What the chat's calls may need: its chatid, and the open conversation id the state has for it."""
    ocid = binding.open_conversation_id if binding is not None and binding.chatid == change.chatid else None
    return {CHATID: change.chatid, OPEN_CONVERSATION_ID: ocid}


def apply_change(
    change: ChatChange,
    backend: ChatBackend,
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
        _unverify(state, key)  # read it again next time, whatever its digest says
        return failed(change.error or "cannot be planned")
    if change.action in (Action.NOOP, Action.ORPHAN, Action.UNREAD):
        return ChatResult(key, change.action, ok=True, chatid=chatid)
    try:
        if change.action is Action.FORGET:
            state.forget(key)
            return ChatResult(key, change.action, ok=True, chatid=chatid)
        calls = backend.calls(change)
        known = _known(change, state.get(key))
        if calls:
            state.check_held()  # a run that lost its (remote) lock sends nothing more
    except DtchatError as exc:  # StateError, UnreachableError
        return failed(str(exc), fatal=isinstance(exc, StateError))
    for call in calls:
        if stop is not None and stop.interrupted:
            if done:
                _unverify(state, key)  # stopped part-way: the next run must read it again
            return failed(f"interrupted (Ctrl-C) after {done} of {len(calls)} calls", interrupted=True)
        call = call.bound(known)
        if on_call:
            on_call(key, call.describe(key))
        try:
            if call.creates:
                state.begin_create(key)  # write-ahead: durable before the create leaves
            produced = backend.send(call)
        except StateError as exc:
            return failed(f"not created, nothing was sent: {exc}", fatal=True)
        except AmbiguousCreateError as exc:  # also a success answer without a chatid
            return failed(f"{exc}. {_pending_hint(key, state.flag)}", sent=1)
        except DingTalkError as exc:
            if call.creates:
                try:
                    state.abort_create(key)  # a definite refusal: no chat was made
                except StateError as state_exc:
                    return failed(f"{exc}; and {state_exc}", sent=1, fatal=True)
            else:
                _unverify(state, key)  # stopped part-way: the next run must read it again
            return failed(str(exc), sent=1, fatal=is_fatal(exc))
        done += 1
        if call.creates:
            chatid = produced[CHATID]
            known.update(produced)
            try:  # before any further call
                state.record(key, chatid, created=True, open_conversation_id=produced.get(OPEN_CONVERSATION_ID))
            except StateError as exc:
                return failed(
                    f"chat created as {chatid}, but {exc}; once the file is writable, run "
                    f"`dtchat import {key} {chatid}{state.flag}` so it is not created again",
                    fatal=True,
                )
    if change.digest and calls:
        try:
            state.verified({key: change.digest})  # converged: later runs need not read it (design §11)
        except StateError as exc:  # the changes are made, but the state is another run's now: stop the run
            return failed(f"changes applied, but {exc}", fatal=True)
    warning, fatal = None, False
    if notify and calls and chatid:
        sent, warning, fatal = _notify(change, backend, state, known, on_call)
        done += sent
    return ChatResult(key, change.action, ok=True, calls=done, chatid=chatid, warning=warning, fatal=fatal)


def _unverify(state: StateFile, key: str) -> None:
    try:
        state.unverified(key)
    except StateError:  # the chat's own error is what the user sees; an unwritable file shows on the next write
        pass


def _notify(
    change: ChatChange,
    backend: ChatBackend,
    state: StateFile,
    known: dict[str, str | None],
    on_call: OnCall | None,
) -> tuple[int, str | None, bool]:
    """Post the change's message through the app's robot: (calls made, warning or None, stop the run).

    A failed message never fails the chat (its changes are applied); one that no other chat would escape
    (the quota is used up) stops the run all the same.
    """
    chatid = known[CHATID]
    assert chatid is not None
    sent = 0
    try:
        text = change.notify or message_for(change)
        for call in backend.notify_calls(text, chatid=chatid, open_conversation_id=known[OPEN_CONVERSATION_ID]):
            call = call.bound(known)
            if on_call:
                on_call(change.key, call.describe(change.key))
            sent += 1
            produced = backend.send(call)
            ocid = produced.get(OPEN_CONVERSATION_ID)
            if ocid and not known[OPEN_CONVERSATION_ID]:
                known[OPEN_CONVERSATION_ID] = ocid
                state.remember_open_conversation_id(change.key, chatid, ocid)  # fetched once, then kept
    except (DingTalkError, StateError) as exc:
        # Only what no other chat would escape stops the run (the quota, a ban, the credentials); a message
        # whose outcome is unknown, or a robot missing from one chat, is that chat's warning and nothing more.
        fatal = isinstance(exc, DingTalkError) and not isinstance(exc, AmbiguousOutcomeError) and is_fatal(exc)
        return sent, f"changes applied, but the --notify message was not sent: {exc}", fatal
    return sent, None, False


def planned_calls(
    plan: Plan, backend: ChatBackend, bindings: dict[str, Binding], *, notify: bool = False
) -> list[tuple[str, WireCall | None]]:
    """(key, call) for every call ``apply`` of ``plan`` would send, in each chat's order, as ``--dry-run``
    shows them; a forget is (key, None) (no call). Pure: the backend's ``calls`` and ``notify_calls``."""
    out: list[tuple[str, WireCall | None]] = []
    for change in plan.changes:
        if change.action is Action.FORGET:
            out.append((change.key, None))
            continue
        try:
            calls = backend.calls(change)
        except DtchatError:  # the planner made it an error already
            continue
        known = _known(change, bindings.get(change.key))
        out.extend((change.key, call.bound(known)) for call in calls)
        if notify and calls:
            chatid = change.chatid or placeholder(CHATID, change.key)
            text = change.notify or message_for(change)
            # a new chat's create answers its open conversation id: no lookup needed
            ocid = known[OPEN_CONVERSATION_ID] or (
                None if change.chatid else placeholder(OPEN_CONVERSATION_ID, change.key)
            )
            notes = backend.notify_calls(text, chatid=chatid, open_conversation_id=ocid)
            out.extend((change.key, call) for call in notes)
    return out


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


def _cost(change: ChatChange, backend: ChatBackend, notify: bool, binding: Binding | None) -> int:
    """The metered calls converging ``change`` makes: its writes, and with ``notify`` the robot message (and
    the one-off lookup of the chat's open conversation id when neither the state nor a create has it), exactly
    as :func:`planned_calls` lists them."""
    writes = _chain_length(change, backend)
    if not (notify and writes):
        return writes
    known = change.action is Action.CREATE or _known(change, binding)[OPEN_CONVERSATION_ID] is not None
    return writes + (1 if known else 2)


def _chain_length(change: ChatChange, backend: ChatBackend) -> int:
    try:
        return len(backend.calls(change))
    except DtchatError:
        return 0


def apply_plan(
    plan: Plan,
    backend: ChatBackend,
    state: StateFile,
    *,
    parallelism: int = 1,
    on_call: OnCall | None = None,
    on_result: OnResult | None = None,
    notify: bool = False,
    budget: BudgetGuard | None = None,
) -> ApplyResult:
    """Apply every change, up to ``parallelism`` chats at once; the caller holds the state lock.

    With a ``budget``, a chat starts only if all its calls (writes, and the robot message with ``notify``)
    fit in what is left of it; the first that does not stops the run like a fatal error.

    ``on_result`` is called in this thread as each chat finishes. Ctrl-C (SIGINT, caught here while the
    chats run) lets the calls in flight finish, starts nothing new and returns what was done with
    ``interrupted`` set. Any other exception also stops new chats from starting before it propagates.
    """
    stop = _Stop()
    results: dict[str, ChatResult] = {}

    def run(change: ChatChange) -> ChatResult:
        if stop.reason is not None and change.action not in (Action.NOOP, Action.ORPHAN, Action.UNREAD, Action.ERROR):
            return ChatResult(
                change.key,
                change.action,
                ok=False,
                chatid=change.chatid,
                interrupted=stop.interrupted,
                stopped=True,
                error=f"not attempted: {stop.reason}",
            )
        cost = _cost(change, backend, notify, state.get(change.key)) if budget is not None else 0
        if budget is not None and cost and not budget.reserve(cost):
            stop.fatal(f"the --budget of {budget.limit} metered calls would be crossed")
            return ChatResult(
                change.key,
                change.action,
                ok=False,
                chatid=change.chatid,
                stopped=True,
                error=f"not attempted: {stop.reason}",
            )
        used = cost  # if apply_change raises, assume every reserved call was made
        try:
            result = apply_change(change, backend, state, on_call=on_call, notify=notify, stop=stop)
            used = result.calls
        finally:
            if budget is not None and cost:
                budget.release(cost, used)
        if result.fatal:
            stop.fatal(result.error or result.warning or "a fatal error")
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
        longest_first = sorted(plan.changes, key=lambda c: _chain_length(c, backend), reverse=True)
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
