"""The ``dtchat`` command line: parse flags, call library functions, print, exit.

Exit codes: 0 ok, 1 error (any error: bad YAML, bad flags, API failure),
2 "changes" / "drift" where a command says so. Usage errors exit 1, not
click's usual 2, so that ``--detailed-exitcode`` stays unambiguous in CI.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import click

from . import __version__
from .applier import ChatResult, apply_plan
from .config import ConfigError, load_config
from .connect import SANDBOX_DIR, SetupError, connect
from .dingtalk import DingTalkError, redact
from .dingtalk.redact import RedactingFilter
from .drift import drift_report
from .files import write_atomic
from .live import ASSUMED_LATENCY, MAX_PARALLELISM, default_parallelism
from .manager import (UsageError, check_targets, chats_to_read, compute_plan, dump_chats, import_chat,
                      verify_saved_plan)
from .plan import Action
from .planfile import PlanFileError, plan_document, read_plan
from .render import (FORMATS, render_calls, render_drift_json, render_drift_markdown, render_drift_text,
                     render_json, render_markdown, render_text)
from .rules import DEFAULT_QPS
from .safety import DEFAULT_MAX_REMOVAL_PCT, MIN_EXISTING_MEMBERS, Thresholds, removal_violations
from .state import StateError, StateFile, default_path, locked

#: Show a progress bar when at least this many chats are read and stderr is a terminal.
PROGRESS_MIN = 20
#: Errors that end a command with one line and exit 1.
EXPECTED = (ConfigError, StateError, SetupError, UsageError, PlanFileError, DingTalkError, OSError, ValueError)


@dataclass
class Options:
    sandbox: bool
    api_base: Optional[str]
    verbose: bool
    color: Optional[bool]
    max_qps: float

    def echo(self, text: str = "", err: bool = False) -> None:
        click.echo(text, err=err, color=self.color)

    @contextlib.contextmanager
    def client(self, parallelism: int = 4) -> Iterator:
        with connect(sandbox=self.sandbox, api_base=self.api_base, max_qps=self.max_qps,
                     pool_size=max(parallelism, 4)) as client:
            yield client

    def state_path(self, given: Optional[str], first_path: Optional[str]) -> Path:
        """``--state``, else the sandbox's own, else beside the first PATH (else the working folder)."""
        if given:
            return Path(given)
        if self.sandbox:
            return SANDBOX_DIR / "dtchat.state.json"
        return default_path(first_path) if first_path else Path("dtchat.state.json")


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator:
    """A click progress bar on stderr for long reads on a terminal; a no-op otherwise."""
    if total < PROGRESS_MIN or not _stderr_is_tty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield lambda: bar.update(1)


state_option = click.option("--state", "state_file", metavar="F", help="State file (default: dtchat.state.json beside the first PATH).")
target_option = click.option("--target", "targets", multiple=True, metavar="KEY", help="Only this chat key (repeatable).")
def _parallelism(ctx: click.Context, _param: click.Parameter, value: Optional[int]) -> int:
    return value or default_parallelism(ctx.find_root().params["max_qps"])


parallelism_option = click.option(
    "--parallelism", type=click.IntRange(1, MAX_PARALLELISM), default=None, callback=_parallelism,
    help=f"Concurrent reads (default: enough to keep --max-qps busy at {ASSUMED_LATENCY:g} s per call; 8 at 20/s).")
paths_argument = click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False))


class Failure(click.ClickException):
    """An expected error: printed as one line per problem (never a traceback), exit 1."""

    exit_code = 1

    def __init__(self, exc: BaseException) -> None:
        super().__init__(redact(str(exc)))
        self.issues = tuple(redact(str(i)) for i in getattr(exc, "issues", ()))

    def show(self, file=None) -> None:
        if self.issues:
            for issue in self.issues:
                click.echo(issue, err=True)
            n = len(self.issues)
            click.echo(f"Error: configuration is invalid ({n} error{'s' if n != 1 else ''})", err=True)
        else:
            click.echo(f"Error: {self.message}", err=True)


