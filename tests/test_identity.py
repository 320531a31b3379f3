"""One key, one chat (design §6): attacks on the state link, each a way dtchat once created a chat twice or lost one."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import APP_KEY, APP_SECRET, dtchat, state_of, users, write_config

ROOT = Path(__file__).resolve().parent.parent
WRITES = ("/chat/create", "/chat/update", "/v1.0/im/group/create", "/v1.0/im/group/update")


def writes(emulator) -> int:
    return sum(len(emulator.calls_to(e)) for e in WRITES)


def chats_named(emulator, name: str) -> list[str]:
    return [cid for cid, info in emulator.chats().items() if info["name"] == name]


# -- partial runs -------------------------------------------------------------------------------


def test_applying_one_file_of_a_folder_keeps_the_other_keys(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"a": {"name": "A", "owner": "x"}}, name="a.yaml")
    write_config(folder, {"d": {"name": "D", "owner": "y"}}, name="d.yaml")
    assert dtchat(emulator, "apply", str(folder), "--auto-approve").exit_code == 0
    before = state_of(folder / "dtchat.state.json")
    result = dtchat(emulator, "apply", str(folder / "d.yaml"), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert "? a (" in result.output and "kept" in result.output
    assert state_of(folder / "dtchat.state.json") == before
    creates = len(emulator.calls_to("/chat/create"))
    result = dtchat(emulator, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 0 and "No changes" in result.output
    assert len(emulator.calls_to("/chat/create")) == creates == 2


def test_mv_after_a_yaml_rename_keeps_the_chat(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"old-key": {"name": "Ops", "owner": "x", "members": ["y"]}})
    assert dtchat(emulator, "apply", str(folder), "--auto-approve").exit_code == 0
    chatid = state_of(folder / "dtchat.state.json")["old-key"]
    write_config(folder, {"new-key": {"name": "Ops", "owner": "x", "members": ["y"]}})
    result = dtchat(emulator, "plan", str(folder))
    assert f"dtchat mv old-key new-key --state {folder / 'dtchat.state.json'}" in result.output
    state = str(folder / "dtchat.state.json")
    result = dtchat(emulator, "mv", "old-key", "new-key", "--state", state)
    assert result.exit_code == 0, result.output
    result = dtchat(emulator, "plan", str(folder), "--detailed-exitcode")
    assert result.exit_code == 0 and "No changes" in result.output
    assert state_of(folder / "dtchat.state.json") == {"new-key": chatid}
    assert len(emulator.calls_to("/chat/create")) == 1
    refused = dtchat(emulator, "mv", "ghost", "other", "--state", state)
    assert refused.exit_code == 1 and "no chat key `ghost`" in refused.output


# -- where the state file is ----------------------------------------------------------------------


def test_state_commands_find_the_state_one_way_and_never_guess(emulator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "chats"
    write_config(folder, {"a": {"name": "A", "owner": "x"}})
    chatid = emulator.seed_chat("Legacy", "bob", ["bob"])
    result = dtchat(emulator, "import", "legacy", chatid)  # from the repository root: no ./dtchat.state.json
    assert result.exit_code == 1 and "pass --state F" in result.output and "DTCHAT_STATE" in result.output
    assert not (tmp_path / "dtchat.state.json").exists()
    for args in (("forget", "a"), ("mv", "a", "b")):
        refused = dtchat(emulator, *args)
        assert refused.exit_code == 1 and "pass --state F" in refused.output
    env = {"DTCHAT_STATE": "chats/dtchat.state.json"}
    assert dtchat(emulator, "import", "legacy", chatid, env=env).exit_code == 0
    assert state_of(folder / "dtchat.state.json") == {"legacy": chatid}
    plan = dtchat(emulator, "plan", "chats/")  # beside the first PATH: the same file
    assert f"? legacy ({chatid})" in plan.output
    assert dtchat(emulator, "mv", "legacy", "old-ops", env=env).exit_code == 0
    assert dtchat(emulator, "forget", "old-ops", env=env).exit_code == 0
    assert state_of(folder / "dtchat.state.json") == {}
    typo = dtchat(emulator, "apply", "chats/", "--auto-approve", "--state", "/no/such/dir/s.json")
    assert typo.exit_code == 1 and "does not exist" in typo.output
    assert not Path("/no/such/dir").exists() and writes(emulator) == 0


# -- saved plans ------------------------------------------------------------------------------------


def _edits(changes: list) -> list:
    """Every kind of hand edit to a saved plan's changes."""
    eng = next(i for i, c in enumerate(changes) if c["key"] == "eng")
    variants = []

    def edit(fn):
        copy = json.loads(json.dumps(changes))
        fn(copy)
        variants.append(copy)

    edit(lambda c: c[eng]["remove"].append("alice"))  # remove somebody the YAML keeps
    edit(lambda c: c[eng]["add"].append("mallory"))
    edit(lambda c: c.append({"key": "ops", "action": "forget", "chatid": "chat" + "1" * 32}))  # lose a chatid
    edit(lambda c: c[eng].update(action="forget"))
    edit(lambda c: c[eng].update(add=5))  # malformed
    edit(lambda c: c[eng].update(settings=[{"name": "muted", "old": None, "new": False}]))
    edit(lambda c: c.pop(eng))
    edit(lambda c: c.append(c[eng]))
    edit(lambda c: c.__setitem__(eng, "eng"))
    return variants


