"""Apply under faults: throttling, busy, 5xx, token expiry, ambiguous creates, a SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from reconciler.applier import apply_plan
from reconciler.config import load_config
from reconciler.manager import Manager
from reconciler.plan import Action
from reconciler.state import StateFile

from helpers import APP_KEY, APP_SECRET, CREATE, UPDATE, dtchat, state_of, users, write_config


def converge(client, cfg, state_path):
    config = load_config([cfg])
    state = StateFile(state_path)
    # no directory: these tests are about the writes under faults, not the plan's user-id lookups
    plan = Manager(client.backend, parallelism=4).plan(config, state)
    return plan, apply_plan(plan, client.backend, state)


def many_chats(n=6):
    return {
        f"team-{i}": {
            "name": f"Team {i}",
            "owner": f"lead{i}",
            "members": users(150 + 10 * i),
            "settings": {"searchable": bool(i % 2)},
        }
        for i in range(n)
    }


def test_apply_converges_through_throttling_busy_5xx_and_token_expiry_without_duplicates(
    emulator, make_client, tmp_path
):
    cfg = tmp_path / "c"
    write_config(cfg, many_chats())
    f = emulator.faults
    f.qps_limit = 8
    f.busy_every = 4
    f.http500_every = 5
    f.fault_endpoints = {"/chat/get", "/chat/update"}  # a 5xx on create is ambiguous by design (see below)
    f.token_uses = 7
    # No client-side throttle, to provoke the server's 90018; backoff long enough to outlast its window.
    client = make_client(max_qps=0, backoff_base=0.05, backoff_cap=1.0, max_attempts=8)
    plan, result = converge(client, cfg, tmp_path / "s.json")
    assert result.ok, result.failed
    created = [c for c in emulator.calls_to("/chat/create") if c.errcode == 0]  # refusals (42001, 90018) made none
    assert len(created) == len(emulator.chats()) == 6
    errcodes = {c.errcode for c in emulator.calls}
    assert {-1, 42001, 90018} <= errcodes and any(c.status == 500 for c in emulator.calls)
    # Second pass, still under faults: nothing left to do, nothing created again.
    plan, result = converge(client, cfg, tmp_path / "s.json")
    assert result.ok and not plan.has_changes
    assert len([c for c in emulator.calls_to("/chat/create") if c.errcode == 0]) == len(emulator.chats()) == 6


def test_busy_on_create_is_retried_once_definitely_not_done(emulator, make_client, tmp_path):
    cfg = tmp_path / "c"
    write_config(cfg, {"one": {"name": "One", "owner": "a"}})
    emulator.faults.busy_every = 1
    emulator.faults.fault_endpoints = {"/chat/create"}
    client = make_client(max_attempts=3)
    # every create is busy: retried up to 3 attempts, then a clear failure; nothing was created
    plan, result = converge(client, cfg, tmp_path / "s.json")
    assert not result.ok and len(emulator.calls_to("/chat/create")) == 3
    assert not (tmp_path / "s.json").exists() or "one" not in state_of(tmp_path / "s.json")
    emulator.faults.busy_every = 0
    plan, result = converge(client, cfg, tmp_path / "s.json")
    assert result.ok and len([c for c in emulator.calls_to("/chat/create") if c.errcode == 0]) == 1


def test_ambiguous_create_marks_pending_and_is_never_repeated_until_imported(emulator, make_client, tmp_path):
    cfg = tmp_path / "c"
    write_config(cfg, {"one": {"name": "One", "owner": "a", "members": ["b"]}})
    emulator.faults.drop_after_create = 1
    state_path = tmp_path / "s.json"
    plan, result = converge(make_client(), cfg, state_path)
    (failed,) = result.failed
    assert "dtchat import one CHATID" in failed.error and "may" in failed.error
    assert len(emulator.calls_to("/chat/create")) == 1
    state = json.loads(state_path.read_text())
    assert state["chats"]["one"] == {
        "chatid": None,
        "created_at": state["chats"]["one"]["created_at"],
        "pending_create": True,
    }

    # The next run refuses to create it again.
    plan, result = converge(make_client(), cfg, state_path)
    assert plan.changes[0].action is Action.ERROR and not result.ok
    assert len(emulator.calls_to("/chat/create")) == 1

    # The admin finds the chat and imports it: converged, still one create.
    (chatid,) = requests.get(emulator.url + "/__emulator__/chats", timeout=5).json()["chats"]
    result = dtchat(emulator, "import", "one", chatid, "--state", str(state_path))
    assert result.exit_code == 0, result.output
    plan, result = converge(make_client(), cfg, state_path)
    assert result.ok and not plan.has_changes


@pytest.mark.parametrize("api", ["legacy", "v1"])
def test_sigkill_right_after_a_create_leaves_a_valid_state_holding_the_chatid(emulator, tmp_path, api):
    cfg = tmp_path / "c"
    write_config(cfg, {"big": {"name": "Big", "owner": "boss", "members": users(120)}})
    state_path = tmp_path / "s.json"
    env = dict(os.environ, DINGTALK_APP_KEY=APP_KEY, DINGTALK_APP_SECRET=APP_SECRET, NO_COLOR="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "--api",
            api,
            "--api-base",
            emulator.url,
            "--openapi-base",
            emulator.url,
            "apply",
            str(cfg),
            "--auto-approve",
            "--state",
            str(state_path),
            "--init",  # a first run: the state file is written as the chat is created
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not emulator.calls_to(CREATE[api]) and time.monotonic() < deadline:
            time.sleep(0.001)
        emulator.faults.latency_ms = 3000  # hold the next call so the process is mid-run when killed
        while emulator.counters().get(UPDATE[api], 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert emulator.counters().get(UPDATE[api], 0) >= 1, "the apply never got past its create"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    emulator.faults.latency_ms = 0
    (create,) = emulator.calls_to(CREATE[api])
    data = json.loads(state_path.read_text(encoding="utf-8"))  # valid JSON
    chatid = data["chats"]["big"]["chatid"]
    assert emulator.chat(chatid) is not None
    assert [t for t in os.listdir(tmp_path) if t.endswith(".tmp")] == []

    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--state", str(state_path), api=api)
    assert result.exit_code == 0, result.output
    assert len(emulator.calls_to(CREATE[api])) == 1
    assert sorted(emulator.chat(chatid)["useridlist"]) == sorted(users(120) + ["boss"])
    assert state_of(state_path) == {"big": chatid}


def test_quota_used_up_mid_apply_stops_the_run_instead_of_hammering_every_chat(emulator, make_client, tmp_path):
    cfg = tmp_path / "c"
    write_config(cfg, {f"k{i}": {"name": f"K{i}", "owner": "a", "members": ["b"]} for i in range(5)})
    emulator.faults.monthly_quota = 2  # the first two creates pass, the third call answers 90020
    plan, result = converge(make_client(), cfg, tmp_path / "s.json")
    assert [r.ok for r in result.results] == [True, True, False, False, False]
    assert "90020" in result.results[2].error and result.results[2].fatal
    assert [r.error.startswith("not attempted: ") for r in result.results[3:]] == [True, True]
    assert len(emulator.calls_to("/chat/create")) == 3  # no attempt on k3, k4
    assert state_of(tmp_path / "s.json").keys() == {"k0", "k1"}


def test_unwritable_state_is_found_before_any_create_is_sent(emulator, make_client, tmp_path):
    cfg = tmp_path / "c"
    write_config(cfg, {"a": {"name": "A", "owner": "x"}, "b": {"name": "B", "owner": "y"}})
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state = StateFile(state_dir / "s.json")
    plan = make_client().manager().plan(load_config([cfg]), state)
    (state_dir / "s.json").mkdir()  # the file cannot be replaced now (as a full disk or bad mount would)
    result = apply_plan(plan, make_client().backend, state)
    first, second = result.results
    assert emulator.calls_to("/chat/create") == []  # the write-ahead record failed: nothing was sent
    assert not first.ok and first.fatal and "not created, nothing was sent" in first.error
    assert second.error.startswith("not attempted")
