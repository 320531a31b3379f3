"""CLI contract: one-line errors with exit 1, never a traceback, never a secret."""

from __future__ import annotations

import json
import socket

from click.testing import CliRunner

from reconciler.cli import cli

from helpers import APP_KEY, APP_SECRET, dtchat, state_of, write_config


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env or {}, catch_exceptions=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_credentials_is_one_clear_line(tmp_path):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x"}})
    result = run("plan", str(tmp_path), env={"DINGTALK_APP_KEY": "", "DINGTALK_APP_SECRET": ""})
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: DINGTALK_APP_KEY and DINGTALK_APP_SECRET not set: export the app's credentials, "
        "or use --sandbox to try dtchat locally"
    )


def test_bad_credentials_fail_without_leaking_the_secret(emulator, tmp_path):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x"}})
    (tmp_path / "dtchat.state.json").write_text(
        json.dumps({"format": "dtchat-state", "version": 1, "chats": {"a": {"chatid": "chat" + "0" * 32}}})
    )
    result = dtchat(emulator, "plan", str(tmp_path), env={"DINGTALK_APP_SECRET": "wrong-secret-xyz"})
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "wrong-secret-xyz" not in result.output and "Traceback" not in result.output


def test_unreachable_api_is_one_line(tmp_path):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x"}})
    (tmp_path / "dtchat.state.json").write_text(
        json.dumps({"format": "dtchat-state", "version": 1, "chats": {"a": {"chatid": "chat" + "0" * 32}}})
    )
    env = {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET}
    closed = f"http://127.0.0.1:{closed_port()}"
    result = run("--api-base", closed, "--openapi-base", closed, "plan", str(tmp_path), env=env)
    assert result.exit_code == 1
    *retries, last = result.stderr.splitlines()
    assert last.startswith("Error: ") and "connection refused" in last
    assert all(line.startswith("WARNING: ") and "retry" in line for line in retries)  # one line per retry
    assert result.stdout == "" and APP_SECRET not in result.output


def test_corrupt_state_file_is_refused_and_left_untouched(emulator, tmp_path):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x"}})
    state = tmp_path / "dtchat.state.json"
    state.write_text('{"format": "dtchat-state", "chats": {')
    result = dtchat(emulator, "apply", str(tmp_path), "--auto-approve")
    assert result.exit_code == 1
    assert f"{state}:1:" in result.output and "not valid JSON" in result.output
    assert state.read_text() == '{"format": "dtchat-state", "chats": {'
    assert emulator.calls_to("/chat/create") == []


def test_foreign_json_state_file_is_refused(emulator, tmp_path):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x"}})
    (tmp_path / "dtchat.state.json").write_text('{"some": "other tool"}')
    result = dtchat(emulator, "plan", str(tmp_path))
    assert result.exit_code == 1 and "not a dtchat state file" in result.output


def test_usage_errors_exit_1_not_2(tmp_path):
    result = run("plan", str(tmp_path), "--format", "yaml")
    assert result.exit_code == 1
    result = run("frobnicate")
    assert result.exit_code == 1


def test_invalid_yaml_lists_every_error_with_location_and_exit_1(tmp_path):
    (tmp_path / "a.yaml").write_text("version: 1\nchats:\n  Bad_Key:\n    name: x\n    owner: y\n    memebers: []\n")
    result = run("validate", str(tmp_path))
    assert result.exit_code == 1
    assert f"{tmp_path / 'a.yaml'}:3:3" in result.output
    assert "did you mean `members`" in result.output
    assert "Traceback" not in result.output


def test_import_verifies_the_chat_exists_then_records_it(emulator, tmp_path):
    chatid = emulator.seed_chat("Legacy", "bob", ["bob", "carol"])
    state = tmp_path / "s.json"
    result = dtchat(emulator, "import", "legacy", chatid, "--state", str(state))
    assert result.exit_code == 0, result.output
    assert state_of(state) == {"legacy": chatid}
    result = dtchat(emulator, "import", "other", "chat" + "f" * 32, "--state", str(state))
    assert result.exit_code == 1 and "not found" in result.output.lower()
    assert state_of(state) == {"legacy": chatid}
    result = dtchat(emulator, "import", "Bad Key", chatid, "--state", str(state))
    assert result.exit_code == 1 and "slug" in result.output


def test_forget_drops_the_key_only(emulator, tmp_path):
    chatid = emulator.seed_chat("Legacy", "bob", ["bob"])
    state = tmp_path / "s.json"
    dtchat(emulator, "import", "legacy", chatid, "--state", str(state))
    result = dtchat(emulator, "forget", "legacy", "--state", str(state))
    assert result.exit_code == 0 and state_of(state) == {}
    assert emulator.chat(chatid) is not None
    assert dtchat(emulator, "forget", "legacy", "--state", str(state)).exit_code == 1


def test_pinned_chat_is_adopted_and_recorded(emulator, tmp_path):
    chatid = emulator.seed_chat("运维", "bob", ["bob", "carol", "stray"])
    write_config(tmp_path, {"ops": {"name": "运维", "owner": "bob", "members": ["carol"], "chatid": chatid}})
    result = dtchat(emulator, "apply", str(tmp_path), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert "- stray" in result.output
    assert state_of(tmp_path / "dtchat.state.json") == {"ops": chatid}
    assert emulator.calls_to("/chat/create") == []


def test_emulator_command_serves_on_loopback_and_prints_its_url(tmp_path):
    import subprocess
    import sys

    import requests

    users = tmp_path / "users.yaml"
    users.write_text("users: [alice, bob]\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "emulator",
            "--port",
            "0",
            "--users",
            str(users),
            "--app-key",
            "k",
            "--app-secret",
            "secret-for-test",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("DingTalk emulator listening on http://127.0.0.1:")
        url = first.split(" on ", 1)[1].split()[0]
        token = requests.get(
            url + "/gettoken", params={"appkey": "k", "appsecret": "secret-for-test"}, timeout=5
        ).json()
        assert token["errcode"] == 0
        reply = requests.post(
            url + "/chat/create",
            params={"access_token": token["access_token"]},
            timeout=5,
            json={"name": "x", "owner": "alice", "useridlist": ["alice", "mallory"]},
        ).json()
        assert reply["errcode"] == 60121 and "mallory" in reply["errmsg"]  # the --users directory is enforced
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_progress_bar_only_for_long_reads_on_a_terminal(monkeypatch):
    import reconciler.cli as cli_module

    monkeypatch.setattr(cli_module, "_stderr_is_tty", lambda: False)
    with cli_module.progress(500) as tick:
        assert tick is None
    monkeypatch.setattr(cli_module, "_stderr_is_tty", lambda: True)
    with cli_module.progress(cli_module.PROGRESS_MIN - 1) as tick:
        assert tick is None
    with cli_module.progress(cli_module.PROGRESS_MIN) as tick:
        assert callable(tick)
        for _ in range(cli_module.PROGRESS_MIN):
            tick()
