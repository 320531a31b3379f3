"""Every metered call counts (design §11): counted and shown, read only what can have changed, drift on a
rotation, a budget that holds, and a used-up quota that stops the run with the state exact."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from reconciler.applier import apply_plan
from reconciler.config import load_config
from reconciler.emulator import EmulatorServer, Org
from reconciler.manager import Manager
from reconciler.quota import Budget, Rotation
from reconciler.state import StateFile

from fake_backend import CREATE, FakeBackend
from helpers import APP_KEY, APP_SECRET, dtchat, state_of, users, write_config
from helpers import CREATE as CREATES
from helpers import UPDATE as UPDATES

READ = "/chat/get"


@pytest.fixture(params=["v1", "legacy"])
def api(request):
    return request.param


@pytest.fixture
def org_emulator():
    """An org with two departments: chats built from 100 see a leaver of 100; chats of 200 do not."""
    org = Org.from_data(
        {
            "departments": [
                {"id": 1, "name": "公司"},
                {"id": 100, "name": "研发", "parent": 1},
                {"id": 200, "name": "销售", "parent": 1},
            ],
            "users": [
                *({"userid": u, "departments": [100]} for u in users(12, "r")),
                *({"userid": u, "departments": [200]} for u in users(12, "s")),
                *({"userid": u, "departments": [1]} for u in users(60)),
            ],
        }
    )
    with EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, org=org) as server:
        yield server


def chats(n=8):
    return {f"team-{i}": {"name": f"Team {i}", "owner": "u0000", "members": list(users(3 + i))} for i in range(n)}


def reads(server) -> int:
    return sum(1 for c in server.calls_to(READ) if c.metered)


def converged(server, folder, api, extra=None):
    write_config(folder, {**chats(), **(extra or {})})
    result = dtchat(server, "apply", str(folder), "--auto-approve", api=api)
    assert result.exit_code == 0, result.output
    return state_of(folder / "dtchat.state.json")


def test_metered_counts_in_text_and_json_equal_the_emulators_meter(org_emulator, tmp_path, api):
    folder = tmp_path / "c"
    write_config(folder, chats())
    before = org_emulator.meter()["metered"]
    result = dtchat(org_emulator, "apply", str(folder), "--auto-approve", api=api)
    spent = org_emulator.meter()["metered"] - before
    assert f"API calls: {spent} metered," in result.stdout and spent == 8  # eight creates, nothing read
    org_emulator.set_chat(state_of(folder / "dtchat.state.json")["team-0"], name="renamed by hand")
    for fmt in ("json", "text"):
        before = org_emulator.meter()["metered"]
        out = dtchat(org_emulator, "plan", str(folder), "--refresh", "all", "--format", fmt, api=api).stdout
        spent = org_emulator.meter()["metered"] - before
        if fmt == "json":
            doc = json.loads(out)
            assert doc["api_calls"]["metered"] == spent == 8
            assert doc["forecast"] == {"metered": 9, "reads": 8, "writes": 1}  # what apply of it will spend
        else:
            assert (
                f"API calls: {spent} metered" in out and "Apply of this plan: 9 metered calls (8 reads + 1 write" in out
            )
    before = org_emulator.meter()["metered"]
    drift = dtchat(org_emulator, "drift", str(folder), "--format", "json", api=api)
    assert json.loads(drift.stdout)["api_calls"]["metered"] == org_emulator.meter()["metered"] - before == 8


def test_a_converged_org_plans_with_zero_metered_reads_and_one_edit_reads_one_chat(org_emulator, tmp_path, api):
    folder = tmp_path / "c"
    converged(org_emulator, folder, api)
    before = reads(org_emulator)
    quiet = dtchat(org_emulator, "plan", str(folder), "--detailed-exitcode", "-v", api=api)
    assert quiet.exit_code == 0 and reads(org_emulator) == before  # nothing read at all
    assert "8 unchanged since last verified, not read" in quiet.stdout
    assert re.search(r"unchanged since \d{4}-\d\d-\d\dT[\d:]+\+00:00, not read", quiet.stdout)  # -v says since when
    edited = chats()
    edited["team-3"]["members"].append("u0059")
    write_config(folder, edited)
    plan = dtchat(org_emulator, "plan", str(folder), "--format", "json", api=api)
    read_now = [c.params["chatid"] for c in org_emulator.calls_to(READ)[before:] if c.metered]
    assert read_now == [state_of(folder / "dtchat.state.json")["team-3"]]  # exactly the edited chat
    actions = {c["key"]: c["action"] for c in json.loads(plan.stdout)["changes"]}
    assert actions["team-3"] == "update" and sum(a == "unread" for a in actions.values()) == 7
    full = dtchat(org_emulator, "plan", str(folder), "--refresh", "all", api=api)
    assert full.exit_code == 0 and reads(org_emulator) - before == 1 + 8  # --refresh all reads everything


def test_a_leaver_rereads_exactly_the_chats_built_from_their_department(org_emulator, tmp_path, api):
    folder = tmp_path / "c"
    extra = {
        "rd-all": {"name": "研发", "owner": "r0000", "members": [{"dept": 100}]},
        "rd-core": {"name": "研发核心", "owner": "r0001", "members": [{"dept": 100}, "u0001"]},
        "sales": {"name": "销售", "owner": "s0000", "members": [{"dept": 200}]},
    }
    ids = converged(org_emulator, folder, api, extra)
    before = len(org_emulator.calls_to(READ))
    org_emulator.remove_user("r0005")  # leaves the company
    plan = dtchat(org_emulator, "plan", str(folder), "--format", "json", api=api)
    read_now = sorted(c.params["chatid"] for c in org_emulator.calls_to(READ)[before:])
    assert read_now == sorted([ids["rd-all"], ids["rd-core"]])  # the directory is re-resolved (exempt) first
    removals = {c["key"]: c["remove"] for c in json.loads(plan.stdout)["changes"] if c["remove"]}
    assert removals == {"rd-all": ["r0005"], "rd-core": ["r0005"]}


def test_drift_rotate_30_reads_every_chat_within_30_days_in_stable_slices(org_emulator, tmp_path, api):
    folder = tmp_path / "c"
    many = {f"c{i:02d}": {"name": f"C{i}", "owner": "u0000"} for i in range(60)}
    write_config(folder, many)
    assert dtchat(org_emulator, "apply", str(folder), "--auto-approve", api=api).exit_code == 0
    ids = state_of(folder / "dtchat.state.json")
    key_of = {v: k for k, v in ids.items()}
    start = dt.date(2026, 12, 1)
    seen: set[str] = set()
    for day in range(30):
        date = (start + dt.timedelta(days=day)).isoformat()
        env = {"DTCHAT_TODAY": date}
        slices = []
        for _ in range(2):  # the same day twice: the same slice
            before = len(org_emulator.calls_to(READ))
            result = dtchat(org_emulator, "drift", str(folder), "--rotate", "30", "--format", "json", env=env, api=api)
            assert result.exit_code == 0, result.output
            slices.append(sorted(key_of[c.params["chatid"]] for c in org_emulator.calls_to(READ)[before:]))
            rotation = json.loads(result.stdout)["rotation"]
        assert slices[0] == slices[1] and rotation["date"] == date and rotation["days"] == 30
        expected = sorted(k for k in many if Rotation(30, dt.date.fromisoformat(date).toordinal()).includes(k))
        assert slices[0] == expected
        seen.update(slices[0])
    assert seen == set(many)  # every chat audited at least once in the 30 days
    assert state_of(folder / "dtchat.state.json") == ids  # drift stays read-only


def test_drift_rotate_reads_changed_and_never_verified_chats_whatever_the_day(org_emulator, tmp_path, api):
    folder = tmp_path / "c"
    ids = converged(org_emulator, folder, api)
    edited = chats()
    edited["team-1"]["name"] = "Renamed"
    edited["new"] = {"name": "New", "owner": "u0000"}  # never applied: missing, nothing to read
    write_config(folder, edited)
    day = next(d for d in range(738000, 738100) if not Rotation(30, d).includes("team-1"))
    date = dt.date.fromordinal(day).isoformat()
    before = len(org_emulator.calls_to(READ))
    result = dtchat(org_emulator, "drift", str(folder), "--rotate", "30", "-v", env={"DTCHAT_TODAY": date}, api=api)
    read_now = {c.params["chatid"] for c in org_emulator.calls_to(READ)[before:]}
    assert ids["team-1"] in read_now and result.exit_code == 2
    assert "missing new" in result.stdout and "not in today's slice: not read" in result.stdout


def test_budget_refuses_up_front_with_zero_writes(org_emulator, tmp_path, api):
    folder = tmp_path / "c"
    write_config(folder, chats())
    result = dtchat(org_emulator, "--budget", "5", "apply", str(folder), "--auto-approve", api=api)
    assert result.exit_code == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert "--budget 5: this apply needs 8 metered calls (0 reads made, 8 writes to come); nothing was changed" in line
    assert "left undone: team-0, team-1" in line and org_emulator.chats() == {}
    converged(org_emulator, folder, api)
    plan = dtchat(org_emulator, "plan", str(folder), "--refresh", "all", env={"DTCHAT_BUDGET": "3"}, api=api)
    assert plan.exit_code == 1 and "--budget 3: this plan needs 8 metered reads; nothing was read" in plan.stderr
    drift = dtchat(org_emulator, "--budget", "7", "drift", str(folder), api=api)
    assert drift.exit_code == 1 and "this drift needs 8 metered reads" in drift.stderr and "--rotate" in drift.stderr
    assert dtchat(org_emulator, "--budget", "0", "plan", str(folder), api=api).exit_code == 0  # nothing to read


def test_a_budget_stops_mid_run_before_a_chat_that_could_cross_it(tmp_path):
    """The up-front check passed, but the run spent more than its forecast: no chat starts that could cross."""
    folder = tmp_path / "c"
    write_config(folder, {f"k{i}": {"name": f"K{i}", "owner": "x", "members": list(users(50))} for i in range(4)})
    backend = FakeBackend()
    state = StateFile(tmp_path / "s.json")
    plan = Manager(backend).plan(load_config([folder]), state)
    assert plan.writes == 8  # two calls each
    guard = Budget(5).guard(lambda: len(backend.sent))
    result = apply_plan(plan, backend, state, parallelism=1, budget=guard)
    assert [r.ok for r in result.results] == [True, True, False, False]
    assert result.not_started == ("k2", "k3") and "--budget of 5" in result.results[2].error
    assert len([c for c in backend.sent if c.endpoint is CREATE]) == 2 and set(state.bindings) == {"k0", "k1"}


@pytest.mark.parametrize("parallelism", [1, 2, 8])
def test_a_budget_equal_to_the_forecast_applies_everything_at_any_parallelism(tmp_path, parallelism):
    """The guard counts each chat's calls once (not once in the meter and again as in flight)."""
    folder = tmp_path / "c"
    chats = {"big": {"name": "Big", "owner": "x", "members": list(users(119))}}  # a create and two updates
    chats.update({f"k{i}": {"name": f"K{i}", "owner": "x"} for i in range(10)})
    write_config(folder, chats)
    backend = FakeBackend()
    state = StateFile(tmp_path / "s.json")
    plan = Manager(backend).plan(load_config([folder]), state)
    assert plan.writes == 13
    guard = Budget(13).guard(lambda: len(backend.sent))
    result = apply_plan(plan, backend, state, parallelism=parallelism, budget=guard)
    assert result.ok and result.not_started == ()
    assert len(backend.sent) == 13


