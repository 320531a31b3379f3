"""``dtchat watch``'s engine against the in-memory fake of the seam: coalescing, deduplication, what an
event makes it read and (with --enforce) write, directory events, reloads. The Stream connection itself is
tested end to end against the emulator's gateway (tests/test_watch_e2e.py)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from reconciler.manager import Manager
from reconciler.model import LiveChat
from reconciler.state import StateFile, StateLocation
from reconciler.watch import HourlyBudget, Watcher

from fake_backend import UPDATE, FakeBackend, FakeDirectory
from helpers import write_config

EXACT = {"eng": {"name": "Eng", "owner": "alice", "members": ["bob"], "chatid": "chatfake-eng"}}


def setup(tmp_path: Path, chats: dict, live: dict[str, LiveChat], directory: FakeDirectory | None = None, **kw):
    folder = tmp_path / "chats"
    write_config(folder, chats)
    state = StateFile(folder / "dtchat.state.json")
    for key, chat in chats.items():
        state.record(key, chat.pop("chatid", None) or live[key].chatid, open_conversation_id=f"cid-{key}")
    write_config(folder, chats)
    backend = FakeBackend({c.chatid: c for c in live.values()})
    alerts: list = []
    watcher = Watcher(
        Manager(backend, directory or FakeDirectory(), parallelism=4),
        [str(folder)],
        StateLocation(folder / "dtchat.state.json"),
        emit=alerts.append,
        **kw,
    ).start()
    return watcher, backend, alerts, folder


def event(kind: str, chatid: str, eid: str, **data) -> tuple[str, str, str]:
    return kind, eid, json.dumps({"chatId": chatid, "openConversationId": "cid", **data})


def test_a_member_added_by_hand_is_an_alert_naming_chat_and_member_with_no_write(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob", "mallory"))}
    watcher, backend, alerts, _ = setup(tmp_path, EXACT, live)
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e1", userId=["mallory"])).result(5) is True
    (alert,) = alerts
    assert alert.key == "eng" and alert.drift.unexpected == ("mallory",) and alert.cause == "added in DingTalk"
    assert backend.sent == [] and backend.reads == ["chatfake-eng"]


def test_enforce_removes_the_member_and_records_the_digest(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob", "mallory"))}
    watcher, backend, alerts, folder = setup(tmp_path, EXACT, live, enforce=True)
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e1", userId=["mallory"])).result(5)
    (alert,) = alerts
    assert alert.enforced and [c.body["remove"] for c in backend.sent if c.endpoint is UPDATE] == [["mallory"]]
    assert backend.chats["chatfake-eng"].members == ("alice", "bob")
    assert StateFile(folder / "dtchat.state.json").get("eng").digest  # verified under the lock


def test_an_additive_chat_keeps_the_newcomer(tmp_path):
    chats = {"all": {"name": "All", "owner": "alice", "members": ["bob"], "members_policy": "additive"}}
    live = {"all": LiveChat("chatfake-all", "All", "alice", ("alice", "bob", "newcomer"))}
    watcher, backend, alerts, _ = setup(tmp_path, chats, live, enforce=True)
    assert watcher.submit(*event("chat_add_member", "chatfake-all", "e1", userId=["newcomer"])).result(5)
    assert backend.sent == [] and "newcomer" in backend.chats["chatfake-all"].members
    assert alerts[0].drift.unexpected == ()  # additive: not drift


def test_a_burst_of_50_events_on_one_chat_costs_at_most_two_reads(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob"))}
    watcher, backend, _, _ = setup(tmp_path, EXACT, live)
    backend.read_delay = 0.2
    futures = [watcher.submit(*event("chat_add_member", "chatfake-eng", f"e{i}", userId=[f"x{i}"])) for i in range(50)]
    assert all(f.result(10) for f in futures)
    assert 1 <= backend.reads.count("chatfake-eng") <= 2


def test_a_redelivered_event_is_handled_once(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob"))}
    watcher, backend, _, _ = setup(tmp_path, EXACT, live)
    first = watcher.submit(*event("chat_add_member", "chatfake-eng", "same", userId=["x"]))
    assert first.result(5)
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "same", userId=["x"])).result(5)
    assert backend.reads == ["chatfake-eng"]


def test_events_on_chats_dtchat_does_not_manage_are_ignored_and_counted(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob"))}
    watcher, backend, alerts, _ = setup(tmp_path, EXACT, live)
    assert watcher.submit(*event("chat_add_member", "chat-someone-elses", "e1", userId=["x"])).result(5)
    assert watcher.submit("some_other_event", "e2", "{}").result(5)
    assert watcher.ignored == 2 and backend.reads == [] and alerts == []


def test_an_owner_change_is_matched_by_open_conversation_id(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "mallory", ("alice", "bob", "mallory"))}
    watcher, backend, alerts, _ = setup(tmp_path, EXACT, live)
    data = json.dumps({"openConversationId": "cid-eng", "owner": "mallory"})  # no chatId in this event
    assert watcher.submit("chat_update_owner", "e1", data).result(5)
    assert alerts[0].drift.owner == ("alice", "mallory")


def test_a_leaver_leaves_directory_built_chats_and_not_the_ones_that_list_them(tmp_path):
    directory = FakeDirectory(departments={100: ["alice", "bob", "leaver"]})
    chats = {
        "dept": {"name": "Dept", "owner": "alice", "members": [{"dept": 100}]},
        "listed": {"name": "Listed", "owner": "alice", "members": ["leaver"]},
    }
    live = {
        "dept": LiveChat("chatfake-dept", "Dept", "alice", ("alice", "bob", "leaver")),
        "listed": LiveChat("chatfake-listed", "Listed", "alice", ("alice", "leaver")),
    }
    watcher, backend, alerts, _ = setup(tmp_path, chats, live, directory=directory, enforce=True)
    directory.departments[100] = ["alice", "bob"]  # the leaver is gone from the directory
    assert watcher.submit("user_leave_org", "e1", json.dumps({"userId": ["leaver"], "timeStamp": "1"})).result(5)
    assert backend.chats["chatfake-dept"].members == ("alice", "bob")
    assert backend.chats["chatfake-listed"].members == ("alice", "leaver")  # listed by name: the YAML says so
    assert [a.key for a in alerts] == ["dept"] and backend.reads == ["chatfake-dept"]


def test_a_removal_threshold_is_an_alert_not_a_forced_removal(tmp_path):
    chats = {"big": {"name": "Big", "owner": "o", "members": [f"m{i}" for i in range(3)]}}
    live = {
        "big": LiveChat("chatfake-big", "Big", "o", ("o", *(f"m{i}" for i in range(3)), *(f"x{i}" for i in range(20))))
    }
    watcher, backend, alerts, _ = setup(tmp_path, chats, live, enforce=True)
    assert watcher.submit(*event("chat_add_member", "chatfake-big", "e1", userId=["x0"])).result(5)
    assert backend.sent == [] and "not enforced" in alerts[0].problem and "--max-removal-pct" in alerts[0].problem


def test_an_invalid_reload_keeps_the_old_configuration(tmp_path, caplog):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob"))}
    watcher, _, _, folder = setup(tmp_path, EXACT, live)
    (folder / "chats.yaml").write_text("version: 1\nchats:\n  eng: {name: Eng, owner: alice, mute: true}\n")
    assert watcher.reload() is False
    assert [c.key for c in watcher.config.chats] == ["eng"]
    assert any("reload refused" in r.getMessage() for r in caplog.records)
    write_config(folder, {"eng": {"name": "Eng", "owner": "alice", "members": ["bob", "carol"]}})
    assert watcher.reload() is True and watcher.config.chats[0].members == ("alice", "bob", "carol")


def test_the_hourly_budget_skips_what_it_cannot_afford(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob", "x"))}
    watcher, backend, alerts, _ = setup(tmp_path, EXACT, live, budget=HourlyBudget(1))
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e1")).result(5)
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e2")).result(5)
    assert len(backend.reads) == 1 and len(alerts) == 1  # the second would cross the hour's budget


def test_after_close_events_are_not_acknowledged(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob"))}
    watcher, backend, _, _ = setup(tmp_path, EXACT, live)
    watcher.close()
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "late")).result(5) is False
    assert backend.reads == []


def held_state_lock(folder: Path) -> int:
    """Another dtchat run (CI's apply) holds the state file's lock; close the returned fd to release it."""
    fd = os.open(folder / "dtchat.state.json.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_an_event_refused_while_another_run_held_the_lock_is_handled_when_redelivered(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob", "mallory"))}
    watcher, backend, _, folder = setup(tmp_path, EXACT, live, enforce=True)
    fd = held_state_lock(folder)
    try:
        assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e1", userId=["mallory"])).result(5) is False
    finally:
        os.close(fd)
    assert backend.sent == []
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e1", userId=["mallory"])).result(5) is True
    assert backend.chats["chatfake-eng"].members == ("alice", "bob")
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e1", userId=["mallory"])).result(5) is True
    assert len([c for c in backend.sent if c.endpoint is UPDATE]) == 1  # handled once it succeeded


def test_a_leaver_event_whose_handling_failed_is_not_forgotten(tmp_path):
    directory = FakeDirectory(departments={100: ["alice", "bob", "leaver"]})
    chats = {"dept": {"name": "Dept", "owner": "alice", "members": [{"dept": 100}]}}
    live = {"dept": LiveChat("chatfake-dept", "Dept", "alice", ("alice", "bob", "leaver"))}
    watcher, backend, _, folder = setup(tmp_path, chats, live, directory=directory, enforce=True)
    directory.departments[100] = ["alice", "bob"]
    leave = ("user_leave_org", "e1", json.dumps({"userId": ["leaver"]}))
    fd = held_state_lock(folder)
    try:
        assert watcher.submit(*leave).result(5) is False  # not acknowledged: DingTalk delivers it again
    finally:
        os.close(fd)
    assert backend.chats["chatfake-dept"].members == ("alice", "bob", "leaver")
    assert watcher.submit(*leave).result(5) is True  # the redelivery still sees the change
    assert backend.chats["chatfake-dept"].members == ("alice", "bob")


def test_an_event_is_not_acknowledged_while_the_state_cannot_be_read(tmp_path):
    live = {"eng": LiveChat("chatfake-eng", "Eng", "alice", ("alice", "bob", "mallory"))}
    watcher, backend, _, folder = setup(tmp_path, EXACT, live, enforce=True)
    state = folder / "dtchat.state.json"
    good = state.read_text()
    state.write_text(good[:-5])  # mid-rewrite (a git checkout, a failed remote read)
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e1", userId=["mallory"])).result(5) is False
    assert watcher.ignored == 0
    state.write_text(good)
    assert watcher.submit(*event("chat_add_member", "chatfake-eng", "e1", userId=["mallory"])).result(5) is True
    assert backend.chats["chatfake-eng"].members == ("alice", "bob")
