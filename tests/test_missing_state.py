"""A state file that is missing or ambiguous never makes dtchat create chats again (issue: a fresh checkout
without the state file, or a mistyped --state, must not plan every chat as a create)."""

from __future__ import annotations

import json

import pytest

from helpers import dtchat, state_of, write_config


@pytest.mark.parametrize("command", ["plan", "apply", "drift"])
def test_a_missing_state_file_is_an_error_with_the_init_hint_and_zero_calls(emulator, tmp_path, command):
    folder = tmp_path / "chats"
    write_config(folder, {"eng": {"name": "Eng", "owner": "alice"}}, init=False)
    args = [command, str(folder)] + (["--auto-approve"] if command == "apply" else [])
    result = dtchat(emulator, *args)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {folder / 'dtchat.state.json'}: no state file")
    assert f"`dtchat init {folder}`" in line
    assert emulator.calls == []  # not even a token: nothing was asked of DingTalk
    assert not (folder / "dtchat.state.json").exists()


def test_a_mistyped_state_is_the_same_error_naming_the_flag(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"eng": {"name": "Eng", "owner": "alice"}})
    result = dtchat(emulator, "apply", str(folder), "--auto-approve", "--state", str(tmp_path / "stat.json"))
    assert result.exit_code == 1 and "no state file" in result.stderr and "--state" in result.stderr
    assert emulator.calls == []


def test_init_then_plan_and_apply_work_and_init_never_overwrites(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"eng": {"name": "Eng", "owner": "alice"}}, init=False)
    init = dtchat(emulator, "init", str(folder))
    assert init.exit_code == 0 and "commit it" in init.stdout
    assert state_of(folder / "dtchat.state.json") == {}
    assert dtchat(emulator, "plan", str(folder)).exit_code == 0
    assert dtchat(emulator, "apply", str(folder), "--auto-approve").exit_code == 0
    bound = state_of(folder / "dtchat.state.json")
    again = dtchat(emulator, "init", str(folder))
    assert again.exit_code == 1 and "already there; nothing was changed" in again.stderr
    assert state_of(folder / "dtchat.state.json") == bound


def test_init_flag_starts_from_nothing_for_one_run(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"eng": {"name": "Eng", "owner": "alice"}}, init=False)
    assert dtchat(emulator, "apply", str(folder), "--auto-approve", "--init").exit_code == 0
    assert list(state_of(folder / "dtchat.state.json")) == ["eng"]


def test_a_key_written_twice_in_the_state_file_is_a_located_error(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"eng": {"name": "Eng", "owner": "alice"}})
    (folder / "dtchat.state.json").write_text(
        '{"format": "dtchat-state", "version": 1,\n "chats": {"eng": {"chatid": "chat1"}},\n "chats": {}}\n'
    )
    result = dtchat(emulator, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 1
    assert f"{folder / 'dtchat.state.json'}:3:2: the key 'chats' is written twice" in result.stderr
    assert emulator.calls == [] or all(
        c.endpoint.endswith("accessToken") or c.endpoint == "/gettoken" for c in emulator.calls
    )


def test_a_key_written_twice_in_a_saved_plan_is_a_located_error(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"eng": {"name": "Eng", "owner": "alice"}})
    saved = tmp_path / "plan.json"
    assert dtchat(emulator, "plan", str(folder), "--out", str(saved)).exit_code == 0
    data = json.loads(saved.read_text())
    text = json.dumps(data, indent=2).replace(
        '"kind": "dtchat-plan",', '"kind": "dtchat-plan",\n  "kind": "dtchat-plan",', 1
    )
    saved.write_text(text)
    result = dtchat(emulator, "apply", "--plan", str(saved), "--auto-approve")
    assert result.exit_code == 1 and f"{saved}:4:3: the key 'kind' is written twice" in result.stderr
