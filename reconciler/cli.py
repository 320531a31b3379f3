"""The ``dtchat`` command line: parse flags, call library functions, print, exit.

Exit codes: 0 ok, 1 error (any error: bad YAML, bad flags, API failure),
2 "changes" / "drift" where a command says so, 130 interrupted. Usage errors
exit 1, not click's usual 2, so that ``--detailed-exitcode`` stays unambiguous
in CI. Every expected failure (a :class:`~reconciler.errors.DtchatError`) is
one line on stderr; anything else is a bug and keeps its traceback.

Network code (requests) is imported only by the commands that use it, so
``--help`` and ``validate`` start fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .backends import API_NAMES, DEFAULT_API
from .config import ConfigError, load_config
from .errors import DtchatError, UsageError
from .files import write_atomic
from .live import ASSUMED_LATENCY, MAX_PARALLELISM, default_parallelism
from .quota import Budget, Rotation, budget_from, today
from .render import (
    FORMATS,
    VALIDATE_FORMATS,
    api_calls_line,
    drift_fix_hint,
    id_warnings,
    render_apply_json,
    render_calls,
    render_calls_json,
    render_drift_json,
    render_drift_markdown,
    render_drift_text,
    render_json,
    render_markdown,
    render_text,
    render_validation_github,
    render_validation_json,
)
from .rules import DEFAULT_QPS
from .safety import DEFAULT_MAX_REMOVAL_PCT, MIN_EXISTING_MEMBERS, Thresholds
from .state import (
    ENV_STATE,
    REMOTE_SCHEME,
    RemoteStatePath,
    StateFile,
    StateLocation,
    init_state,
    locate_state,
    locked,
    parse_duration,
    require_state,
)
from .textsafe import safe_line

if TYPE_CHECKING:
    from .applier import ChatResult
    from .connect import Connection
    from .manager import Manager
    from .plan import Plan

#: Show a progress bar when at least this many chats are read and stderr is a terminal.
PROGRESS_MIN = 20
#: The word `apply` asks for on a terminal (Terraform's convention: one stray `y` approves nothing).
CONFIRM_WORD = "yes"
EXIT_INTERRUPTED = 130


class Finite(click.ParamType):
    """A float in [low, high] that is a real number: NaN or infinity would switch a safety rail off."""

    name = "number"

    def __init__(self, low: float, high: float = math.inf) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if not self.low <= number <= self.high:
            bounds = f"at least {self.low:g}" if self.high == math.inf else f"between {self.low:g} and {self.high:g}"
            self.fail(f"{value!r} must be {bounds}", param, ctx)
        return number


@dataclass
class Options:
    """The global options; set before or after the command name (kubectl convention)."""

    sandbox: bool = False
    api: str | None = None
    api_base: str | None = None
    openapi_base: str | None = None
    verbose: bool = False
    color: bool | None = None
    max_qps: float = DEFAULT_QPS
    budget_calls: int | None = None
    #: ``--lock-timeout``: how long to wait for a remote state's lock held by another run (0: refuse at once).
    lock_timeout: float = 0.0

    def __post_init__(self) -> None:
        self._print_lock = threading.Lock()

    def echo(self, text: str = "", err: bool = False) -> None:
        with self._print_lock:
            click.echo(text, err=err, color=self.color)

    @contextlib.contextmanager
    def connection(self, parallelism: int = 4) -> Iterator[Connection]:
        from .connect import connect

        with connect(
            api=self.api or DEFAULT_API,
            sandbox=self.sandbox,
            api_base=self.api_base,
            openapi_base=self.openapi_base,
            max_qps=self.max_qps,
            pool_size=max(parallelism, 4),
        ) as connection:
            yield connection

    @contextlib.contextmanager
    def manager(self, parallelism: int = 4) -> Iterator[Manager]:
        from .manager import Manager

        with self.connection(parallelism) as connection:
            yield Manager.over(connection, parallelism=parallelism, progress=progress)

    def budget(self) -> Budget | None:
        """``--budget N``, else ``$DTCHAT_BUDGET``: the most metered calls this run may make (design §11)."""
        return budget_from(self.budget_calls)

    def state(self, given: str | None, first_path: str | None = None, *, must_exist: bool = False) -> StateLocation:
        """The state file, by design §6's one rule (the sandbox keeps its own)."""
        from .connect import SANDBOX_DIR

        if not self.sandbox:
            return locate_state(given, first_path=first_path, must_exist=must_exist, lock_timeout=self.lock_timeout)
        if given:  # a hint's command must talk to the sandbox too, with this file
            where = locate_state(given, must_exist=must_exist, lock_timeout=self.lock_timeout)
            return replace(where, flag=" --sandbox" + where.flag)
        SANDBOX_DIR.mkdir(exist_ok=True)  # the sandbox's own folder, next to its emulator data
        # `--sandbox` alone finds this file again: hints need no --state
        location = StateLocation(locate_state(None, sandbox_path=SANDBOX_DIR / "dtchat.state.json").path, " --sandbox")
        if not location.path.exists():  # the sandbox's own playground starts from nothing by itself
            init_state(location)
        return location


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


