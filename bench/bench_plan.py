"""How long ``plan`` takes for chats already in sync, against DingTalk's rate limit.

Run by hand: ``python bench/bench_plan.py [--quick]`` (``--quick``: 100 chats only;
the full run adds 1,000 chats and takes about four minutes).

The emulator adds 30 ms to every request. Two regimes:

(a) the server allows 20 calls/s per endpoint (errcode 90018 beyond) and the
    client runs at its default 20 calls/s: the plan should take no longer than
    the rate bound (chats / 20 s) allows, ratio <= 1.15, and provoke no 90018.
(b) the server allows 200 calls/s: dtchat (max_qps 200, parallelism 8/16)
    against a naive sequential loop of the seed SDK's ``chat.get``: >= 5x.

Each configuration is also run once through the CLI (``python -m reconciler``)
to show it reaches the library's figure (plus interpreter start-up).
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    APP_KEY, APP_SECRET, RATE_LIMITED, Fixture, calls_since, cli_env, client_for, count_errcode, emulator,
    print_table, seed_in_sync,
)

from reconciler.config import load_config
from reconciler.manager import Manager
from reconciler.rules import DEFAULT_QPS
from reconciler.state import StateFile

LATENCY_MS = 30
GENEROUS_QPS = 200.0
DEFAULT_PARALLELISM = 8
RATIO_TARGET = 1.15
SPEEDUP_TARGET = 5.0
#: The emulator counts calls in a sliding 1 s window: wait it out between runs so they do not interfere.
WINDOW_REST = 1.1


@dataclass(frozen=True)
class Run:
    how: str
    max_qps: float
    parallelism: int
    wall: float
    rate_limited: int
    gets: int


def rest() -> None:
    time.sleep(WINDOW_REST)


def via_library(server, fixture: Fixture, *, max_qps: float, parallelism: int, how: str = "library") -> Run:
    """``Manager.plan`` as the CLI calls it: load, state, client, plan (all timed)."""
    rest()
    mark = len(server.calls)
    started = time.perf_counter()
    config = load_config([fixture.config])
    state = StateFile(fixture.state)
    with client_for(server, max_qps=max_qps, pool_size=max(parallelism, 4)) as client:
        plan = Manager(client, parallelism=parallelism).plan(config, state)
    wall = time.perf_counter() - started
    if plan.has_changes or plan.has_errors:
        raise SystemExit(f"bench fixture is not in sync: {plan.summary()}")
    calls = calls_since(server, mark)
    return Run(how, max_qps, parallelism, wall, count_errcode(calls, RATE_LIMITED),
               sum(1 for c in calls if c.endpoint == "/chat/get"))


def via_cli(server, fixture: Fixture, *, max_qps: float, parallelism: int) -> Run:
    """``python -m reconciler plan --detailed-exitcode``: exit 0 proves "no changes"."""
    rest()
    mark = len(server.calls)
    argv = [sys.executable, "-m", "reconciler", "--api-base", server.url, "--max-qps", f"{max_qps:g}",
            "plan", str(fixture.config), "--state", str(fixture.state), "--parallelism", str(parallelism),
            "--detailed-exitcode"]
    env = {**os.environ, **cli_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"CLI plan exited {done.returncode}: {done.stderr.strip()[-500:]}")
    calls = calls_since(server, mark)
    return Run("CLI", max_qps, parallelism, wall, count_errcode(calls, RATE_LIMITED),
               sum(1 for c in calls if c.endpoint == "/chat/get"))


def via_seed_sdk(server, fixture: Fixture) -> Run:
    """The naive baseline: the seed SDK, one ``chat.get`` after another."""
    from dingtalk.client import AppKeyClient

    rest()
    mark = len(server.calls)
    started = time.perf_counter()
    sdk = AppKeyClient(corp_id="x", app_key=APP_KEY, app_secret=APP_SECRET)
    sdk.API_BASE_URL = server.url + "/"
    for chatid in fixture.chatids:
        sdk.chat.get(chatid)
    wall = time.perf_counter() - started
    calls = calls_since(server, mark)
    return Run("seed SDK, sequential", 0, 1, wall, count_errcode(calls, RATE_LIMITED),
               sum(1 for c in calls if c.endpoint == "/chat/get"))


def limited_regime(n: int, parallelisms: list[int], *, with_cli: bool) -> list[list[object]]:
    """Regime (a): server and client both at the default 20 calls/s."""
    runs = []
    with emulator(LATENCY_MS, DEFAULT_QPS) as server, tempfile.TemporaryDirectory() as tmp:
        fixture = seed_in_sync(server, Path(tmp), n)
        for p in parallelisms:
            runs.append(via_library(server, fixture, max_qps=DEFAULT_QPS, parallelism=p))
        if with_cli:
            runs.append(via_cli(server, fixture, max_qps=DEFAULT_QPS, parallelism=DEFAULT_PARALLELISM))
    bound = n / DEFAULT_QPS
    return [[n, r.how, r.max_qps, r.parallelism, r.gets, r.wall, bound, r.wall / bound, r.rate_limited,
             "yes" if r.wall / bound <= RATIO_TARGET and r.rate_limited == 0 else "NO"] for r in runs]


def generous_regime(n: int, parallelisms: list[int], *, with_cli: bool) -> list[list[object]]:
    """Regime (b): server at 200 calls/s; dtchat against the seed SDK's sequential loop."""
    with emulator(LATENCY_MS, GENEROUS_QPS) as server, tempfile.TemporaryDirectory() as tmp:
        fixture = seed_in_sync(server, Path(tmp), n)
        baseline = via_seed_sdk(server, fixture)
        runs = [via_library(server, fixture, max_qps=GENEROUS_QPS, parallelism=p) for p in parallelisms]
        if with_cli:
            runs.append(via_cli(server, fixture, max_qps=GENEROUS_QPS, parallelism=max(parallelisms)))
    bound = n / GENEROUS_QPS
    rows: list[list[object]] = [[n, baseline.how, "-", 1, baseline.gets, baseline.wall, bound,
                                 baseline.wall / bound, baseline.rate_limited, 1.0, "-"]]
    for r in runs:
        speedup = baseline.wall / r.wall
        rows.append([n, r.how, r.max_qps, r.parallelism, r.gets, r.wall, bound, r.wall / bound, r.rate_limited,
                     speedup, "yes" if speedup >= SPEEDUP_TARGET and r.rate_limited == 0 else "NO"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 100-chat case")
    args = parser.parse_args()
    logging.getLogger("reconciler").setLevel(logging.ERROR)  # retries are counted in the table instead
    sizes = [100] if args.quick else [100, 1000]

    limited: list[list[object]] = []
    generous: list[list[object]] = []
    for n in sizes:
        # The 1,000-chat case takes ~50 s per run at 20 calls/s: run the default parallelism only.
        parallelisms = [1, 4, DEFAULT_PARALLELISM, 16] if n <= 100 else [DEFAULT_PARALLELISM]
        limited += limited_regime(n, parallelisms, with_cli=True)
        generous += generous_regime(n, [DEFAULT_PARALLELISM, 16], with_cli=True)

    print_table(
        f"(a) plan, chats in sync; server limit {DEFAULT_QPS:g} calls/s per endpoint, {LATENCY_MS} ms latency",
        ["chats", "run", "max_qps", "par", "gets", "wall s", "bound s", "ratio", "90018", "target met"],
        limited,
        note=f"bound = chats / {DEFAULT_QPS:g} s; targets: ratio <= {RATIO_TARGET}, 0 x 90018. "
             "'gets' counts retries too. CLI wall includes interpreter start-up.",
    )
    print_table(
        f"(b) plan, chats in sync; server limit {GENEROUS_QPS:g} calls/s per endpoint, {LATENCY_MS} ms latency",
        ["chats", "run", "max_qps", "par", "gets", "wall s", "bound s", "ratio", "90018", "speed-up", "target met"],
        generous,
        note=f"speed-up = seed SDK wall / dtchat wall; target >= {SPEEDUP_TARGET:g}x with 0 x 90018.",
    )


if __name__ == "__main__":
    main()
