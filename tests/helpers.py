"""Test helpers: write YAML configs and run the real CLI against the emulator."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml
from click.testing import CliRunner, Result

from reconciler.cli import cli

from conftest import APP_KEY, APP_SECRET


def write_config(folder: Path, chats: Mapping[str, Mapping[str, Any]], *, name: str = "chats.yaml",
                 groups: Optional[Mapping[str, Sequence[str]]] = None,
                 defaults: Optional[Mapping[str, Any]] = None) -> Path:
    doc: dict[str, Any] = {"version": 1}
    if defaults:
        doc["defaults"] = {"settings": dict(defaults)}
    if groups:
        doc["groups"] = {k: list(v) for k, v in groups.items()}
    doc["chats"] = {k: dict(v) for k, v in chats.items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def dtchat(emulator, *args: str, input: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> Result:
    """Run ``dtchat --api-base <emulator> ARGS`` in-process with the test app's credentials."""
    full_env = {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "NO_COLOR": "1"}
    full_env.update(env or {})
    runner = CliRunner()
    return runner.invoke(cli, ["--api-base", emulator.url, "--max-qps", "1000", *args], input=input,
                         env=full_env, catch_exceptions=False)


def state_of(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v["chatid"] for k, v in data["chats"].items()}


def users(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]
