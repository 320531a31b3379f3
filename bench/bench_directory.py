"""How long resolving directory selectors takes, against DingTalk's per-API rate limit.

Run by hand: ``python bench/bench_directory.py [--api v1|legacy] [--quick]`` (``--quick``: a
200-department org and 40 chats; the full run takes about two minutes). The contact API and the
chat reads are on the legacy (oapi) host in both generations; ``--api`` (default v1) picks the
token they are made with (``/v1.0/oauth2/accessToken``'s or ``/gettoken``'s).

(a) ``{dept: 1, recursive: true}`` over a generated org (2,000 departments in a random tree,
    20,000 users, 5 % of them in two departments). The server allows 20 calls/s per endpoint
    (90018 beyond), the client runs at ``max_qps`` 20. Each API's bound is its calls / 20 s; the
    slowest API sets the run's bound (listid and listsubid are limited separately, so a walk that
    keeps both busy takes one bound, not two). Target: wall <= 1.1 x bound, no 90018.
(b) ``plan`` of 200 chats, each with a department selector and a role selector, all bound to
    existing chats, through ``reconciler.manager`` (``Manager(backend, directory).plan``), twice:
    ``--refresh all`` (as ``drift`` and ``plan --refresh all``): the chat reads (/chat/get) and the
    directory calls run side by side, so the target is wall <= 1.1 x the larger of the APIs'
    bounds, not their sum; ``--refresh changed`` (the default): chats never verified (as all of
    these are) are read side by side with the lookups too (only a chat with a recorded digest waits
    for the directory to decide), so the target is the same 1.1 x the larger bound.

Every request gets LATENCY_MS of server latency, within DingTalk's real 50-500 ms.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import (
    APP_KEY,
    APP_SECRET,
    TOKEN_PATHS,
    Client,
    add_api_option,
    client_for,
    count_rate_limited,
    print_table,
    write_fixture,
)

from reconciler.config import load_config
from reconciler.directory import lookup_selectors
from reconciler.emulator import EmulatorServer, Org
from reconciler.live import default_parallelism
from reconciler.manager import REFRESH_ALL, REFRESH_CHANGED
from reconciler.model import Selector
from reconciler.state import StateFile

LATENCY_MS = 150
QPS = 20.0
TARGET = 1.1


def generate_org(departments: int, users: int, seed: int = 7) -> dict[str, Any]:
    """A random recursive tree (each department under a random earlier one) and users spread over it."""
    rng = random.Random(seed)
    depts = [{"id": 1, "name": "公司"}]
    for i in range(2, departments + 1):
        depts.append({"id": i, "name": f"部门{i}", "parent": rng.randint(1, i - 1)})
    people = []
    for i in range(users):
        home = rng.randint(1, departments)
        where = [home] if rng.random() >= 0.05 else sorted({home, rng.randint(1, departments)})
        people.append({"userid": f"u{i:05d}", "departments": where})
    roles = [
        {"id": 3000 + r, "name": f"角色{r}", "holders": [f"u{x:05d}" for x in rng.sample(range(users), 30)]}
        for r in range(10)
    ]
    return {"departments": depts, "users": people, "roles": roles}


def server_for(org: dict[str, Any]) -> EmulatorServer:
    return EmulatorServer(
        app_key=APP_KEY, app_secret=APP_SECRET, org=Org.from_data(org), qps_limit=QPS, latency_ms=LATENCY_MS
    ).start()


def bound_of(calls: Counter) -> tuple[float, str]:
    """The least time the per-API limit allows: the slowest API's calls / QPS (and which API that is)."""
    endpoint, n = max(((e, n) for e, n in calls.items() if e not in TOKEN_PATHS), key=lambda en: en[1])
    return n / QPS, endpoint


def bench_walk(departments: int, users: int, api: str) -> list[Any]:
    org = generate_org(departments, users)
    server = server_for(org)
    try:
        client = client_for(server, max_qps=QPS, api=api)
        client.backend.authenticate()  # the token is not part of the walk
        mark = len(server.calls)
        started = time.perf_counter()
        directory = client.directory
        lookups = lookup_selectors(directory, [Selector("dept", 1, True)], parallelism=default_parallelism(QPS))
        wall = time.perf_counter() - started
        calls = [c for c in server.calls if c.seq > mark]
        client.close()
    finally:
        server.stop()
    lookup = lookups[Selector("dept", 1, True)]
    assert lookup.error is None and len(lookup.users or ()) == users, lookup.error
    per_api = Counter(c.endpoint for c in calls)
    bound, _ = bound_of(per_api)
    return [
        departments,
        users,
        per_api["/topapi/user/listid"],
        per_api["/topapi/v2/department/listsubid"],
        count_rate_limited(calls),
        wall,
        bound,
        wall / bound,
        "yes" if wall <= TARGET * bound else "NO",
    ]


