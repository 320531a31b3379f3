"""What Terraform users expect around a run: a saved plan is the approval, `state list|show`, `show PLANFILE`,
and an adaptive rate that settles at what the server accepts (issue 21, "Operator comforts")."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from reconciler.backends.ratelimit import ACCEPTED_SHARE, AdaptiveRate
from reconciler.model import MemberSource, Selector
from reconciler.plan import Action, ChatChange, Plan, SettingChange
from reconciler.planfile import plan_document, read_plan, saved_plan_as_plan

from helpers import dtchat, state_of, write_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def planned(emulator, tmp_path):
    """A config of two chats, a saved plan of their creation, and the state file beside them."""
    cfg = write_config(
        tmp_path,
        {
            "eng": {"name": "工程", "owner": "alice", "members": ["alice", "bob"]},
            "ops": {"name": "运维", "owner": "carol", "members": ["carol", "dave"], "settings": {"muted": True}},
        },
    )
    plan_file = tmp_path / "plan.json"
    result = dtchat(emulator, "plan", str(cfg), "--out", str(plan_file))
    assert result.exit_code == 0, result.output
    return cfg, plan_file, tmp_path / "dtchat.state.json"


def test_a_saved_plan_applies_without_a_second_question_and_without_a_terminal(emulator, planned):
    _, plan_file, state = planned
    result = dtchat(emulator, "apply", "--plan", str(plan_file))  # no --auto-approve, no terminal to ask on
    assert result.exit_code == 0, result.output
    assert "Apply these changes?" not in result.output
    assert set(state_of(state)) == {"eng", "ops"}


def test_without_a_saved_plan_apply_still_refuses_to_run_unasked(emulator, tmp_path):
    cfg = write_config(tmp_path, {"eng": {"name": "工程", "owner": "alice", "members": ["alice", "bob"]}})
    result = dtchat(emulator, "apply", str(cfg))
    assert result.exit_code == 1
    assert "pass --auto-approve" in result.output
    assert not [c for c in emulator.calls if "create" in c.endpoint]
    assert state_of(tmp_path / "dtchat.state.json") == {}


def test_show_prints_a_saved_plan_as_plan_printed_it_and_calls_nothing(emulator, planned):
    cfg, plan_file, _ = planned
    printed = dtchat(emulator, "plan", str(cfg)).output
    calls = len(emulator.calls)
    shown = dtchat(emulator, "show", str(plan_file))
    assert shown.exit_code == 0, shown.output
    assert len(emulator.calls) == calls  # nothing read, no token fetched
    for line in ("+ create eng", "+ create ops", "Plan: 2 to create"):
        assert any(line in out_line for out_line in shown.output.splitlines()), (line, shown.output)
    # the body of the plan is the same as `plan` printed (the metered-calls line is about the run, not the plan)
    assert [x for x in shown.output.splitlines() if x.startswith(("+", "~", "  "))] == [
        x for x in printed.splitlines() if x.startswith(("+", "~", "  "))
    ]
    as_json = json.loads(dtchat(emulator, "show", str(plan_file), "--format", "json").output)
    saved = json.loads(plan_file.read_text(encoding="utf-8"))
    assert as_json["changes"] == saved["changes"] and as_json["forecast"] == saved["forecast"]
    markdown = dtchat(emulator, "show", str(plan_file), "--format", "markdown").output
    assert "`eng`" in markdown and "`ops`" in markdown


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda d: d["changes"][0].update(action="explode"), "changes[0].action"),
        (lambda d: d["changes"][0].update(add="alice,bob"), "changes[0].add"),
        (lambda d: d["changes"][0].update(name={"old": None, "new": 5}), "changes[0].name"),
        (lambda d: d["changes"][0].update(live_count="many"), "changes[0].live_count"),
        (lambda d: d.update(warnings=[1]), "warnings"),
    ],
)
def test_show_of_a_hand_edited_plan_is_a_one_line_error_naming_the_place(emulator, planned, edit, where):
    _, plan_file, _ = planned
    data = json.loads(plan_file.read_text(encoding="utf-8"))
    edit(data)
    plan_file.write_text(json.dumps(data), encoding="utf-8")
    result = dtchat(emulator, "show", str(plan_file))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and where in lines[0], result.output


def test_state_list_and_show_say_what_each_key_is_bound_to(emulator, planned):
    _, plan_file, state = planned
    assert dtchat(emulator, "apply", "--plan", str(plan_file)).exit_code == 0
    data = json.loads(state.read_text(encoding="utf-8"))
    data["chats"]["lost"] = {"chatid": None, "pending_create": True, "created_at": "2026-12-01T00:00:00Z"}
    state.write_text(json.dumps(data), encoding="utf-8")
    calls = len(emulator.calls)

    listed = dtchat(emulator, "state", "list", "--state", str(state))
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.output.splitlines()[:-1]}
    ids = state_of(state)
    assert ids["eng"] in rows["eng"] and "verified" in rows["eng"]
    assert "pending create since 2026-12-01" in rows["lost"]
    assert listed.output.splitlines()[-1] == f"3 chats in {state}."

    as_json = json.loads(dtchat(emulator, "state", "list", "--state", str(state), "--format", "json").output)
    assert as_json["chats"]["eng"]["chatid"] == ids["eng"] and as_json["chats"]["lost"]["pending_create"] is True

    shown = json.loads(dtchat(emulator, "state", "show", "ops", "--state", str(state)).output)
    assert shown["chats"]["ops"]["chatid"] == ids["ops"] and shown["chats"]["ops"]["digest"]
    missing = dtchat(emulator, "state", "show", "nope", "--state", str(state))
    assert missing.exit_code == 1 and "no chat key `nope`" in missing.output
    assert len(emulator.calls) == calls  # reading the state calls nothing


def test_state_list_without_a_state_file_is_one_line(emulator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = dtchat(emulator, "state", "list")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def simulate(max_rate: float, server_limit: int, seconds: int) -> tuple[AdaptiveRate, int, int]:
    """Calls paced by the limiter against a server that accepts ``server_limit`` per whole second."""
    clock = Clock()
    limiter = AdaptiveRate(max_rate, clock=clock, sleep=clock.sleep)
    accepted = refused = 0
    window, in_window = -1, 0
    while clock.now < seconds:
        ticket = limiter.acquire()
        second = int(clock.now)
        if second != window:
            window, in_window = second, 0
        if in_window < server_limit:
            in_window += 1
            accepted += 1
            limiter.succeeded()
        else:
            refused += 1
            limiter.throttled(ticket)
    return limiter, accepted, refused


def test_a_throttled_rate_settles_near_what_the_server_accepts_not_at_three_quarters_of_it():
    limiter, accepted, refused = simulate(60, 20, 60)
    # halving settled near 15/s (three quarters of the limit); measuring the accepted rate keeps ~19-20/s
    assert accepted >= 0.9 * 20 * 60
    assert refused < 0.15 * accepted
    assert 20 * ACCEPTED_SHARE * 0.9 <= limiter.rate <= 21.5


def test_with_too_few_answers_to_measure_a_throttle_still_halves():
    clock = Clock()
    limiter = AdaptiveRate(40, clock=clock, sleep=clock.sleep)
    limiter.succeeded()
    assert limiter.throttled(limiter.acquire()) == 20


def test_the_sandbox_chats_can_be_changed_by_hand_through_emulator_sandbox(tmp_path):
    """README's drift demo: `dtchat --sandbox emulator` serves the sandbox's chats; a change through its admin
    route is the drift the next `--sandbox drift` reports."""
    env = {**os.environ, "NO_COLOR": "1"}
    run = [sys.executable, "-m", "reconciler"]
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    applied = subprocess.run([*run, "--sandbox", "apply", "examples/chats/", "--auto-approve"], cwd=tmp_path, env=env)
    assert applied.returncode == 0
    state = json.loads(
        subprocess.check_output([*run, "--sandbox", "state", "show", "eng-oncall"], cwd=tmp_path, env=env)
    )
    chatid = state["chats"]["eng-oncall"]["chatid"]
    server = subprocess.Popen(
        [*run, "--sandbox", "emulator", "--port", "0"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 20)
        assert ready, "the emulator printed no address within 20 s"
        first = server.stdout.readline()
        url = first.split("listening on ", 1)[1].split()[0]
        answer = requests.post(url + "/__emulator__/hand", json={"chatid": chatid, "add": ["mallory"]}, timeout=10)
        assert answer.status_code == 200, answer.text
    finally:
        server.terminate()
        server.wait(timeout=10)
    drift = subprocess.run(
        [*run, "--sandbox", "drift", "examples/chats/"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert drift.returncode == 2, drift.stdout + drift.stderr
    assert "- mallory" in drift.stdout and "drifted eng-oncall" in drift.stdout


def test_emulator_sandbox_refuses_other_data(emulator, tmp_path):
    result = dtchat(emulator, "--sandbox", "emulator", "--data", str(tmp_path / "x.json"))
    assert result.exit_code == 1 and "drop --users/--org/--data" in result.output


def test_state_list_and_show_of_a_mistyped_state_file_are_errors(emulator, tmp_path):
    for args in (("state", "list"), ("state", "show", "eng")):
        result = dtchat(emulator, *args, "--state", str(tmp_path / "typo.json"))
        assert result.exit_code == 1 and "no state file there" in result.output, result.output
    assert not (tmp_path / "typo.json").exists()


def test_a_saved_plan_reads_back_as_the_plan_it_was_made_from(tmp_path):
    """`show` renders the saved changes exactly: every field a change carries, selector sources included."""
    changes = (
        ChatChange(
            "all",
            Action.UPDATE,
            chatid="chat01",
            name=("Old", "New"),
            owner=("a", "b"),
            add=("b", "c"),
            remove=("d",),
            settings=(SettingChange("muted", None, True),),
            live_count=3,
            fingerprint="f1",
            sources=(
                MemberSource(Selector("dept", 100, recursive=True), "研发部", 12),
                MemberSource(Selector("mobile", "13800000001"), "13800000001", 1, excluded=True),
            ),
            digest="d1",
        ),
        ChatChange("gone", Action.ERROR, chatid="chat02", error="dissolved"),
        ChatChange("old", Action.UNREAD, chatid="chat03", digest="d3", verified_at="2026-12-01T00:00:00+00:00"),
    )
    plan = Plan(changes, reads=2, writes=1)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(plan_document(plan, [str(tmp_path / "chats.yaml")], None)), encoding="utf-8")
    again = saved_plan_as_plan(read_plan(path))
    assert again.changes == plan.changes and (again.reads, again.writes) == (2, 1)


@pytest.mark.parametrize(
    "source",
    [{"kind": "team", "value": 1, "label": "x", "count": 1}, {"kind": "dept", "value": True, "label": "x", "count": 1}],
)
def test_a_hand_edited_selector_source_is_a_one_line_error(emulator, planned, source):
    _, plan_file, _ = planned
    data = json.loads(plan_file.read_text(encoding="utf-8"))
    data["changes"][0]["sources"] = [source]
    plan_file.write_text(json.dumps(data), encoding="utf-8")
    result = dtchat(emulator, "show", str(plan_file))
    assert result.exit_code == 1 and "changes[0].sources[0]" in result.output
