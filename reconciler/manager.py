"""Where config, state, directory, live reads, planner and applier meet; each entry point returns values.

Like octoDNS's ``Manager``, this holds the workflows (plan, apply, drift,
import, mv, dump) so the click commands only parse flags, print what comes
back and choose the exit code. Nothing here prints or exits; the caller passes
callbacks for what must happen while a workflow runs (show the plan, ask for
confirmation, report each chat as it finishes).
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adopt import desired_from_live
from .applier import ApplyResult, OnCall, OnResult, apply_plan, planned_calls
from .backends import ChatBackend, Directory, WireCall
from .config import Config, dump_config, is_chat_key
from .drift import DriftReport, drift_report
from .errors import UsageError
from .live import read_live
from .model import DesiredChat, LiveChat, MemberSource, ReadFailure
from .plan import Action, Plan
from .planfile import PlanFileError, PlanOptions, SavedPlan, differences
from .planner import make_plan, resolve, unchanged, users_to_check, with_errors
from .quota import Budget, Rotation
from .safety import Thresholds, removal_violations
from .state import Binding, StateFile, StateLocation, locked

#: ``--refresh``: read only what can have changed (the default), or every chat.
REFRESH_CHANGED = "changed"
REFRESH_ALL = "all"
REFRESH_MODES = (REFRESH_CHANGED, REFRESH_ALL)

if TYPE_CHECKING:
    from .backends.transport import Meter
    from .connect import Connection
    from .directory import DirectoryResult

#: ``progress(total)`` gives a tick callback (or None) for the duration of the reads.
Progress = Callable[[int], contextlib.AbstractContextManager[Callable[[], None] | None]]


@contextlib.contextmanager
def _no_progress(total: int) -> Iterator[None]:
    yield None


def check_targets(config: Config, state: StateFile, targets: Sequence[str]) -> frozenset[str] | None:
    """None for "all chats"; otherwise the targets, each of which must be a known key."""
    if not targets:
        return None
    known = {c.key for c in config.chats} | set(state.bindings)
    for key in targets:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise UsageError(f"--target {key}: no chat with that key in the configuration or the state{hint}")
    return frozenset(targets)


class Outcome(str, enum.Enum):
    NO_CHANGES = "no-changes"
    DRY_RUN = "dry-run"
    CANCELLED = "cancelled"
    APPLIED = "applied"


@dataclass(frozen=True)
class ApplyOutcome:
    outcome: Outcome
    plan: Plan
    warnings: tuple[str, ...]
    #: Set when changes were applied (possibly interrupted).
    result: ApplyResult | None = None
    #: A dry run: (key, call) of every call apply would send, in order; (key, None) for a forget.
    calls: tuple[tuple[str, WireCall | None], ...] = ()


@dataclass(frozen=True)
class ApplyOptions:
    targets: Sequence[str] = ()
    prune: bool = False
    thresholds: Thresholds = Thresholds()
    force: bool = False
    dry_run: bool = False
    notify: bool = False
    refresh: str = REFRESH_CHANGED
    budget: Budget | None = None


class Manager:
    """One run's workflows over one backend and directory (one token, one rate limiter per API)."""

    def __init__(
        self,
        backend: ChatBackend,
        directory: Directory | None = None,
        *,
        parallelism: int = 8,
        progress: Progress = _no_progress,
    ) -> None:
        self.backend = backend
        self.directory = directory
        self.parallelism = parallelism
        self.progress = progress

    @classmethod
    def over(cls, connection: Connection, **kwargs: Any) -> Manager:
        return cls(connection.backend, connection.directory, **kwargs)

    # -- reading and planning ------------------------------------------------

    def plan(
        self,
        config: Config,
        state: StateFile,
        *,
        targets: Collection[str] | None = None,
        prune: bool = False,
        refresh: str = REFRESH_CHANGED,
        budget: Budget | None = None,
        rotation: Rotation | None = None,
        command: str = "plan",
        check_users: bool = True,
    ) -> Plan:
        """Authenticate, resolve directory selectors, read the targeted chats that need reading, then diff.

        ``--refresh all`` reads every chat, side by side with the directory lookups. ``--refresh changed``
        (the default) first resolves the directory (exempt from the quota), then reads only chats whose
        resolved desired digest differs from the one they were last converged to, never-verified chats and
        chats with an error; with a ``rotation`` (drift) it also reads today's slice. The others are UNREAD.
        A ``budget`` is checked before the first read. Authenticating first means bad credentials or a
        wrong base URL fail even when no chat needs reading. Last, with ``check_users``, every user id the
        plan would add or make owner is checked to exist (exempt calls; see ``_check_users``); drift, which
        reports what differs rather than what apply would do, does not check.
        """
        if refresh not in REFRESH_MODES:
            raise UsageError(f"--refresh {refresh}: one of {', '.join(REFRESH_MODES)}")
        self.backend.authenticate()
        wanted = [c for c in config.chats if targets is None or c.key in targets]
        needs_directory = [c for c in wanted if c.needs_directory]
        bindings = state.bindings
        resolution = resolve(config.chats, bindings, flag=state.flag)
        targeted = {key: cid for key, cid in resolution.chatids.items() if targets is None or key in targets}
        desired: Sequence[DesiredChat] = config.chats
        errors: dict[str, str] = {}
        sources: dict[str, tuple[MemberSource, ...]] = {}
        known: set[str] = set()  # user ids a directory answer of this run named: they exist

        def merge(resolved: DirectoryResult | None) -> Sequence[DesiredChat]:
            if resolved is None:
                return config.chats
            from .directory import directory_users

            by_key = {c.key: c for c in resolved.chats}
            errors.update(resolved.errors)
            sources.update(resolved.sources)
            known.update(directory_users(resolved.lookups))
            return tuple(by_key.get(c.key, c) for c in config.chats)

        unread: list[str] = []
        if refresh == REFRESH_ALL and rotation is None:
            if budget is not None:
                budget.check_reads(len(set(targeted.values())), command, sorted(targeted))
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dtchat-plan") as pool:
                directory = pool.submit(self._directory, needs_directory) if needs_directory else None
                with self.progress(len(targeted)) as tick:
                    live = read_live(self.backend, targeted.values(), parallelism=self.parallelism, on_done=tick)
                desired = merge(directory.result() if directory else None)
        else:

            def must_read(chat: DesiredChat) -> bool:
                chatid = targeted[chat.key]
                in_slice = rotation is not None and rotation.includes(chat.key)
                return in_slice or not unchanged(chat, bindings.get(chat.key), chatid)

            # Chats whose answer does not wait for the directory are decided now and read side by side with
            # the lookups: those without selectors, and those with no digest to compare (never verified).
            # With a budget, every read must be counted before the first one: lookups first, then reads.
            early: dict[str, str] = {}
            if budget is None:
                for chat in wanted:
                    bound = bindings.get(chat.key)
                    undecided = chat.needs_directory and bound is not None and bool(bound.digest)
                    if chat.key in targeted and not undecided and (chat.needs_directory or must_read(chat)):
                        early[chat.key] = targeted[chat.key]
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtchat-plan") as pool:
                reading = pool.submit(read_live, self.backend, early.values(), parallelism=self.parallelism)
                desired = merge(self._directory(needs_directory) if needs_directory else None)
                live = reading.result()
            to_read: dict[str, str] = {}
            for chat in desired:
                chatid = targeted.get(chat.key)
                if chatid is None or chat.key in early or chat.key in errors:  # read, nothing to read, or an error
                    continue
                if must_read(chat):
                    to_read[chat.key] = chatid
                else:
                    unread.append(chat.key)
            if budget is not None:
                budget.check_reads(len(set(to_read.values())), command, sorted(to_read))
            with self.progress(len(to_read)) as tick:
                live.update(read_live(self.backend, to_read.values(), parallelism=self.parallelism, on_done=tick))
        # Directory resolution changes members only, never keys or pins: the resolution above still holds.
        plan = make_plan(
            desired,
            bindings,
            live,
            targets=targets,
            prune=prune,
            errors=errors,
            sources=sources,
            flag=state.flag,
            resolution=resolution,
            backend=self.backend,
            unread=unread,
        )
        if check_users:
            plan = self._check_users(plan, known)
        return replace(plan, reads=len(live))

    def _check_users(self, plan: Plan, known: Collection[str]) -> Plan:
        """Every user id the plan would add or make owner must exist: one exempt directory call per distinct id
        not already named by this run's directory answers. A chat that would add an unknown id, or one the
        directory could not check, becomes an error (zero writes), never a refused write mid-apply.
        Without a directory (engine unit tests) nothing is checked."""
        wanted = users_to_check(plan, known)
        if not wanted or self.directory is None:
            return plan
        from .directory import check_users, unknown_user_errors

        userids = {userid for ids in wanted.values() for userid in ids}
        answers = check_users(self.directory, userids, parallelism=self.parallelism)
        return with_errors(plan, unknown_user_errors(wanted, answers), backend=self.backend)

    def _directory(self, chats: Sequence[DesiredChat]) -> DirectoryResult:
        from .directory import resolve_directory

        if self.directory is None:
            raise UsageError("these chats use directory selectors, and this run has no directory to resolve them")
        return resolve_directory(self.directory, chats, parallelism=self.parallelism)

    def drift(
        self,
        config: Config,
        state: StateFile,
        *,
        targets: Collection[str] | None = None,
        rotation: Rotation | None = None,
        budget: Budget | None = None,
    ) -> DriftReport:
        """The audit: every chat read (``--refresh all``), or with ``rotation`` today's slice plus every chat
        never verified or changed since. Read-only: the state is not written."""
        refresh = REFRESH_CHANGED if rotation is not None else REFRESH_ALL
        plan = self.plan(
            config,
            state,
            targets=targets,
            refresh=refresh,
            rotation=rotation,
            budget=budget,
            command="drift",
            check_users=False,  # a missing member is drift to report, whether or not apply could add them
        )
        return drift_report(plan, rotation)

    def meter(self) -> Meter:
        """The metered and exempt calls this run's backend made so far."""
        return self.backend.meter()

    # -- applying ------------------------------------------------------------

    def apply(
        self,
        config: Config,
        location: StateLocation,
        options: ApplyOptions = ApplyOptions(),
        *,
        saved: SavedPlan | None = None,
        on_plan: Callable[[Plan, tuple[str, ...]], None] = lambda plan, warnings: None,
        confirm: Callable[[Plan], bool] = lambda plan: True,
        on_call: OnCall | None = None,
        on_result: OnResult | None = None,
    ) -> ApplyOutcome:
        """The whole apply: lock, plan (or re-make and compare a saved plan), safety rails, dry run,
        confirmation, apply. Refusals raise a DtchatError before any write.
        """
        if options.notify and not self.backend.robot_code:
            raise UsageError(
                "--notify posts through the app's robot: set DTCHAT_ROBOT_CODE to its robot code "
                "(developer console, 机器人与消息推送); nothing was changed"
            )
        with contextlib.ExitStack() as stack:
            if options.dry_run:  # writes nothing, not even the lock file
                state = StateFile(location.path, flag=location.flag)
            else:
                state = stack.enter_context(locked(location.path, flag=location.flag))
            targets = check_targets(config, state, options.targets)
            plan = self.plan(
                config,
                state,
                targets=targets,
                prune=options.prune,
                refresh=options.refresh,
                budget=options.budget,
                command="apply",
            )
            if saved is not None:
                problems = differences(saved, plan)
                if problems:
                    raise PlanFileError(
                        f"{saved.source}: refusing the saved plan, nothing was changed: "
                        + "; ".join(problems)
                        + "; make a new plan"
                    )
            warnings = removal_violations(plan, options.thresholds)
            on_plan(plan, warnings)
            if warnings and not options.force:
                raise UsageError(
                    "refusing to apply, nothing was changed: "
                    + "; ".join(warnings)
                    + " (pass --force if this is intended)"
                )
            calls = planned_calls(plan, self.backend, dict(state.bindings), notify=options.notify)
            if options.budget is not None:
                writes = sum(1 for _, call in calls if call is not None and call.metered)
                undone = sorted({key for key, call in calls if call is not None})
                options.budget.check_apply(self.meter().metered, writes, undone)
            if options.dry_run:
                return ApplyOutcome(Outcome.DRY_RUN, plan, warnings, calls=tuple(calls))
            if not plan.has_changes:
                _remember(plan, state)
                return ApplyOutcome(Outcome.NO_CHANGES, plan, warnings)
            if not confirm(plan):
                return ApplyOutcome(Outcome.CANCELLED, plan, warnings)
            state.check_current()  # a remote state another run wrote meanwhile: stop before any write
            _remember(plan, state)
            result = apply_plan(
                plan,
                self.backend,
                state,
                parallelism=self.parallelism,
                on_call=on_call,
                on_result=on_result,
                notify=options.notify,
                budget=options.budget.guard(lambda: self.meter().metered) if options.budget else None,
            )
            return ApplyOutcome(Outcome.APPLIED, plan, warnings, result)

    # -- state commands ------------------------------------------------------

    def import_chat(self, state: StateFile, key: str, chatid: str) -> LiveChat:
        """Verify the chat exists (one ``get``), then bind ``key`` to it (also settles a pending create)."""
        if not is_chat_key(key):
            raise UsageError(f"KEY {key!r}: must be a lowercase slug (a-z, 0-9 and '-', not at either end)")
        live = self.backend.read(chatid)
        other = next((k for k, b in state.bindings.items() if b.chatid == chatid and k != key), None)
        if other:
            raise UsageError(
                f"chatid {chatid} is already bound to `{other}`; run `dtchat forget {other}{state.flag}` first"
            )
        state.record(key, chatid)
        return live

    def dump(self, chatids: Sequence[str]) -> str:
        """Live chats as YAML that ``plan`` shows as no change; every chat must be readable."""
        live = read_live(self.backend, chatids, parallelism=self.parallelism)
        failures = [f"{cid}: {r.message}" for cid, r in live.items() if isinstance(r, ReadFailure)]
        if failures:
            raise UsageError("cannot dump, nothing was written: " + "; ".join(failures))
        return dump_config(desired_from_live(r for r in live.values() if isinstance(r, LiveChat)))


