"""The engine (applier, manager) against the in-memory fake of the seam: its own logic, no HTTP.

Write-ahead creates, what a fatal error stops, notify failures as warnings, the dry-run list equal to what
is sent, and refusals before any write. The wire behind the seam is the conformance suite's business.
"""

from __future__ import annotations

import json

import pytest

from reconciler.applier import _Stop, apply_change, apply_plan, planned_calls
from reconciler.backends import AmbiguousCreateError, InvalidParameterError, QuotaExhaustedError
from reconciler.config import load_config
from reconciler.errors import UsageError
from reconciler.manager import ApplyOptions, Manager
from reconciler.model import LiveChat
from reconciler.plan import Action, ChatChange
from reconciler.state import StateFile, locate_state

from fake_backend import CREATE, NOTIFY, UPDATE, FakeBackend
from helpers import users, write_config


def plan_of(backend, folder, state, notify=None):
    return Manager(backend).plan(load_config([folder]), state)


@pytest.fixture
def setup(tmp_path):
    folder = tmp_path / "chats"
    backend = FakeBackend({"chat0001": LiveChat("chat0001", "Old", "alice", ("alice", "bob"))})
    write_config(
        folder,
        {
            "big": {"name": "Big", "owner": "boss", "members": users(90)},
            "old": {"name": "Old", "owner": "alice", "members": ["carol"], "chatid": "chat0001"},
            "small": {"name": "Small", "owner": "x"},
        },
    )
    return folder, backend, StateFile(tmp_path / "s.json")


def test_a_create_records_its_chatid_and_open_conversation_id_at_once(setup):
    folder, backend, state = setup
    result = apply_plan(plan_of(backend, folder, state), backend, state)
    assert result.ok
    big = state.get("big")
    assert big.chatid in backend.chats and big.open_conversation_id == "cid" + big.chatid and not big.pending
    assert set(backend.chats[big.chatid].members) == {"boss", *users(90)}
    assert [c.endpoint for c in backend.sent if c.body.get("name") == "Big" or c.body.get("chatid") == big.chatid] == [
        CREATE,
        UPDATE,
        UPDATE,
    ]


def test_a_definite_refusal_of_a_create_clears_its_pending_record(setup):
    folder, backend, state = setup
    backend.fail[("fake:create", "Small")] = InvalidParameterError("fake:create", "bad name")
    result = apply_plan(plan_of(backend, folder, state), backend, state)
    small = {r.key: r for r in result.results}["small"]
    assert not small.ok and "bad name" in small.error
    assert state.get("small") is None  # no chat was made: nothing to settle


def test_an_unknown_create_outcome_stays_pending(setup):
    folder, backend, state = setup
    backend.fail[("fake:create", "Small")] = AmbiguousCreateError("fake:create", "outcome unknown")
    result = apply_plan(plan_of(backend, folder, state), backend, state)
    small = {r.key: r for r in result.results}["small"]
    assert not small.ok and "dtchat import small CHATID" in small.error
    assert state.get("small").pending and state.get("small").chatid is None


def test_a_fatal_error_starts_no_further_chat_and_names_them(tmp_path):
    folder = tmp_path / "c"
    write_config(folder, {f"k{i}": {"name": f"K{i}", "owner": "x"} for i in range(6)})
    backend = FakeBackend()
    backend.fail[("fake:create", "K1")] = QuotaExhaustedError("fake:create", "quota used up")
    state = StateFile(tmp_path / "s.json")
    result = apply_plan(plan_of(backend, folder, state), backend, state, parallelism=1)
    assert [r.ok for r in result.results] == [True, False, False, False, False, False]
    assert result.results[1].fatal and result.not_started == ("k2", "k3", "k4", "k5")
    assert len([c for c in backend.sent if c.endpoint is CREATE]) == 2  # k0, and k1 refused
    assert set(state.bindings) == {"k0"}


