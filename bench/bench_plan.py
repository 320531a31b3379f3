"""How long ``plan`` takes for chats already in sync, against DingTalk's rate limit.

Run by hand: ``python bench/bench_plan.py [--api v1|legacy] [--quick] [--chats N] [--scenarios a,b,c,d]``
(``--quick``: 100 chats only in (a) and (b); the full run takes about six minutes; ``--chats N`` runs
every scenario at N chats, a short check of the bench itself: the targets are for the default sizes).

dtchat runs with ``--api`` (default ``v1``, as the CLI): the reads are ``/chat/get`` in both generations
(with the v1.0 token under v1, ``/gettoken``'s under legacy); (d)'s updates go to
``/v1.0/im/group/update`` (v1) or ``/chat/update`` (legacy). The seed SDK baseline in (b) is legacy
whatever ``--api`` says (that SDK speaks nothing else).

(a) 30 ms per call; the server allows 20 calls/s per endpoint (errcode 90018
    beyond; its v1.0 equivalent, HTTP 403 QpsLimitForAppkeyAndApi, on the v1.0
    host, counted with it) and the client runs at its default 20 calls/s: the plan should take
    no longer than the rate bound (chats / 20 s) allows, ratio <= 1.15, and
    provoke no 90018.
(b) 30 ms per call; the server allows 200 calls/s: dtchat (max_qps 200,
    parallelism 8/16) against a naive sequential loop of the seed SDK's
    ``chat.get``: >= 5x.
(c) 1,000 chats at 500 ms per call (DingTalk's slow end), server 20/s, client
    20/s and the default parallelism (``default_parallelism(20)``): ratio <= 1.10.
(d) ``--max-qps 60`` against a server that allows only 20/s (150 ms per call):
    the client halves its rate on each round of 90018 and creeps back, so the
    plan and the apply of 200 chats (one update each) finish with no chat failed.
    Printed: 90018 answers, client retries, rate cuts, failed chats (must be 0).

(a) and (b) are also run once through the CLI (``python -m reconciler``) to
show it reaches the library's figure (plus interpreter start-up); (d) applies a
second copy of the chats through the CLI with ``--max-qps 60``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    Fixture,
    Workload,
    add_api_option,
    calls_since,
    cli_env,
    cli_globals,
    client_for,
    count_rate_limited,
    emulator,
    print_table,
    replan,
    sdk_client,
    seed_changes,
    seed_in_sync,
    write_paths,
)

from reconciler.backends import DEFAULT_API
from reconciler.config import load_config
from reconciler.live import default_parallelism
from reconciler.manager import Outcome
from reconciler.plan import Action
from reconciler.rules import DEFAULT_QPS
from reconciler.state import StateFile, StateLocation

LATENCY_MS = 30
GENEROUS_QPS = 200.0
#: What ``dtchat plan`` uses when --parallelism is not given (16 at the default 20 calls/s).
DEFAULT_PARALLELISM = default_parallelism(DEFAULT_QPS)
RATIO_TARGET = 1.15
SPEEDUP_TARGET = 5.0
#: (c): DingTalk's slow end, where the design's 1.10 x target must still hold.
SLOW_LATENCY_MS = 500
SLOW_CHATS = 1000
SLOW_RATIO_TARGET = 1.10
#: (d): a client told to go three times faster than the server allows.
EAGER_QPS = 60.0
EAGER_CHATS = 200
EAGER_LATENCY_MS = 150
GET = "/chat/get"
#: The emulator counts calls in a sliding 1 s window: wait it out between runs so they do not interfere.
WINDOW_REST = 1.1
#: The generation dtchat speaks in every run (``--api``); the seed SDK is always legacy.
API = DEFAULT_API


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
    with client_for(server, max_qps=max_qps, pool_size=max(parallelism, 4), api=API) as client:
        plan = client.manager(parallelism=parallelism).plan(config, state)
    wall = time.perf_counter() - started
    if plan.has_changes or plan.has_errors:
        raise SystemExit(f"bench fixture is not in sync: {plan.summary()}")
    calls = calls_since(server, mark)
    return Run(
        how,
        max_qps,
        parallelism,
        wall,
        count_rate_limited(calls),
        sum(1 for c in calls if c.endpoint == "/chat/get"),
    )


def cli(server, max_qps: float, *args: str) -> list[str]:
    """``python -m reconciler --api API --api-base URL --openapi-base URL --max-qps Q ARGS`` (both hosts: the emulator)."""
    return [sys.executable, "-m", "reconciler", *cli_globals(server, api=API, max_qps=max_qps), *args]


def cli_run_env() -> dict[str, str]:
    return {**os.environ, **cli_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def via_cli(server, fixture: Fixture, *, max_qps: float, parallelism: int) -> Run:
    """``python -m reconciler plan --detailed-exitcode``: exit 0 proves "no changes"."""
    rest()
    mark = len(server.calls)
    argv = cli(
        server,
        max_qps,
        "plan",
        str(fixture.config),
        "--state",
        str(fixture.state),
        "--parallelism",
        str(parallelism),
        "--detailed-exitcode",
    )
    env = cli_run_env()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"CLI plan exited {done.returncode}: {done.stderr.strip()[-500:]}")
    calls = calls_since(server, mark)
    return Run(
        "CLI",
        max_qps,
        parallelism,
        wall,
        count_rate_limited(calls),
        sum(1 for c in calls if c.endpoint == "/chat/get"),
    )


def via_seed_sdk(server, fixture: Fixture) -> Run:
    """The naive baseline: the seed SDK (legacy ``/gettoken`` + ``/chat/get``), one ``chat.get`` after another."""
    rest()
    mark = len(server.calls)
    started = time.perf_counter()
    sdk = sdk_client(server)
    for chatid in fixture.chatids:
        sdk.chat.get(chatid)
    wall = time.perf_counter() - started
    calls = calls_since(server, mark)
    return Run(
        "seed SDK, sequential",
        0,
        1,
        wall,
        count_rate_limited(calls),
        sum(1 for c in calls if c.endpoint == "/chat/get"),
    )


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
    return [
        [
            n,
            r.how,
            r.max_qps,
            r.parallelism,
            r.gets,
            r.wall,
            bound,
            r.wall / bound,
            r.rate_limited,
            "yes" if r.wall / bound <= RATIO_TARGET and r.rate_limited == 0 else "NO",
        ]
        for r in runs
    ]


def generous_regime(n: int, parallelisms: list[int], *, with_cli: bool) -> list[list[object]]:
    """Regime (b): server at 200 calls/s; dtchat against the seed SDK's sequential loop."""
    with emulator(LATENCY_MS, GENEROUS_QPS) as server, tempfile.TemporaryDirectory() as tmp:
        fixture = seed_in_sync(server, Path(tmp), n)
        baseline = via_seed_sdk(server, fixture)
        runs = [via_library(server, fixture, max_qps=GENEROUS_QPS, parallelism=p) for p in parallelisms]
        if with_cli:
            runs.append(via_cli(server, fixture, max_qps=GENEROUS_QPS, parallelism=max(parallelisms)))
    bound = n / GENEROUS_QPS
    rows: list[list[object]] = [
        [
            n,
            baseline.how,
            "-",
            1,
            baseline.gets,
            baseline.wall,
            bound,
            baseline.wall / bound,
            baseline.rate_limited,
            1.0,
            "-",
        ]
    ]
    for r in runs:
        speedup = baseline.wall / r.wall
        rows.append(
            [
                n,
                r.how,
                r.max_qps,
                r.parallelism,
                r.gets,
                r.wall,
                bound,
                r.wall / bound,
                r.rate_limited,
                speedup,
                "yes" if speedup >= SPEEDUP_TARGET and r.rate_limited == 0 else "NO",
            ]
        )
    return rows