def bench_plan(chats: int, departments: int, users: int, folder: Path, api: str) -> list[list[Any]]:
    org = generate_org(departments, users, seed=11)
    server = server_for(org)
    try:
        by_dept: dict[int, list[str]] = {}
        for u in org["users"]:
            for d in u["departments"]:
                by_dept.setdefault(d, []).append(u["userid"])
        holders = {r["id"]: r["holders"] for r in org["roles"]}
        picked = sorted(random.Random(3).sample(sorted(by_dept), chats))
        config: dict[str, dict] = {}
        bindings: dict[str, str] = {}
        for i, dept in enumerate(picked):
            role = 3000 + i % 10
            people = sorted(set(by_dept[dept]) | set(holders[role]))
            key = f"chat-{i:04d}"
            bindings[key] = server.seed_chat(f"群 {i}", people[0], people)
            config[key] = {"name": f"群 {i}", "owner": people[0], "members": [{"dept": dept}, {"role": role}]}
        config_path, state_path = write_fixture(folder, config, bindings)
        loaded, state = load_config([config_path]), StateFile(state_path)
        rows = []
        for refresh in (REFRESH_ALL, REFRESH_CHANGED):
            time.sleep(1.1)  # the server's sliding 1 s windows start empty
            client = client_for(server, max_qps=QPS, api=api)  # a fresh client: new token, full rate
            parallelism = default_parallelism(QPS)
            mark = len(server.calls)
            started = time.perf_counter()
            plan = run_plan(client, loaded, state, parallelism, refresh)
            wall = time.perf_counter() - started
            calls = [c for c in server.calls if c.seq > mark]
            client.close()
            errors = [c for c in plan.changes if c.error]
            assert not errors, errors[:3]
            rows.append(plan_row(chats, refresh, wall, calls))
    finally:
        server.stop()
    return rows


def plan_row(chats: int, refresh: str, wall: float, calls: list) -> list[Any]:
    per_api = Counter(c.endpoint for c in calls)
    bound, _ = bound_of(per_api)
    directory = sum(n for e, n in per_api.items() if e.startswith("/topapi/"))
    summed = per_api["/chat/get"] / QPS + max(n for e, n in per_api.items() if e.startswith("/topapi/")) / QPS
    target = bound
    return [
        chats,
        refresh,
        per_api["/chat/get"],
        directory,
        count_rate_limited(calls),
        wall,
        bound,
        summed,
        wall / bound,
        wall / summed,
        "yes" if wall <= TARGET * target else "NO",
    ]


def run_plan(client: Client, config: Any, state: StateFile, parallelism: int, refresh: str) -> Any:
    """The plan as the CLI makes it: ``Manager(backend, directory).plan`` with ``--refresh REFRESH``."""
    return client.manager(parallelism=parallelism).plan(config, state, refresh=refresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_api_option(parser)
    parser.add_argument("--quick", action="store_true", help="a 200-department org and 40 chats")
    args = parser.parse_args()
    departments, users, chats = (200, 2_000, 40) if args.quick else (2_000, 20_000, 200)
    note = (
        f"--api {args.api}; server: {LATENCY_MS:g} ms latency, {QPS:g} calls/s per endpoint; client max_qps {QPS:g} "
        f"(paced 5 % under it), parallelism {default_parallelism(QPS)} per API. "
        f"bound = slowest API's calls / {QPS:g} s; target ratio <= {TARGET}."
    )
    walk = bench_walk(departments, users, args.api)
    print_table(
        "(a) {dept: 1, recursive: true}",
        ["depts", "users", "listid", "listsubid", "90018", "wall s", "bound s", "ratio", "ok"],
        [walk],
        note,
    )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows = bench_plan(chats, departments, users, Path(tmp), args.api)
        except (ImportError, AttributeError, TypeError) as exc:  # the manager's entry point changed shape
            print(f"\n(b) plan with selectors: could not run through reconciler.manager: {exc}")
            return
    print_table(
        "(b) plan: chat reads and directory calls side by side (--refresh all, and --refresh changed for chats "
        "never verified)",
        ["chats", "refresh", "gets", "dir calls", "90018", "wall s", "bound s", "sum s", "ratio", "ratio to sum", "ok"],
        rows,
        "bound s = the slowest API's calls / QPS; sum s = the bound if reads and directory calls ran one after the "
        f"other. Target: wall <= {TARGET} x bound s.",
    )


if __name__ == "__main__":
    main()
