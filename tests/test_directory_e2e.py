"""Directory selectors end to end: the real CLI over HTTP against the emulator serving an org."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.emulator import EmulatorServer, Org

from helpers import APP_KEY, APP_SECRET, dtchat, state_of, write_config

ORG = {
    "departments": [
        {"id": 1, "name": "公司"},
        {"id": 100, "name": "研发部", "parent": 1},
        {"id": 110, "name": "后端组", "parent": 100},
        {"id": 120, "name": "前端组", "parent": 100},
        {"id": 200, "name": "销售部", "parent": 1},
        {"id": 300, "name": "人事部", "parent": 1},
    ],
    "users": [
        {"userid": "alice", "mobile": "13800000000", "departments": [100]},
        {"userid": "bob", "departments": [110]},
        {"userid": "carol", "departments": [110, 120]},
        {"userid": "erin", "departments": [120]},
        {"userid": "sam", "departments": [200]},
        {"userid": "sue", "departments": [200]},
        {"userid": "hana", "mobile": "13800000007", "departments": [300]},
    ],
    "roles": [{"id": 3001, "name": "值班", "holders": ["bob", "sue"]}],
}

CHATS = {
    "eng": {"name": "研发", "owner": "alice", "members": [{"dept": 100, "recursive": True}]},
    "sales": {
        "name": "销售",
        "owner": "sam",
        "members": [{"dept": 200}, {"mobile": "+86 138-0000-0007"}],
        "exclude": [{"role": 3001}],
    },
    "plain": {"name": "普通", "owner": "alice", "members": ["bob"]},
}


@pytest.fixture
def emulator():
    """Overrides conftest's: the same emulator, serving ORG."""
    server = EmulatorServer(host="127.0.0.1", port=0, app_key=APP_KEY, app_secret=APP_SECRET, org=Org.from_data(ORG))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return tmp_path / "chats"


def members_of(emulator: EmulatorServer, chatid: str) -> list[str]:
    return sorted(emulator.chat(chatid)["useridlist"])


def writes_to(emulator: EmulatorServer, chatid: str) -> list:
    return [c for c in emulator.calls_to("/chat/update") if (c.body or {}).get("chatid") == chatid]


def test_plan_and_apply_with_selectors_then_nothing_left_to_do(emulator, cfg):
    write_config(cfg, CHATS)
    result = dtchat(emulator, "plan", str(cfg), "--detailed-exitcode")
    assert result.exit_code == 2, result.output
    assert "Plan: 3 to create, 0 to update" in result.output
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 0, result.output
    state = state_of(cfg / "dtchat.state.json")
    assert members_of(emulator, state["eng"]) == ["alice", "bob", "carol", "erin"]
    assert members_of(emulator, state["sales"]) == ["hana", "sam"]  # sue holds the excluded role
    assert members_of(emulator, state["plain"]) == ["alice", "bob"]
    result = dtchat(emulator, "plan", str(cfg), "--detailed-exitcode")
    assert result.exit_code == 0, result.output


def test_a_user_moved_between_departments_shows_in_the_next_plan(emulator, cfg):
    write_config(cfg, CHATS)
    assert dtchat(emulator, "apply", str(cfg), "--auto-approve").exit_code == 0
    emulator.move_user("erin", [200])
    result = dtchat(emulator, "plan", str(cfg), "--format", "json")
    assert result.exit_code == 0, result.output
    changes = {c["key"]: c for c in json.loads(result.output)["changes"]}
    assert changes["eng"]["action"] == "update" and changes["eng"]["remove"] == ["erin"]
    assert changes["sales"]["action"] == "update" and changes["sales"]["add"] == ["erin"]
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 0, result.output
    state = state_of(cfg / "dtchat.state.json")
    assert "erin" not in members_of(emulator, state["eng"]) and "erin" in members_of(emulator, state["sales"])


