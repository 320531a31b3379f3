"""The terminal and CI conventions admins expect (issue 14) and the one-line-or-traceback rule (issue 13)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.emulator import EmulatorServer, Org

from helpers import APP_KEY, APP_SECRET, CREATE, EMPTY_STATE, dtchat, state_of, users, write_config

ROOT = Path(__file__).resolve().parent.parent


def env_for(emulator) -> dict:
    env = {
        **os.environ,
        "DINGTALK_APP_KEY": APP_KEY,
        "DINGTALK_APP_SECRET": APP_SECRET,
        "NO_COLOR": "1",
        "PYTHONPATH": str(ROOT),
        "DINGTALK_API_BASE": emulator.url,
        "DINGTALK_OPENAPI_ENDPOINT": emulator.url,
    }
    env.pop("DTCHAT_STATE", None)
    return env


def test_global_options_work_after_the_command_name(emulator, tmp_path):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x"}})
    runner = CliRunner()
    env = {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "NO_COLOR": "1"}
    bases = ["--api-base", emulator.url, "--openapi-base", emulator.url]
    after = runner.invoke(cli, ["plan", str(tmp_path), *bases, "-v", "--max-qps", "500", "--api", "v1"], env=env)
    before = runner.invoke(cli, [*bases, "-v", "--max-qps", "500", "--api", "v1", "plan", str(tmp_path)], env=env)
    assert after.exit_code == before.exit_code == 0, after.output
    assert after.stdout == before.stdout and "+ create a" in after.stdout
    assert "POST /v1.0/oauth2/accessToken" in after.stderr  # -v after the command turned on the request log
    assert runner.invoke(cli, ["validate", str(tmp_path), "--no-color", "--sandbox"]).exit_code == 0


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--max-qps", "nan"),
        ("--max-qps", "inf"),
        ("--max-qps", "-inf"),
        ("--max-removal-pct", "nan"),
        ("--max-removal-pct", "inf"),
        ("--max-removal-pct", "101"),
    ],
)
def test_numeric_flags_reject_nan_and_infinity_naming_the_flag(emulator, tmp_path, flag, value):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x", "members": users(50)}})
    result = dtchat(emulator, "apply", str(tmp_path), "--auto-approve", flag, value)
    assert result.exit_code == 1 and flag in result.output and "Traceback" not in result.output
    assert emulator.calls_to("/chat/create") == []


def test_apply_prints_the_new_chat_ids_and_json_has_them(emulator, tmp_path):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x", "members": users(45)}})
    result = dtchat(emulator, "apply", str(tmp_path), "--auto-approve")
    chatid = state_of(tmp_path / "dtchat.state.json")["a"]
    assert f"✓ a: created {chatid} (2 calls)" in result.stdout
    write_config(tmp_path, {"a": {"name": "A2", "owner": "x"}, "b": {"name": "B", "owner": "y"}})
    result = dtchat(emulator, "apply", str(tmp_path), "--auto-approve", "--force", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout is the JSON alone; the plan went to stderr
    ids = state_of(tmp_path / "dtchat.state.json")
    assert report["kind"] == "dtchat-apply" and report["ok"] and report["format_version"] == 1
    assert {c["key"]: (c["action"], c["chatid"], c["ok"]) for c in report["chats"]} == {
        "a": ("update", ids["a"], True),
        "b": ("create", ids["b"], True),
    }
    assert "~ update a" in result.stderr


def test_ctrl_c_mid_apply_exits_130_with_an_account_and_a_consistent_state(emulator, tmp_path):
    write_config(tmp_path / "chats", {f"k{i:02d}": {"name": f"K{i}", "owner": "x"} for i in range(30)})
    emulator.faults.latency_ms = 100
    seen = {"writes": 0}
    proc_box: dict = {}

    def interrupt(call):
        if call.endpoint == CREATE["v1"]:
            seen["writes"] += 1
            if seen["writes"] == 4:
                os.kill(proc_box["proc"].pid, signal.SIGINT)

    emulator.before_reply = interrupt
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", "chats", "--auto-approve", "--parallelism", "2"],
        cwd=tmp_path,
        env=env_for(emulator),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc_box["proc"] = proc
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Interrupted:" in err and "Traceback" not in err
    state = json.loads((tmp_path / "chats" / "dtchat.state.json").read_text())["chats"]
    created = {info["name"]: cid for cid, info in emulator.chats().items()}
    assert 4 <= len(created) < 30  # stopped early; the chats in flight finished
    assert {key: b["chatid"] for key, b in state.items()} == {f"k{int(n[1:]):02d}": cid for n, cid in created.items()}
    assert all(f"{key} ({cid})" in err for key, cid in ((k, b["chatid"]) for k, b in state.items()))
    rerun = subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", "chats", "--auto-approve"],
        cwd=tmp_path,
        env=env_for(emulator),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0 and len(emulator.chats()) == 30


def _apply_on_a_terminal(emulator, cwd: Path, answer: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", "chats"],
        cwd=cwd,
        env=env_for(emulator),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    output = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"Only 'yes' is accepted" in output:
                os.write(master, answer.encode() + b"\n")
                answered = True
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, output.decode("utf-8", "replace")


def test_only_the_typed_word_yes_approves_on_a_terminal(emulator, tmp_path):
    write_config(tmp_path / "chats", {"a": {"name": "A", "owner": "x"}})
    code, output = _apply_on_a_terminal(emulator, tmp_path, "y")
    assert code == 1 and "Cancelled; nothing was changed." in output
    assert emulator.calls_to(CREATE["v1"]) == []
    code, output = _apply_on_a_terminal(emulator, tmp_path, "yes")
    assert code == 0 and "✓ a: created chat" in output, output
    assert len(emulator.calls_to(CREATE["v1"])) == 1


def test_validate_formats_for_ci(tmp_path):
    good = write_config(tmp_path / "good", {"a": {"name": "A", "owner": "x"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nchats:\n  a:\n    name: A\n    owner: x\n    mute: true\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", str(bad), "--format", "github"])
    assert result.exit_code == 1
    annotations = result.stdout.splitlines()[:-1]
    assert annotations and all(
        re.fullmatch(r"::error file=[^,:]+,line=\d+,col=\d+,title=dtchat validate::.+", a) for a in annotations
    ), result.stdout
    assert f"::error file={bad},line=6,col=5," in result.stdout
    result = runner.invoke(cli, ["validate", str(bad), "--format", "json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["valid"] is False and report["kind"] == "dtchat-validate"
    assert report["errors"][0]["line"] == 6 and report["errors"][0]["file"] == str(bad)
    result = runner.invoke(cli, ["validate", str(good), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["valid"] is True


def test_an_unexpected_exception_keeps_its_traceback_while_expected_ones_are_one_line(emulator, tmp_path, monkeypatch):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x"}})
    expected = dtchat(emulator, "plan", str(tmp_path / "missing.yaml"))
    assert expected.exit_code == 1 and "Traceback" not in expected.output
    import reconciler.manager as manager

    def bug(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(manager, "make_plan", bug)
    result = CliRunner().invoke(
        cli,
        ["--api-base", emulator.url, "--openapi-base", emulator.url, "plan", str(tmp_path)],
        env={"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET},
    )
    assert isinstance(result.exception, ValueError)  # not turned into a one-line "error" nobody reports


def test_notify_posts_the_yaml_template_filled_in_and_the_dry_run_shows_it(emulator, tmp_path):
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "dtchat.state.json").write_text(EMPTY_STATE)  # as `dtchat init` writes it
    (folder / "chats.yaml").write_text(
        "version: 1\n"
        'defaults:\n  notify: "{name}: +{added_count} -{removed_count} ({summary})"\n'
        "chats:\n"
        "  eng:\n    name: 工程\n    owner: alice\n    members: [bob]\n"
        '    notify: "群 {key} 已更新，新成员：{added}"\n'
        "  ops:\n    name: 运维\n    owner: carol\n",
        encoding="utf-8",
    )
    robot = {"DTCHAT_ROBOT_CODE": "robot-1"}
    dry = dtchat(emulator, "apply", str(folder), "--dry-run", "--notify", env=robot, api="v1")
    assert "群 eng 已更新，新成员：alice、bob" in dry.stdout and "运维: +1 -0 (创建本群，共 1 名成员)" in dry.stdout
    result = dtchat(emulator, "apply", str(folder), "--auto-approve", "--notify", env=robot, api="v1")
    assert result.exit_code == 0, result.output
    sent = {m["chatid"]: m["params"]["content"] for m in emulator.robot_messages()}
    ids = state_of(folder / "dtchat.state.json")
    assert sent == {ids["eng"]: "群 eng 已更新，新成员：alice、bob", ids["ops"]: "运维: +1 -0 (创建本群，共 1 名成员)"}
    (folder / "chats.yaml").write_text((folder / "chats.yaml").read_text().replace("members: [bob]", "members: [dave]"))
    assert dtchat(emulator, "apply", str(folder), "--auto-approve", "--notify", env=robot, api="v1").exit_code == 0
    assert emulator.robot_messages()[-1]["params"]["content"] == "群 eng 已更新，新成员：dave"
    bad = folder / "chats.yaml"
    bad.write_text(bad.read_text().replace("{added}", "{adde}"))
    result = dtchat(emulator, "validate", str(folder))
    assert result.exit_code == 1 and "chats.yaml:9:" in result.output and "{adde}" in result.output


def test_emulator_command_flags_and_a_busy_port(tmp_path):
    import socket

    import requests

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "reconciler", "emulator", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert busy.returncode == 1 and "Traceback" not in busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use; pick another with --port" in busy.stderr
    bad_org = tmp_path / "org.yaml"
    bad_org.write_text("departments: [{id: 1, name: A, parent: 9}]\nusers: []\n", encoding="utf-8")
    refused = subprocess.run(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", "--org", str(bad_org)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and str(bad_org) in refused.stderr and "Traceback" not in refused.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", "--qps", "1", "--latency", "50", "-v"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().split(" on ", 1)[1].split()[0]
        token = requests.get(url + "/gettoken", params={"appkey": "k", "appsecret": "s"}, timeout=5).json()
        answers = [
            requests.get(url + "/chat/get", params={"access_token": token["access_token"], "chatid": "x"}, timeout=5)
            for _ in range(2)
        ]
        assert [a.json()["errcode"] for a in answers] == [34001, 90018]  # --qps 1: the second in a second is refused
        assert answers[0].elapsed.total_seconds() >= 0.05  # --latency 50
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    log = [line for line in err.splitlines() if "/chat/get" in line]
    assert len(log) == 2 and token["access_token"] not in err  # -v logs each request, never the token


def test_with_verbose_each_failure_is_printed_once(tmp_path):
    """An apply-time 60121: ghost exists when the plan looks the id up, and leaves before the create."""
    org = Org.from_data(
        {
            "departments": [{"id": 1, "name": "公司"}],
            "users": [{"userid": u, "departments": [1]} for u in ("x", "y", "ghost")],
        }
    )
    with EmulatorServer(host="127.0.0.1", port=0, app_key=APP_KEY, app_secret=APP_SECRET, org=org) as srv:

        def leave_after_the_lookup(call):
            if call.endpoint == "/topapi/v2/user/get" and (call.body or {}).get("userid") == "ghost":
                srv.remove_user("ghost")

        srv.before_reply = leave_after_the_lookup
        write_config(
            tmp_path, {"a": {"name": "A", "owner": "x", "members": ["ghost"]}, "b": {"name": "B", "owner": "y"}}
        )
        result = dtchat(srv, "apply", str(tmp_path), "--auto-approve", "-v")
    assert result.exit_code == 1
    failure = next(line for line in result.stderr.splitlines() if line.startswith("✗ a: "))
    reason = failure[len("✗ a: ") :]
    assert "60121" in reason and "ghost" in reason
    assert result.output.count(reason) == 1, result.output


def test_sandbox_hints_name_the_sandbox(tmp_path, monkeypatch):
    """A hint's command must reach the same (sandbox) chats and state file when pasted as printed."""
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "chats", {"old-key": {"name": "Ops", "owner": "zhangwei"}})
    runner = CliRunner()
    assert runner.invoke(cli, ["--sandbox", "apply", "chats", "--auto-approve"]).exit_code == 0
    write_config(tmp_path / "chats", {"new-key": {"name": "Ops", "owner": "zhangwei"}})
    plan = runner.invoke(cli, ["plan", "chats", "--sandbox"])
    assert "run `dtchat mv old-key new-key --sandbox` before applying" in plan.stdout
    moved = runner.invoke(cli, ["mv", "old-key", "new-key", "--sandbox"])
    assert moved.exit_code == 0, moved.output
    assert "No changes" in runner.invoke(cli, ["plan", "chats", "--sandbox"]).stdout
    assert state_of(tmp_path / "chats" / "dtchat.state.json") == {}  # sandbox ids never enter the real state file


def test_dry_run_with_format_json_lists_the_calls_on_stdout(emulator, tmp_path):
    write_config(tmp_path, {"a": {"name": "A", "owner": "x", "members": users(45)}})
    result = dtchat(emulator, "apply", str(tmp_path), "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "dtchat-dry-run" and report["errors"] == [] and report["forget"] == []
    assert [(c["key"], c["endpoint"]) for c in report["calls"]] == [("a", "/chat/create"), ("a", "/chat/update")]
    assert report["calls"][1]["body"]["chatid"] == "<chatid of new chat a>"
    assert emulator.calls_to("/chat/create") == []


@pytest.mark.parametrize(
    "args", [("plan",), ("plna", "x"), ("apply", "x", "--parallelism", "0"), ("plan", "x", "--bogus")]
)
def test_usage_errors_are_one_line_and_exit_1(args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 1
    assert result.stdout == "" and result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