def slow_regime(n: int, latency_ms: float) -> list[object]:
    """Regime (c): the plan at DingTalk's slow end, default parallelism."""
    with emulator(latency_ms, DEFAULT_QPS) as server, tempfile.TemporaryDirectory() as tmp:
        fixture = seed_in_sync(server, Path(tmp), n)
        r = via_library(server, fixture, max_qps=DEFAULT_QPS, parallelism=DEFAULT_PARALLELISM)
    bound = n / DEFAULT_QPS
    ratio = r.wall / bound
    return [
        n,
        int(latency_ms),
        r.max_qps,
        r.parallelism,
        r.gets,
        r.wall,
        bound,
        ratio,
        r.rate_limited,
        "yes" if ratio <= SLOW_RATIO_TARGET else "NO",
    ]


@dataclass(frozen=True)
class Eager:
    what: str
    wall: float
    bound: float
    gets: int
    writes: int
    get_refusals: int
    write_refusals: int
    retries: int | str
    rate_cuts: int | str
    end_rate: float | str
    failed: int


def eager_library(server, work: Workload, *, apply: bool) -> Eager:
    """``Manager.plan`` or ``Manager.apply`` with a fresh client at ``EAGER_QPS`` (its adaptive rate starts high)."""
    parallelism = default_parallelism(EAGER_QPS)
    rest()
    mark = len(server.calls)
    config = load_config([work.fixture.config])
    started = time.perf_counter()
    with client_for(server, max_qps=EAGER_QPS, pool_size=parallelism, api=API) as client:
        manager = client.manager(parallelism=parallelism)
        if apply:
            outcome = manager.apply(config, StateLocation(work.fixture.state))
            if outcome.outcome is not Outcome.APPLIED or outcome.result is None:
                raise SystemExit(f"bench fixture: expected changes to apply, got {outcome.outcome.value}")
            plan = outcome.plan
            failed = len(outcome.result.failed)
        else:
            plan = manager.plan(config, StateFile(work.fixture.state))
            failed = sum(1 for c in plan.changes if c.action is Action.ERROR)
        wall = time.perf_counter() - started
        stats = client.stats
        end_rate = client.rate(GET)
    calls = calls_since(server, mark)
    gets = [c for c in calls if c.endpoint == GET]
    writes = [c for c in calls if c.endpoint in write_paths(API)]  # chat writes (not the plan's user-id lookups)
    n = len(work.adds)
    return Eager(
        "library apply" if apply else "library plan",
        wall,
        n / DEFAULT_QPS * (2 if apply else 1),
        len(gets),
        len(writes),
        count_rate_limited(gets),
        count_rate_limited(writes),
        stats["retries"],
        stats["rate_cuts"],
        end_rate,
        failed,
    )