def test_a_budget_equal_to_the_forecast_applies_through_the_cli_at_the_default_parallelism(emulator, tmp_path):
    folder = tmp_path / "c"
    chats = {"big": {"name": "Big", "owner": "x", "members": list(users(119))}}
    chats.update({f"k{i}": {"name": f"K{i}", "owner": "x"} for i in range(10)})
    write_config(folder, chats)
    result = dtchat(emulator, "--budget", "13", "apply", str(folder), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert "Not started" not in result.output and len(emulator.chats()) == 11


def test_a_budget_stop_mid_run_says_why_on_the_not_started_line(emulator, tmp_path, monkeypatch):
    """A mid-run stop needs a run that spends more than its forecast, which the API cannot stage: the
    up-front check is bypassed here so the guard is what stops it."""
    monkeypatch.setattr(Budget, "check_apply", lambda self, spent, writes, keys: None)
    folder = tmp_path / "c"
    write_config(folder, {f"k{i}": {"name": f"K{i}", "owner": "x"} for i in range(4)})
    result = dtchat(emulator, "--budget", "2", "apply", str(folder), "--auto-approve", "--parallelism", "1")
    assert result.exit_code == 1
    assert "Not started: 2 chats (k2, k3) because the --budget of 2 metered calls would be crossed" in result.output
    assert len(emulator.chats()) == 2


@pytest.mark.parametrize("gen", ["v1", "legacy"])
def test_quota_used_up_mid_apply_stops_in_one_line_and_the_next_run_continues(tmp_path, gen):
    with EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, monthly_quota=3) as server:
        folder = tmp_path / "c"
        write_config(folder, {f"k{i}": {"name": f"K{i}", "owner": "x"} for i in range(6)})
        result = dtchat(server, "apply", str(folder), "--auto-approve", "--parallelism", "1", api=gen)
        assert result.exit_code == 1
        quota = [line for line in result.stderr.splitlines() if "quota is used up" in line]
        assert len(quota) == 1, result.stderr
        assert "Not started: 2 chats (k4, k5)" in result.stderr
        state = json.loads((folder / "dtchat.state.json").read_text())["chats"]
        assert sorted(state) == ["k0", "k1", "k2"] and all(b["chatid"] for b in state.values())  # exact
        server.faults.monthly_quota = -1  # the next month
        again = dtchat(server, "apply", str(folder), "--auto-approve", api=gen)
        assert again.exit_code == 0, again.output
        names = sorted(info["name"] for info in server.chats().values())
        assert names == [f"K{i}" for i in range(6)]  # nothing twice, nothing lost
        assert len([c for c in server.calls_to(CREATES[gen]) if c.metered]) == 6


