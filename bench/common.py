"""Shared helpers for the benchmarks: an emulator with faults, in-sync fixtures, a table printer.

The benches are plain scripts (``python bench/bench_plan.py``), not pytest:
they print figures for a person to read. They drive the library directly so
the figures are dtchat's own, not a subprocess's start-up time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from reconciler.dingtalk import DingTalkClient  # noqa: E402
from reconciler.emulator import EmulatorServer  # noqa: E402
from reconciler.emulator.server import Call  # noqa: E402
from reconciler.rules import BATCH_SIZE, settings_to_api  # noqa: E402
from reconciler.state import FORMAT as STATE_FORMAT  # noqa: E402
from reconciler.state import VERSION as STATE_VERSION

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


def seed_in_sync(
    server: EmulatorServer, folder: Path, n: int, *, members: tuple[int, int] = (20, 50), seed: int = 1
) -> Fixture:
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


@dataclass(frozen=True)
class NewChat:
    """A chat the YAML declares and the state does not know: ``apply`` creates it."""

    key: str
    name: str
    owner: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Workload:
    """Existing chats that each lack one member (one ``/chat/update`` each) plus chats to create.

    ``fixture.chatids`` are the existing chats in key order; ``adds`` holds (key, chatid, userid) for
    each: the one user the YAML adds to it. The YAML and the state are written; the emulator holds
    the live side.
    """

    fixture: Fixture
    adds: tuple[tuple[str, str, str], ...]
    creates: tuple[NewChat, ...]

    def in_key_order(self) -> list[tuple[str, str, str] | NewChat]:
        """Every chat's change in the plan's order (key order): an ``adds`` triple or a NewChat."""
        items: list = [*self.adds, *self.creates]
        return sorted(items, key=lambda item: item.key if isinstance(item, NewChat) else item[0])

    @property
    def create_calls(self) -> int:
        return len(self.creates)

    @property
    def update_calls(self) -> int:
        """One per existing chat, plus the ``add_useridlist`` updates that fill each new chat."""
        return len(self.adds) + sum(create_followups(len(c.members)) for c in self.creates)

    @property
    def write_calls(self) -> int:
        return self.create_calls + self.update_calls


def create_followups(members: int) -> int:
    """Updates after a create of ``members`` (the create carries the owner and 39 others, 40 per update after)."""
    return -(-max(0, members - BATCH_SIZE) // BATCH_SIZE)


def seed_changes(
    server: EmulatorServer,
    folder: Path,
    updates: int,
    creates: int = 0,
    *,
    create_members: int = 440,
    members: tuple[int, int] = (20, 50),
    seed: int = 1,
    creates_last: bool = False,
) -> Workload:
    """Seed ``updates`` chats whose YAML adds one member each, and declare ``creates`` new chats.

    Keys are ``chat-NNNNN`` and the plan runs in key order; the creates are spread evenly through it
    (every 11th chat for 500 + 50) unless ``creates_last``. A new chat of ``create_members`` members
    costs 1 create + ``create_followups(create_members)`` updates (440 -> 1 + 10).
    """
    rng = random.Random(seed)
    api_settings = settings_to_api(BENCH_SETTINGS)
    total = updates + creates
    chats: dict[str, dict] = {}
    bindings: dict[str, str] = {}
    chatids: list[str] = []
    adds: list[tuple[str, str, str]] = []
    new: list[NewChat] = []
    for i in range(total):
        key = f"chat-{i:05d}"
        if creates_last:
            is_create = i >= updates
        else:  # the positions where floor(i * creates / total) steps up: `creates` of them, evenly spaced
            is_create = (i * creates) // total != ((i + 1) * creates) // total
        if is_create:
            people = [f"u{x:05d}" for x in rng.sample(range(20_000), create_members)]
            chat = NewChat(key, f"新群 {i}", people[0], tuple(people))
            new.append(chat)
            chats[key] = {"name": chat.name, "owner": chat.owner, "members": people, "settings": dict(BENCH_SETTINGS)}
            continue
        people = [f"u{x:05d}" for x in rng.sample(range(20_000), rng.randint(*members))]
        name = f"群 {i}"
        chatid = server.seed_chat(name, people[0], people, **api_settings)
        newcomer = f"n{i:05d}"
        chats[key] = {
            "name": name,
            "owner": people[0],
            "members": people + [newcomer],
            "settings": dict(BENCH_SETTINGS),
        }
        bindings[key] = chatid
        chatids.append(chatid)
        adds.append((key, chatid, newcomer))
    config, state = write_fixture(folder, chats, bindings)
    return Workload(Fixture(config, state, tuple(chatids)), tuple(adds), tuple(new))


def write_fixture(
    folder: Path, chats: Mapping[str, Mapping[str, Any]], bindings: Mapping[str, str]
) -> tuple[Path, Path]:
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


#: The seed SDK's keyword for each API setting field. Its create and update send every setting,
#: defaulting the ones not passed to 0, so a faithful loop passes them all.
SDK_SETTING_KWARGS = {
    "chatBannedType": "chat_banned_type",
    "searchable": "searchable",
    "validationType": "validation_type",
    "mentionAllAuthority": "mention_all_authority",
    "managementType": "management_type",
    "showHistoryType": "show_history_type",
}


def sdk_client(server: EmulatorServer):
    """The seed SDK (``dingtalk-sdk==1.3.8``) pointed at ``server``; its error log (with URLs) silenced."""
    try:
        from dingtalk.client import AppKeyClient
    except ImportError:
        raise SystemExit(
            "the seed SDK is not installed: python3 -m pip install 'dingtalk-sdk[cryptography]==1.3.8'"
        ) from None
    logging.getLogger("dingtalk").setLevel(logging.CRITICAL)
    sdk = AppKeyClient(corp_id="x", app_key=APP_KEY, app_secret=APP_SECRET)
    sdk.API_BASE_URL = server.url + "/"
    return sdk


def sdk_settings() -> dict[str, int]:
    """BENCH_SETTINGS as the seed SDK's keyword arguments."""
    return {SDK_SETTING_KWARGS[field]: value for field, value in settings_to_api(BENCH_SETTINGS).items()}