class Group(click.Group):
    """Maps library errors to :class:`Failure` and makes usage errors exit 1 (2 means "changes")."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = 1
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = 1
            raise
        except EXPECTED as exc:
            raise Failure(exc) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dtchat")
@click.option("--sandbox", is_flag=True, help="Run against an embedded emulator (data under .dtchat-sandbox/); no credentials needed.")
@click.option("--api-base", envvar="DINGTALK_API_BASE", metavar="URL", help="API base URL (env DINGTALK_API_BASE).")
@click.option("-v", "--verbose", is_flag=True, help="Show unchanged chats and each API call.")
@click.option("--no-color", is_flag=True, help="No colours (also when NO_COLOR is set).")
@click.option("--max-qps", type=click.FloatRange(min=0.1), default=DEFAULT_QPS, show_default=True,
              help="Client-side limit on API calls per second.")
@click.pass_context
def cli(ctx: click.Context, sandbox: bool, api_base: Optional[str], verbose: bool, no_color: bool, max_qps: float) -> None:
    """dtchat: DingTalk group chats as code.

    Credentials come from DINGTALK_APP_KEY and DINGTALK_APP_SECRET.
    """
    color = False if (no_color or os.environ.get("NO_COLOR")) else None
    ctx.obj = Options(sandbox=sandbox, api_base=api_base, verbose=verbose, color=color, max_qps=max_qps)
    ctx.call_on_close(_log_to_stderr(verbose))


def _log_to_stderr(verbose: bool):
    """Route dtchat's logs to stderr (DEBUG with -v, else errors only); returns the undo."""
    logger = logging.getLogger("reconciler")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.setLevel(logging.DEBUG if verbose else logging.ERROR)
    old_level = logger.level
    logger.addHandler(handler)
    if verbose:
        logger.setLevel(logging.DEBUG)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    return undo

@cli.command()
@paths_argument
@click.pass_obj
def validate(opts: Options, paths: tuple[str, ...]) -> None:
    """Check YAML files against the schema and the rules (no network)."""
    config = load_config(paths)
    opts.echo(config.summary())


removal_options = [
    click.option("--max-removal-pct", type=click.FloatRange(0, 100), default=DEFAULT_MAX_REMOVAL_PCT, show_default=True,
                 help=f"Refuse when a chat of {MIN_EXISTING_MEMBERS}+ members would lose more than this percentage."),
    click.option("--max-removals", type=click.IntRange(min=0), default=None,
                 help="Refuse when the run would remove more members than this in all."),
]


