"""Concurrent reads: paced under the server's limit, ticking as they land, stopping on fatal errors."""

from __future__ import annotations

import time

import pytest

from reconciler.backends import AuthError
from reconciler.live import read_live
from reconciler.model import ReadFailure

from helpers import APP_KEY
from wire import Wire


def seed(emulator, n):
    return [emulator.seed_chat(f"c{i}", "owner", ["owner", f"m{i}"]) for i in range(n)]


def test_client_pacing_at_the_servers_own_limit_provokes_no_throttling(emulator, make_client):
    ids = seed(emulator, 50)
    emulator.faults.qps_limit = 25
    client = make_client(max_qps=25)  # the same number as the server: headroom must keep us under it
    ticks = []  # (when, how many reads the emulator had answered by then)
    live = read_live(
        client,
        ids,
        parallelism=8,
        on_done=lambda: ticks.append((time.monotonic(), emulator.counters().get("/chat/get", 0))),
    )
    assert len(live) == 50 and not any(isinstance(r, ReadFailure) for r in live.values())
    assert [c for c in emulator.calls if c.errcode == 90018] == []
    assert len(emulator.calls_to("/chat/get")) == 50  # not one retry
    # progress ticks arrive as reads land (the first long before the last read), spread over the ~2 s of pacing
    assert len(ticks) == 50 and ticks[0][1] < 25 and ticks[-1][0] - ticks[0][0] > 1.0


def test_per_chat_failures_are_values_and_fatal_errors_stop_the_run(emulator, make_client):
    ids = seed(emulator, 3)
    emulator.faults.fail_chatids = {ids[0]: 34013, ids[1]: 60011}
    live = read_live(make_client(), ids, parallelism=4)
    assert "not found" in live[ids[0]].message and "34013" in live[ids[0]].message
    assert isinstance(live[ids[1]], ReadFailure) and "not found" not in live[ids[1]].message
    assert live[ids[2]].name == "c2"

    with Wire(APP_KEY, "wrong-secret-123", api_base=emulator.url, max_qps=0) as bad, pytest.raises(AuthError):
        read_live(bad, ids, parallelism=4)


def test_default_parallelism_follows_the_rate_limit():
    from reconciler.live import default_parallelism

    assert [default_parallelism(q) for q in (0.5, 20, 50, 1000)] == [1, 16, 40, 64]  # 0.8 s per call in flight
