"""Concurrent reads must not change the plan: parallelism 1, 8 and 16 give the same Plan, sorted by key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.config import load_config
from reconciler.plan import Action
from reconciler.state import FORMAT, VERSION, StateFile

from helpers import users, write_config

#: Chats per kind; keys are shuffled across kinds so sorting has work to do.
PER_KIND = 10


def build(emulator, folder: Path) -> tuple[Path, Path]:
    """~60 chats: in sync, drifted, bound to an unknown chatid, pending, to create, pinned; plus forgotten keys."""
    chats: dict[str, dict] = {}
    state: dict[str, dict] = {}
    people = users(60)
    for i in range(PER_KIND):
        members = people[i : i + 5]
        in_sync = emulator.seed_chat(f"同步 {i}", members[0], members, chatBannedType=1)
        chats[f"k{i:02d}-sync"] = {
            "name": f"同步 {i}",
            "owner": members[0],
            "members": members,
            "settings": {"muted": True},
        }
        state[f"k{i:02d}-sync"] = {"chatid": in_sync}

        drifted = emulator.seed_chat(f"漂移 {i}", members[0], members[:3] + ["intruder"], chatBannedType=0)
        chats[f"k{59 - i:02d}-drift"] = {
            "name": f"漂移 {i}!",
            "owner": members[0],
            "members": members,
            "settings": {"muted": True},
        }
        state[f"k{59 - i:02d}-drift"] = {"chatid": drifted}

        chats[f"k{30 + i:02d}-gone"] = {"name": f"不在 {i}", "owner": members[0], "members": members}
        state[f"k{30 + i:02d}-gone"] = {"chatid": f"chat{i + 1:08x}"}  # well-formed, unknown: 34013

        chats[f"k{20 + i:02d}-pending"] = {"name": f"待定 {i}", "owner": members[0], "members": members}
        state[f"k{20 + i:02d}-pending"] = {"chatid": None, "pending_create": True}

        chats[f"k{40 + i:02d}-new"] = {"name": f"新 {i}", "owner": members[0], "members": members}

        pinned = emulator.seed_chat(f"固定 {i}", members[1], members[1:])
        chats[f"k{10 + i:02d}-pin"] = {
            "name": f"固定 {i}",
            "owner": members[1],
            "members": members[1:],
            "chatid": pinned,
        }
    for i in range(3):
        state[f"k{i:02d}-forgotten"] = {"chatid": emulator.seed_chat("旧", "u0000", ["u0000"])}
    config = write_config(folder, chats)
    state_path = folder / "dtchat.state.json"
    state_path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "chats": state}), encoding="utf-8")
    return config, state_path


@pytest.fixture
def plans(emulator, make_client, tmp_path):
    """The plan of the same inputs at parallelism 1, 8 and 16, each with a fresh client."""
    config_path, state_path = build(emulator, tmp_path)
    config = load_config([config_path])
    state = StateFile(state_path)
    emulator.faults.latency_ms = 2  # enough for reads to overlap and finish out of order
    out = {}
    for parallelism in (1, 8, 16):
        client = make_client()
        out[parallelism] = client.manager(parallelism=parallelism).plan(config, state)
        assert client.stats["calls"]["/chat/get"] == 4 * PER_KIND  # one read per bound chat, no more
    return out


def test_plan_is_identical_at_any_parallelism(plans):
    assert plans[1] == plans[8] == plans[16]
    assert [c.key for c in plans[1].changes] == [c.key for c in plans[16].changes]


def test_plan_is_sorted_by_key_and_covers_every_kind(plans):
    changes = plans[8].changes
    keys = [c.key for c in changes]
    assert keys == sorted(keys)
    assert len(keys) == 6 * PER_KIND + 3
    by_kind: dict[str, set[Action]] = {}
    for change in changes:
        by_kind.setdefault(change.key.split("-", 1)[1], set()).add(change.action)
    assert by_kind == {
        "sync": {Action.NOOP},
        "drift": {Action.UPDATE},
        "gone": {Action.ERROR},
        "pending": {Action.ERROR},
        "new": {Action.CREATE},
        "pin": {Action.NOOP},
        "forgotten": {Action.ORPHAN},
    }
    gone = next(c for c in changes if c.key.endswith("-gone"))
    assert "not found" in (gone.error or "")
