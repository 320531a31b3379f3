"""The CI examples in examples/ci stay honest: they parse, call only the CLI that exists, and work.

Three layers: the YAML has the structure GitHub / GitLab expect; every ``dtchat`` invocation in a
``run:`` / ``script:`` names a real subcommand and only options it (or the group) declares; and the
steps themselves are run with bash, against the emulator or a stub ``dtchat``, to prove the exit-code
handling (plan: 2 is success; drift: 2 is failure) and that apply commits the state file.
"""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import click
import pytest
import yaml

from reconciler.cli import cli

from conftest import APP_KEY, APP_SECRET
from helpers import state_of, write_config

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "examples" / "ci"
GITHUB = CI / "github" / "dtchat.yml"
GITLAB = CI / "gitlab" / ".gitlab-ci.yml"
STATE = "chats/dtchat.state.json"

# Shell syntax the invocation extractor understands (tokens from shlex with punctuation_chars).
REDIRECTS = {">", ">>", "<", ">&", "<&", "&>", ">|"}
PREFIX_WORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "exec"}


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


def github_scripts(doc: dict[str, Any]) -> list[Script]:
    return [Script(f"jobs.{job_id}.steps[{i}]", step["run"])
            for job_id, job in doc["jobs"].items()
            for i, step in enumerate(job.get("steps", []))
            if "run" in step]


def gitlab_lines(items: Any) -> Iterator[str]:
    """GitLab script items: strings, or (via !reference / anchors) nested lists of strings."""
    for item in [items] if isinstance(items, str) else items:
        yield from ([item] if isinstance(item, str) else gitlab_lines(item))


def gitlab_scripts(doc: dict[str, Any]) -> list[Script]:
    return [Script(f"{name}.{key}", "\n".join(gitlab_lines(job[key])))
            for name, job in doc.items() if isinstance(job, dict)
            for key in ("before_script", "script", "after_script") if key in job]


def scripts_of(doc: dict[str, Any]) -> list[Script]:
    return github_scripts(doc) if is_github(doc) else gitlab_scripts(doc)


# --------------------------------------------------------------------------- dtchat invocations

@dataclass(frozen=True)
class Invocation:
    line: str               # the logical shell line (continuations joined)
    args: tuple[str, ...]   # the words after `dtchat`


def _logical_lines(script: str) -> Iterator[tuple[str, list[str]]]:
    """Tokens per logical line: continuations joined, a quote spanning lines kept whole."""
    pending = ""
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
    return {name: p for p in command.params if isinstance(p, click.Option)
            for name in (*p.opts, *p.secondary_opts)}


def _takes_value(option: click.Option) -> bool:
    return not (option.is_flag or option.count)


def _bad_value(option: click.Option, name: str, value: str) -> Optional[str]:
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
    return problems + _check_options(cli.commands[name], f"dtchat {name}", list(args[i + 1:]))


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
            problems += [f"{path.relative_to(ROOT)}:{line_number(text, inv)} ({script.where}): {p}\n    {inv.line}"
                         for p in check_invocation(inv.args)]
    assert not problems, "\n".join(problems)
    used = {next(a for a in inv.args if not a.startswith("-")) for inv in found}
    assert {"validate", "plan", "apply", "drift"} <= used, f"{path}: covers only {sorted(used)}"


def test_the_checker_finds_invocations_and_names_the_unknown_flag():
    script = ("code=0\n"
              "NO_COLOR=1 dtchat --max-qps 5 --no-color plan chats/ \\\n"
              "  --format=markdown --bogus > plan.md 2>&1 || code=$?\n"
              "echo dtchat plan --not-a-command | tee x; if dtchat validate \"$DIR\"; then :; fi\n"
              "git commit -m 'dtchat --fake'\n"
              "out=$(dtchat --sandbox frobnicate --state \"$STATE\")\n"
              "dtchat plan chats/ --format yaml\n")
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