@contextlib.contextmanager
def progress(total: int) -> Iterator:
    """A click progress bar on stderr for long reads on a terminal; a no-op otherwise."""
    if total < PROGRESS_MIN or not _stderr_is_tty():
        yield None
        return
    with click.progressbar(length=total, label="Reading chats", file=sys.stderr) as bar:
        yield lambda: bar.update(1)


def _options(ctx: click.Context) -> Options:
    return ctx.ensure_object(Options)


def _set(name: str):
    """A callback that stores a global option given after the command name on the shared Options."""

    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return
        opts = _options(ctx)
        if name == "no_color":
            opts.color = False
        else:
            setattr(opts, name, value)  # -v takes effect when the command starts (_with_logging)

    return store


class Duration(click.ParamType):
    """``30s``, ``10m``, ``1h``, ``1m30s`` or plain seconds, as seconds (bounded: see ``parse_duration``)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_FLAG = {"is_flag": True, "default": None}
#: (name on Options, option declarations, click settings) of each global option.
_GLOBAL_OPTIONS: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = (
    (
        "sandbox",
        ("--sandbox",),
        {**_FLAG, "help": "Run against an embedded emulator (data under .dtchat-sandbox/); no credentials needed."},
    ),
    (
        "api",
        ("--api",),
        {
            "type": click.Choice(API_NAMES),
            "envvar": "DTCHAT_API",
            "help": "DingTalk API generation: v1 (the default; what an app created today can write with) or "
            "legacy (the oapi chat API, for apps that still hold it). Env DTCHAT_API.",
        },
    ),
    ("api_base", ("--api-base",), {"metavar": "URL", "help": "Legacy (oapi) API base URL (env DINGTALK_API_BASE)."}),
    (
        "openapi_base",
        ("--openapi-base",),
        {"metavar": "URL", "help": "v1.0 API base URL (env DINGTALK_OPENAPI_ENDPOINT)."},
    ),
    ("verbose", ("-v", "--verbose"), {**_FLAG, "help": "Show unchanged chats, member sources and each API call."}),
    ("no_color", ("--no-color",), {**_FLAG, "help": "No colours (also when NO_COLOR is set)."}),
    (
        "budget_calls",
        ("--budget",),
        {
            "type": click.IntRange(min=0),
            "metavar": "N",
            "help": "At most N metered API calls this run (the org's monthly quota counts them); refuses up "
            "front, never stops half-way through a chat. Env DTCHAT_BUDGET.",
        },
    ),
    (
        "max_qps",
        ("--max-qps",),
        {"type": Finite(0.1), "help": f"Client-side limit on calls per second per API (default {DEFAULT_QPS:g})."},
    ),
    (
        "lock_timeout",
        ("--lock-timeout",),
        {
            "type": Duration(),
            "envvar": "DTCHAT_LOCK_TIMEOUT",
            "metavar": "DURATION",
            "help": "Wait this long (30s, 10m) for a remote state's lock held by another run (apply, import, "
            "forget, mv, watch --enforce, state push/pull) instead of refusing at once. Env DTCHAT_LOCK_TIMEOUT.",
        },
    ),
)


def global_options(f):
    """The global options, on the group and on every command, so they work before or after the command name."""
    for name, declarations, settings in reversed(_GLOBAL_OPTIONS):
        f = click.option(*declarations, expose_value=False, callback=_set(name), **settings)(f)
    return f


state_option = click.option(
    "--state",
    "state_file",
    metavar="F",
    help="State file, or s3://BUCKET/KEY for a remote state (docs/remote-state.md) (default: $DTCHAT_STATE, "
    "else dtchat.state.json beside the first PATH).",
)
target_option = click.option(
    "--target", "targets", multiple=True, metavar="KEY", help="Only this chat key (repeatable)."
)


parallelism_option = click.option(
    "--parallelism",
    type=click.IntRange(1, MAX_PARALLELISM),
    default=None,
    help=f"Chats worked on at once (default: enough to keep --max-qps busy at {ASSUMED_LATENCY:g} s per call).",
)
init_option = click.option(
    "--init",
    "init",
    is_flag=True,
    help="Start from no state file (a first run): every chat is new. Without it a missing state file is an error.",
)
refresh_option = click.option(
    "--refresh",
    type=click.Choice(("changed", "all")),
    default="changed",
    show_default=True,
    help="changed: read only chats whose YAML or directory members changed since they were last converged "
    "(and new, failed or never-verified ones); all: read every chat.",
)
paths_argument = click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False))


def _workers(opts: Options, parallelism: int | None) -> int:
    return parallelism or default_parallelism(opts.max_qps)


class Failure(click.ClickException):
    """An expected error: printed as one line per problem (never a traceback), exit 1."""

    exit_code = 1

    def __init__(self, exc: DtchatError) -> None:
        from .backends.redact import redact

        super().__init__(redact(str(exc)))
        self.issues = tuple(redact(str(i)) for i in getattr(exc, "issues", ()))

    def show(self, file=None) -> None:
        """Each line escaped (names, ids and file names in messages come from DingTalk or a pull request: see
        ``textsafe``), so no error can move the cursor, forge a line or be a CI workflow command."""
        if self.issues:
            for issue in self.issues:
                click.echo(safe_line(issue), err=True)
            n = len(self.issues)
            click.echo(f"Error: configuration is invalid ({n} error{'s' if n != 1 else ''})", err=True)
        else:
            click.echo(f"Error: {safe_line(self.message)}", err=True)


def _one_line(exc: click.UsageError) -> click.UsageError:
    """A usage error as one ``Error:`` line (no usage block; ``--help`` has it), exit 1 (2 means "changes")."""
    exc.exit_code = 1  # type: ignore[misc]  # click reads it per instance; the class's 2 means "changes" here
    exc.ctx = None
    return exc


class Group(click.Group):
    """Maps DtchatError to :class:`Failure` and makes usage errors exit 1 (2 means "changes")."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None
        except DtchatError as exc:
            raise Failure(exc) from None
        except KeyboardInterrupt:  # outside apply's writes (apply reports its own): nothing was changed
            click.echo("Interrupted; nothing was changed.", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


_HANDLER: logging.StreamHandler | None = None


class _SafeFormatter(logging.Formatter):
    """Log lines quote DingTalk's error messages, event ids, YAML: each is one escaped line (``textsafe``), as any output."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return safe_line(super().formatMessage(record))


def _log_handler() -> logging.StreamHandler:
    """dtchat's log lines on stderr: warnings (retries, throttling waits) always, everything with -v."""
    global _HANDLER
    if _HANDLER is None:
        from .backends.redact import RedactingFilter

        _HANDLER = logging.StreamHandler()
        _HANDLER.setFormatter(_SafeFormatter("%(levelname)s: %(message)s"))
        _HANDLER.addFilter(RedactingFilter())
    return _HANDLER


def _install_logging() -> None:
    handler = _log_handler()
    handler.stream = sys.stderr  # the current stderr (click's test runner swaps it)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("reconciler")
    if handler not in logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dtchat")
@global_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """dtchat: DingTalk group chats as code.

    Credentials come from DINGTALK_APP_KEY and DINGTALK_APP_SECRET. Global options
    may be given before or after the command name.
    """
    opts = _options(ctx)
    if os.environ.get("NO_COLOR"):
        opts.color = False
    if opts.api_base is None:
        opts.api_base = os.environ.get("DINGTALK_API_BASE") or None
    if opts.openapi_base is None:
        opts.openapi_base = os.environ.get("DINGTALK_OPENAPI_ENDPOINT") or None


def _with_logging(f):
    """Install the stderr log handler for the command's run (after all options are parsed)."""
    import functools

    @functools.wraps(f)
    def run(*args, **kwargs):
        _install_logging()
        if _options(click.get_current_context()).verbose:
            _log_handler().setLevel(logging.DEBUG)
            logging.getLogger("reconciler").setLevel(logging.DEBUG)
        return f(*args, **kwargs)

    return run


def command(*args, group: click.Group | None = None, **kwargs):
    """A dtchat command (of ``group``, default the top level): global options accepted after its name too,
    logging on stderr."""

    def decorate(f):
        cmd = (group or cli).command(*args, **kwargs)(global_options(click.pass_obj(_with_logging(f))))
        own = [p for p in cmd.params if p.expose_value]
        cmd.params = own + [p for p in cmd.params if not p.expose_value]  # the command's own options first in --help
        return cmd

    return decorate


@command()
@paths_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(VALIDATE_FORMATS),
    default="text",
    show_default=True,
    help="github: workflow-command annotations at file:line:col.",
)
def validate(opts: Options, paths: tuple[str, ...], fmt: str) -> None:
    """Check YAML files against the schema and the rules (no network)."""
    try:
        config = load_config(paths)
    except ConfigError as exc:
        if fmt == "text":
            raise
        summary = f"configuration is invalid ({len(exc.issues)} error{'s' if len(exc.issues) != 1 else ''})"
        if fmt == "json":
            opts.echo(render_validation_json(tuple(paths), exc.issues, summary))
        else:
            opts.echo(render_validation_github(exc.issues, summary))
        raise click.exceptions.Exit(1) from None
    if fmt == "json":
        opts.echo(render_validation_json(config.files, (), config.summary()))
    else:
        opts.echo(config.summary())