def _remember(plan: Plan, state: StateFile) -> None:
    """Before applying: record each chat the YAML pins (``chatid:``), changed or not, so removing the pin
    later (the usual step after ``dtchat dump``) does not turn it into a create; and record, in one write,
    the digest of every chat that was read and found in sync, so the next run need not read it again; and
    forget the digest of every chat that could not be planned (unreadable, dissolved, an unknown id), so the
    next run reads it again, whether or not this run has anything else to apply."""
    for change in plan.of(Action.UPDATE, Action.NOOP):
        bound = state.get(change.key)
        if change.chatid and (bound is None or bound.chatid != change.chatid):
            state.record(change.key, change.chatid)
    state.verified({c.key: c.digest for c in plan.of(Action.NOOP) if c.digest})
    for change in plan.of(Action.ERROR):
        bound = state.get(change.key)
        if bound is not None and bound.digest:
            state.unverified(change.key)


def move_key(state: StateFile, old: str, new: str) -> Binding:
    """``dtchat mv OLD NEW``: after renaming a chat's key in YAML, keep its chat (no network)."""
    if not is_chat_key(new):
        raise UsageError(f"NEW {new!r}: must be a lowercase slug (a-z, 0-9 and '-', not at either end)")
    return state.move(old, new)


def check_saved_state(saved: SavedPlan, path: Path | os.PathLike[str]) -> None:
    """A saved plan applies only with the state file it was made with.

    A create looks the same whatever the state file says, so applying a plan with another state file
    (``--state``, ``$DTCHAT_STATE``) would record the new chat where the next plan never looks.
    """
    if saved.state_file and os.path.realpath(path) != os.path.realpath(saved.state_file):
        raise PlanFileError(
            f"{saved.source}: the plan was made with the state file {saved.state_file}, this run uses {path}; "
            "refusing the saved plan, nothing was changed"
        )


def saved_plan_options(saved: SavedPlan, options: ApplyOptions) -> ApplyOptions:
    """The options a saved plan was made with; --target cannot narrow it and --prune must match."""
    if options.targets:
        raise UsageError("--target cannot narrow a saved plan; make the plan with --target instead")
    if options.prune and not saved.options.prune:
        raise UsageError("--prune cannot widen a saved plan; make the plan with --prune instead")
    return replace(
        options,
        targets=tuple(saved.options.targets or ()),
        prune=saved.options.prune,
        refresh=saved.options.refresh,  # the chats it did not read are re-checked by digest, not read
    )


__all__ = [
    "ApplyOptions",
    "ApplyOutcome",
    "Manager",
    "Outcome",
    "PlanOptions",
    "check_saved_state",
    "check_targets",
    "move_key",
    "saved_plan_options",
]
