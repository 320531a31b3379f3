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
from typing import TYPE_CHECKING

from .adopt import desired_from_live
from .applier import ApplyResult, OnCall, OnResult, apply_plan
from .config import Config, dump_config, is_chat_key
from .drift import DriftReport, drift_report
from .errors import UsageError
from .live import read_live
from .model import LiveChat, ReadFailure
from .plan import Action, Plan
from .planfile import PlanFileError, PlanOptions, SavedPlan, differences
from .planner import make_plan, resolve
from .safety import Thresholds, removal_violations
from .state import Binding, StateFile, StateLocation, locked

if TYPE_CHECKING:  # the client pulls in requests; only commands that talk to DingTalk load it
    from .dingtalk import DingTalkClient

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


@dataclass(frozen=True)
class ApplyOptions:
    targets: Sequence[str] = ()
    prune: bool = False
    thresholds: Thresholds = Thresholds()
    force: bool = False
    dry_run: bool = False
    notify: bool = False


class Manager:
    """One run's workflows over one client (one token, one rate limiter)."""

    def __init__(self, client: DingTalkClient, *, parallelism: int = 8, progress: Progress = _no_progress) -> None:
        self.client = client
        self.parallelism = parallelism
        self.progress = progress

    # -- reading and planning ------------------------------------------------

    def plan(
        self, config: Config, state: StateFile, *, targets: Collection[str] | None = None, prune: bool = False
    ) -> Plan:
        """Authenticate, resolve directory selectors and read every targeted chat (side by side), then diff.

        Authenticating first means bad credentials or a wrong --api-base fail even when no chat needs reading.
        """
        self.client.authenticate()
        wanted = [c for c in config.chats if targets is None or c.key in targets]
        needs_directory = [c for c in wanted if c.needs_directory]
        bindings = state.bindings
        resolution = resolve(config.chats, bindings, flag=state.flag)
        chatids = [cid for key, cid in resolution.chatids.items() if targets is None or key in targets]
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dtchat-plan") as pool:
            directory = pool.submit(self._directory, needs_directory) if needs_directory else None
            with self.progress(len(chatids)) as tick:
                live = read_live(self.client, chatids, parallelism=self.parallelism, on_done=tick)
            resolved = directory.result() if directory else None
        desired = config.chats
        errors: dict[str, str] = {}
        sources: dict = {}
        if resolved is not None:
            by_key = {c.key: c for c in resolved.chats}
            desired = tuple(by_key.get(c.key, c) for c in config.chats)
            errors, sources = dict(resolved.errors), dict(resolved.sources)
        # Directory resolution changes members only, never keys or pins: the resolution above still holds.
        return make_plan(
            desired,
            bindings,
            live,
            targets=targets,
            prune=prune,
            errors=errors,
            sources=sources,
            flag=state.flag,
            resolution=resolution,
        )

    def _directory(self, chats):
        from .directory import resolve_directory

        return resolve_directory(self.client, chats, parallelism=self.parallelism)

    def drift(self, config: Config, state: StateFile, *, targets: Collection[str] | None = None) -> DriftReport:
        return drift_report(self.plan(config, state, targets=targets))

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
        with contextlib.ExitStack() as stack:
            if options.dry_run:  # writes nothing, not even the lock file
                state = StateFile(location.path, flag=location.flag)
            else:
                state = stack.enter_context(locked(location.path, flag=location.flag))
            targets = check_targets(config, state, options.targets)
            plan = self.plan(config, state, targets=targets, prune=options.prune)
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
            if options.dry_run:
                return ApplyOutcome(Outcome.DRY_RUN, plan, warnings)
            if not plan.has_changes:
                _remember_pins(plan, state)
                return ApplyOutcome(Outcome.NO_CHANGES, plan, warnings)
            if not confirm(plan):
                return ApplyOutcome(Outcome.CANCELLED, plan, warnings)
            _remember_pins(plan, state)
            result = apply_plan(
                plan,
                self.client,
                state,
                parallelism=self.parallelism,
                on_call=on_call,
                on_result=on_result,
                notify=options.notify,
            )
            return ApplyOutcome(Outcome.APPLIED, plan, warnings, result)

    # -- state commands ------------------------------------------------------

    def import_chat(self, state: StateFile, key: str, chatid: str) -> LiveChat:
        """Verify the chat exists (one ``get``), then bind ``key`` to it (also settles a pending create)."""
        if not is_chat_key(key):
            raise UsageError(f"KEY {key!r}: must be a lowercase slug (a-z, 0-9 and '-', not at either end)")
        live = LiveChat.from_api(self.client.get_chat(chatid), chatid)
        other = next((k for k, b in state.bindings.items() if b.chatid == chatid and k != key), None)
        if other:
            raise UsageError(
                f"chatid {chatid} is already bound to `{other}`; run `dtchat forget {other}{state.flag}` first"
            )
        state.record(key, chatid)
        return live

    def dump(self, chatids: Sequence[str]) -> str:
        """Live chats as YAML that ``plan`` shows as no change; every chat must be readable."""
        live = read_live(self.client, chatids, parallelism=self.parallelism)
        failures = [f"{cid}: {r.message}" for cid, r in live.items() if isinstance(r, ReadFailure)]
        if failures:
            raise UsageError("cannot dump, nothing was written: " + "; ".join(failures))
        return dump_config(desired_from_live(r for r in live.values() if isinstance(r, LiveChat)))


def _remember_pins(plan: Plan, state: StateFile) -> None:
    """Record each chat the YAML pins (``chatid:``) in the state, changed or not, so removing the pin later
    (the usual step after ``dtchat dump``) does not turn it into a create."""
    for change in plan.of(Action.UPDATE, Action.NOOP):
        bound = state.get(change.key)
        if change.chatid and (bound is None or bound.chatid != change.chatid):
            state.record(change.key, change.chatid)


def move_key(state: StateFile, old: str, new: str) -> Binding:
    """``dtchat mv OLD NEW``: after renaming a chat's key in YAML, keep its chat (no network)."""
    if not is_chat_key(new):
        raise UsageError(f"NEW {new!r}: must be a lowercase slug (a-z, 0-9 and '-', not at either end)")
    return state.move(old, new)


def check_saved_state(saved: SavedPlan, path: Path) -> None:
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
    return replace(options, targets=tuple(saved.options.targets or ()), prune=saved.options.prune)


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