def with_options(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@cli.command()
@paths_argument
@state_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--out", "out_file", metavar="F", help="Also save the plan as JSON to F (for `apply --plan F`).")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 when there are no changes, 2 when there are.")
@target_option
@parallelism_option
@with_options(removal_options)
@click.pass_obj
def plan(opts: Options, paths, state_file, fmt, out_file, detailed_exitcode, targets, parallelism,
         max_removal_pct, max_removals) -> None:
    """Show what apply would change (read-only)."""
    config = load_config(paths)
    state_path = opts.state_path(state_file, paths[0])
    state = StateFile(state_path)
    wanted = check_targets(config, state, targets)
    with opts.client(parallelism) as client:
        the_plan = _read_and_plan(opts, config, state, client, wanted, parallelism)
    warnings = removal_violations(the_plan, Thresholds(max_removal_pct, max_removals))
    if fmt == "json":
        opts.echo(render_json(the_plan, warnings=warnings).rstrip("\n"))
    elif fmt == "markdown":
        opts.echo(render_markdown(the_plan, warnings=warnings).rstrip("\n"))
    else:
        opts.echo(render_text(the_plan, verbose=opts.verbose, warnings=warnings))
    if out_file:
        document = plan_document(the_plan, config.files, str(state_path), warnings)
        _write_text(Path(out_file), json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    if the_plan.has_errors:
        raise click.exceptions.Exit(1)
    if detailed_exitcode and the_plan.has_changes:
        raise click.exceptions.Exit(2)


def _read_and_plan(opts: Options, config, state: StateFile, client, wanted, parallelism: int):
    reads = chats_to_read(config, state, wanted)
    with progress(len(reads), "Reading chats") as tick:
        return compute_plan(config, state, client, targets=wanted, parallelism=parallelism, on_read=tick,
                            chatids=reads)


def _write_text(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=False))
@click.option("--plan", "plan_file", metavar="F", help="Apply exactly this saved plan (from `plan --out F`).")
@state_option
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation (CI).")
@click.option("--dry-run", is_flag=True, help="Print every API call apply would make; change nothing.")
@with_options(removal_options)
@click.option("--force", is_flag=True, help="Apply even when the removal thresholds are exceeded.")
@click.option("--notify", is_flag=True, help="Post a one-line summary into each changed chat.")
@target_option
@parallelism_option
@click.pass_obj
def apply(opts: Options, paths, plan_file, state_file, auto_approve, dry_run, max_removal_pct, max_removals,
          force, notify, targets, parallelism) -> None:
    """Converge DingTalk to the YAML (PATH...), or apply a saved plan (--plan F)."""
    if bool(paths) == bool(plan_file):
        raise UsageError("give either PATH... or --plan F, not both and not neither")
    if plan_file and targets:
        raise UsageError("--target cannot narrow a saved plan; make the plan with --target instead")
    saved = read_plan(plan_file) if plan_file else None
    config = None if saved else load_config(paths)
    if saved:
        path = Path(state_file or saved.state_file or opts.state_path(None, None))
    else:
        path = opts.state_path(state_file, paths[0])
    with contextlib.ExitStack() as stack:
        state = StateFile(path) if dry_run else stack.enter_context(locked(path))
        client = stack.enter_context(opts.client(parallelism))
        if saved:
            the_plan = verify_saved_plan(saved, client, state, parallelism=parallelism)
        else:
            the_plan = _read_and_plan(opts, config, state, client, check_targets(config, state, targets), parallelism)
        violations = removal_violations(the_plan, Thresholds(max_removal_pct, max_removals))
        opts.echo(render_text(the_plan, verbose=opts.verbose, warnings=violations))
        if violations and not force:
            raise UsageError("refusing to apply, nothing was changed: " + "; ".join(violations)
                             + " (pass --force if this is intended)")
        if dry_run:
            opts.echo(render_calls(the_plan, notify=notify))
            raise click.exceptions.Exit(1 if the_plan.has_errors else 0)
        if not the_plan.has_changes:
            raise click.exceptions.Exit(1 if the_plan.has_errors else 0)
        if not auto_approve:
            if not _stdin_is_tty():
                raise UsageError("refusing to apply without confirmation: no terminal to ask on; pass --auto-approve")
            if not click.confirm("Apply these changes?", default=False):
                opts.echo("Cancelled; nothing was changed.")
                raise click.exceptions.Exit(1)
        on_call = (lambda key, line: opts.echo(f"  {key}: {line}", err=True)) if opts.verbose else None
        result = apply_plan(the_plan, client, state, on_call=on_call, notify=notify,
                            on_result=lambda r: _report(opts, r))
    opts.echo(result.summary())
    if not result.ok:
        failed = ", ".join(r.key for r in result.failed)
        opts.echo(click.style(f"Failed: {failed}", fg="red"), err=True)
        raise click.exceptions.Exit(1)


def _report(opts: Options, r: ChatResult) -> None:
    if r.warning:
        opts.echo(click.style(f"! {r.key}: {r.warning}", fg="yellow"), err=True)
    if r.ok:
        if r.calls or r.action is Action.FORGET:
            opts.echo(click.style(f"✓ {r.key}: {r.action.value} done ({r.calls} call{'s' if r.calls != 1 else ''})", fg="green"))
    else:
        opts.echo(click.style(f"✗ {r.key}: {r.error}", fg="red"), err=True)


