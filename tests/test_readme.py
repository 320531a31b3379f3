"""The README's quickstart works verbatim: every command in its block, in a fresh folder."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- quickstart:.*?-->\s*```sh\n(.*?)```", text, re.S)
    assert block, "README has no quickstart block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip().startswith("dtchat ")]


def test_readme_quickstart_runs_verbatim_and_converges(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINGTALK_")}
    env["NO_COLOR"] = "1"
    env["PYTHONPATH"] = str(ROOT)  # the checkout under test, installed or not
    commands = quickstart_commands()
    assert len(commands) >= 3
    outputs = []
    for command in commands:
        argv = [sys.executable, "-m", "reconciler", *shlex.split(command)[1:]]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)
    assert "to create" in outputs[1]
    assert "No changes." in outputs[-1]
    # The sandbox keeps its own state: nothing was written beside the examples.
    assert not (tmp_path / "examples" / "chats" / "dtchat.state.json").exists()
    assert (tmp_path / ".dtchat-sandbox" / "dtchat.state.json").exists()


def _setup_line(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(rf"<!-- {marker}:.*?-->\s*```sh\n(.*?)\n```", text, re.S)
    assert block, f"README has no {marker} block"
    (line,) = block.group(1).strip().splitlines()
    return line


def test_readme_setup_runs_verbatim_in_a_fresh_copy_with_no_python_command(tmp_path):
    """Both set-up lines, pasted as is, in a copy of the tracked files, with `python` absent from PATH.

    The test line's own pytest run is narrowed to one small file through PYTEST_ADDOPTS (the line itself is
    unchanged), so the suite does not run itself recursively.
    """
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tmp_path / name)
        elif source.is_symlink():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).symlink_to(os.readlink(source))
    bin_dir = tmp_path / "bin-without-python"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)  # a system python3, and no `python` command at all
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    env["NO_COLOR"] = "1"
    line = _setup_line("setup-main")
    proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "to create" in proc.stdout
    env["PYTEST_ADDOPTS"] = "tests/test_state.py -p no:cacheprovider"
    tests = subprocess.run(
        ["bash", "-c", _setup_line("setup-tests")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert tests.returncode == 0, tests.stdout[-2000:] + tests.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", tests.stdout), tests.stdout[-2000:]


def test_ci_runs_exactly_the_readmes_test_command():
    line = _setup_line("setup-tests")
    test_command = line.rsplit(" && ", 1)[1].replace(".venv/bin/", "")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command == "python -m pytest"
    assert any(row.strip() == test_command for row in ci.splitlines())
    assert "-e '.[test]'" in line and "-e '.[test]'" in ci
