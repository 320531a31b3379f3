"""plan/apply end to end: the real CLI, over HTTP, against the strict emulator."""

from __future__ import annotations

import json

import pytest

from reconciler.backends.fields import API_FIELDS as SETTING_FIELDS

from helpers import APP_SECRET, dtchat, state_of, users, write_config


@pytest.fixture
def cfg(tmp_path):
    return tmp_path / "chats"


def chats_basic():
    return {
        "eng": {
            "name": "工程值班",
            "owner": "alice",
            "members": ["bob", "carol"],
            "settings": {"muted": True, "mention_all": "owner"},
        },
        "big": {"name": "All hands", "owner": "boss", "members": users(300)},
    }


def test_first_apply_creates_each_chat_once_then_plan_shows_no_changes(emulator, cfg):
    write_config(cfg, chats_basic())
    result = dtchat(emulator, "plan", str(cfg), "--detailed-exitcode")
    assert result.exit_code == 2, result.output
    assert "Plan: 2 to create, 0 to update, 0 to forget; +304 / -0 members." in result.output
    assert emulator.calls_to("/chat/create") == []

    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert len(emulator.calls_to("/chat/create")) == 2
    state = state_of(cfg / "dtchat.state.json")
    eng = emulator.chat(state["eng"])
    assert sorted(eng["useridlist"]) == ["alice", "bob", "carol"] and eng["owner"] == "alice"
    assert (eng["chatBannedType"], eng["mentionAllAuthority"], eng["searchable"]) == (1, 1, 0)
    big = emulator.chat(state["big"])
    assert sorted(big["useridlist"]) == sorted(users(300) + ["boss"])
    # 301 members: 1 create with 40, then ceil(261/40) = 7 updates.
    assert len(emulator.calls_to("/chat/update")) == 7

    result = dtchat(emulator, "plan", str(cfg), "--detailed-exitcode")
    assert result.exit_code == 0, result.output
    assert "No changes." in result.output
    assert len(emulator.calls_to("/chat/create")) == 2


def test_members_only_change_sends_no_setting_fields(emulator, cfg):
    chats = chats_basic()
    write_config(cfg, chats)
    assert dtchat(emulator, "apply", str(cfg), "--auto-approve").exit_code == 0
    before = len(emulator.calls_to("/chat/update"))
    chats["eng"]["members"] = ["bob", "dave"]
    write_config(cfg, chats)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 0, result.output
    (call,) = emulator.calls_to("/chat/update")[before:]
    assert call.body == {
        "chatid": state_of(cfg / "dtchat.state.json")["eng"],
        "add_useridlist": ["dave"],
        "del_useridlist": ["carol"],
    }
    assert not set(call.body) & set(SETTING_FIELDS)


def test_undeclared_setting_changed_by_hand_is_left_alone(emulator, cfg):
    write_config(cfg, chats_basic())
    dtchat(emulator, "apply", str(cfg), "--auto-approve")
    chatid = state_of(cfg / "dtchat.state.json")["eng"]
    emulator.set_chat(chatid, searchable=1)  # not declared in YAML
    result = dtchat(emulator, "plan", str(cfg), "--detailed-exitcode", "--refresh", "all")
    assert result.exit_code == 0, result.output
    emulator.set_chat(chatid, chatBannedType=0)  # declared muted: true
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--refresh", "all")
    assert "muted: false → true" in result.output
    chat = emulator.chat(chatid)
    assert (chat["chatBannedType"], chat["searchable"]) == (1, 1)


def test_owner_transfer_to_non_member_under_strict_rules(emulator, cfg):
    chats = chats_basic()
    write_config(cfg, chats)
    dtchat(emulator, "apply", str(cfg), "--auto-approve")
    chats["eng"]["owner"] = "zoe"  # not a member today; alice is no longer listed
    write_config(cfg, chats)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 0, result.output
    chat = emulator.chat(state_of(cfg / "dtchat.state.json")["eng"])
    assert chat["owner"] == "zoe" and sorted(chat["useridlist"]) == ["bob", "carol", "zoe"]


def test_churn_plus_200_minus_299_uses_the_minimum_calls(emulator, cfg):
    chats = {"big": {"name": "Big", "owner": "boss", "members": users(300)}}
    write_config(cfg, chats)
    dtchat(emulator, "apply", str(cfg), "--auto-approve")
    before = len(emulator.calls_to("/chat/update"))
    chats["big"]["members"] = users(1, "u") + users(200, "n")  # keep u0000, drop 299, add 200
    write_config(cfg, chats)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--force")  # 99 % removal is intended
    assert result.exit_code == 0, result.output
    assert len(emulator.calls_to("/chat/update")) - before == 8  # max(ceil(200/40), ceil(299/40))
    chat = emulator.chat(state_of(cfg / "dtchat.state.json")["big"])
    assert sorted(chat["useridlist"]) == sorted(["boss"] + users(1) + users(200, "n"))