class Timeline:
    """When each API request reached the emulator and when it was answered (``server.on_request``).

    The emulator's call log has no clock; this adds one, so a bench can say how many requests were in
    flight and at what rate they landed.
    """

    def __init__(self, server: EmulatorServer) -> None:
        self._lock = threading.Lock()
        #: (arrived, answered, endpoint, errcode), perf_counter seconds.
        self.entries: list[tuple[float, float, str, int | None]] = []
        server.on_request = self._record

    def _record(self, call: Call) -> None:
        end = time.perf_counter()
        with self._lock:
            self.entries.append((end - call.elapsed_ms / 1000.0, end, call.endpoint, call.errcode))

    def between(
        self, start: float, end: float, endpoints: Collection[str] | None = None
    ) -> list[tuple[float, float, str, int | None]]:
        with self._lock:
            return [e for e in self.entries if start <= e[0] <= end and (endpoints is None or e[2] in endpoints)]

    @staticmethod
    def mean_in_flight(entries: Sequence[tuple[float, float, str, int | None]]) -> float:
        """Average requests the server was working on over the span of ``entries`` (Little's law)."""
        if not entries:
            return 0.0
        span = max(e[1] for e in entries) - min(e[0] for e in entries)
        return sum(e[1] - e[0] for e in entries) / span if span > 0 else 0.0


def replan(server: EmulatorServer, fixture: Fixture):
    """A fresh ``Manager.plan`` (new client, state re-read) with the emulator's latency and limit off:
    a check that an apply converged, not a measurement."""
    from reconciler.config import load_config
    from reconciler.manager import Manager
    from reconciler.state import StateFile

    latency, limit = server.faults.latency_ms, server.faults.qps_limit
    server.faults.latency_ms, server.faults.qps_limit = 0, 0
    try:
        with client_for(server, max_qps=0) as client:
            return Manager(client, parallelism=8).plan(load_config([fixture.config]), StateFile(fixture.state))
    finally:
        server.faults.latency_ms, server.faults.qps_limit = latency, limit


def calls_since(server: EmulatorServer, mark: int) -> list[Call]:
    """The calls the server logged after ``mark`` (a previous ``len(server.calls)``)."""
    return [c for c in server.calls if c.seq > mark]


def count_errcode(calls: Sequence[Call], errcode: int) -> int:
    return sum(1 for c in calls if c.errcode == errcode)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], note: str | None = None) -> None:
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
