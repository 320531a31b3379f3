"""The state file: atomic, locked, and never overwritten when it is not ours."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from reconciler.state import Binding, StateError, StateFile, StateLocation, default_path, locate_state, locked


def test_round_trip_sorted_and_atomic(tmp_path):
    path = tmp_path / "s.json"
    state = StateFile(path)
    state.record("zeta", "chat2", created=True)
    state.record("alpha", "chat1")
    data = json.loads(path.read_text())
    assert data["format"] == "dtchat-state" and data["version"] == 1
    assert list(data["chats"]) == ["alpha", "zeta"]
    assert "created_at" in data["chats"]["zeta"] and "created_at" not in data["chats"]["alpha"]
    assert {k: b.chatid for k, b in StateFile(path).bindings.items()} == {"alpha": "chat1", "zeta": "chat2"}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temp files left


def test_write_ahead_create_is_durable_then_replaced_or_cleared(tmp_path):
    state = StateFile(tmp_path / "s.json")
    state.begin_create("k")
    again = StateFile(tmp_path / "s.json")  # what a run after a SIGKILL here would read
    assert again.get("k").pending and again.get("k").chatid is None and again.get("k").created_at
    state.record("k", "chat1", created=True)
    assert StateFile(tmp_path / "s.json").get("k") == Binding("chat1", state.get("k").created_at)
    state.begin_create("j")
    state.abort_create("j")  # a definite refusal: no chat exists
    assert StateFile(tmp_path / "s.json").get("j") is None


def test_pending_then_forget(tmp_path):
    state = StateFile(tmp_path / "s.json")
    state.begin_create("k")
    again = StateFile(tmp_path / "s.json")
    assert again.forget("k") and not again.forget("k")
    assert StateFile(tmp_path / "s.json").bindings == {}


def test_move_renames_a_binding_and_refuses_to_overwrite(tmp_path):
    state = StateFile(tmp_path / "s.json")
    state.record("old", "chat1")
    state.record("taken", "chat2")
    with pytest.raises(StateError, match="`taken` is already bound to chat2"):
        state.move("old", "taken")
    with pytest.raises(StateError, match="no chat key `nope`"):
        state.move("nope", "new")
    state.move("old", "new")
    assert {k: b.chatid for k, b in StateFile(tmp_path / "s.json").bindings.items()} == {
        "new": "chat1",
        "taken": "chat2",
    }


def test_a_rewritten_state_file_keeps_its_mode(tmp_path):
    path = tmp_path / "s.json"
    StateFile(path).record("a", "chat1")
    path.chmod(0o664)
    StateFile(path).record("b", "chat2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_deeply_nested_state_is_refused_in_one_line(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("[" * 100_000)
    with pytest.raises(StateError, match="nested too deeply") as err:
        StateFile(path)
    assert "\n" not in str(err.value)


def test_a_symlink_and_the_real_path_share_one_lock(tmp_path):
    (tmp_path / "real").mkdir()
    path = tmp_path / "real" / "s.json"
    (tmp_path / "link.json").symlink_to(path)
    with locked(path):
        with pytest.raises(StateError, match="another dtchat run holds the lock"):
            with locked(tmp_path / "link.json"):
                pass
        with pytest.raises(StateError, match="another dtchat run holds the lock"):
            with locked(tmp_path / "real" / ".." / "real" / "s.json"):
                pass
    with locked(tmp_path / "link.json") as state:  # written through the link: the real file changes
        state.record("b", "chat2")
    assert (tmp_path / "link.json").is_symlink()
    assert StateFile(path).get("b") == Binding("chat2")


def test_locking_never_creates_a_folder_and_finds_an_unwritable_one_first(tmp_path):
    with pytest.raises(StateError, match="does not exist"), locked(tmp_path / "no" / "such" / "s.json"):
        pass
    assert not (tmp_path / "no").exists()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: nothing to prove there
            return
        with pytest.raises(StateError, match="cannot write state file here"), locked(ro / "s.json"):
            pass
    finally:
        ro.chmod(0o755)


def test_state_location_follows_one_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chats").mkdir()
    (tmp_path / "chats" / "a.yaml").write_text("")
    env: dict = {}
    assert locate_state(None, first_path="chats/a.yaml", env=env).path == Path("chats/dtchat.state.json")
    assert locate_state(None, first_path="chats", env=env).flag == " --state chats/dtchat.state.json"
    assert locate_state("x.json", first_path="chats", env=env) == StateLocation(Path("x.json"), " --state x.json")
    env = {"DTCHAT_STATE": "chats/dtchat.state.json"}
    where = locate_state(None, first_path="elsewhere.yaml", env=env)
    assert where.path == Path("chats/dtchat.state.json") and where.flag == ""  # the env finds it again
    with pytest.raises(StateError, match="does not exist here; pass --state F"):
        locate_state(None, env={}, must_exist=True)
    assert not (tmp_path / "dtchat.state.json").exists()
    with pytest.raises(StateError, match="never creates folders"):
        locate_state("no/such/dir/s.json", env={})
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ("[]", "not a dtchat state file"),
        ('{"format": "dtchat-state", "version": 9, "chats": {}}', "version 9 is not supported"),
        ('{"format": "dtchat-state", "version": 1, "chats": []}', '"chats" must be an object'),
        ('{"format": "dtchat-state", "version": 1, "chats": {"a": {"chatid": 5}}}', "chats.a.chatid"),
        ('{"format": "dtchat-state", "version": 1, "chats": {"a": {}}}', "needs a chatid"),
    ],
)
def test_bad_files_are_refused_with_the_path(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(StateError) as err:
        StateFile(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert path.read_text() == content


def test_non_utf8_state_is_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(StateError, match="not UTF-8"):
        StateFile(path)


def test_lock_is_exclusive(tmp_path):
    path = tmp_path / "s.json"
    with locked(path), pytest.raises(StateError, match="another dtchat run holds the lock"), locked(path):
        pass
    with locked(path) as state:  # released
        state.record("a", "chat1")


def test_default_path_is_beside_the_first_path(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.yaml").write_text("")
    assert default_path(tmp_path / "c") == tmp_path / "c" / "dtchat.state.json"
    assert default_path(tmp_path / "c" / "x.yaml") == tmp_path / "c" / "dtchat.state.json"
