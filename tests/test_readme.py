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
