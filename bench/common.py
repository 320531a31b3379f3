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

from reconciler.backends import API_NAMES, DEFAULT_API, LEGACY, open_backends  # noqa: E402
from reconciler.backends import endpoints as ep  # noqa: E402
from reconciler.backends.fields import to_api  # noqa: E402
from reconciler.backends.packing import IDS_PER_CALL  # noqa: E402
from reconciler.emulator import EmulatorServer  # noqa: E402
from reconciler.emulator.server import Call  # noqa: E402
from reconciler.state import FORMAT as STATE_FORMAT  # noqa: E402
from reconciler.state import VERSION as STATE_VERSION

APP_KEY = "bench-app-key"
APP_SECRET = "bench-app-secret-not-for-output"
#: errcode the emulator answers on the legacy host when its per-endpoint sliding 1 s window is full.
RATE_LIMITED = 90018
#: What the v1.0 host answers instead (HTTP 403 with this ``code``): the same refusal as 90018.
RATE_LIMITED_V1 = "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
#: The token endpoints of both generations (not part of any bench's figures).
TOKEN_PATHS = frozenset({ep.GETTOKEN.path, ep.V1_TOKEN.path})
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


class Client:
    """What ``dtchat`` talks to DingTalk through, for one ``--api``: a Transport (both hosts on ``server``),
    the generation's ChatBackend over it and the Contacts directory (as ``reconciler.connect`` builds them)."""

    def __init__(self, server: EmulatorServer, *, api: str, max_qps: float, pool_size: int = 32) -> None:
        self.api = api
        self.transport, self.backend, self.directory = open_backends(
            api, APP_KEY, APP_SECRET, api_base=server.url, openapi_base=server.url, max_qps=max_qps, pool_size=pool_size
        )

    def manager(self, parallelism: int = 8) -> Any:
        """A ``Manager`` over this client's backend and directory."""
        from reconciler.manager import Manager

        return Manager(self.backend, self.directory, parallelism=parallelism)

    @property
    def stats(self) -> dict:
        return self.transport.stats

    def rate(self, path: str) -> float:
        return self.transport.rate(path)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_for(server: EmulatorServer, *, max_qps: float, pool_size: int = 32, api: str = DEFAULT_API) -> Client:
    """dtchat's transport (production retry/backoff settings), backend and directory, bound to ``server``."""
    return Client(server, api=api, max_qps=max_qps, pool_size=pool_size)


def add_api_option(parser: Any, *, default: str = DEFAULT_API, help: str | None = None) -> None:
    """``--api v1|legacy`` (default v1, as the CLI): which generation dtchat writes (and gets its token) with."""
    parser.add_argument(
        "--api",
        choices=API_NAMES,
        default=default,
        help=help or f"API generation dtchat speaks (default {default}; the seed SDK rows are always legacy)",
    )


def write_paths(api: str) -> tuple[str, str]:
    """(create path, update path) of ``api``'s write calls: what the emulator logs them under."""
    if api == LEGACY:
        return ep.CHAT_CREATE.path, ep.CHAT_UPDATE.path
    return ep.GROUP_CREATE.path, ep.GROUP_UPDATE.path


def cli_env() -> dict[str, str]:
    """Environment variables that give ``python -m reconciler`` the bench app's credentials."""
    return {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "NO_COLOR": "1"}


def cli_globals(server: EmulatorServer, *, api: str, max_qps: float) -> list[str]:
    """The CLI's global options for ``server``: the generation, both hosts (one emulator) and ``--max-qps``."""
    return ["--api", api, "--api-base", server.url, "--openapi-base", server.url, "--max-qps", f"{max_qps:g}"]


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
    api_settings = to_api(BENCH_SETTINGS)
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
    """Existing chats that each lack one member (one update each) plus chats to create.

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
        """One per existing chat, plus the ``add_useridlist`` updates that fill each new chat (both generations)."""
        return len(self.adds) + sum(create_followups(len(c.members)) for c in self.creates)

    @property
    def write_calls(self) -> int:
        return self.create_calls + self.update_calls


def create_followups(members: int) -> int:
    """Updates after a create of ``members`` (the create carries the owner and 39 others, 40 per update after)."""
    return -(-max(0, members - IDS_PER_CALL) // IDS_PER_CALL)


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
    api_settings = to_api(BENCH_SETTINGS)
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
    """The seed SDK (``dingtalk-sdk==1.3.8``) pointed at ``server``; its error log (with URLs) silenced.

    It speaks only the legacy API (``/gettoken``, ``/chat/*``), so its rows are legacy whatever ``--api`` says.
    """
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
    return {SDK_SETTING_KWARGS[field]: value for field, value in to_api(BENCH_SETTINGS).items()}


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


def replan(server: EmulatorServer, fixture: Fixture, *, api: str = DEFAULT_API):
    """A fresh ``Manager.plan`` (new client, state re-read, every chat read: ``--refresh all``) with the
    emulator's latency and limit off: a check that an apply converged, not a measurement. (The default
    ``--refresh changed`` would not read a chat the apply just converged, and so would prove nothing.)"""
    from reconciler.config import load_config
    from reconciler.manager import REFRESH_ALL
    from reconciler.state import StateFile

    latency, limit = server.faults.latency_ms, server.faults.qps_limit
    server.faults.latency_ms, server.faults.qps_limit = 0, 0
    try:
        with client_for(server, max_qps=0, api=api) as client:
            config, state = load_config([fixture.config]), StateFile(fixture.state)
            return client.manager(parallelism=8).plan(config, state, refresh=REFRESH_ALL)
    finally:
        server.faults.latency_ms, server.faults.qps_limit = latency, limit


def calls_since(server: EmulatorServer, mark: int) -> list[Call]:
    """The calls the server logged after ``mark`` (a previous ``len(server.calls)``)."""
    return [c for c in server.calls if c.seq > mark]


def is_rate_limited(call: Call) -> bool:
    """The emulator refused ``call`` for its per-endpoint limit: 90018 (legacy host) or its v1.0 equivalent."""
    return call.errcode == RATE_LIMITED or call.code == RATE_LIMITED_V1


def count_rate_limited(calls: Sequence[Call]) -> int:
    """How many of ``calls`` were refused for the per-endpoint rate limit (the tables' "90018" columns)."""
    return sum(1 for c in calls if is_rate_limited(c))


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