def test_one_chat_failing_leaves_the_others_applied_and_rerun_converges(emulator, cfg):
    chats = chats_basic()
    chats["ops"] = {"name": "Ops", "owner": "olga", "members": ["bob"]}
    write_config(cfg, chats)
    dtchat(emulator, "apply", str(cfg), "--auto-approve")
    state = state_of(cfg / "dtchat.state.json")
    emulator.faults.fail_chatids = {state["eng"]: 60011}
    for chat in chats.values():
        chat["members"] = list(chat["members"]) + ["newbie"]
    write_config(cfg, chats)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 1
    assert "eng" in result.output and "Failed: eng" in result.output
    assert "newbie" in emulator.chat(state["ops"])["useridlist"]
    assert "newbie" in emulator.chat(state["big"])["useridlist"]
    emulator.faults.fail_chatids = {}
    assert dtchat(emulator, "apply", str(cfg), "--auto-approve").exit_code == 0
    assert "newbie" in emulator.chat(state["eng"])["useridlist"]
    assert dtchat(emulator, "plan", str(cfg), "--detailed-exitcode").exit_code == 0


def test_apply_without_terminal_or_auto_approve_refuses_and_writes_nothing(emulator, cfg):
    write_config(cfg, chats_basic())
    result = dtchat(emulator, "apply", str(cfg))
    assert result.exit_code == 1
    assert "--auto-approve" in result.output
    assert emulator.calls_to("/chat/create") == []


def test_apply_asks_on_a_terminal(emulator, cfg, monkeypatch):
    import reconciler.cli as cli_module

    monkeypatch.setattr(cli_module, "_stdin_is_tty", lambda: True)
    write_config(cfg, chats_basic())
    for answer in ("n", "y", "Yes please"):  # only the word `yes` approves (Terraform's convention)
        result = dtchat(emulator, "apply", str(cfg), input=answer + "\n")
        assert result.exit_code == 1 and "Cancelled" in result.output
    assert emulator.calls_to("/chat/create") == []
    result = dtchat(emulator, "apply", str(cfg), input="yes\n")
    assert result.exit_code == 0, result.output
    assert len(emulator.calls_to("/chat/create")) == 2


def test_dry_run_prints_every_call_and_writes_nothing(emulator, cfg):
    write_config(cfg, chats_basic())
    result = dtchat(emulator, "apply", str(cfg), "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count("POST /chat/create") == 2
    assert result.output.count("POST /chat/update") == 7
    assert "<chatid of new chat big>" in result.output
    assert "9 API calls." in result.output
    assert emulator.calls_to("/chat/create") == [] and emulator.calls_to("/chat/update") == []
    assert state_of(cfg / "dtchat.state.json") == {}  # as `dtchat init` wrote it: nothing recorded
    assert APP_SECRET not in result.output and "access_token" not in result.output


def test_plan_formats_json_and_markdown(emulator, cfg):
    write_config(cfg, chats_basic())
    result = dtchat(emulator, "plan", str(cfg), "--format", "json")
    data = json.loads(result.output)
    assert data["format_version"] == 1
    assert [c["key"] for c in data["changes"]] == ["big", "eng"]
    assert data["summary"]["create"] == 2
    result = dtchat(emulator, "plan", str(cfg), "--format", "markdown")
    assert "| `eng` | create |" in result.output and "<details>" in result.output


def test_target_limits_apply_and_unknown_target_is_an_error(emulator, cfg):
    write_config(cfg, chats_basic())
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--target", "eng")
    assert result.exit_code == 0, result.output
    assert list(state_of(cfg / "dtchat.state.json")) == ["eng"]
    result = dtchat(emulator, "plan", str(cfg), "--target", "engg")
    assert result.exit_code == 1 and "did you mean `eng`" in result.output


def test_removed_key_is_kept_as_an_orphan_and_forgotten_only_with_prune(emulator, cfg):
    chats = chats_basic()
    write_config(cfg, chats)
    dtchat(emulator, "apply", str(cfg), "--auto-approve")
    chatid = state_of(cfg / "dtchat.state.json")["eng"]
    del chats["eng"]
    write_config(cfg, chats)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert f"? eng ({chatid})" in result.output and "in the state, not in the YAML: kept" in result.output
    assert state_of(cfg / "dtchat.state.json")["eng"] == chatid
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--prune")
    assert result.exit_code == 0, result.output
    assert f"- forget eng ({chatid})" in result.output
    assert "eng" not in state_of(cfg / "dtchat.state.json")
    assert emulator.chat(chatid) is not None