def test_every_kind_of_saved_plan_edit_is_refused_with_zero_writes(emulator, tmp_path):
    folder = tmp_path / "chats"
    chats = {"eng": {"name": "Eng", "owner": "alice", "members": ["bob"]}, "ops": {"name": "Ops", "owner": "carol"}}
    write_config(folder, chats)
    assert dtchat(emulator, "apply", str(folder), "--auto-approve").exit_code == 0
    chats["eng"]["members"] = ["bob", "dave"]
    write_config(folder, chats)
    plan_path = tmp_path / "plan.json"
    assert dtchat(emulator, "plan", str(folder), "--out", str(plan_path)).exit_code == 0
    document = json.loads(plan_path.read_text())
    before = writes(emulator)
    for changes in _edits(document["changes"]):
        edited = tmp_path / "edited.json"
        edited.write_text(json.dumps({**document, "changes": changes}))
        result = dtchat(emulator, "apply", "--plan", str(edited), "--auto-approve")
        assert result.exit_code == 1, result.output
        assert "refusing the saved plan" in result.output and "Traceback" not in result.output
        assert writes(emulator) == before
    assert state_of(folder / "dtchat.state.json").keys() == {"eng", "ops"}
    result = dtchat(emulator, "apply", "--plan", str(plan_path), "--auto-approve")  # the honest plan applies
    assert result.exit_code == 0, result.output
    assert writes(emulator) == before + 1


def test_a_saved_plan_applies_only_with_the_state_file_it_was_made_with(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"eng": {"name": "Eng", "owner": "alice"}})
    plan_path = tmp_path / "plan.json"
    assert dtchat(emulator, "plan", str(folder), "--out", str(plan_path)).exit_code == 0
    (tmp_path / "other").mkdir()
    other = str(tmp_path / "other" / "s.json")
    for how in ({"env": {"DTCHAT_STATE": other}}, {"args": ("--state", other)}):
        result = dtchat(
            emulator, "apply", "--plan", str(plan_path), "--auto-approve", *how.get("args", ()), env=how.get("env")
        )
        assert result.exit_code == 1 and "the plan was made with the state file" in result.output
    assert writes(emulator) == 0 and not Path(other).exists()
    result = dtchat(emulator, "apply", "--plan", str(plan_path), "--auto-approve")
    assert result.exit_code == 0 and state_of(folder / "dtchat.state.json").keys() == {"eng"}


# -- plans tell the truth early ----------------------------------------------------------------------


def test_plan_with_bad_credentials_fails_even_when_every_chat_is_new(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"a": {"name": "A", "owner": "x"}})
    for command in ("plan", "drift"):
        result = dtchat(emulator, command, str(folder), env={"DINGTALK_APP_SECRET": "wrong-secret-123"})
        assert result.exit_code == 1 and "/gettoken" in result.output, result.output
        assert "wrong-secret-123" not in result.output