@cli.command()
@paths_argument
@state_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@target_option
@parallelism_option
@click.pass_obj
def drift(opts: Options, paths, state_file, fmt, targets, parallelism) -> None:
    """Audit live chats against the YAML (read-only). Exit 0 none, 2 drift, 1 error."""
    config = load_config(paths)
    state = StateFile(opts.state_path(state_file, paths[0]))
    wanted = check_targets(config, state, targets)
    with opts.client(parallelism) as client:
        report = drift_report(_read_and_plan(opts, config, state, client, wanted, parallelism))
    if fmt == "json":
        opts.echo(render_drift_json(report).rstrip("\n"))
    elif fmt == "markdown":
        opts.echo(render_drift_markdown(report).rstrip("\n"))
    else:
        opts.echo(render_drift_text(report, verbose=opts.verbose))
    if report.has_errors:
        raise click.exceptions.Exit(1)
    if report.has_drift:
        raise click.exceptions.Exit(2)


@cli.command()
@click.argument("chatids", nargs=-1, required=True)
@click.option("--out", "out_file", metavar="F", help="Write the YAML to F instead of stdout.")
@parallelism_option
@click.pass_obj
def dump(opts: Options, chatids, out_file, parallelism) -> None:
    """Write live chats as YAML that `plan` then shows as no change."""
    with opts.client(parallelism) as client:
        text = dump_chats(client, chatids, parallelism=parallelism)
    if out_file:
        _write_text(Path(out_file), text)
        opts.echo(f"Wrote {len(set(chatids))} chat{'s' if len(set(chatids)) != 1 else ''} to {out_file}", err=True)
    else:
        opts.echo(text.rstrip("\n"))


@cli.command("import")
@click.argument("key")
@click.argument("chatid")
@state_option
@click.pass_obj
def import_(opts: Options, key: str, chatid: str, state_file: Optional[str]) -> None:
    """Record an existing chat CHATID under KEY (verifies it exists first)."""
    with locked(opts.state_path(state_file, None)) as state, opts.client() as client:
        live = import_chat(client, state, key, chatid)
    opts.echo(f"Imported {key} → {chatid} ({live.name}, {len(live.members)} members) into {state.path}")


@cli.command()
@click.argument("key")
@state_option
@click.pass_obj
def forget(opts: Options, key: str, state_file: Optional[str]) -> None:
    """Stop managing KEY: drop it from the state file (the chat stays in DingTalk)."""
    with locked(opts.state_path(state_file, None)) as state:
        if not state.forget(key):
            raise UsageError(f"{state.path}: no chat key `{key}` in the state file")
    opts.echo(f"Forgot {key}; the chat itself was not touched.")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8780, show_default=True)
@click.option("--users", "users_file", metavar="F", type=click.Path(exists=True, dir_okay=False),
              help="Org directory (YAML/JSON list of user ids); default: accept any id.")
@click.option("--data", "data_file", metavar="F", help="Persist chats to this JSON file.")
@click.option("--app-key", metavar="K", help="Require this app key (default: accept any).")
@click.option("--app-secret", metavar="S", help="Require this app secret.")
@click.pass_obj
def emulator(opts: Options, host, port, users_file, data_file, app_key, app_secret) -> None:
    """Run the local DingTalk API emulator (Ctrl-C stops it)."""
    from .emulator import EmulatorServer, load_users

    users = load_users(users_file) if users_file else None
    with EmulatorServer(host=host, port=port, users=users, data_path=data_file,
                        app_key=app_key, app_secret=app_secret) as server:
        opts.echo(f"DingTalk emulator listening on {server.url} (Ctrl-C to stop)")
        opts.echo(f"  export DINGTALK_API_BASE={server.url}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            opts.echo("Stopped.")

def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="dtchat")
