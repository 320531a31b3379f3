"""The state file: atomic, locked, and never overwritten when it is not ours."""
from __future__ import annotations

import json

import pytest

from reconciler.state import StateError, StateFile, default_path, locked


def test_round_trip_sorted_and_atomic(tmp_path):
    path = tmp_path / "s.json"
    state = StateFile(path)
    state.record("zeta", "chat2", created=True)
    state.record("alpha", "chat1")
    data = json.loads(path.read_text())
    assert data["format"] == "dtchat-state" and data["version"] == 1
    assert list(data["chats"]) == ["alpha", "zeta"]
    assert "created_at" in data["chats"]["zeta"] and "created_at" not in data["chats"]["alpha"]
    assert StateFile(path).chatids() == {"alpha": "chat1", "zeta": "chat2"}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temp files left


def test_pending_then_forget(tmp_path):
    state = StateFile(tmp_path / "s.json")
    state.mark_pending("k")
    again = StateFile(tmp_path / "s.json")
    assert again.get("k").pending and again.get("k").chatid is None and again.chatids() == {}
    assert again.forget("k") and not again.forget("k")
    assert StateFile(tmp_path / "s.json").bindings == {}


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ("[]", "not a dtchat state file"),
    ('{"format": "dtchat-state", "version": 9, "chats": {}}', "version 9 is not supported"),
    ('{"format": "dtchat-state", "version": 1, "chats": []}', '"chats" must be an object'),
    ('{"format": "dtchat-state", "version": 1, "chats": {"a": {"chatid": 5}}}', "chats.a.chatid"),
    ('{"format": "dtchat-state", "version": 1, "chats": {"a": {}}}', "needs a chatid"),
])
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
    with locked(path):
        with pytest.raises(StateError, match="another dtchat run holds the lock"):
            with locked(path):
                pass
    with locked(path) as state:  # released
        state.record("a", "chat1")


def test_default_path_is_beside_the_first_path(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.yaml").write_text("")
    assert default_path(tmp_path / "c") == tmp_path / "c" / "dtchat.state.json"
    assert default_path(tmp_path / "c" / "x.yaml") == tmp_path / "c" / "dtchat.state.json"