def test_a_saved_plan_is_refused_when_a_chat_it_did_not_read_changed_in_the_directory(org_emulator, tmp_path, api):
    folder = tmp_path / "c"
    extra = {"rd-all": {"name": "研发", "owner": "r0000", "members": [{"dept": 100}]}}
    converged(org_emulator, folder, api, extra)
    saved = tmp_path / "plan.json"
    made = dtchat(org_emulator, "plan", str(folder), "--out", str(saved), api=api)
    assert made.exit_code == 0 and "Saved the plan to" in made.stderr
    entries = {c["key"]: c for c in json.loads(saved.read_text())["changes"]}
    assert entries["rd-all"]["action"] == "unread" and entries["rd-all"]["digest"]
    org_emulator.remove_user("r0003")  # the directory moved on: the skipped chat's desired state changed
    before = org_emulator.meter()["metered"]
    writes = len(org_emulator.calls_to(UPDATES[api]))
    result = dtchat(org_emulator, "apply", "--plan", str(saved), "--auto-approve", api=api)
    assert result.exit_code == 1 and "refusing the saved plan, nothing was changed" in result.stderr
    assert "rd-all" in result.stderr and len(org_emulator.calls_to(UPDATES[api])) == writes  # no write at all
    assert org_emulator.meter()["metered"] - before == 1  # it read only the chat that changed


