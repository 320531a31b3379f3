"""Parallel apply (design §7) and the apply workflow as a library entry point (no CLI)."""

from __future__ import annotations

import json
import re

import pytest

from reconciler.config import load_config
from reconciler.emulator import EmulatorServer
from reconciler.errors import UsageError
from reconciler.manager import ApplyOptions, Outcome
from reconciler.plan import Action
from reconciler.safety import Thresholds
from reconciler.state import StateFile, locate_state

from helpers import APP_KEY, APP_SECRET, CONVERT, CREATE, ROBOT_SEND, UPDATE, dtchat, state_of, users, write_config


def scenario(emulator, folder):
    """Creates (one > 40 members), churn, two owner transfers, and one chat that fails permanently."""
    churn = emulator.seed_chat("Churn", "o1", ["o1", *users(90, "c")])
    swap = emulator.seed_chat("Swap", "alice", ["alice", "carol"])
    swap2 = emulator.seed_chat("Swap2", "dan", ["dan", "erin"])
    broken = emulator.seed_chat("Broken", "x", ["x"])
    chats = {f"new{i}": {"name": f"New {i}", "owner": "n0", "members": users(3 + i * 20, f"m{i}")} for i in range(4)}
    chats.update(
        {
            "churn": {
                "name": "Churn",
                "owner": "o1",
                "members": [*users(90, "c")[50:], *users(50, "n")],
                "chatid": churn,
            },
            "swap": {"name": "Swap", "owner": "bob", "members": ["carol"], "chatid": swap},
            "swap2": {"name": "Swap2", "owner": "erin", "members": ["erin", "fay"], "chatid": swap2},
            "broken": {"name": "Broken", "owner": "x", "members": ["ghost"], "chatid": broken},  # 60121 on apply
        }
    )
    write_config(folder, chats)
    return chats


@pytest.fixture
def strict():
    """An emulator that knows every user of the scenario except `ghost` (a permanent per-chat failure)."""
    known = [
        "n0",
        "o1",
        "x",
        "alice",
        "bob",
        "carol",
        "dan",
        "erin",
        "fay",
        *users(90, "c"),
        *users(50, "n"),
        *(u for i in range(4) for u in users(3 + i * 20, f"m{i}")),
    ]
    server = EmulatorServer(host="127.0.0.1", port=0, app_key=APP_KEY, app_secret=APP_SECRET, users=known)
    with server:
        yield server


def outcome_of(emulator, tmp_path, parallelism: int):
    emulator.reset()
    folder = tmp_path / f"p{parallelism}"
    scenario(emulator, folder)
    result = dtchat(
        emulator,
        "apply",
        str(folder),
        "--auto-approve",
        "--force",
        "--parallelism",
        str(parallelism),
        "--format",
        "json",
    )
    report = json.loads(result.stdout)
    state = json.loads((folder / "dtchat.state.json").read_text())["chats"]
    members = {key: sorted(emulator.chat(b["chatid"])["useridlist"]) for key, b in state.items()}
    owners = {key: emulator.chat(b["chatid"])["owner"] for key, b in state.items()}
    chatids = {key: b["chatid"] for key, b in state.items()}
    for chat in report["chats"]:  # chat ids differ between runs; everything else must not
        chat["chatid"] = "<id>" if chat["chatid"] else None
    return result.exit_code, report, sorted(state), members, owners, chatids


def test_results_state_and_exit_code_do_not_depend_on_the_parallelism(strict, tmp_path):
    one = outcome_of(strict, tmp_path, 1)
    sixteen = outcome_of(strict, tmp_path, 16)
    assert one[0] == sixteen[0] == 1  # the broken chat fails the run
    assert one[1] == sixteen[1]
    assert one[2:5] == sixteen[2:5]
    failed = [c["key"] for c in one[1]["chats"] if not c["ok"]]
    assert failed == ["broken"] and "unknown user id ghost" in one[1]["chats"][0]["error"]
    assert one[3]["swap"] == ["bob", "carol"] and one[4]["swap"] == "bob"
    assert one[1]["summary"] == "Apply: 4 created, 3 updated, 0 forgotten, 1 failed (13 write calls)."