removal_options = [
    click.option(
        "--max-removal-pct",
        type=Finite(0, 100),
        default=DEFAULT_MAX_REMOVAL_PCT,
        show_default=True,
        help=f"Refuse when a chat of {MIN_EXISTING_MEMBERS}+ members would lose more than this percentage.",
    ),
    click.option(
        "--max-removals",
        type=click.IntRange(min=0),
        default=None,
        help="Refuse when the run would remove more members than this in all.",
    ),
]
prune_option = click.option(
    "--prune", is_flag=True, help="Forget orphaned keys (in the state, not in the YAML); their chats stay in DingTalk."
)


def with_options(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@command()
@paths_argument
@state_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--out", "out_file", metavar="F", help="Also save the plan as JSON to F (for `apply --plan F`).")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 when there are no changes, 2 when there are.")
@target_option
@parallelism_option
@prune_option
@refresh_option
@init_option
@with_options(removal_options)
def plan(
    opts: Options,
    paths,
    state_file,
    fmt,
    out_file,
    detailed_exitcode,
    targets,
    parallelism,
    prune,
    refresh,
    init,
    max_removal_pct,
    max_removals,
) -> None:
    """Show what apply would change (read-only)."""
    from .manager import check_targets
    from .planfile import PlanOptions, plan_document
    from .safety import removal_violations

    config = load_config(paths)
    location = opts.state(state_file, paths[0])
    require_state(location, init=init, command="plan", first_path=paths[0])
    state = StateFile(location.path, flag=location.flag)
    wanted = check_targets(config, state, targets)
    workers = _workers(opts, parallelism)
    with opts.manager(workers) as manager:
        the_plan = manager.plan(config, state, targets=wanted, prune=prune, refresh=refresh, budget=opts.budget())
        meter = manager.meter()
    warnings = removal_violations(the_plan, Thresholds(max_removal_pct, max_removals))
    if fmt == "json":
        opts.echo(render_json(the_plan, warnings=warnings, meter=meter).rstrip("\n"))
    elif fmt == "markdown":
        opts.echo(render_markdown(the_plan, warnings=warnings, meter=meter).rstrip("\n"))
    else:
        opts.echo(render_text(the_plan, verbose=opts.verbose, warnings=warnings, meter=meter))
    if out_file:
        options = PlanOptions(tuple(sorted(wanted)) if wanted is not None else None, prune, refresh)
        document = plan_document(
            the_plan, config.files, str(location.path), (*warnings, *id_warnings(the_plan)), options
        )
        _write_text(Path(out_file), json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        opts.echo(f"Saved the plan to {out_file}; apply exactly it with `dtchat apply --plan {out_file}`.", err=True)
    if the_plan.has_errors:
        raise click.exceptions.Exit(1)
    if detailed_exitcode and the_plan.has_changes:
        raise click.exceptions.Exit(2)


def _write_text(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None


@command()
@click.argument("paths", nargs=-1, type=click.Path(exists=False))
@click.option("--plan", "plan_file", metavar="F", help="Apply exactly this saved plan (from `plan --out F`).")
@state_option
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option("--dry-run", is_flag=True, help="Print every API call apply would make; change nothing.")
@with_options(removal_options)
@click.option("--force", is_flag=True, help="Apply even when the removal thresholds are exceeded.")
@click.option("--notify", is_flag=True, help="Post a message (the YAML's notify template) into each changed chat.")
@prune_option
@target_option
@parallelism_option
@refresh_option
@init_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="json: the per-chat result on stdout (the plan goes to stderr).",
)
def apply(
    opts: Options,
    paths,
    plan_file,
    state_file,
    auto_approve,
    dry_run,
    max_removal_pct,
    max_removals,
    force,
    notify,
    prune,
    targets,
    parallelism,
    refresh,
    init,
    fmt,
) -> None:
    """Converge DingTalk to the YAML (PATH...), or apply a saved plan (--plan F)."""
    from .applier import ApplyResult
    from .manager import ApplyOptions, Outcome, check_saved_state, saved_plan_options
    from .planfile import read_plan

    if bool(paths) == bool(plan_file):
        raise UsageError("give either PATH... or --plan F, not both and not neither")
    options = ApplyOptions(
        targets=targets,
        prune=prune,
        thresholds=Thresholds(max_removal_pct, max_removals),
        force=force,
        dry_run=dry_run,
        notify=notify,
        refresh=refresh,
        budget=opts.budget(),
    )
    saved = read_plan(plan_file) if plan_file else None
    if saved:
        options = saved_plan_options(saved, options)
        paths = saved.config_files
        state_file = state_file or os.environ.get(ENV_STATE) or saved.state_file
    config = load_config(paths)
    location = opts.state(state_file, paths[0])
    if saved:
        check_saved_state(saved, location.path)
    require_state(location, init=init, command="apply", first_path=paths[0])
    as_json = fmt == "json"

    def on_plan(the_plan: Plan, warnings: tuple[str, ...]) -> None:
        opts.echo(render_text(the_plan, verbose=opts.verbose, warnings=warnings), err=as_json)

    def on_call(key: str, line: str) -> None:
        if opts.verbose:
            opts.echo(safe_line(f"  {key}: {line}"), err=True)

    with opts.manager(_workers(opts, parallelism)) as manager:
        outcome = manager.apply(
            config,
            location,
            options,
            saved=saved,
            on_plan=on_plan,
            # a saved plan is the approval (Terraform's rule): it was reviewed, and it applies only if unchanged
            confirm=lambda p: _confirm(opts, auto_approve or saved is not None),
            on_call=on_call,
            on_result=_reporter(opts, as_json),
        )
        meter = manager.meter()
    if outcome.outcome is Outcome.DRY_RUN:
        if as_json:
            opts.echo(render_calls_json(outcome.plan, outcome.calls))
        else:
            opts.echo(render_calls(outcome.plan, outcome.calls) + "\n" + api_calls_line(meter))
        raise click.exceptions.Exit(1 if outcome.plan.has_errors else 0)
    if outcome.outcome is Outcome.CANCELLED:
        opts.echo("Cancelled; nothing was changed.", err=True)
        raise click.exceptions.Exit(1)
    if outcome.outcome is Outcome.NO_CHANGES and not as_json:
        opts.echo(api_calls_line(meter), err=True)
        raise click.exceptions.Exit(1 if outcome.plan.has_errors else 0)
    result = outcome.result or ApplyResult.unchanged(outcome.plan)
    if as_json:
        opts.echo(render_apply_json(result, meter))
    else:
        opts.echo(result.summary() + " " + api_calls_line(meter))
    if result.interrupted:
        touched = [r for r in result.results if r.done or r.calls]  # finished, or stopped part-way
        opts.echo(
            click.style(
                f"Interrupted: {len(touched)} chat{'s' if len(touched) != 1 else ''} changed before Ctrl-C: "
                + (
                    ", ".join(f"{r.key} ({r.chatid or 'no chatid yet'}{'' if r.ok else ', part-way'})" for r in touched)
                    or "none"
                )
                + "; the state file records every chat created.",
                fg="yellow",
            ),
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    if not result.ok:
        stopped = result.not_started
        failed = ", ".join(r.key for r in result.failed if not r.stopped)
        if failed:
            opts.echo(click.style(f"Failed: {failed}", fg="red"), err=True)
        if stopped:
            n = len(stopped)
            # the reason, unless a chat's failure line already said it (a fatal error is printed once)
            why = next((r.error for r in result.results if r.stopped and r.error), "").removeprefix("not attempted: ")
            if any(r.error == why for r in result.failed if not r.stopped):
                why = ""
            opts.echo(
                click.style(
                    f"Not started: {n} chat{'s' if n != 1 else ''} ({', '.join(stopped[:10])}"
                    f"{f' and {n - 10} more' if n > 10 else ''})"
                    + (f" because {why}" if why else "")
                    + f"; nothing was sent for {'them' if n != 1 else 'it'}, a later apply picks "
                    f"{'them' if n != 1 else 'it'} up",
                    fg="red",
                ),
                err=True,
            )
        raise click.exceptions.Exit(1)


def _confirm(opts: Options, auto_approve: bool) -> bool:
    if auto_approve:
        return True
    if not _stdin_is_tty():
        raise UsageError("refusing to apply without confirmation: no terminal to ask on; pass --auto-approve")
    answer = click.prompt(
        f"Apply these changes? Only '{CONFIRM_WORD}' is accepted", default="", show_default=False, err=True
    )
    return answer.strip() == CONFIRM_WORD


def _reporter(opts: Options, quiet: bool) -> Callable[[ChatResult], None]:
    """One line per chat as it finishes (stderr for problems; all to stderr with --format json).

    A fatal error (the quota spent, a legacy write closed to this app, …) is printed once, however many
    chats in flight met it; chats the run never started are counted in one line at the end instead.
    """
    fatal: set[str] = set()

    def report(r: ChatResult) -> None:
        if r.stopped:
            return
        if r.fatal and not r.ok:
            if r.error in fatal:
                opts.echo(click.style(f"✗ {r.key}: stopped by the same error", fg="red"), err=True)
                return
            fatal.add(r.error or "")
        _report(opts, r, quiet)

    return report


def _report(opts: Options, r: ChatResult, quiet: bool) -> None:
    if r.warning:
        opts.echo(click.style(safe_line(f"! {r.key}: {r.warning}"), fg="yellow"), err=True)
    if r.ok:
        if r.done:
            calls = f"{r.calls} call{'s' if r.calls != 1 else ''}"
            what = {
                "create": f"created {r.chatid}",
                "update": f"updated {r.chatid}",
                "forget": f"forgotten ({r.chatid} stays in DingTalk as it is)",
            }.get(r.action.value, r.action.value)
            opts.echo(click.style(f"✓ {r.key}: {what} ({calls})", fg="green"), err=quiet)
    else:
        opts.echo(click.style(safe_line(f"✗ {r.key}: {r.error}"), fg="red"), err=True)


@command()
@paths_argument
@state_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@target_option
@parallelism_option
@click.option(
    "--rotate",
    "rotate_days",
    type=click.IntRange(1, 366),
    metavar="DAYS",
    help="Read one stable slice of the chats a day (plus every chat changed or never verified), so each is "
    "audited at least once in DAYS days for 1/DAYS of the metered calls. The day: UTC, or $DTCHAT_TODAY.",
)
def drift(opts: Options, paths, state_file, fmt, targets, parallelism, rotate_days) -> None:
    """Audit live chats against the YAML (read-only). Exit 0 none, 2 drift, 1 error."""
    from .manager import check_targets

    config = load_config(paths)
    location = opts.state(state_file, paths[0])
    require_state(location, init=False, command="drift", first_path=paths[0])
    state = StateFile(location.path, flag=location.flag)
    wanted = check_targets(config, state, targets)
    rotation = Rotation(rotate_days, today()) if rotate_days else None
    with opts.manager(_workers(opts, parallelism)) as manager:
        report = manager.drift(config, state, targets=wanted, rotation=rotation, budget=opts.budget())
        meter = manager.meter()
    if fmt == "json":
        opts.echo(render_drift_json(report, meter).rstrip("\n"))
    elif fmt == "markdown":
        opts.echo(render_drift_markdown(report, meter).rstrip("\n"))
    else:
        hint = drift_fix_hint(report, paths, location.flag)
        opts.echo(render_drift_text(report, verbose=opts.verbose, meter=meter, hint=hint))
    if report.has_errors:
        raise click.exceptions.Exit(1)
    if report.has_drift:
        raise click.exceptions.Exit(2)


@command()
@click.argument("chatids", nargs=-1, required=True)
@click.option("--out", "out_file", metavar="F", help="Write the YAML to F instead of stdout.")
@parallelism_option
def dump(opts: Options, chatids, out_file, parallelism) -> None:
    """Write live chats as YAML that `plan` then shows as no change."""
    with opts.manager(_workers(opts, parallelism)) as manager:
        text = manager.dump(chatids)
        opts.echo(api_calls_line(manager.meter()), err=True)
    if out_file:
        _write_text(Path(out_file), text)
        opts.echo(f"Wrote {len(set(chatids))} chat{'s' if len(set(chatids)) != 1 else ''} to {out_file}", err=True)
    else:
        opts.echo(text.rstrip("\n"))


@command()
@click.argument("path", required=False, type=click.Path(exists=False))
@state_option
def init(opts: Options, path: str | None, state_file: str | None) -> None:
    """Write an empty state file (where plan/apply PATH will look for it) to commit beside the YAML."""
    location = opts.state(state_file, path)
    from .state import RemoteStatePath

    written = init_state(location)
    if isinstance(written, RemoteStatePath):
        opts.echo(f"Wrote an empty state to {written}; every run with --state {written} (or DTCHAT_STATE) uses it.")
    else:
        opts.echo(
            f"Wrote an empty state file {written}; commit it beside the YAML (it maps each chat key to its chat)."
        )


@command("import")
@click.argument("key")
@click.argument("chatid")
@state_option
def import_(opts: Options, key: str, chatid: str, state_file: str | None) -> None:
    """Record an existing chat CHATID under KEY (verifies it exists first; settles a pending create)."""
    location = opts.state(state_file, must_exist=True)
    with locked(location.path, flag=location.flag) as state, opts.manager() as manager:
        live = manager.import_chat(state, key, chatid)
        meter = manager.meter()
    opts.echo(safe_line(f"Imported {key} → {chatid} ({live.name}, {len(live.members)} members) into {state.path}"))
    opts.echo(api_calls_line(meter), err=True)


@cli.group("state")
def state_group() -> None:
    """Look at the state file (which chat each key is bound to, and what dtchat last verified); move it to and
    from a remote store (push, pull); remove a dead run's remote lock (unlock)."""


def _existing_state(opts: Options, state_file: str | None) -> StateLocation:
    """The state file to look at; a mistyped --state or DTCHAT_STATE is an error, not an empty state."""
    location = opts.state(state_file, must_exist=True)
    if not location.path.exists():
        raise UsageError(f"{location.path}: no state file there (check --state / {ENV_STATE})")
    return location


@command("list", group=state_group)
@state_option
@click.option("--format", "fmt", type=click.Choice(("text", "json")), default="text", show_default=True)
def state_list(opts: Options, state_file: str | None, fmt: str) -> None:
    """Every key in the state file, its chat and whether it is verified, pending or never verified."""
    from .render import render_state_json, render_state_text

    location = _existing_state(opts, state_file)
    bindings = StateFile(location.path, flag=location.flag).bindings
    if fmt == "json":
        opts.echo(render_state_json(location.path, bindings))
    else:
        opts.echo(render_state_text(location.path, bindings))


@command("show", group=state_group)
@click.argument("key")
@state_option
def state_show(opts: Options, key: str, state_file: str | None) -> None:
    """Everything the state file records for KEY."""
    from .render import render_state_json

    location = _existing_state(opts, state_file)
    binding = StateFile(location.path, flag=location.flag).get(key)
    if binding is None:
        raise UsageError(f"{location.path}: no chat key `{key}` in the state file")
    opts.echo(render_state_json(location.path, {key: binding}))


def _remote_url(opts: Options, url: str) -> RemoteStatePath:
    if not url.startswith(REMOTE_SCHEME):
        raise UsageError(f"{url}: S3URL must be a remote state, s3://BUCKET/KEY")
    return RemoteStatePath.parse(url, lock_timeout=opts.lock_timeout)


def _chats(n: int) -> str:
    return f"{n} chat{'s' if n != 1 else ''}"


@command("push", group=state_group)
@click.argument("url", metavar="S3URL")
@state_option
@click.option("--force", is_flag=True, help="Replace a state already at S3URL (only if nobody writes it meanwhile).")
def state_push(opts: Options, url: str, state_file: str | None, force: bool) -> None:
    """Copy the local state file to S3URL (s3://BUCKET/KEY), under both locks; then run with --state S3URL."""
    from .state import copy_state

    target = _remote_url(opts, url)
    location = opts.state(state_file, must_exist=True)
    if location.remote:
        raise UsageError(
            f"state push copies a local state file to S3URL; name that file with --state F, not {location.path}"
        )
    n = copy_state(location.path, target, force=force, source_flag=location.flag, target_flag=f" --state {target}")
    opts.echo(
        safe_line(
            f"Pushed {_chats(n)} from {location.path} to {target}. From now on run with --state {target} "
            f"(or {ENV_STATE}={target}); {location.path} is no longer read, keep it out of use."
        )
    )


@command("pull", group=state_group)
@click.argument("url", metavar="S3URL")
@state_option
@click.option("--force", is_flag=True, help="Replace the local state file if there is one.")
def state_pull(opts: Options, url: str, state_file: str | None, force: bool) -> None:
    """Copy the remote state at S3URL to a local state file (--state F, else ./dtchat.state.json)."""
    from .state import copy_state

    source = _remote_url(opts, url)
    location = opts.state(state_file)
    if location.remote:
        raise UsageError(f"state pull writes a local state file; name it with --state F, not {location.path}")
    n = copy_state(source, location.path, force=force, source_flag=f" --state {source}", target_flag=location.flag)
    opts.echo(safe_line(f"Pulled {_chats(n)} from {source} into {location.path}."))


@command("unlock", group=state_group)
@click.argument("lock_id")
@state_option
def state_unlock(opts: Options, lock_id: str, state_file: str | None) -> None:
    """Remove the lock LOCK_ID that a dead run left on a remote state (its refusal prints the id)."""
    from .state import unlock_state

    location = opts.state(state_file)
    opts.echo(safe_line(unlock_state(location.path, lock_id)))


@command("show")
@click.argument("plan_file", metavar="PLANFILE")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
def show(opts: Options, plan_file: str, fmt: str) -> None:
    """Print a saved plan (from `plan --out F`) as it was made: nothing is read, nothing is called."""
    from .planfile import read_plan, saved_plan_as_plan

    saved = read_plan(plan_file)
    the_plan = saved_plan_as_plan(saved)
    if fmt == "json":
        opts.echo(render_json(the_plan, warnings=saved.warnings).rstrip("\n"))
    elif fmt == "markdown":
        opts.echo(render_markdown(the_plan, warnings=saved.warnings).rstrip("\n"))
    else:
        opts.echo(render_text(the_plan, verbose=opts.verbose, warnings=saved.warnings))


@command()
@click.argument("key")
@state_option
def forget(opts: Options, key: str, state_file: str | None) -> None:
    """Stop managing KEY: drop it from the state file (the chat stays in DingTalk)."""
    location = opts.state(state_file, must_exist=True)
    with locked(location.path, flag=location.flag) as state:
        if not state.forget(key):
            raise UsageError(f"{state.path}: no chat key `{key}` in the state file")
    opts.echo(safe_line(f"Forgot {key} in {location.path}; the chat itself was not touched."))


@command()
@click.argument("old")
@click.argument("new")
@state_option
def mv(opts: Options, old: str, new: str, state_file: str | None) -> None:
    """Rename a key in the state (after renaming it in YAML), so no second chat is created."""
    from .manager import move_key

    location = opts.state(state_file, must_exist=True)
    with locked(location.path, flag=location.flag) as state:
        binding = move_key(state, old, new)
    opts.echo(safe_line(f"Moved {old} → {new} ({binding.chatid or 'pending create'}) in {location.path}"))


@command()
@paths_argument
@state_option
@click.option(
    "--enforce",
    is_flag=True,
    help="Re-converge a chat that drifted, with apply's rules (removal thresholds, additive policy); "
    "never creates one. Without it: alerts only.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="json: one object a line on stdout per chat looked at.",
)
@with_options(removal_options)
def watch(opts: Options, paths, state_file, enforce, fmt, max_removal_pct, max_removals) -> None:
    """Follow DingTalk's events (Stream mode): alert on drift within seconds, or --enforce the YAML.

    SIGHUP reloads PATH (an invalid configuration is refused and the old one kept); SIGTERM or Ctrl-C lets
    the chat in progress finish and exits 0. --budget N is per rolling hour here.
    """
    import signal

    from .backends.stream import StreamListener, require_sdk
    from .render import render_watch_json, render_watch_text
    from .watch import HourlyBudget, Watcher

    require_sdk()
    location = opts.state(state_file, paths[0])
    if not location.path.exists():
        raise UsageError(
            f"{location.path}: no state file; watch looks after chats dtchat manages: apply first (or pass --state F)"
        )
    budget = opts.budget()

    def emit(alert) -> None:
        if fmt == "json":
            opts.echo(render_watch_json(alert))
            return
        line = render_watch_text(alert)
        if line is not None:
            opts.echo(line)

    stop = threading.Event()
    reload = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: reload.set())
    logging.getLogger("reconciler").setLevel(logging.INFO if opts.verbose else logging.WARNING)
    try:
        with opts.connection() as connection:
            from .manager import Manager

            manager = Manager.over(connection, parallelism=4)
            watcher = Watcher(
                manager,
                paths,
                location,
                emit=emit,
                enforce=enforce,
                thresholds=Thresholds(max_removal_pct, max_removals),
                budget=HourlyBudget(budget.limit) if budget else None,
            ).start()
            listener = StreamListener(
                connection.app_key, connection.app_secret, connection.openapi_base, watcher.submit
            ).start()
            opts.echo(
                f"Watching {len(watcher.config.chats)} chats{' (enforcing)' if enforce else ''}; "
                "SIGHUP reloads, SIGTERM or Ctrl-C stops.",
                err=True,
            )
            while not stop.wait(0.2):
                if reload.is_set():
                    reload.clear()
                    watcher.reload()
            listener.stop()
            watcher.close()
            opts.echo(
                f"Stopped: {watcher.handled} chats looked at, {watcher.ignored} events ignored; "
                + api_calls_line(manager.meter()),
                err=True,
            )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8780, show_default=True)
