"""The GitHub Action (action.yml), the pre-commit hook (.pre-commit-hooks.yaml) and docs/ci.md stay honest.

Each manifest is validated against a JSON Schema of its format, written from the format's own
documentation and kept as a test fixture (tests/fixtures/*.schema.json), then checked for what a schema
cannot say: the action's inputs are all declared and reach its script only through env; its run step
works (bash, against the emulator); the hook's entry is dtchat's console script with a valid invocation,
and validating a folder is what the hook must do. Every dtchat invocation in docs/ci.md uses the real CLI.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_ci_examples import ROOT, Shell, check_invocation, invocations

from helpers import write_config

FIXTURES = ROOT / "tests" / "fixtures"
ACTION = ROOT / "action.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
DOCS = ROOT / "docs" / "ci.md"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def schema(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def errors(document: Any, schema_name: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema(schema_name))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def action() -> dict[str, Any]:
    return yaml.safe_load(ACTION.read_text(encoding="utf-8"))


def hooks() -> list[dict[str, Any]]:
    return yaml.safe_load(HOOKS.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the schemas themselves


@pytest.mark.parametrize("name", ["github-action.schema.json", "pre-commit-hooks.schema.json"])
def test_the_fixture_schemas_are_valid_json_schemas(name):
    jsonschema.Draft202012Validator.check_schema(schema(name))


def test_the_action_schema_rejects_what_github_rejects():
    good = {
        "name": "x",
        "description": "d",
        "runs": {"using": "composite", "steps": [{"run": "true", "shell": "bash"}]},
    }
    assert errors(good, "github-action.schema.json") == []
    bad = [
        {**good, "description": None},  # required, a string
        {k: v for k, v in good.items() if k != "description"},
        {**good, "runs": {"using": "composite", "steps": [{"run": "true"}]}},  # composite run: shell
        {**good, "runs": {"using": "composite", "steps": [{"run": "true", "shell": "bash", "uses": "a/b@v1"}]}},
        {**good, "inputs": {"x": {"required": True}}},  # input description
        {**good, "inputs": {"x": {"description": "d", "type": "string"}}},  # no such key
        {**good, "outputs": {"o": {"description": "d"}}},  # composite: value
        {**good, "branding": {"color": "pink"}},
        {**good, "runs": {"using": "node12", "main": "index.js"}},  # retired runtime
    ]
    for document in bad:
        assert errors(document, "github-action.schema.json"), document


def test_the_hook_schema_rejects_what_pre_commit_rejects():
    good = [{"id": "x", "name": "x", "entry": "x", "language": "python"}]
    assert errors(good, "pre-commit-hooks.schema.json") == []
    for hook in (
        {"name": "x", "entry": "x", "language": "python"},
        {**good[0], "language": "cobol"},
        {**good[0], "pass_filenames": "false"},
        {**good[0], "args": "chats/"},
        {**good[0], "stages": ["before-commit"]},
        {**good[0], "file": r"\.yaml$"},
    ):
        assert errors([hook], "pre-commit-hooks.schema.json"), hook
    assert errors([], "pre-commit-hooks.schema.json")


# --------------------------------------------------------------------------- action.yml


def test_action_yml_is_valid_action_metadata():
    assert errors(action(), "github-action.schema.json") == []


def test_action_is_composite_sets_up_python_installs_itself_and_runs_dtchat():
    doc = action()
    assert doc["runs"]["using"] == "composite"
    steps = doc["runs"]["steps"]
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "${{ inputs.python-version }}"
    install = next(s for s in steps if s.get("id") == "install")
    assert install["env"]["DTCHAT_ACTION_PATH"] == "${{ github.action_path }}"
    assert 'pip install --quiet --disable-pip-version-check "$DTCHAT_ACTION_PATH"' in install["run"]
    assert doc["inputs"]["command"]["required"] is True
    assert {"command", "args", "python-version", "working-directory"} <= set(doc["inputs"])
    assert doc["outputs"]["exit-code"]["value"] == "${{ steps.run.outputs.exit-code }}"
    run = next(s for s in steps if s.get("id") == "run")
    assert run["working-directory"] == "${{ inputs.working-directory }}"
    assert 'echo "exit-code=$code" >> "$GITHUB_OUTPUT"' in run["run"]


def test_action_inputs_are_declared_and_reach_scripts_only_through_env():
    doc = action()
    declared = set(doc["inputs"])
    text = ACTION.read_text(encoding="utf-8")
    used = {name for m in EXPRESSION.finditer(text) for name in re.findall(r"\binputs\.([\w-]+)", m.group(1))}
    assert used <= declared, f"undeclared inputs used: {used - declared}"
    assert declared <= used, f"declared but never used: {declared - used}"
    for step in doc["runs"]["steps"]:
        assert not EXPRESSION.search(step.get("run", "")), (
            f"{step.get('name')}: an expression inside `run:` is script injection; pass it through env"
        )
        for key in ("DINGTALK_APP_KEY", "DINGTALK_APP_SECRET"):
            assert key not in json.dumps(step), "credentials come from the caller's env, untouched"
    assert not {"app-key", "app-secret", "dingtalk-app-key", "dingtalk-app-secret"} & declared


class ActionRunner:
    """Runs the action's `Run dtchat` step as the runner would: its env rendered, bash -eo pipefail."""

    def __init__(self, tmp_path: Path, api_base: str = "http://127.0.0.1:9") -> None:
        self.sh = Shell(tmp_path, api_base)
        self.venv = tmp_path / "venv"
        (self.venv / "bin").mkdir(parents=True)
        (self.venv / "bin" / "python").symlink_to(sys.executable)
        dtchat = self.venv / "bin" / "dtchat"
        dtchat.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reconciler "$@"\n', encoding="utf-8")
        dtchat.chmod(0o755)
        self.step = next(s for s in action()["runs"]["steps"] if s.get("id") == "run")

    def render(self, value: str, inputs: dict[str, str]) -> str:
        def evaluate(match: re.Match) -> str:
            expr = match.group(1)
            if expr.startswith("inputs."):
                return inputs[expr.split(".", 1)[1]]
            if expr == "steps.install.outputs.venv":
                return str(self.venv)
            raise AssertionError(f"the test does not know {expr}")

        return EXPRESSION.sub(evaluate, value)

    def run(self, cwd: Path, **given: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
        doc = action()
        inputs = {name: spec.get("default", "") for name, spec in doc["inputs"].items()}
        inputs.update({k.replace("_", "-"): v for k, v in given.items()})
        env = {k: self.render(str(v), inputs) for k, v in self.step["env"].items()}
        workdir = cwd / self.render(self.step["working-directory"], inputs)
        proc = self.sh.run(self.step["run"], workdir, RUNNER_TEMP=str(cwd), **env)
        return proc, self.sh.outputs()


def test_action_runs_validate_and_reports_the_exit_code(tmp_path):
    runner = ActionRunner(tmp_path)
    write_config(tmp_path / "chats", {"eng": {"name": "工程", "owner": "alice", "members": ["bob"]}})
    proc, outputs = runner.run(tmp_path, command="validate", args="chats/")
    assert proc.returncode == 0 and outputs["exit-code"] == "0", proc.stdout + proc.stderr

    write_config(tmp_path / "chats", {"eng": {"name": "工程", "owner": "alice", "members": ["@nope"]}})
    proc, outputs = runner.run(tmp_path, command="validate", args="chats/ --format github")
    assert proc.returncode == 1 and outputs["exit-code"] == "1"
    assert "::error file=chats/chats.yaml,line=" in proc.stdout
    assert "::error title=dtchat::dtchat exited with code 1" in proc.stdout


def test_action_plan_with_ok_exit_codes_output_file_and_working_directory(tmp_path, emulator):
    runner = ActionRunner(tmp_path, emulator.url)
    work = tmp_path / "repo"
    write_config(work / "config" / "chats", {"eng": {"name": "工程", "owner": "alice", "members": ["bob"]}})
    proc, outputs = runner.run(
        tmp_path,
        command="plan",
        working_directory="repo",
        args="config/chats --format markdown --detailed-exitcode",
        output_file="plan.md",
        ok_exit_codes="0 2",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outputs["exit-code"] == "2"
    plan = (work / "plan.md").read_text(encoding="utf-8")
    assert plan.startswith("### dtchat plan") and plan.strip() in proc.stdout, "written and still logged"

    proc, outputs = runner.run(
        tmp_path, command="plan", working_directory="repo", args="config/chats --detailed-exitcode"
    )
    assert proc.returncode == 1 and outputs["exit-code"] == "2", "exit 2 fails unless listed in ok-exit-codes"


def test_action_args_are_split_like_a_shell_but_never_expanded(tmp_path):
    runner = ActionRunner(tmp_path)
    folder = tmp_path / "my chats"
    write_config(folder, {"eng": {"name": "工程", "owner": "alice", "members": ["bob"]}})
    proc, outputs = runner.run(tmp_path, command="validate", args="'my chats' --format json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["valid"] is True

    proc, outputs = runner.run(tmp_path, command="validate", args='"$(touch pwned)" `touch pwned2` $HOME *')
    assert outputs["exit-code"] == "1" and proc.returncode == 1
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert "$(touch pwned)" in proc.stderr or "$(touch pwned)" in proc.stdout, "passed on literally"


# --------------------------------------------------------------------------- .pre-commit-hooks.yaml


def test_pre_commit_hooks_is_a_valid_manifest():
    assert errors(hooks(), "pre-commit-hooks.schema.json") == []
    for hook in hooks():
        for key in ("files", "exclude"):
            if key in hook:
                re.compile(hook[key])  # pre-commit compiles them with Python's re


def test_the_validate_hook_runs_dtchat_validate_on_the_config_folder():
    [hook] = [h for h in hooks() if h["id"] == "dtchat-validate"]
    assert hook["language"] == "python", "pre-commit pip-installs this repository for the hook"
    command = shlex.split(hook["entry"])
    scripts = re.search(r"^\[project\.scripts\]\n((?:[^\[\n].*\n|\n)*)", (ROOT / "pyproject.toml").read_text(), re.M)
    assert scripts and re.search(rf"^{re.escape(command[0])}\s*=", scripts.group(1), re.M), (
        "the entry is a console script of this package"
    )
    assert check_invocation(tuple(command[1:] + hook["args"])) == []
    assert command[1:] == ["validate"] and hook["args"] == ["chats/"]
    assert hook["pass_filenames"] is False, "a file alone cannot be validated: see the next test"
    files = re.compile(hook["files"])
    assert files.search("chats/eng.yaml") and files.search("chats/x.yml") and not files.search("README.md")


def test_a_changed_file_alone_is_not_enough_to_validate(tmp_path):
    """Why the hook takes the folder: groups live in other files, and keys must be unique across files."""
    chats = tmp_path / "chats"
    chats.mkdir()
    (chats / "groups.yaml").write_text("version: 1\ngroups:\n  sre: [alice, bob]\nchats: {}\n", encoding="utf-8")
    (chats / "eng.yaml").write_text(
        "version: 1\nchats:\n  eng:\n    name: 工程\n    owner: alice\n    members: ['@sre']\n", encoding="utf-8"
    )

    def validate(*paths: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "validate", *paths],
            cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), "NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        ).returncode

    assert validate("chats/eng.yaml") == 1, "alone, @sre is undefined"
    assert validate("chats/") == 0
    (chats / "copy.yaml").write_text(  # the key `eng` again, in a file that is valid on its own
        "version: 1\nchats:\n  eng:\n    name: 工程\n    owner: alice\n    members: [bob]\n", encoding="utf-8"
    )
    assert validate("chats/copy.yaml") == 0, "alone, the duplicate key is invisible"
    assert validate("chats/") == 1


def test_the_hook_command_passes_a_valid_folder_and_fails_a_broken_one(tmp_path):
    [hook] = [h for h in hooks() if h["id"] == "dtchat-validate"]
    command = [sys.executable, "-m", "reconciler", *shlex.split(hook["entry"])[1:], *hook["args"]]
    env = {"PYTHONPATH": str(ROOT), "NO_COLOR": "1", "PATH": "/usr/bin:/bin"}
    write_config(tmp_path / "chats", {"eng": {"name": "工程", "owner": "alice", "members": ["bob"]}})
    assert subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=60).returncode == 0
    write_config(tmp_path / "chats", {"eng": {"name": "工程", "owner": "alice", "members": ["@nope"]}})
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "chats/chats.yaml:" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- docs/ci.md


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOCS.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_docs_yaml_blocks_parse_and_use_the_action_as_declared():
    blocks = [yaml.safe_load(b) for b in code_blocks("yaml")]
    assert blocks, "docs/ci.md shows the action and the hook"
    inputs = action()["inputs"]
    required = {name for name, spec in inputs.items() if spec.get("required")}
    uses = [
        step
        for block in blocks
        if "jobs" in block
        for job in block["jobs"].values()
        for step in job["steps"]
        if re.fullmatch(r"[\w.-]+/dtchat@v\d+", step.get("uses", ""))
    ]
    assert len(uses) >= 3
    for step in uses:
        given = step.get("with", {})
        assert required <= set(given) and set(given) <= set(inputs), given
        args = (given["command"], *shlex.split(given.get("args", "")))
        assert check_invocation(args) == [], args
        if "DINGTALK_APP_KEY" in json.dumps(step.get("env", {})):
            assert step["env"]["DINGTALK_APP_SECRET"] == "${{ secrets.DINGTALK_APP_SECRET }}"
    hook_config = next(b for b in blocks if "repos" in b)
    [hook] = hook_config["repos"][0]["hooks"]
    assert hook["id"] in {h["id"] for h in hooks()}


def test_every_dtchat_invocation_in_the_docs_uses_the_real_cli():
    found = [inv for language in ("sh", "yaml") for block in code_blocks(language) for inv in invocations(block)]
    inline = [t for t in re.findall(r"`(dtchat [^`]+)`", DOCS.read_text(encoding="utf-8")) if "<" not in t]
    found += [inv for text in inline for inv in invocations(text.replace("…", "x"))]
    assert len(found) >= 5
    problems = [f"{inv.line}: {p}" for inv in found for p in check_invocation(inv.args)]
    assert not problems, "\n".join(problems)
