"""Shared helpers for the benchmarks: an emulator with faults, in-sync fixtures, a table printer.

The benches are plain scripts (``python bench/bench_plan.py``), not pytest:
they print figures for a person to read. They drive the library directly so
the figures are dtchat's own, not a subprocess's start-up time.
"""
from __future__ import annotations

import contextlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from reconciler.dingtalk import DingTalkClient  # noqa: E402
from reconciler.emulator import EmulatorServer  # noqa: E402
from reconciler.emulator.server import Call  # noqa: E402
from reconciler.rules import settings_to_api  # noqa: E402
from reconciler.state import FORMAT as STATE_FORMAT, VERSION as STATE_VERSION  # noqa: E402

APP_KEY = "bench-app-key"
APP_SECRET = "bench-app-secret-not-for-output"
#: errcode the emulator answers when its per-endpoint sliding 1 s window is full.
RATE_LIMITED = 90018
#: Settings every seeded chat declares (YAML names and values), so "in sync" covers settings too.
BENCH_SETTINGS = {"muted": True, "mention_all": "owner", "searchable": False}


@contextlib.contextmanager
def emulator(latency_ms: float = 0, qps_limit: float = 0) -> Iterator[EmulatorServer]:
    """A running emulator on a free loopback port with the given latency and per-endpoint limit."""
    server = EmulatorServer(host="127.0.0.1", port=0, app_key=APP_KEY, app_secret=APP_SECRET)
    server.faults.latency_ms = latency_ms
    server.faults.qps_limit = qps_limit
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client_for(server: EmulatorServer, *, max_qps: float, pool_size: int = 32) -> DingTalkClient:
    """A dtchat client with production retry/backoff settings, bound to ``server``."""
    return DingTalkClient(APP_KEY, APP_SECRET, api_base=server.url, max_qps=max_qps, pool_size=pool_size)


def cli_env() -> dict[str, str]:
    """Environment variables that give ``python -m reconciler`` the bench app's credentials."""
    return {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "NO_COLOR": "1"}


@dataclass(frozen=True)
class Fixture:
    """Where the YAML and state of a seeded set of chats live, and their chatids in key order."""

    config: Path
    state: Path
    chatids: tuple[str, ...]


def seed_in_sync(server: EmulatorServer, folder: Path, n: int, *, members: tuple[int, int] = (20, 50),
                 seed: int = 1) -> Fixture:
    """Seed ``n`` chats in the emulator and write the YAML and state file that match them exactly."""
    rng = random.Random(seed)
    api_settings = settings_to_api(BENCH_SETTINGS)
    chats: dict[str, dict] = {}
    bindings: dict[str, str] = {}
    chatids = []
    for i in range(n):
        key = f"chat-{i:05d}"
        people = [f"u{x:05d}" for x in rng.sample(range(20_000), rng.randint(*members))]
        name = f"群 {i}"
        chatid = server.seed_chat(name, people[0], people, **api_settings)
        chats[key] = {"name": name, "owner": people[0], "members": people, "settings": dict(BENCH_SETTINGS)}
        bindings[key] = chatid
        chatids.append(chatid)
    config, state = write_fixture(folder, chats, bindings)
    return Fixture(config=config, state=state, chatids=tuple(chatids))


def write_fixture(folder: Path, chats: Mapping[str, Mapping[str, Any]],
                  bindings: Mapping[str, str]) -> tuple[Path, Path]:
    """Write ``chats.yaml`` (the ``chats:`` mapping) and a state file binding key -> chatid."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "chats.yaml"
    doc = {"version": 1, "chats": {k: dict(v) for k, v in chats.items()}}
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    config.write_text(yaml.dump(doc, Dumper=dumper, allow_unicode=True, sort_keys=False), encoding="utf-8")
    state = folder / "dtchat.state.json"
    entries = {k: {"chatid": cid} for k, cid in bindings.items()}
    state.write_text(json.dumps({"format": STATE_FORMAT, "version": STATE_VERSION, "chats": entries}), encoding="utf-8")
    return config, state


def calls_since(server: EmulatorServer, mark: int) -> list[Call]:
    """The calls the server logged after ``mark`` (a previous ``len(server.calls)``)."""
    return [c for c in server.calls if c.seq > mark]


def count_errcode(calls: Sequence[Call], errcode: int) -> int:
    return sum(1 for c in calls if c.errcode == errcode)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]],
                note: Optional[str] = None) -> None:
    """Print a plain fixed-width table (right-aligned numbers, left-aligned text)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    print(f"\n{title}")
    print(line(list(headers)))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))
    if note:
        print(note)
    sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