def test_a_fatal_error_mid_apply_stops_new_chats_from_starting(emulator, tmp_path):
    folder = tmp_path / "c"
    write_config(folder, {f"k{i:02d}": {"name": f"K{i}", "owner": "x"} for i in range(12)})
    emulator.faults.monthly_quota = 3
    result = dtchat(emulator, "apply", str(folder), "--auto-approve", "--parallelism", "2", "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    quota = [c for c in report["chats"] if c["error"] and "90020" in c["error"]]
    not_attempted = [c for c in report["chats"] if c["error"] and c["error"].startswith("not attempted")]
    assert quota and len(not_attempted) >= 12 - 3 - 2 - len(quota)  # at most the chats in flight still ran
    assert len(emulator.calls_to("/chat/create")) <= 3 + 2


def test_the_apply_workflow_runs_without_the_cli(emulator, make_client, tmp_path):
    folder = tmp_path / "c"
    write_config(folder, {"a": {"name": "A", "owner": "x", "members": users(60)}, "b": {"name": "B", "owner": "y"}})
    config = load_config([folder])
    location = locate_state(None, first_path=str(folder), env={})
    manager = make_client().manager(parallelism=4)
    shown, finished = [], []
    dry = manager.apply(config, location, ApplyOptions(dry_run=True), on_plan=lambda p, w: shown.append(p))
    assert dry.outcome is Outcome.DRY_RUN and state_of(location.path) == {} and emulator.calls_to("/chat/create") == []
    declined = manager.apply(config, location, confirm=lambda plan: False)
    assert declined.outcome is Outcome.CANCELLED and emulator.calls_to("/chat/create") == []
    done = manager.apply(config, location, on_result=finished.append)
    assert done.outcome is Outcome.APPLIED and done.result.ok
    assert sorted(r.key for r in finished) == ["a", "b"]
    assert {r.key: r.calls for r in done.result.results} == {"a": 2, "b": 1}
    assert state_of(location.path).keys() == {"a", "b"}
    again = manager.apply(config, location)  # converged just now: nothing to read, nothing to do
    assert again.outcome is Outcome.NO_CHANGES and [c.action for c in again.plan.changes] == [Action.UNREAD] * 2
    assert again.plan.reads == 0
    full = manager.apply(config, location, ApplyOptions(refresh="all"))
    assert full.outcome is Outcome.NO_CHANGES and [c.action for c in full.plan.changes] == [Action.NOOP] * 2
    write_config(folder, {"a": {"name": "A", "owner": "x"}, "b": {"name": "B", "owner": "y"}})
    with pytest.raises(UsageError, match="would lose 60 of its 61 members"):
        manager.apply(load_config([folder]), location, ApplyOptions(thresholds=Thresholds(30.0)))
    assert len(emulator.calls_to("/chat/update")) == 1


@pytest.mark.parametrize("api", ["legacy", "v1"])
def test_dry_run_prints_exactly_the_bodies_the_real_apply_sends(emulator, tmp_path, api):
    """Every call the dry run prints, in each chat's order, is the call the emulator then receives: the
    generation's own endpoints and bodies (v1.0: nested managementOptions), and --notify's robot messages."""
    folder = tmp_path / "c"
    chats = scenario(emulator, folder)
    del chats["broken"]
    chats["churn"]["settings"] = {"muted": True}  # a setting change: v1.0 restates all six
    write_config(folder, chats)
    env = {"DTCHAT_ROBOT_CODE": "robot-1"}
    dry = dtchat(emulator, "apply", str(folder), "--dry-run", "--force", "--notify", env=env, api=api)
    assert dry.exit_code == 0, dry.output
    printed = [
        (m.group(1), m.group(2), json.loads(m.group(3) or "{}"))
        for m in re.finditer(r"^  ([a-z0-9-]+): POST (\S+)(?: (\{.*\}))?$", dry.stdout, re.M)
    ]
    real = dtchat(
        emulator, "apply", str(folder), "--auto-approve", "--force", "--notify", "--parallelism", "4", env=env, api=api
    )
    assert real.exit_code == 0, real.output
    state = json.loads((folder / "dtchat.state.json").read_text())["chats"]
    ids = {key: b["chatid"] for key, b in state.items()}
    ocids = {key: b.get("open_conversation_id") for key, b in state.items()}
    key_of_chat = {chatid: key for key, chatid in ids.items()}
    key_of_ocid = {ocid: key for key, ocid in ocids.items() if ocid}
    key_of_name = {chat["name"]: key for key, chat in chats.items()}

    def key_of(c) -> str:
        if c.endpoint == CREATE[api]:
            return key_of_name[c.body["name"]]  # a create names no chatid yet
        if c.endpoint == CONVERT:
            return key_of_chat[c.params["chatid"]]
        if c.endpoint == ROBOT_SEND:
            return key_of_ocid[c.body["openConversationId"]]
        return key_of_chat[c.body["chatid"]]

    sent: dict[str, list] = {}
    for c in emulator.calls:
        if c.endpoint in (CREATE[api], UPDATE[api], CONVERT, ROBOT_SEND):
            path = CONVERT.replace("{chatId}", c.params["chatid"]) if c.endpoint == CONVERT else c.endpoint
            sent.setdefault(key_of(c), []).append((path, c.body or {}))
    expected: dict[str, list] = {}
    for key, path, body in printed:
        if body.get("chatid") == f"<chatid of new chat {key}>":
            body = {**body, "chatid": ids[key]}
        if body.get("openConversationId") == f"<openConversationId of {key}>":
            body = {**body, "openConversationId": ocids[key]}
        expected.setdefault(key, []).append((path, body))
    assert sent == expected  # each chat's calls, bodies and order exactly as printed (chats run side by side)
    assert sum(map(len, sent.values())) == len(printed)
    assert {path for calls in sent.values() for path, _ in calls} >= {CREATE[api], UPDATE[api], ROBOT_SEND}
    churn = [body for path, body in sent["churn"] if path == UPDATE[api]]
    if api == "v1":  # the setting rides on the first update, with the other five at their live values
        assert churn[0]["managementOptions"] == {
            "chatBannedType": 1,
            "searchable": 0,
            "validationType": 0,
            "mentionAllAuthority": 0,
            "managementType": 0,
            "showHistoryType": 0,
        }
        assert all("managementOptions" not in body for body in churn[1:])
        assert all(ocids[key] for key in ids)  # each looked up once (or answered by its create) and kept
    else:
        assert churn[0]["chatBannedType"] == 1 and "managementOptions" not in churn[0]


def test_the_longest_chains_start_first_and_results_stay_in_plan_order(emulator, tmp_path):
    """A 200-member create (5 calls in a row) started last would trail alone; it starts first instead."""
    folder = tmp_path / "c"
    write_config(
        folder,
        {"a-small": {"name": "Small", "owner": "x"}, "z-big": {"name": "Big", "owner": "y", "members": users(199)}},
    )
    result = dtchat(emulator, "apply", str(folder), "--auto-approve", "--parallelism", "1", "--format", "json")
    assert result.exit_code == 0, result.output
    writes = [c for c in emulator.calls if c.endpoint in ("/chat/create", "/chat/update")]
    assert [c.endpoint for c in writes] == ["/chat/create"] + ["/chat/update"] * 4 + ["/chat/create"]
    assert writes[0].body["name"] == "Big" and writes[-1].body["name"] == "Small"
    assert [c["key"] for c in json.loads(result.stdout)["chats"]] == ["a-small", "z-big"]


def test_an_unexpected_error_while_collecting_results_starts_no_more_chats(emulator, make_client, tmp_path):
    """A bug in reporting (or a stray KeyboardInterrupt) must not let the pool run every queued chat."""
    from reconciler.applier import apply_plan

    folder = tmp_path / "c"
    write_config(folder, {f"k{i:02d}": {"name": f"K{i}", "owner": "x"} for i in range(20)})
    state = StateFile(tmp_path / "s.json")
    client = make_client()
    plan = client.manager().plan(load_config([folder]), state)

    def explode(result):
        raise RuntimeError("a bug in a result printer")

    with pytest.raises(RuntimeError):
        apply_plan(plan, client.backend, state, parallelism=2, on_result=explode)
    assert len(emulator.calls_to("/chat/create")) <= 3  # the two in flight, at most one more already started
    assert len(state.bindings) == len(emulator.chats())  # and each of those recorded