def test_a_clean_plan_says_it_rests_on_chats_not_read_and_drift_says_how_to_put_them_back(emulator, tmp_path):
    """A change by hand is invisible to a default plan (the chat is verified unchanged since); the plan must not
    claim DingTalk matches, and drift must name the command that puts it back."""
    folder = tmp_path / "c"
    write_config(folder, {"a": {"name": "A", "owner": "x", "members": ["y"]}, "b": {"name": "B", "owner": "x"}})
    assert dtchat(emulator, "apply", str(folder), "--auto-approve").exit_code == 0
    chatid = state_of(folder / "dtchat.state.json")["a"]
    emulator.change_by_hand(chatid, add=["mallory"])
    plan = dtchat(emulator, "plan", str(folder))
    assert "DingTalk matches the configuration" not in plan.output
    assert "No changes. 0 chats read, 2 not read: unchanged since verified" in plan.output
    drift = dtchat(emulator, "drift", str(folder))
    assert drift.exit_code == 2
    (hint,) = [line for line in drift.output.splitlines() if line.startswith("Hint: ")]
    command = hint.split("`")[1]
    assert command.startswith(f"dtchat apply {folder} --refresh all --target a")  # and the --state it used
    fixed = dtchat(emulator, *command.split()[1:], "--auto-approve")
    assert fixed.exit_code == 0, fixed.output
    assert "mallory" not in emulator.chat(chatid)["useridlist"]
    assert dtchat(emulator, "drift", str(folder)).exit_code == 0


def test_an_apply_that_cannot_read_a_chat_forgets_its_digest_even_with_nothing_else_to_do(emulator, tmp_path):
    """A dissolved chat met by `apply --refresh all` must be read again by the next default plan."""
    folder = tmp_path / "c"
    write_config(folder, {"a": {"name": "A", "owner": "x"}, "b": {"name": "B", "owner": "x"}})
    assert dtchat(emulator, "apply", str(folder), "--auto-approve").exit_code == 0
    chatid = state_of(folder / "dtchat.state.json")["a"]
    emulator.change_by_hand(chatid, disband=True)
    result = dtchat(emulator, "apply", str(folder), "--auto-approve", "--refresh", "all")
    assert result.exit_code == 1 and "dissolved" in result.output
    assert "digest" not in json.loads((folder / "dtchat.state.json").read_text())["chats"]["a"]
    again = dtchat(emulator, "plan", str(folder), "-v")
    assert again.exit_code == 1 and "dissolved" in again.output  # read again, not "unchanged since …, not read"


@pytest.mark.parametrize("command", ["plan", "drift"])
def test_quota_used_up_while_reading_is_one_line_saying_how_many_chats_were_not_read(emulator, tmp_path, command):
    folder = tmp_path / "c"
    write_config(folder, {f"k{i}": {"name": f"K{i}", "owner": "x"} for i in range(8)})
    assert dtchat(emulator, "apply", str(folder), "--auto-approve").exit_code == 0
    emulator.faults.monthly_quota = 3
    args = [command, str(folder), "--parallelism", "1"] + (["--refresh", "all"] if command == "plan" else [])
    result = dtchat(emulator, *args)
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error: ")]
    assert "quota is used up" in line and line.endswith("the reads stopped there: 5 of 8 chats were not read")
