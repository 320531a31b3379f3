"""How long ``apply`` takes against DingTalk's rate limit, beside the seed SDK's sequential loop.

Run by hand: ``python bench/bench_apply.py [--api v1|legacy] [--latencies 30,150,300,500] [--no-naive]``
(about 25 minutes in full, most of it the naive loops: 1,050 calls one after another at 500 ms is ~9 min;
``--updates 100 --creates 10`` is a short run).

dtchat writes through ``--api`` (default ``v1``: ``/v1.0/im/group/create`` and ``/v1.0/im/group/update``;
``legacy``: ``/chat/create`` and ``/chat/update``); it reads with ``/chat/get`` in both. The change set
(``common.seed_changes``): 500 existing chats that each lack one member (1 update each) and 50 new
chats of 440 members (1 create with 40, then 10 updates adding 40 each), spread evenly through the
plan's key order:

    writes = 500 x 1 + 50 x (1 + 10) = 1,050   (create 50, update 1,000)
    reads  = 500 /chat/get (the plan reads every existing chat; a new chat has nothing to read)

The emulator allows 20 calls/s **per API** (``faults.qps_limit = 20``; above it errcode 90018 on the
legacy host, HTTP 403 ``Forbidden.AccessDenied.QpsLimitForAppkeyAndApi`` on v1.0, both counted as "90018") and
waits ``latency`` ms before answering each call. dtchat runs as the CLI does: ``--max-qps 20`` and
``default_parallelism(20)`` chats at once, through ``Manager.apply`` (plan, then apply).

The bound (design §7, "calls / allowed calls per second", per API): DingTalk meters each API on
its own, so creates and updates proceed side by side and the write phase cannot finish before its
busiest API has had its calls: ``max(creates, updates) / 20 = 1,000 / 20 = 50 s``. (Counting all
1,050 writes against one 20/s budget would give a looser 52.5 s; the table uses the strict one.)
Reads come first and apart: dtchat plans every chat before the first write (the plan is shown and
may be confirmed or refused), so the read phase has its own bound, 500 / 20 = 25 s. The target,
ratio <= 1.10, is for the write phase; the read phase's ratio is printed beside it.

The naive baseline, in the same run against the same server: the seed SDK
(``dingtalk.client.api.Chat``, legacy API only, whatever ``--api`` says), the same 1,050 writes one at a
time, on a second copy of the chats;
a 90018 makes it sleep 1 s and try again (it would otherwise stop). After each dtchat apply a
fresh ``plan`` must show no changes (checked with the faults off, so it costs no time).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    RATE_LIMITED,
    NewChat,
    Timeline,
    Workload,
    add_api_option,
    calls_since,
    client_for,
    count_rate_limited,
    emulator,
    print_table,
    replan,
    sdk_client,
    sdk_settings,
    seed_changes,
    write_paths,
)

from reconciler.backends.packing import IDS_PER_CALL, minimum_calls
from reconciler.config import load_config
from reconciler.live import default_parallelism
from reconciler.manager import Outcome
from reconciler.rules import DEFAULT_QPS
from reconciler.state import StateLocation

LATENCIES_MS = (30, 150, 300, 500)
UPDATES = 500
CREATES = 50
CREATE_MEMBERS = 440
RATIO_TARGET = 1.10
GET = "/chat/get"
#: The emulator counts calls in a sliding 1 s window: wait it out between runs so they do not interfere.
WINDOW_REST = 1.1


@dataclass(frozen=True)
class DtchatRun:
    parallelism: int
    read_s: float
    write_s: float
    gets: int
    creates: int
    updates: int
    ok_writes: int
    get_refusals: int
    write_refusals: int
    retries: int
    rate_cuts: int
    failed: int
    in_flight: float
    #: Seconds from the arrival of the last ``parallelism`` writes to the last answer: ~1 s when the limiter
    #: is the bound to the end, ~calls x latency when one chat's chain of calls trails alone.
    tail: float
    converged: bool


@dataclass(frozen=True)
class NaiveRun:
    wall: float
    writes: int
    refusals: int


def rest() -> None:
    time.sleep(WINDOW_REST)


def via_dtchat(server, timeline: Timeline, work: Workload, *, parallelism: int, api: str) -> DtchatRun:
    """``Manager.apply`` as ``dtchat --api API apply`` runs it; the read/write split is taken when the plan is shown."""
    create, update = writes_of = write_paths(api)
    config = load_config([work.fixture.config])
    rest()
    mark = len(server.calls)
    planned: list[float] = []
    with client_for(server, max_qps=DEFAULT_QPS, pool_size=max(parallelism, 4), api=api) as client:
        manager = client.manager(parallelism=parallelism)
        started = time.perf_counter()
        outcome = manager.apply(
            config,
            StateLocation(work.fixture.state),
            on_plan=lambda plan, warnings: planned.append(time.perf_counter()),
        )
        if outcome.outcome is not Outcome.APPLIED or outcome.result is None:
            raise SystemExit(f"bench fixture: expected changes to apply, got {outcome.outcome.value}")
        plan, result = outcome.plan, outcome.result
        ended = time.perf_counter()
        stats = client.stats
    expected = sum(minimum_calls(c) for c in plan.changes)
    if not expected == plan.writes == work.write_calls:
        raise SystemExit(
            f"bench fixture: the plan needs {expected} write calls (the backend plans {plan.writes}), "
            f"the workload says {work.write_calls}"
        )
    calls = calls_since(server, mark)
    gets = [c for c in calls if c.endpoint == GET]
    writes = [c for c in calls if c.endpoint in writes_of]
    write_entries = timeline.between(planned[0], ended, writes_of)
    return DtchatRun(
        parallelism=parallelism,
        read_s=planned[0] - started,
        write_s=ended - planned[0],
        gets=len(gets),
        creates=sum(1 for c in writes if c.endpoint == create),
        updates=sum(1 for c in writes if c.endpoint == update),
        ok_writes=sum(1 for c in writes if c.errcode in (None, 0) and c.code is None and 200 <= c.status < 300),
        get_refusals=count_rate_limited(gets),
        write_refusals=count_rate_limited(writes),
        retries=stats["retries"],
        rate_cuts=stats["rate_cuts"],
        failed=len(result.failed),
        in_flight=Timeline.mean_in_flight(write_entries),
        tail=tail_seconds(write_entries, parallelism),
        converged=converged(server, work, api),
    )


def tail_seconds(entries, parallelism: int) -> float:
    arrivals = sorted(e[0] for e in entries)
    if len(arrivals) < parallelism:
        return 0.0
    return max(e[1] for e in entries) - arrivals[-parallelism]


def converged(server, work: Workload, api: str) -> bool:
    """A fresh plan after the apply (every chat read) shows no changes (printed, and required for "target met")."""
    plan = replan(server, work.fixture, api=api)
    print(f"  plan after apply: {plan.summary()}", flush=True)
    return not plan.has_changes and not plan.has_errors


def via_seed_sdk(server, work: Workload) -> NaiveRun:
    """The same writes through the seed SDK (legacy ``/chat/create`` and ``/chat/update``), one after another
    (no reads: it is told what to write)."""
    from dingtalk.core.exceptions import DingTalkClientException

    sdk = sdk_client(server)
    settings = sdk_settings()
    refusals = 0
    writes = 0

    def send(fn, *args, **kwargs):
        nonlocal refusals, writes
        while True:
            writes += 1
            try:
                return fn(*args, **kwargs)
            except DingTalkClientException as exc:
                if exc.errcode != RATE_LIMITED:
                    raise
                refusals += 1
                time.sleep(1.0)

    rest()
    started = time.perf_counter()
    for item in work.in_key_order():
        if isinstance(item, NewChat):
            members = list(item.members)
            chatid = send(sdk.chat.create, item.name, item.owner, members[:IDS_PER_CALL], **settings)
            for i in range(IDS_PER_CALL, len(members), IDS_PER_CALL):
                send(sdk.chat.update, chatid, add_useridlist=members[i : i + IDS_PER_CALL], **settings)
        else:
            _, chatid, userid = item
            send(sdk.chat.update, chatid, add_useridlist=[userid], **settings)
    wall = time.perf_counter() - started
    if writes - refusals != work.write_calls:
        raise SystemExit(f"naive loop: {writes - refusals} writes accepted, the workload has {work.write_calls}")
    return NaiveRun(wall, writes, refusals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_api_option(parser)
    parser.add_argument("--latencies", default=",".join(map(str, LATENCIES_MS)), help="comma-separated ms per call")
    parser.add_argument("--no-naive", action="store_true", help="skip the seed SDK's sequential loop")
    parser.add_argument("--updates", type=int, default=UPDATES, help="existing chats needing one update each")
    parser.add_argument("--creates", type=int, default=CREATES, help=f"new chats of {CREATE_MEMBERS} members")
    parser.add_argument(
        "--creates-last",
        action="store_true",
        help="put the creates at the end of the key order instead of spread through it",
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=default_parallelism(DEFAULT_QPS),
        help="chats at once (default: default_parallelism(20), as the CLI)",
    )
    args = parser.parse_args()
    logging.getLogger("reconciler").setLevel(logging.ERROR)  # retries are counted in the table instead
    par = args.parallelism
    api = args.api
    create_path, update_path = write_paths(api)
    rows: list[list[object]] = []
    reads: list[list[object]] = []
    for latency in (float(x) for x in args.latencies.split(",")):
        print(
            f"latency {latency:g} ms: dtchat --api {api} apply (max_qps {DEFAULT_QPS:g}, parallelism {par}) ...",
            flush=True,
        )
        with emulator(latency, DEFAULT_QPS) as server, tempfile.TemporaryDirectory() as tmp:
            timeline = Timeline(server)
            shape = {"create_members": CREATE_MEMBERS, "creates_last": args.creates_last}
            work = seed_changes(server, Path(tmp) / "dtchat", args.updates, args.creates, **shape)
            d = via_dtchat(server, timeline, work, parallelism=par, api=api)
            naive = None
            if not args.no_naive:
                print(f"latency {latency:g} ms: seed SDK sequential loop (legacy API) ...", flush=True)
                twin = seed_changes(server, Path(tmp) / "naive", args.updates, args.creates, seed=2, **shape)
                naive = via_seed_sdk(server, twin)
        busiest = max(work.create_calls, work.update_calls)
        bound = busiest / DEFAULT_QPS
        ratio = d.write_s / bound
        ok = ratio <= RATIO_TARGET and d.failed == 0 and d.converged
        rows.append(
            [
                int(latency),
                work.write_calls,
                busiest,
                bound,
                d.write_s,
                ratio,
                work.write_calls / d.write_s,
                d.write_refusals,
                d.retries,
                d.failed,
                round(d.in_flight, 1),
                round(d.tail, 1),
                "yes" if d.converged else "NO",
                naive.wall if naive else "-",
                naive.refusals if naive else "-",
                naive.wall / d.write_s if naive else "-",
                "yes" if ok else "NO",
            ]
        )
        read_bound = len(work.adds) / DEFAULT_QPS
        reads.append(
            [
                int(latency),
                len(work.adds),
                d.gets,
                read_bound,
                d.read_s,
                d.read_s / read_bound,
                d.get_refusals,
                d.read_s + d.write_s,
                (d.read_s + d.write_s) / (read_bound + bound),
                d.rate_cuts,
            ]
        )
        print(
            f"  writes {d.ok_writes} ok of {d.creates + d.updates} sent; read phase {d.read_s:.2f} s, "
            f"write phase {d.write_s:.2f} s; naive {naive.wall if naive else float('nan'):.2f} s",
            flush=True,
        )

    order = "creates last in key order" if args.creates_last else "creates spread through the key order"
    default = " (default_parallelism)" if par == default_parallelism(DEFAULT_QPS) else " (NOT the default)"
    print_table(
        f"apply --api {api}: {args.updates} updates + {args.creates} creates of {CREATE_MEMBERS} members ({order});\n"
        f"server {DEFAULT_QPS:g} calls/s per API, client max_qps {DEFAULT_QPS:g}, parallelism {par}{default}",
        [
            "latency ms",
            "writes",
            "busiest API",
            "bound s",
            "dtchat s",
            "ratio",
            "writes/s",
            "90018",
            "retries",
            "failed",
            "in flight",
            "tail s",
            "re-plan clean",
            "naive SDK s",
            "naive 90018",
            "speed-up",
            "target met",
        ],
        rows,
        note="\n".join(
            [
                f"writes = {args.updates} x 1 + {args.creates} x (1 create + 10 updates) = {create_path} {args.creates} + "
                f"{update_path} {args.updates + args.creates * 10}; bound = the busiest API's calls / {DEFAULT_QPS:g} s "
                f"(each API has its own {DEFAULT_QPS:g}/s).",
                f"dtchat s = the write phase of Manager.apply (after the plan was shown); target ratio <= {RATIO_TARGET}, "
                "0 failed, and a fresh plan afterwards shows no changes ('re-plan clean').",
                f"'90018': write refusals for the rate limit counted by the emulator ({RATE_LIMITED}, or its v1.0 403); "
                "'retries': retries the client made (reads included). "
                "'in flight': mean write requests the server held (Little's law);",
                f"'tail s': from the arrival of the last {par} writes to the last answer (~1 s when the rate limit binds "
                "to the end; ~calls x latency when one chat's chain of calls trails alone).",
                "naive SDK s = the seed SDK making the same writes one at a time through the legacy API "
                "(sleep 1 s on 90018); "
                "speed-up = naive / dtchat.",
            ]
        ),
    )
    print_table(
        "the same runs: read phase (plan) and the whole apply",
        [
            "latency ms",
            "chats read",
            "gets",
            "read bound s",
            "read s",
            "read ratio",
            "get 90018",
            "apply total s",
            "total ratio",
            "rate cuts",
        ],
        reads,
        note=f"read bound = existing chats / {DEFAULT_QPS:g} s (/chat/get has its own {DEFAULT_QPS:g}/s); total ratio = "
        "(read s + write s) / (read bound + write bound): dtchat reads every chat before the first write, "
        "by design.",
    )


if __name__ == "__main__":
    main()