def test_a_failed_lookup_errors_its_chat_with_zero_writes_while_others_apply(emulator, cfg):
    write_config(cfg, CHATS)
    assert dtchat(emulator, "apply", str(cfg), "--auto-approve").exit_code == 0
    state = state_of(cfg / "dtchat.state.json")
    emulator.move_user("erin", [200])  # both eng and sales now have a change to make
    emulator.faults.fail_lookups = {"dept:120": 60003}  # eng's walk breaks under 100
    before = len(emulator.calls)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 1, result.output
    assert "{dept: 100, recursive: true}: department 120 not found (errcode 60003)" in result.output
    assert writes_to(emulator, state["eng"]) == []
    assert "erin" in members_of(emulator, state["eng"])  # never removed on a failed answer
    assert [c.body["add_useridlist"] for c in writes_to(emulator, state["sales"])] == [["erin"]]
    assert all(c.endpoint != "/chat/create" for c in emulator.calls[before:])


def test_an_empty_department_errors_the_chat_instead_of_emptying_it(emulator, cfg):
    write_config(cfg, CHATS)
    assert dtchat(emulator, "apply", str(cfg), "--auto-approve").exit_code == 0
    state = state_of(cfg / "dtchat.state.json")
    for user in ("bob", "carol", "erin"):
        emulator.move_user(user, [300])
    emulator.move_user("alice", [1])
    result = dtchat(emulator, "plan", str(cfg), "--detailed-exitcode")
    assert result.exit_code == 1, result.output
    assert "refusing to plan members from an empty directory answer" in result.output
    assert dtchat(emulator, "apply", str(cfg), "--auto-approve").exit_code == 1
    assert writes_to(emulator, state["eng"]) == []


def test_plan_verbose_and_json_show_where_members_came_from(emulator, cfg):
    write_config(cfg, CHATS)
    result = dtchat(emulator, "-v", "plan", str(cfg))
    assert result.exit_code == 0, result.output
    assert "{dept: 100, recursive: true} (研发部) gives 4 users" in result.output
    assert '{mobile: "+86 138-0000-0007"} (13800000007) gives 1 user' in result.output
    assert "{role: 3001} (值班) excludes 2 users" in result.output
    result = dtchat(emulator, "plan", str(cfg), "--format", "json")
    assert result.exit_code == 0, result.output
    changes = {c["key"]: c for c in json.loads(result.output)["changes"]}
    assert changes["sales"]["sources"] == [
        {
            "selector": "{dept: 200}",
            "kind": "dept",
            "value": 200,
            "recursive": False,
            "label": "销售部",
            "count": 2,
            "excluded": False,
        },
        {
            "selector": '{mobile: "+86 138-0000-0007"}',
            "kind": "mobile",
            "value": "+86 138-0000-0007",
            "recursive": False,
            "label": "13800000007",
            "count": 1,
            "excluded": False,
        },
        {
            "selector": "{role: 3001}",
            "kind": "role",
            "value": 3001,
            "recursive": False,
            "label": "值班",
            "count": 2,
            "excluded": True,
        },
    ]
    assert changes["plain"]["sources"] == []


def test_a_saved_plan_is_refused_when_the_directory_changed_since(emulator, cfg, tmp_path):
    write_config(cfg, CHATS)
    saved = tmp_path / "plan.json"
    result = dtchat(emulator, "plan", str(cfg), "--out", str(saved))
    assert result.exit_code == 0, result.output
    emulator.move_user("erin", [200])
    result = dtchat(emulator, "apply", "--plan", str(saved), "--auto-approve")
    assert result.exit_code == 1, result.output
    assert emulator.calls_to("/chat/create") == []


def test_bad_credentials_stop_a_plan_with_selectors_in_one_line(emulator, cfg):
    write_config(cfg, CHATS)
    result = dtchat(emulator, "plan", str(cfg), env={"DINGTALK_APP_SECRET": "wrong-secret-123"})
    assert result.exit_code == 1
    assert "Traceback" not in result.output and APP_SECRET not in result.output