def test_an_additive_chat_that_would_overflow_is_a_plan_error_with_the_real_cause(emulator, tmp_path):
    folder = tmp_path / "chats"
    chatid = emulator.seed_chat("Company", "boss", ["boss", *users(996, "old")])
    write_config(
        folder,
        {
            "company": {
                "name": "Company",
                "owner": "boss",
                "chatid": chatid,
                "members_policy": "additive",
                "members": users(5, "new"),
            }
        },
    )
    result = dtchat(emulator, "plan", str(folder))
    assert result.exit_code == 1
    assert "! error company" in result.output and "1002 members" in result.output
    assert "996 not in the YAML kept" in result.output and "additive" in result.output
    result = dtchat(emulator, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 1 and writes(emulator) == 0


# -- IP bans --------------------------------------------------------------------------------------------


def test_an_ip_ban_on_create_is_retried_after_wait_and_creates_exactly_one_chat(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {"a": {"name": "Banned once", "owner": "x"}})
    emulator.faults.update({"ip_ban_every": 1, "ban_wait": 1, "fault_endpoints": ["/chat/create"]})

    def lift(call):
        if call.endpoint == "/chat/create":
            emulator.faults.update({"ip_ban_every": 0})

    emulator.before_reply = lift
    result = dtchat(emulator, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert len(chats_named(emulator, "Banned once")) == 1
    assert [c.status for c in emulator.calls_to("/chat/create")] == [200, 200]


def test_a_ban_longer_than_the_retry_budget_stops_the_run(emulator, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {f"c{i}": {"name": f"C{i}", "owner": "x"} for i in range(4)})
    emulator.faults.update({"ip_ban_every": 1, "ban_wait": 3600, "fault_endpoints": ["/chat/create"]})
    result = dtchat(emulator, "apply", str(folder), "--auto-approve", "--parallelism", "1")
    assert result.exit_code == 1
    assert result.output.count("3600") == 1  # the fatal error once, not once per chat
    assert "Not started: 3 chats (c1, c2, c3); nothing was sent for them" in result.output
    assert len(emulator.calls_to("/chat/create")) == 1
    assert not (folder / "dtchat.state.json").exists() or state_of(folder / "dtchat.state.json") == {}


# -- crashes ---------------------------------------------------------------------------------------------


def _scenario(emulator, folder: Path) -> dict:
    """Creates (one of 90 members), churn of 45/45 and an owner transfer to a non-member: 9 write calls."""
    churn = emulator.seed_chat("Churn", "owner1", ["owner1", *users(100, "c")])
    transfer = emulator.seed_chat("Transfer", "alice", ["alice", "carol"])
    chats = {
        "small": {"name": "Small", "owner": "s1", "members": ["s2", "s3"]},
        "big": {"name": "Big", "owner": "b0", "members": users(90, "b")},
        "churn": {"name": "Churn", "owner": "owner1", "members": [*users(100, "c")[45:], *users(45, "n")]},
        "transfer": {"name": "Transfer", "owner": "bob", "members": ["carol"]},
    }
    write_config(folder, chats)
    folder.joinpath("dtchat.state.json").write_text(
        json.dumps(
            {
                "format": "dtchat-state",
                "version": 1,
                "chats": {"churn": {"chatid": churn}, "transfer": {"chatid": transfer}},
            }
        )
    )
    return chats


def _cli(emulator, api: str) -> list[str]:
    """``python -m reconciler`` pointed at the emulator (both hosts), in generation ``api``."""
    bases = ["--api", api, "--api-base", emulator.url, "--openapi-base", emulator.url]
    return [sys.executable, "-m", "reconciler", *bases, "--max-qps", "1000"]


def _run(emulator, cwd: Path, *args: str, api: str = "v1") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DINGTALK_APP_KEY": APP_KEY,
        "DINGTALK_APP_SECRET": APP_SECRET,
        "NO_COLOR": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DTCHAT_STATE", None)
    return subprocess.run(
        [*_cli(emulator, api), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _settle_pending(emulator, cwd: Path, output: str, chats: dict, api: str) -> bool:
    """Follow the plan's hint for a pending key: import the chat if it exists, else forget the key."""
    lines = [line for line in output.splitlines() if "dtchat import" in line and "CHATID" in line]
    if not lines:
        return False
    for line in lines:
        imp = line.split("run `", 1)[1].split("`", 1)[0]
        fgt = line.split("otherwise run `", 1)[1].split("`", 1)[0]
        assert "--state chats/dtchat.state.json" in imp and "--state chats/dtchat.state.json" in fgt
        key = shlex.split(imp)[2]
        existing = chats_named(emulator, chats[key]["name"])
        assert len(existing) <= 1
        command = imp.replace("CHATID", existing[0]) if existing else fgt
        done = _run(emulator, cwd, *shlex.split(command)[1:], api=api)
        assert done.returncode == 0, done.stdout + done.stderr
    return True


def _write_calls(emulator, tmp_path: Path, api: str) -> int:
    """How many write calls the scenario's apply makes, from its dry run."""
    _scenario(emulator, tmp_path / "count" / "chats")
    dry = _run(emulator, tmp_path / "count", "apply", "chats", "--dry-run", "--force", api=api)
    assert dry.returncode == 0, dry.stderr
    return int(dry.stdout.rsplit(" API call", 1)[0].rsplit("\n", 1)[1])


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_sigkill_at_every_write_never_creates_a_chat_twice_nor_loses_one(emulator, tmp_path, api):
    total = _write_calls(emulator, tmp_path, api)
    assert total >= 9
    for kill_at in range(1, total + 1):
        emulator.reset()
        cwd = tmp_path / f"kill{kill_at}"
        folder = cwd / "chats"
        chats = _scenario(emulator, folder)
        seen = {"n": 0}
        proc_box: dict = {}

        def killer(call, n=kill_at, seen=seen, proc_box=proc_box):
            if call.endpoint in WRITES:
                seen["n"] += 1
                if seen["n"] == n and "proc" in proc_box:
                    os.kill(proc_box["proc"].pid, signal.SIGKILL)  # committed, answer never delivered

        emulator.before_reply = killer
        env = {**os.environ, "DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [
                *_cli(emulator, api),
                "apply",
                "chats",
                "--auto-approve",
                "--force",
                "--parallelism",
                "1",
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc_box["proc"] = proc
        proc.communicate(timeout=120)
        emulator.before_reply = None
        assert proc.returncode == -signal.SIGKILL, f"kill at write {kill_at}: the apply was not killed"
        for _attempt in range(4):
            rerun = _run(emulator, cwd, "apply", "chats", "--auto-approve", "--force", api=api)
            if rerun.returncode == 0:
                break
            output = rerun.stdout + rerun.stderr
            assert _settle_pending(emulator, cwd, output, chats, api), output
        else:
            pytest.fail(f"kill at write {kill_at}: did not converge")
        state = json.loads((folder / "dtchat.state.json").read_text())["chats"]
        for key, chat in chats.items():
            assert len(chats_named(emulator, chat["name"])) == 1, f"kill at write {kill_at}: {key} created twice"
            assert state[key]["chatid"] == chats_named(emulator, chat["name"])[0]
        final = _run(emulator, cwd, "plan", "chats", "--detailed-exitcode", api=api)
        assert final.returncode == 0 and "No changes" in final.stdout, (kill_at, final.stdout)


def test_a_pinned_chat_is_recorded_even_when_nothing_changes(emulator, tmp_path):
    """dump → apply (no changes) → remove the pin: the chat must be found through the state, not created."""
    chatid = emulator.seed_chat("Ops", "bob", ["bob", "carol"])
    folder = tmp_path / "chats"
    write_config(folder, {"ops": {"name": "Ops", "owner": "bob", "members": ["carol"], "chatid": chatid}})
    result = dtchat(emulator, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 0 and "No changes" in result.output
    assert state_of(folder / "dtchat.state.json") == {"ops": chatid}
    write_config(folder, {"ops": {"name": "Ops", "owner": "bob", "members": ["carol"]}})
    result = dtchat(emulator, "plan", str(folder), "--detailed-exitcode")
    assert result.exit_code == 0 and "No changes" in result.output and emulator.calls_to("/chat/create") == []


def test_prune_never_drops_a_pending_create_and_a_pin_cannot_take_an_orphans_chat(emulator, tmp_path):
    folder = tmp_path / "chats"
    owned = emulator.seed_chat("Owned", "bob", ["bob"])
    write_config(folder, {"new": {"name": "New", "owner": "x", "chatid": owned}})
    (folder / "dtchat.state.json").write_text(
        json.dumps(
            {
                "format": "dtchat-state",
                "version": 1,
                "chats": {
                    "lost": {"chatid": None, "pending_create": True, "created_at": "2026-01-01T00:00:00+00:00"},
                    "old": {"chatid": owned},
                },
            }
        )
    )
    result = dtchat(emulator, "apply", str(folder), "--auto-approve", "--prune")
    assert result.exit_code == 1
    assert "? lost" in result.output and "a create of it is pending" in result.output  # kept, with a way out
    assert "- forget old" in result.output  # a settled orphan is pruned...
    assert "! error new" in result.output and f"chatid {owned} is also bound to old" in result.output  # ...not stolen
    state = json.loads((folder / "dtchat.state.json").read_text())["chats"]
    assert state["lost"]["pending_create"] is True and writes(emulator) == 0