@click.option(
    "--users",
    "users_file",
    metavar="F",
    type=click.Path(exists=True, dir_okay=False),
    help="Known user ids (YAML/JSON list); default: accept any id (or the --org users).",
)
@click.option(
    "--org",
    "org_file",
    metavar="F",
    type=click.Path(exists=True, dir_okay=False),
    help="Org directory (departments, users with mobiles, roles): serves /topapi and checks user ids.",
)
@click.option("--data", "data_file", metavar="F", help="Persist chats to this JSON file.")
@click.option(
    "--qps",
    type=Finite(0),
    default=0,
    show_default=True,
    help="Per-API calls/s before the throttling answer (0: no limit; DingTalk's is 20).",
)
@click.option(
    "--latency", "latency_ms", type=Finite(0), default=0, show_default=True, help="Milliseconds added to each answer."
)
@click.option("--app-key", metavar="K", help="Require this app key (default: accept any).")
@click.option("--app-secret", metavar="S", help="Require this app secret.")
@click.option(
    "--new-app", is_flag=True, help="Play an app created today: the legacy chat writes are refused (use --api v1)."
)
@click.option(
    "--quota",
    type=click.IntRange(min=0),
    default=None,
    help="Metered calls left this month (default: unlimited); then the quota-used-up answer.",
)
@click.option("--robot-code", metavar="C", help="This app's robot code (default: accept any).")
def emulator(
    opts: Options,
    host,
    port,
    users_file,
    org_file,
    data_file,
    qps,
    latency_ms,
    app_key,
    app_secret,
    new_app,
    quota,
    robot_code,
) -> None:
    """Run the local DingTalk API emulator (Ctrl-C stops it). -v logs each request.

    With --sandbox it serves the sandbox's own chats, org and new-app mode, so its admin routes can change a
    sandbox chat "by hand" (stop it before the next --sandbox command: both would write the same data file).
    """
    from .connect import SANDBOX_DATA, SANDBOX_DIR
    from .emulator import SANDBOX_ORG, EmulatorServer, EmulatorSetupError, ListenError, load_org, load_users

    if opts.sandbox:
        if users_file or org_file or data_file:
            raise UsageError("emulator --sandbox serves the sandbox's own chats and org: drop --users/--org/--data")
        SANDBOX_DIR.mkdir(exist_ok=True)
        org_file, data_file, new_app = SANDBOX_ORG, str(SANDBOX_DIR / SANDBOX_DATA), True
    try:
        users = load_users(users_file) if users_file else None
        org = load_org(org_file) if org_file else None
        server = EmulatorServer(
            host=host,
            port=port,
            users=users,
            org=org,
            data_path=data_file,
            app_key=app_key,
            app_secret=app_secret,
            qps_limit=qps,
            latency_ms=latency_ms,
            on_request=_log_request(opts) if opts.verbose else None,
            new_app=new_app,
            robot_code=robot_code,
            monthly_quota=-1 if quota is None else quota,
        )
        server.start()
    except (EmulatorSetupError, ListenError) as exc:
        raise UsageError(f"emulator: {exc}") from None
    try:
        opts.echo(f"DingTalk emulator listening on {server.url} (Ctrl-C to stop)")
        opts.echo(f"  export DINGTALK_API_BASE={server.url} DINGTALK_OPENAPI_ENDPOINT={server.url}")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        opts.echo("Stopped.")
    finally:
        server.stop()


def _log_request(opts: Options):
    def log(call: Any) -> None:
        opts.echo(call.describe(), err=True)

    return log


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="dtchat")
