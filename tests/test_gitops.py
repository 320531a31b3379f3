"""GitOps features end to end against the emulator: drift, saved plans, removal safety, dump, notify."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import CONVERT, CREATE, ROBOT_SEND, UPDATE, dtchat, state_of, users, write_config


@pytest.fixture
def applied(emulator, tmp_path):
    """Two chats applied: `eng` (exact, 3 members, muted) and `all` (additive, 20 members)."""
    cfg = tmp_path / "chats"
    chats = {
        "eng": {
            "name": "Eng | <b>核心</b>",
            "owner": "alice",
            "members": ["bob", "carol"],
            "settings": {"muted": True},
        },
        "all": {"name": "All", "owner": "boss", "members": users(20), "members_policy": "additive"},
    }
    write_config(cfg, chats)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert result.exit_code == 0, result.output
    return cfg, chats, state_of(cfg / "dtchat.state.json")


def test_drift_reports_stray_member_and_flipped_setting_in_all_formats_then_apply_repairs(emulator, applied):
    cfg, _, ids = applied
    assert dtchat(emulator, "drift", str(cfg)).exit_code == 0
    eng = emulator.chat(ids["eng"])
    emulator.set_chat(ids["eng"], useridlist=eng["useridlist"] + ["mallory"], chatBannedType=0)
    emulator.set_chat(ids["all"], useridlist=emulator.chat(ids["all"])["useridlist"] + ["guest"])  # additive: fine

    text = dtchat(emulator, "drift", str(cfg))
    assert text.exit_code == 2
    assert "- mallory (in the chat, not in the YAML)" in text.output
    assert "muted: expected true, live false" in text.output
    assert "guest" not in text.output
    assert "Drift: 1 drifted, 0 missing, 0 unreadable, 1 in sync." in text.output

    data = json.loads(dtchat(emulator, "drift", str(cfg), "--format", "json").output)
    assert data["format_version"] == 1 and data["kind"] == "dtchat-drift"
    assert [c["key"] for c in data["chats"]] == ["all", "eng"]
    eng_drift = data["chats"][1]
    assert eng_drift["status"] == "drifted" and eng_drift["members_unexpected"] == ["mallory"]
    assert eng_drift["settings"] == [{"name": "muted", "expected": True, "actual": False}]

    md = dtchat(emulator, "drift", str(cfg), "--format", "markdown")
    assert md.exit_code == 2
    assert "| `eng` | drifted | 0 | 1 |  | muted: false (expected true) |" in md.output
    assert "- mallory" in md.output

    assert dtchat(emulator, "apply", str(cfg), "--auto-approve", "--refresh", "all").exit_code == 0
    assert dtchat(emulator, "drift", str(cfg)).exit_code == 0
    assert "mallory" not in emulator.chat(ids["eng"])["useridlist"]


def test_drift_of_an_unreadable_chat_exits_1(emulator, applied):
    cfg, _, ids = applied
    emulator.faults.fail_chatids = {ids["eng"]: 34013}
    result = dtchat(emulator, "drift", str(cfg))
    assert result.exit_code == 1 and "! error eng" in result.output


def test_saved_plan_goes_stale_after_a_live_change_and_is_refused_with_zero_writes(emulator, applied, tmp_path):
    cfg, chats, ids = applied
    chats["eng"]["members"] = ["bob", "carol", "dave"]
    write_config(cfg, chats)
    plan_path = tmp_path / "plan.json"
    result = dtchat(emulator, "plan", str(cfg), "--out", str(plan_path))
    assert result.exit_code == 0, result.output
    saved = json.loads(plan_path.read_text())
    assert saved["format_version"] == 1 and saved["config"]["digest"].startswith("sha256:")
    assert all(c["fingerprint"] for c in saved["changes"] if c["action"] in ("update", "noop"))

    emulator.set_chat(ids["eng"], useridlist=emulator.chat(ids["eng"])["useridlist"] + ["intruder"])
    writes = len(emulator.calls_to("/chat/update")) + len(emulator.calls_to("/chat/create"))
    result = dtchat(emulator, "apply", "--plan", str(plan_path), "--auto-approve")
    assert result.exit_code == 1
    assert "refusing the saved plan" in result.output
    assert f"eng: chat {ids['eng']} changed in DingTalk since the plan was made" in result.output
    assert len(emulator.calls_to("/chat/update")) + len(emulator.calls_to("/chat/create")) == writes

    result = dtchat(emulator, "plan", str(cfg), "--out", str(plan_path))
    result = dtchat(emulator, "apply", "--plan", str(plan_path), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert sorted(emulator.chat(ids["eng"])["useridlist"]) == ["alice", "bob", "carol", "dave"]  # intruder removed
    assert dtchat(emulator, "plan", str(cfg), "--detailed-exitcode").exit_code == 0


def test_saved_plan_is_refused_when_the_yaml_changed_since(emulator, applied, tmp_path):
    cfg, chats, _ = applied
    plan_path = tmp_path / "plan.json"
    dtchat(emulator, "plan", str(cfg), "--out", str(plan_path))
    chats["eng"]["members"] = ["bob"]
    write_config(cfg, chats)
    result = dtchat(emulator, "apply", "--plan", str(plan_path), "--auto-approve")
    assert result.exit_code == 1 and "configuration files changed" in result.output


@pytest.mark.parametrize(
    "content, message",
    [
        ("nope", "not a JSON plan file"),
        ('{"kind": "other"}', "not a dtchat plan"),
        (
            '{"kind": "dtchat-plan", "format_version": 1, "config": {"digest": "x"}, "changes": [{"key": "a", "action": "explode"}]}',
            "config.files: must be a list of strings",
        ),
        (
            '{"kind": "dtchat-plan", "format_version": 1, "config": {"digest": "x", "files": ["c.yaml"]}, "changes": {}}',
            "changes: must be a list",
        ),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_bad_saved_plan_files_are_one_line_errors(emulator, tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    result = dtchat(emulator, "apply", "--plan", str(path), "--auto-approve")
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1


def test_large_removal_is_refused_without_force_and_applied_with_it(emulator, tmp_path):
    cfg = tmp_path / "c"
    chats = {
        "big": {"name": "Big", "owner": "boss", "members": users(49)},
        "tiny": {"name": "Tiny", "owner": "a", "members": ["b", "c"]},
    }
    write_config(cfg, chats)
    dtchat(emulator, "apply", str(cfg), "--auto-approve")
    ids = state_of(cfg / "dtchat.state.json")
    chats["big"]["members"] = users(9)  # 50 → 10: lose 40 of 50 = 80 %
    chats["tiny"]["members"] = ["b"]  # 1 of 3: small chats are exempt
    write_config(cfg, chats)

    plan = dtchat(emulator, "plan", str(cfg))
    assert "Warning: chat big would lose 40 of its 50 members (80%)" in plan.output
    data = json.loads(dtchat(emulator, "plan", str(cfg), "--format", "json").output)
    assert data["warnings"] == ["chat big would lose 40 of its 50 members (80%), more than --max-removal-pct 30%"]
    writes = len(emulator.calls_to("/chat/update"))
    refused = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert refused.exit_code == 1 and "refusing to apply, nothing was changed" in refused.output
    assert "--force" in refused.output
    assert len(emulator.calls_to("/chat/update")) == writes

    assert dtchat(emulator, "apply", str(cfg), "--auto-approve", "--max-removal-pct", "90").exit_code == 0
    assert len(emulator.chat(ids["big"])["useridlist"]) == 10

    chats["big"]["members"] = []
    write_config(cfg, chats)
    assert dtchat(emulator, "apply", str(cfg), "--auto-approve").exit_code == 1
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--force")
    assert result.exit_code == 0, result.output
    assert emulator.chat(ids["big"])["useridlist"] == ["boss"]


def test_absolute_removal_cap(emulator, applied):
    cfg, chats, _ = applied
    chats["eng"]["members"] = []
    write_config(cfg, chats)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--max-removals", "1")
    assert result.exit_code == 1 and "would remove 2 members in all, more than --max-removals 1" in result.output


@pytest.mark.parametrize("size", [1, 40, 41, 1000])
def test_dump_then_plan_is_no_change(emulator, tmp_path, size):
    members = users(size - 1)
    chatid = emulator.seed_chat("客服 Support", "0412345678", members, searchable=1, mentionAllAuthority=1)
    other = emulator.seed_chat("客服 Support", "lead", ["lead"])  # same name: keys made unique
    out = tmp_path / "dumped" / "chats.yaml"
    out.parent.mkdir()
    result = dtchat(emulator, "dump", chatid, other, "--out", str(out))
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert set(doc["chats"]) == {"support", "support-2"}
    assert dtchat(emulator, "validate", str(out)).exit_code == 0
    result = dtchat(emulator, "plan", str(out), "--detailed-exitcode", "--init")  # a first run: no state yet
    assert result.exit_code == 0, result.output
    assert emulator.calls_to("/chat/update") == []


def test_dump_of_an_unknown_chat_writes_nothing(emulator, tmp_path):
    out = tmp_path / "x.yaml"
    result = dtchat(emulator, "dump", "chat" + "a" * 32, "--out", str(out))
    assert result.exit_code == 1 and not out.exists()


ROBOT = {"DTCHAT_ROBOT_CODE": "robot-1"}


def as_older_state(cfg, key: str) -> None:
    """The state as an earlier dtchat wrote it: no openConversationId for ``key`` (it reads unchanged)."""
    path = cfg / "dtchat.state.json"
    data = json.loads(path.read_text())
    assert data["chats"][key].pop("open_conversation_id")  # the create answered one, and it was kept
    path.write_text(json.dumps(data))


def test_notify_sends_one_robot_message_per_changed_chat_and_none_for_unchanged(emulator, applied):
    cfg, chats, ids = applied
    chats["eng"]["members"] = ["bob", "dave"]
    chats["new"] = {"name": "New", "owner": "zed"}
    write_config(cfg, chats)
    as_older_state(cfg, "eng")
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--notify", env=ROBOT, api="v1")
    assert result.exit_code == 0, result.output
    sent = emulator.robot_messages()
    new_id = state_of(cfg / "dtchat.state.json")["new"]
    assert sorted(m["chatid"] for m in sent) == sorted([ids["eng"], new_id])
    assert {m["robotCode"] for m in sent} == {"robot-1"} and {m["msgKey"] for m in sent} == {"sampleText"}
    (eng_msg,) = [m["params"]["content"] for m in sent if m["chatid"] == ids["eng"]]
    assert "加入 dave" in eng_msg and "移出 carol" in eng_msg
    # the older chat's openConversationId was looked up once and kept; the new one came with its create
    assert len(emulator.calls_to(CONVERT)) == 1
    state = json.loads((cfg / "dtchat.state.json").read_text())["chats"]
    assert state["eng"]["open_conversation_id"] == emulator.open_conversation_id(ids["eng"])
    assert state["new"]["open_conversation_id"] == emulator.open_conversation_id(new_id)

    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--notify", env=ROBOT, api="v1")
    assert result.exit_code == 0 and len(emulator.robot_messages()) == 2  # nothing changed: nothing sent


def test_notify_without_a_robot_code_is_refused_before_any_write(emulator, applied):
    cfg, chats, _ = applied
    chats["eng"]["members"] = ["bob", "dave"]
    write_config(cfg, chats)
    before = writes(emulator)
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--notify", api="v1")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: --notify posts through the app's robot")
    assert "DTCHAT_ROBOT_CODE" in result.stderr and writes(emulator) == before


def test_markdown_plan_escapes_user_text(emulator, applied):
    cfg, chats, _ = applied
    chats["eng"]["name"] = "a|b ``` <img src=x>"
    write_config(cfg, chats)
    md = dtchat(emulator, "plan", str(cfg), "--format", "markdown").output
    assert "| `eng` | update | 0 | 0 | name: Eng \\| \\<b\\>核心\\</b\\> → a\\|b \\`\\`\\` \\<img src=x\\> |  |" in md
    assert "```diff\nname: Eng | <b>核心</b> → a|b ''' <img src=x>\n```" in md


# -- saved plans: every way the plan made now can differ from the saved one ----------------------------------


def writes(emulator) -> int:
    return sum(len(emulator.calls_to(e)) for e in (*CREATE.values(), *UPDATE.values(), ROBOT_SEND))


STATE_EDITS = {
    # case: (bind `legacy` before the plan is saved?, the state command run after, the reason given)
    "forgotten": (
        True,
        lambda legacy, other: ("forget", "legacy"),
        "legacy: in the saved plan, not in the plan made now",
    ),
    "imported": (False, lambda legacy, other: ("import", "legacy", legacy), "legacy: not in the saved plan"),
    "re-pointed": (
        True,
        lambda legacy, other: ("import", "legacy", other),
        "legacy: the saved entry differs from the plan made now (the state or the directory changed "
        "since, or the file was edited)",
    ),
}


@pytest.mark.parametrize("case", sorted(STATE_EDITS))
def test_saved_plan_is_refused_when_the_state_changed_since(emulator, applied, tmp_path, case):
    bind_first, command, reason = STATE_EDITS[case]
    cfg, chats, _ = applied
    state = str(cfg / "dtchat.state.json")
    legacy = emulator.seed_chat("Legacy", "bob", ["bob"])
    other = emulator.seed_chat("Other", "bob", ["bob"])
    chats["eng"]["members"] = ["bob", "carol", "dave"]  # so the saved plan has a write to withhold
    write_config(cfg, chats)
    if bind_first:
        assert dtchat(emulator, "import", "legacy", legacy, "--state", state).exit_code == 0
    plan_path = tmp_path / "plan.json"
    assert dtchat(emulator, "plan", str(cfg), "--out", str(plan_path)).exit_code == 0
    result = dtchat(emulator, *command(legacy, other), "--state", state)
    assert result.exit_code == 0, result.output
    before = writes(emulator)

    result = dtchat(emulator, "apply", "--plan", str(plan_path), "--auto-approve")
    assert result.exit_code == 1
    assert f"{plan_path}: refusing the saved plan, nothing was changed: {reason}; make a new plan" in result.output
    assert writes(emulator) == before


def test_dry_run_notify_lists_the_exact_robot_message_for_each_changed_chat_only(emulator, applied):
    cfg, chats, ids = applied
    chats["eng"]["members"] = ["bob", "dave"]
    chats["new"] = {"name": "New", "owner": "zed"}
    write_config(cfg, chats)
    as_older_state(cfg, "eng")
    before = writes(emulator)
    result = dtchat(emulator, "apply", str(cfg), "--dry-run", "--notify", env=ROBOT, api="v1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "/v1.0/im/chat/" in line or ROBOT_SEND in line]
    convert = CONVERT.replace("{chatId}", ids["eng"])
    assert lines[0] == f"  eng: POST {convert}"  # eng's openConversationId is not in the state yet
    sends = [line.split(f" POST {ROBOT_SEND} ", 1) for line in lines[1:]]
    assert [(key, json.loads(body)) for key, body in sends] == [
        (
            "  eng:",
            {
                "openConversationId": "<openConversationId of eng>",
                "robotCode": "robot-1",
                "msgKey": "sampleText",
                "msgParam": json.dumps(
                    {"content": "【dtchat】本群已按配置更新：加入 dave；移出 carol"}, ensure_ascii=False
                ),
            },
        ),
        (
            "  new:",
            {
                "openConversationId": "<openConversationId of new>",
                "robotCode": "robot-1",
                "msgKey": "sampleText",
                "msgParam": json.dumps(
                    {"content": "【dtchat】本群已按配置更新：创建本群，共 1 名成员"}, ensure_ascii=False
                ),
            },
        ),
    ]  # nothing for `all`, which is unchanged
    assert "  all: " not in result.stdout
    assert writes(emulator) == before and emulator.calls_to(CONVERT) == []


def test_a_robot_not_in_the_chat_is_a_warning_and_the_apply_still_succeeds(emulator, applied):
    cfg, chats, ids = applied
    chats["eng"]["members"] = ["bob", "dave"]
    write_config(cfg, chats)
    emulator.set_robot(ids["eng"], False)  # nobody added the app's robot to this chat
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--notify", env=ROBOT, api="v1")
    assert result.exit_code == 0, result.output
    assert sorted(emulator.chat(ids["eng"])["useridlist"]) == ["alice", "bob", "dave"]
    assert [c.code for c in emulator.calls_to(ROBOT_SEND)] == ["invalidParameter.robotCode.empty"]
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("! ")]
    assert warning.startswith(f"! eng: changes applied, but the --notify message was not sent: {ROBOT_SEND}")
    assert "robot" in warning and "! eng" not in result.stdout
    assert dtchat(emulator, "plan", str(cfg), "--detailed-exitcode", api="v1").exit_code == 0  # converged


def test_a_robot_message_with_an_unknown_outcome_is_a_warning_that_stops_no_other_chat(emulator, applied):
    cfg, chats, ids = applied
    for key in chats:
        chats[key]["name"] = chats[key]["name"] + "!"
    write_config(cfg, chats)
    emulator.faults.update({"http500_every": 1, "fault_endpoints": [ROBOT_SEND]})  # system.error: outcome unknown
    result = dtchat(
        emulator, "apply", str(cfg), "--auto-approve", "--notify", "--parallelism", "1", env=ROBOT, api="v1"
    )
    assert result.exit_code == 0, result.output
    assert "Not started" not in result.output
    assert all(emulator.chat(ids[key])["name"].endswith("!") for key in chats)  # every chat was applied
    warnings = [line for line in result.stderr.splitlines() if line.startswith("! ")]
    assert len(warnings) == len(chats) and all("--notify message was not sent" in w for w in warnings)