def test_a_failed_notify_is_a_warning_and_a_fatal_one_still_stops_the_run(tmp_path):
    folder = tmp_path / "c"
    write_config(folder, {f"k{i}": {"name": f"K{i}", "owner": "x"} for i in range(4)})
    backend = FakeBackend()
    backend.fail[("fake:notify", "*")] = QuotaExhaustedError("fake:notify", "quota used up")
    state = StateFile(tmp_path / "s.json")
    result = apply_plan(plan_of(backend, folder, state), backend, state, parallelism=1, notify=True)
    first = result.results[0]
    assert first.ok and "not sent" in first.warning  # its changes are applied: a warning, not a failure
    assert result.not_started == ("k1", "k2", "k3")  # but nothing new starts once the quota is spent


def test_the_dry_run_lists_exactly_what_apply_sends(setup):
    folder, backend, state = setup
    plan = plan_of(backend, folder, state)
    listed = planned_calls(plan, backend, dict(state.bindings), notify=True)
    apply_plan(plan, backend, state, notify=True, parallelism=1)
    ids = {"old": "chat0001", **{key: state.get(key).chatid for key in ("big", "small")}}

    def resolved(key, call):
        body = dict(call.shown_body(key))
        if body.get("chatid") == f"<chatid of new chat {key}>":
            body["chatid"] = ids[key]
        return call.endpoint, body

    sent_by_key: dict[str, list] = {}
    for call in backend.sent:
        chatid = call.body.get("chatid")
        key = next(k for k, v in ids.items() if v == chatid) if chatid else call.body["name"].lower()
        sent_by_key.setdefault(key, []).append((call.endpoint, dict(call.body)))
    expected: dict[str, list] = {}
    for key, call in listed:
        expected.setdefault(key, []).append(resolved(key, call))
    assert sent_by_key == expected
    assert sum(c.endpoint is NOTIFY for c in backend.sent) == 3


def test_notify_without_a_robot_is_refused_before_anything_is_read_or_sent(setup, tmp_path):
    folder, _, _ = setup
    backend = FakeBackend(robot_code=None)
    location = locate_state(str(tmp_path / "s.json"))
    with pytest.raises(UsageError, match="DTCHAT_ROBOT_CODE"):
        Manager(backend).apply(load_config([folder]), location, ApplyOptions(notify=True))
    assert backend.sent == [] and backend.reads == [] and not (tmp_path / "s.json").exists()


def test_a_dry_run_writes_nothing(setup, tmp_path):
    folder, backend, _ = setup
    location = locate_state(str(tmp_path / "s.json"))
    outcome = Manager(backend).apply(load_config([folder]), location, ApplyOptions(dry_run=True))
    assert outcome.calls and backend.sent == [] and not (tmp_path / "s.json").exists()
    assert json.dumps([call.shown_body(key) for key, call in outcome.calls if call])  # printable as is


def test_ctrl_c_between_two_calls_of_a_chat_makes_the_next_run_read_it_again(tmp_path):
    """Even when the stored digest already equals the desired one (the `--refresh all` after a change by hand)."""
    stop = _Stop()

    class InterruptedAfterOneCall(FakeBackend):
        def send(self, call):
            produced = super().send(call)
            stop.interrupt()  # Ctrl-C while the first of the chat's calls was on the wire
            return produced

    backend = InterruptedAfterOneCall({"chat1": LiveChat("chat1", "C", "x", ("x",), {})})
    state = StateFile(tmp_path / "s.json")
    state.record("k", "chat1")
    state.verified({"k": "digest-of-the-yaml"})
    change = ChatChange(
        "k", Action.UPDATE, chatid="chat1", add=tuple(f"u{i}" for i in range(45)), digest="digest-of-the-yaml"
    )
    result = apply_change(change, backend, state, stop=stop)
    assert result.interrupted and result.calls == 1 and len(backend.sent) == 1
    assert StateFile(tmp_path / "s.json").get("k").digest is None