def eager_cli(server, work: Workload) -> Eager:
    """``python -m reconciler --api API --max-qps 60 apply --auto-approve``: exit 0 and "0 failed" in its summary."""
    rest()
    mark = len(server.calls)
    argv = cli(
        server, EAGER_QPS, "apply", str(work.fixture.config), "--state", str(work.fixture.state), "--auto-approve"
    )
    started = time.perf_counter()
    done = subprocess.run(argv, env=cli_run_env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = re.search(r"Apply: .*?(\d+) failed", done.stdout)
    failed = int(summary.group(1)) if summary else -1
    if done.returncode != 0 or failed != 0:
        print(f"CLI apply exited {done.returncode}: {done.stdout.strip()[-300:]} {done.stderr.strip()[-500:]}")
    calls = calls_since(server, mark)
    gets = [c for c in calls if c.endpoint == GET]
    writes = [c for c in calls if c.endpoint in write_paths(API)]  # chat writes (not the plan's user-id lookups)
    retries = len(re.findall(r"; retry \d+ in ", done.stderr))
    cuts = len(re.findall(r"DingTalk is throttling", done.stderr))
    return Eager(
        f"CLI apply (exit {done.returncode})",
        wall,
        len(work.adds) / DEFAULT_QPS * 2,
        len(gets),
        len(writes),
        count_rate_limited(gets),
        count_rate_limited(writes),
        retries,
        cuts,
        "-",
        failed if failed >= 0 else len(work.adds),
    )


def eager_regime(n: int) -> list[list[object]]:
    """Regime (d): --max-qps 60 against a 20/s server; plan, apply, then a CLI apply of a second copy."""
    runs = []
    with emulator(EAGER_LATENCY_MS, DEFAULT_QPS) as server, tempfile.TemporaryDirectory() as tmp:
        work = seed_changes(server, Path(tmp) / "lib", n)
        runs.append(eager_library(server, work, apply=False))
        runs.append(eager_library(server, work, apply=True))
        clean = converged(server, work)
        twin = seed_changes(server, Path(tmp) / "cli", n, seed=2)
        runs.append(eager_cli(server, twin))
        clean = clean and converged(server, twin)
    rows = []
    for r in runs:
        rows.append(
            [
                n,
                r.what,
                r.gets,
                r.writes,
                r.wall,
                r.bound,
                r.wall / r.bound,
                r.get_refusals,
                r.write_refusals,
                r.retries,
                r.rate_cuts,
                r.end_rate,
                r.failed,
                "yes" if r.failed == 0 and clean else "NO",
            ]
        )
    print(f"(d) a fresh plan after both applies shows no changes: {'yes' if clean else 'NO'}")
    return rows


def converged(server, work: Workload) -> bool:
    plan = replan(server, work.fixture, api=API)
    return not plan.has_changes and not plan.has_errors


def main() -> None:
    global API
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_api_option(parser)
    parser.add_argument("--quick", action="store_true", help="only the 100-chat case in (a) and (b)")
    parser.add_argument(
        "--chats", type=int, help="every scenario at this many chats (a short check; targets are for the defaults)"
    )
    parser.add_argument("--scenarios", default="a,b,c,d", help="which of a,b,c,d to run (comma-separated)")
    args = parser.parse_args()
    API = args.api
    logging.getLogger("reconciler").setLevel(logging.ERROR)  # retries are counted in the table instead
    print(f"dtchat speaks --api {API} in every run (the seed SDK: legacy)", flush=True)
    sizes = [args.chats] if args.chats else [100] if args.quick else [100, 1000]
    scenarios = set(args.scenarios.split(","))

    limited: list[list[object]] = []
    generous: list[list[object]] = []
    for n in sizes:
        # The 1,000-chat case takes ~50 s per run at 20 calls/s: run the default parallelism only.
        parallelisms = sorted({1, 4, 8, DEFAULT_PARALLELISM, 16}) if n <= 100 else [DEFAULT_PARALLELISM]
        if "a" in scenarios:
            limited += limited_regime(n, parallelisms, with_cli=True)
        if "b" in scenarios:
            generous += generous_regime(n, [8, 16], with_cli=True)
    slow = [slow_regime(args.chats or SLOW_CHATS, SLOW_LATENCY_MS)] if "c" in scenarios else []
    eager = eager_regime(args.chats or EAGER_CHATS) if "d" in scenarios else []

    if limited:
        print_table(
            f"(a) plan, chats in sync; server limit {DEFAULT_QPS:g} calls/s per endpoint, {LATENCY_MS} ms latency",
            ["chats", "run", "max_qps", "par", "gets", "wall s", "bound s", "ratio", "90018", "target met"],
            limited,
            note=f"bound = chats / {DEFAULT_QPS:g} s; targets: ratio <= {RATIO_TARGET}, 0 x 90018. "
            "'gets' counts retries too. CLI wall includes interpreter start-up.",
        )
    if generous:
        print_table(
            f"(b) plan, chats in sync; server limit {GENEROUS_QPS:g} calls/s per endpoint, {LATENCY_MS} ms latency",
            ["chats", "run", "max_qps", "par", "gets", "wall s", "bound s", "ratio", "90018", "speed-up", "target met"],
            generous,
            note=f"speed-up = seed SDK wall / dtchat wall; target >= {SPEEDUP_TARGET:g}x with 0 x 90018.",
        )
    if slow:
        print_table(
            f"(c) plan, chats in sync; server limit {DEFAULT_QPS:g} calls/s per endpoint, {SLOW_LATENCY_MS} ms latency",
            ["chats", "latency ms", "max_qps", "par", "gets", "wall s", "bound s", "ratio", "90018", "target met"],
            slow,
            note=f"par = default_parallelism({DEFAULT_QPS:g}); bound = chats / {DEFAULT_QPS:g} s; target: ratio <= "
            f"{SLOW_RATIO_TARGET}.",
        )
    if eager:
        print_table(
            f"(d) --max-qps {EAGER_QPS:g} against a server limit of {DEFAULT_QPS:g} calls/s per endpoint, "
            f"{EAGER_LATENCY_MS} ms latency; each chat needs one update",
            [
                "chats",
                "run",
                "gets",
                "writes",
                "wall s",
                "bound s",
                "ratio",
                "get 90018",
                "write 90018",
                "retries",
                "rate cuts",
                "end get rate",
                "failed",
                "target met",
            ],
            eager,
            note=f"par = default_parallelism({EAGER_QPS:g}); gets/writes count every request, refused ones too; "
            "retries/rate cuts: the client's own counts (CLI: its warning lines); end get rate: calls/s the "
            "client paced /chat/get at when it finished. Target: 0 failed and a clean re-plan; the 90018s are "
            "the price of the wrong --max-qps.",
        )


if __name__ == "__main__":
    main()