def test_github_triggers_permissions_and_concurrency():
    doc = load(GITHUB)
    on = doc[True]
    assert on["pull_request"]["paths"][0] == "chats/**"
    assert on["push"]["branches"] == ["main"]
    assert on["schedule"] and "workflow_dispatch" in on
    assert doc["permissions"] == {}, "least privilege: no default token permissions"
    assert github_job("plan")["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert github_job("apply")["permissions"] == {"contents": "write"}
    assert github_job("drift")["permissions"] == {"contents": "read"}
    assert github_job("apply")["concurrency"]["cancel-in-progress"] is False


def test_github_secrets_reach_dtchat_only_through_step_env():
    doc = load(GITHUB)
    for script in github_scripts(doc):
        assert "secrets." not in script.text, f"{script.where}: a secret inside a run script"
    for job_id, job in doc["jobs"].items():
        assert "secrets." not in json.dumps(job.get("env", {})), f"jobs.{job_id}.env holds a secret"
        for step in job["steps"]:
            talks_to_dingtalk = [inv for inv in invocations(step.get("run", "")) if "validate" not in inv.args]
            if talks_to_dingtalk:
                assert step["env"] == {"DINGTALK_APP_KEY": "${{ secrets.DINGTALK_APP_KEY }}",
                                       "DINGTALK_APP_SECRET": "${{ secrets.DINGTALK_APP_SECRET }}"}


def test_github_state_commit_runs_even_when_apply_failed():
    condition = github_step("apply", "commit-state")["if"]
    assert "!cancelled()" in condition or "always()" in condition
    assert "steps.apply" not in condition


# --------------------------------------------------------------------------- running the steps

class Shell:
    """Runs CI scripts with bash as the CI does (-e, pipefail), a `dtchat` on PATH, CI variables set."""

    def __init__(self, root: Path, api_base: str = "http://127.0.0.1:9") -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.output = root / "github_output"
        self.summary = root / "step_summary"
        self.env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C.UTF-8",
            "PYTHONPATH": str(ROOT), "NO_COLOR": "1",
            "DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "DINGTALK_API_BASE": api_base,
            "GITHUB_OUTPUT": str(self.output), "GITHUB_STEP_SUMMARY": str(self.summary),
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
            "CI_API_V4_URL": "https://gitlab.example.com/api/v4", "CI_PROJECT_ID": "42",
            "CI_MERGE_REQUEST_IID": "7", "CI_DEFAULT_BRANCH": "main", "CI_SERVER_HOST": "gitlab.example.com",
            "CI_COMMIT_SHORT_SHA": "01234567", "DTCHAT_NOTE_TOKEN": "note-token", "DTCHAT_PUSH_TOKEN": "push-token",
        }
        self.tool("dtchat", f'exec "{sys.executable}" -m reconciler "$@"')

    def tool(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def stub(self, name: str, exit_code: int) -> Path:
        """Replace NAME by a stub that logs its arguments and exits with EXIT_CODE."""
        log = self.bin / f"{name}.log"
        self.tool(name, f'printf "%s\\n" "$*" >> "{log}"\necho "{name} stub output"\nexit {exit_code}')
        return log

    def run(self, script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
        self.output.write_text("")
        return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd,
                              env={**self.env, **env}, capture_output=True, text=True, timeout=60)

    def outputs(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.output.read_text().splitlines())


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                          env={**os.environ, "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"},
                          capture_output=True, text=True, check=True)
    return proc.stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A clone of a bare 'origin' whose main holds chats/ with two small chats."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(remote), str(work))
    git(work, "symbolic-ref", "HEAD", "refs/heads/main")
    write_config(work / "chats", {
        "eng-oncall": {"name": "工程值班", "owner": "alice", "members": ["alice", "bob"],
                       "settings": {"muted": True}},
        "sales": {"name": "销售", "owner": "carol", "members": ["carol", "dave", "erin"]},
    })
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "chats")
    git(work, "push", "--quiet", "origin", "main")
    return work


def gitlab_job_script(name: str) -> str:
    return "\n".join(gitlab_lines(load(GITLAB)[name]["script"]))


def test_github_plan_apply_commit_and_drift_against_the_emulator(tmp_path, repo, emulator):
    sh = Shell(tmp_path, emulator.url)
    plan, apply = github_step("plan", "plan")["run"], github_step("apply", "apply")["run"]
    commit, drift = github_step("apply", "commit-state")["run"], github_step("drift", "drift")["run"]

    proc = sh.run(plan, repo)
    assert proc.returncode == 0, proc.stderr  # exit 2 ("changes") is not a failure in the PR job
    assert sh.outputs()["exitcode"] == "2"
    markdown = (repo / "plan.md").read_text(encoding="utf-8")
    assert markdown.startswith("### dtchat plan") and "`eng-oncall`" in markdown
    assert json.loads((repo / "plan.json").read_text(encoding="utf-8"))["format_version"] == 1
    assert emulator.counters().get("/chat/create", 0) == 0

    proc = sh.run(apply, repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    created = state_of(repo / STATE)
    assert sorted(created) == ["eng-oncall", "sales"]

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
    proc = sh.run(drift, repo)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # drift alerts
    assert "::error" in proc.stdout
    assert sh.summary.read_text(encoding="utf-8").strip(), "the drift report is in the job summary"


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


@pytest.mark.parametrize("code, ok", [(0, True), (2, True), (1, False)])
def test_gitlab_plan_posts_the_note_and_fails_only_on_errors(tmp_path, code, ok):
    sh = Shell(tmp_path)
    sh.stub("dtchat", code)
    curl = sh.stub("curl", 0)
    proc = sh.run(gitlab_job_script("dtchat-plan"), tmp_path)
    assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    posted = curl.read_text()
    assert "body@plan.md" in posted and "PRIVATE-TOKEN: note-token" in posted
    assert "https://gitlab.example.com/api/v4/projects/42/merge_requests/7/notes" in posted


def test_gitlab_apply_commits_the_state_file_against_the_emulator(tmp_path, repo, emulator):
    sh = Shell(tmp_path, emulator.url)
    git(repo, "checkout", "--quiet", "--detach")  # GitLab runs jobs on a detached HEAD
    proc = sh.run(gitlab_job_script("dtchat-apply"), repo, CI_PROJECT_URL=str(tmp_path / "remote"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = json.loads(git(tmp_path / "remote.git", "show", f"main:{STATE}"))
    assert sorted(pushed["chats"]) == ["eng-oncall", "sales"]
    assert "push-token" not in (repo / ".git" / "config").read_text()
