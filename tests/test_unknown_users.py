"""Issue 21: an unknown user id is a plan-time error for its chat, never a write DingTalk refuses mid-apply.

``plan`` asks ``POST /topapi/v2/user/get`` (exempt from the quota) once per distinct id that it would add
to a chat or make owner, except ids already in the live chat and ids a directory selector named in this
run; an id the org does not have (33012), or one the directory could not check, makes that chat an error
with zero writes, while the other chats proceed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.backends import NotFoundError, QuotaExhaustedError, ThrottledError, backend_for
from reconciler.config import load_config
from reconciler.directory import check_users, directory_users, lookup_selectors, unknown_user_errors
from reconciler.emulator import EmulatorServer, Org
from reconciler.manager import Manager
from reconciler.model import DesiredChat, LiveChat, Selector
from reconciler.plan import Action, Plan
from reconciler.planner import make_plan, plan_create, plan_update, users_to_check, with_errors
from reconciler.state import StateFile

from fake_backend import FakeBackend, FakeDirectory
from helpers import (
    APP_KEY,
    APP_SECRET,
    CREATE,
    UPDATE,
    LocalServer,
    RawApi,
    dtchat,
    state_of,
    users,
    write_config,
)

#: The user lookup, as dingtalk-api.md spells it (tests state paths; they never import the code's).
USER_GET = "/topapi/v2/user/get"
LISTID = "/topapi/user/listid"

ORG = {
    "departments": [{"id": 1, "name": "公司"}, {"id": 100, "name": "研发部", "parent": 1}],
    "users": [
        {"userid": "alice", "name": "Alice", "departments": [100]},
        {"userid": "bob", "name": "Bob", "departments": [100]},
        {"userid": "carol", "name": "Carol", "departments": [1]},
        {"userid": "dave", "name": "Dave", "departments": [1], "active": False},
        {"userid": "erin", "name": "Erin", "departments": [1]},
    ],
    "roles": [],
}


@pytest.fixture
def org_emulator():
    server = EmulatorServer(host="127.0.0.1", port=0, app_key=APP_KEY, app_secret=APP_SECRET, org=Org.from_data(ORG))
    with server:
        yield server


def looked_up(server) -> list[str]:
    """The user ids user/get was asked about, in the order asked."""
    return [c.body["userid"] for c in server.calls_to(USER_GET)]


def writes(server) -> list:
    return [c for c in server.calls if c.endpoint in (*CREATE.values(), *UPDATE.values())]


def chat_line(output: str, key: str) -> str:
    """The one line that says why ``key`` failed: apply's ``✗ key: …``, or the line under plan's ``! error key``."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"✗ {key}: "):
            return line
        if line == f"! error {key}":
            return lines[i + 1]
    raise AssertionError(f"no error line for {key} in:\n{output}")


# ---------------------------------------------------------------------------- end to end, real HTTP


@pytest.mark.parametrize("api", ["v1", "legacy"])
def test_an_unknown_id_in_a_new_chat_is_a_plan_error_naming_it_and_apply_writes_nothing_for_it(
    org_emulator, tmp_path, api
):
    write_config(
        tmp_path,
        {
            "broken": {"name": "Broken", "owner": "alice", "members": ["bob", "ghost"]},
            "fine": {"name": "Fine", "owner": "alice", "members": ["carol"]},
        },
    )
    plan = dtchat(org_emulator, "plan", str(tmp_path), api=api)
    assert plan.exit_code == 1, plan.output
    line = chat_line(plan.output, "broken")
    assert "ghost" in line and "unknown user id" in line and "bob" not in line
    assert "+ carol" in plan.output  # the other chat is planned as usual

    report = json.loads(dtchat(org_emulator, "plan", str(tmp_path), "--format", "json", api=api).stdout)
    broken = next(c for c in report["changes"] if c["key"] == "broken")
    assert broken["action"] == "error" and "ghost" in broken["error"]

    org_emulator.reset()
    applied = dtchat(org_emulator, "apply", str(tmp_path), "--auto-approve", api=api)
    assert applied.exit_code == 1, applied.output
    creates = org_emulator.calls_to(CREATE[api])
    assert len(creates) == 1 and "ghost" not in json.dumps(creates[0].body)  # only `fine` was created
    assert set(state_of(tmp_path / "dtchat.state.json")) == {"fine"}
    assert all(c.errcode in (0, None) for c in writes(org_emulator))  # nothing refused half-way (no 60121)


def test_an_update_adding_an_unknown_id_writes_nothing_to_that_chat_not_even_its_valid_members(org_emulator, tmp_path):
    chatid = org_emulator.seed_chat("Team", "alice", ["alice", "bob"])
    other = org_emulator.seed_chat("Other", "alice", ["alice"])
    write_config(
        tmp_path,
        {
            "team": {"name": "Team", "owner": "alice", "members": ["bob", "carol", "ghost"], "chatid": chatid},
            "other": {"name": "Other", "owner": "alice", "members": ["erin"], "chatid": other},
        },
    )
    applied = dtchat(org_emulator, "apply", str(tmp_path), "--auto-approve", api="v1")
    assert applied.exit_code == 1
    assert "ghost" in chat_line(applied.output, "team")
    assert sorted(org_emulator.chat(chatid)["useridlist"]) == ["alice", "bob"]  # carol was not added either
    assert sorted(org_emulator.chat(other)["useridlist"]) == ["alice", "erin"]  # the other chat proceeded
    assert [c.body["chatid"] for c in org_emulator.calls_to(UPDATE["v1"])] == [other]


def test_only_ids_the_plan_would_add_or_make_owner_are_looked_up_once_each(org_emulator, tmp_path):
    chatid = org_emulator.seed_chat("Team", "alice", ["alice", "bob"])
    write_config(
        tmp_path,
        {
            # bob is in the live chat (not asked); erin becomes owner and is added (asked once)
            "team": {"name": "Team", "owner": "erin", "members": ["alice", "bob", "carol"], "chatid": chatid},
            # carol, erin again: one call per distinct id per run
            "new1": {"name": "New 1", "owner": "carol", "members": ["erin"]},
            # alice, bob come from {dept: 100}: the directory named them, no need to ask
            "new2": {"name": "New 2", "owner": "alice", "members": [{"dept": 100}, "dave"]},
        },
    )
    result = dtchat(org_emulator, "plan", str(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output
    assert sorted(looked_up(org_emulator)) == ["carol", "dave", "erin"]  # dave has not joined: found all the same
    assert all(c.errcode == 0 for c in org_emulator.calls_to(USER_GET))
    report = json.loads(result.stdout)
    assert {c["key"]: c["action"] for c in report["changes"]} == {"new1": "create", "new2": "create", "team": "update"}


def test_a_chat_in_sync_or_only_removing_people_costs_no_lookup(org_emulator, tmp_path):
    synced = org_emulator.seed_chat("Synced", "alice", ["alice", "bob"])
    shrink = org_emulator.seed_chat("Shrink", "alice", ["alice", "bob", "carol"])
    write_config(
        tmp_path,
        {
            "synced": {"name": "Synced", "owner": "alice", "members": ["bob"], "chatid": synced},
            "shrink": {"name": "Shrink", "owner": "bob", "members": ["alice"], "chatid": shrink},
        },
    )
    result = dtchat(org_emulator, "plan", str(tmp_path), "--detailed-exitcode")
    assert result.exit_code == 2, result.output  # shrink changes owner (to a live member) and removes carol
    assert looked_up(org_emulator) == []


def test_a_leaver_named_in_the_yaml_is_an_error_at_the_next_plan(org_emulator, tmp_path):
    write_config(tmp_path, {"team": {"name": "Team", "owner": "alice", "members": ["erin"]}})
    assert dtchat(org_emulator, "plan", str(tmp_path)).exit_code == 0
    org_emulator.remove_user("erin")
    result = dtchat(org_emulator, "plan", str(tmp_path))
    assert result.exit_code == 1 and "erin" in chat_line(result.output, "team")


def test_an_unknown_new_owner_is_named(org_emulator, tmp_path):
    chatid = org_emulator.seed_chat("Team", "alice", ["alice", "bob"])
    write_config(tmp_path, {"team": {"name": "Team", "owner": "nobody", "members": ["alice", "bob"], "chatid": chatid}})
    result = dtchat(org_emulator, "apply", str(tmp_path), "--auto-approve", "--format", "json")
    assert result.exit_code == 1
    team = json.loads(result.stdout)["chats"][0]
    assert team["ok"] is False and "unknown user id nobody" in team["error"]
    assert writes(org_emulator) == []


def test_several_unknown_ids_are_all_named_in_one_line(org_emulator, tmp_path):
    write_config(tmp_path, {"team": {"name": "Team", "owner": "zed", "members": ["alice", "yan", "xi"]}})
    result = dtchat(org_emulator, "plan", str(tmp_path))
    line = chat_line(result.output, "team")
    assert "unknown user ids xi, yan, zed" in line and "alice" not in line


def test_lookups_are_exempt_and_counted_as_such_and_a_budget_does_not_count_them(org_emulator, tmp_path):
    write_config(
        tmp_path,
        {f"c{i}": {"name": f"C{i}", "owner": "alice", "members": ["bob", "carol", "erin"]} for i in range(5)},
    )
    result = dtchat(org_emulator, "--budget", "0", "plan", str(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output  # nothing to read; the lookups are not metered
    report = json.loads(result.stdout)
    assert sorted(looked_up(org_emulator)) == ["alice", "bob", "carol", "erin"]  # 4 distinct ids over 5 chats
    assert report["api_calls"]["metered"] == 0
    tokens = len(org_emulator.calls_to("/v1.0/oauth2/accessToken")) + len(org_emulator.calls_to("/gettoken"))
    assert report["api_calls"]["exempt"] == 4 + tokens
    assert org_emulator.meter()["metered"] == 0


def test_without_an_org_the_emulator_finds_any_id_as_its_chats_accept_any(emulator, tmp_path):
    write_config(tmp_path, {"team": {"name": "Team", "owner": "x", "members": ["made-up", "y"]}})
    result = dtchat(emulator, "apply", str(tmp_path), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert sorted(looked_up(emulator)) == ["made-up", "x", "y"]


def test_with_a_fixed_users_list_user_get_agrees_with_create(tmp_path):
    with EmulatorServer(host="127.0.0.1", port=0, app_key=APP_KEY, app_secret=APP_SECRET, users=["x", "y"]) as srv:
        write_config(
            tmp_path, {"a": {"name": "A", "owner": "x", "members": ["ghost"]}, "b": {"name": "B", "owner": "y"}}
        )
        result = dtchat(srv, "apply", str(tmp_path), "--auto-approve")
        assert result.exit_code == 1
        assert "ghost" in chat_line(result.output, "a")
        assert len(srv.calls_to("/chat/create")) == 1 and set(state_of(tmp_path / "dtchat.state.json")) == {"b"}


def test_drift_reports_the_missing_members_and_does_not_look_them_up(org_emulator, tmp_path):
    chatid = org_emulator.seed_chat("Team", "alice", ["alice", "bob"])
    write_config(tmp_path, {"team": {"name": "Team", "owner": "alice", "members": ["bob", "ghost"], "chatid": chatid}})
    report = json.loads(dtchat(org_emulator, "drift", str(tmp_path), "--format", "json").stdout)
    assert report["chats"][0]["status"] == "drifted" and report["chats"][0]["members_missing"] == ["ghost"]
    assert looked_up(org_emulator) == []


# ---------------------------------------------------------------------------- a lookup that fails


def test_a_lookup_that_stays_busy_is_an_error_for_that_chat_naming_the_id_and_the_reason(org_emulator, tmp_path):
    org_emulator.faults.fail_lookups = {"user:erin": -1}
    write_config(
        tmp_path,
        {
            "a": {"name": "A", "owner": "alice", "members": ["erin"]},
            "b": {"name": "B", "owner": "alice", "members": ["bob"]},
        },
    )
    result = dtchat(org_emulator, "apply", str(tmp_path), "--auto-approve", "--format", "json")
    assert result.exit_code == 1
    chats = {c["key"]: c for c in json.loads(result.stdout)["chats"]}
    assert chats["a"]["ok"] is False and chats["b"]["ok"] is True
    assert "cannot check that user id erin exists" in chats["a"]["error"] and "-1" in chats["a"]["error"]
    assert len(looked_up(org_emulator)) > 3  # busy is retried before it counts as failed
    assert set(state_of(tmp_path / "dtchat.state.json")) == {"b"}


def test_a_burst_of_lookups_survives_tokens_that_die_under_it(emulator, tmp_path):
    """Every token dies after 3 calls: lookups racing for a fresh one are asked again, none fails."""
    emulator.faults.token_uses = 3
    write_config(tmp_path, {f"c{i}": {"name": f"C{i}", "owner": "x", "members": users(40, f"m{i}-")} for i in range(2)})
    result = dtchat(emulator, "plan", str(tmp_path), "--parallelism", "16")
    assert result.exit_code == 0, result.output
    assert "retry with a new token" in result.stderr
    assert len({c.body["userid"] for c in emulator.calls_to(USER_GET) if c.errcode == 0}) == 81


def test_a_missing_permission_is_one_line_naming_it_and_never_passes(org_emulator, tmp_path):
    org_emulator.faults.no_permission = {USER_GET}
    write_config(tmp_path, {"a": {"name": "A", "owner": "alice", "members": ["erin"]}})
    result = dtchat(org_emulator, "plan", str(tmp_path))
    assert result.exit_code == 1
    line = chat_line(result.output, "a")
    assert "erin" in line and "qyapi_get_member" in line and "developer console" in line
    assert writes(org_emulator) == []


def test_a_lookup_answered_with_a_string_errcode_still_means_unknown(org_emulator, tmp_path):
    org_emulator.faults.string_errcode = True
    write_config(tmp_path, {"a": {"name": "A", "owner": "alice", "members": ["ghost"]}})
    result = dtchat(org_emulator, "plan", str(tmp_path))
    assert result.exit_code == 1 and "unknown user id ghost" in chat_line(result.output, "a")


def test_an_answer_about_another_user_is_never_taken_for_yes(tmp_path):
    """A success that describes someone else (or no one) is malformed: the chat is an error, not a create."""
    answers = {
        "/gettoken": {"errcode": 0, "access_token": "t", "expires_in": 7200},
        USER_GET: {"errcode": 0, "errmsg": "ok", "result": {"userid": "alice", "name": "Alice"}},
    }

    def reply(handler):
        path = handler.path.split("?")[0]
        return 200, {"Content-Type": "application/json"}, json.dumps(answers.get(path, {"errcode": 404})).encode()

    server = LocalServer(reply)
    try:
        write_config(tmp_path, {"a": {"name": "A", "owner": "bob", "members": []}})
        result = dtchat(server, "plan", str(tmp_path))
    finally:
        server.stop()
    assert result.exit_code == 1
    assert "another user" in chat_line(result.output, "a")
    assert not any("/chat/create" in line for line in server.lines)


# ---------------------------------------------------------------------------- the emulator's route


def test_the_emulator_answers_user_get_from_its_org(org_emulator):
    with RawApi(org_emulator, APP_KEY, APP_SECRET) as api:
        found = api.post_json(USER_GET, {"userid": "alice", "language": "zh_CN"})
        assert found["errcode"] == 0 and found["errmsg"] == "ok" and found["request_id"]
        assert found["result"]["userid"] == "alice" and found["result"]["name"] == "Alice"
        assert found["result"]["dept_id_list"] == [100] and found["result"]["active"] is True
        invited = api.post_json(USER_GET, {"userid": "dave"})
        assert invited["errcode"] == 0 and invited["result"]["active"] is False
        assert api.post_json(USER_GET, {"userid": "ghost"})["errcode"] == 33012
        for bad in ({}, {"userid": ""}, {"userid": 7}, {"userid": ["alice"]}):
            assert api.post_json(USER_GET, bad)["errcode"] == 400002
        assert api.get(USER_GET, userid="alice").json()["errcode"] == 43002
        org_emulator.faults.fail_lookups = {"user:bob": 50002}
        assert api.post_json(USER_GET, {"userid": "bob"})["errcode"] == 50002
        org_emulator.faults.no_permission = {USER_GET}
        denied = api.post_json(USER_GET, {"userid": "alice"})
        assert denied["errcode"] == 88 and denied["sub_code"] == "60011" and "qyapi_get_member" in denied["sub_msg"]
    assert org_emulator.meter()["metered"] == 0 and org_emulator.meter()["exempt"] >= 8


def test_the_emulator_without_an_org_finds_any_id_and_with_a_users_list_those_only(emulator):
    with RawApi(emulator, APP_KEY, APP_SECRET) as api:
        assert api.post_json(USER_GET, {"userid": "whoever"})["result"]["userid"] == "whoever"
        assert api.post_json(LISTID, {"dept_id": 1})["errcode"] == 88  # the rest of the directory needs an org
    with EmulatorServer(users=["alice"]) as server, RawApi(server) as api:
        assert api.post_json(USER_GET, {"userid": "alice"})["errcode"] == 0
        assert api.post_json(USER_GET, {"userid": "bob"})["errcode"] == 33012
        assert api.post("/chat/create", {"name": "n", "owner": "bob", "useridlist": ["bob"]}).json()["errcode"] == 60121


# ---------------------------------------------------------------------------- the pieces


def test_contacts_user_exists_over_http(org_emulator, make_client):
    client = make_client(api_base=org_emulator.url)
    assert client.directory.user_exists("alice") is True
    assert client.directory.user_exists("ghost") is False
    org_emulator.faults.fail_lookups = {"user:bob": 60003}
    with pytest.raises(NotFoundError):
        client.directory.user_exists("bob")  # not found, but not the "no such user" answer: cannot tell


def test_users_to_check_and_with_errors_are_pure():
    backend = backend_for("v1")
    live = LiveChat(chatid="c1", name="T", owner="alice", members=("alice", "bob"), settings={})
    team = DesiredChat(key="team", name="T", owner="carol", members=("alice", "bob", "carol", "dan"))
    new = DesiredChat(key="new", name="N", owner="erin", members=("erin", "bob"))
    same = DesiredChat(key="same", name="T", owner="alice", members=("alice", "bob"))
    plan = make_plan([team, new], {}, {}, backend=backend)
    assert users_to_check(plan) == {"new": ("bob", "erin"), "team": ("alice", "bob", "carol", "dan")}
    update = plan_update(team, live, backend=backend)
    assert update.add == ("carol", "dan")
    noop = plan_update(same, live, backend=backend)
    assert noop.action is Action.NOOP
    create = plan_create(new)
    plan = Plan(changes=(update, create, noop), writes=len(backend.calls(update)) + len(backend.calls(create)))
    assert users_to_check(plan, known={"dan"}) == {"new": ("bob", "erin"), "team": ("carol",)}
    refused = with_errors(plan, {"team": "unknown user id carol"}, backend=backend)
    assert refused.writes == len(backend.calls(create)) and refused.of(Action.ERROR)[0].error == "unknown user id carol"
    assert refused.of(Action.ERROR)[0].fingerprint == update.fingerprint
    assert with_errors(plan, {}, backend=backend) is plan


def test_unknown_user_errors_says_unknown_and_failed_apart():
    answers = {"a": True, "ghost": False, "b": ThrottledError("/topapi/v2/user/get", "busy", -1)}
    errors = unknown_user_errors({"x": ["a"], "y": ["ghost", "a"], "z": ["b", "ghost"], "w": ["nobody-asked"]}, answers)
    assert set(errors) == {"y", "z", "w"}
    assert errors["y"].startswith("unknown user id ghost:")
    assert "unknown user id ghost" in errors["z"] and "cannot check that user id b exists" in errors["z"]
    assert "nobody-asked" in errors["w"] and "not looked up" in errors["w"]


def test_check_users_asks_once_per_id_and_raises_fatal_errors():
    directory = FakeDirectory(users={"a", "b"})
    assert check_users(directory, ["a", "b", "c", "a"], parallelism=4) == {"a": True, "b": True, "c": False}
    assert sorted(directory.calls) == [("user", "a"), ("user", "b"), ("user", "c")]
    directory.fail_users["d"] = QuotaExhaustedError("/topapi/v2/user/get", "quota")
    with pytest.raises(QuotaExhaustedError):
        check_users(directory, ["d"])


def test_directory_users_skips_failed_lookups():
    directory = FakeDirectory(departments={1: ["a", "b"]}, roles={})
    lookups = lookup_selectors(directory, [Selector("dept", 1), Selector("role", 9)])
    assert directory_users(lookups) == {"a", "b"}


def test_the_manager_checks_through_the_directory_protocol(tmp_path: Path):
    write_config(
        tmp_path, {"a": {"name": "A", "owner": "x", "members": ["y", "ghost"]}, "b": {"name": "B", "owner": "x"}}
    )
    directory = FakeDirectory(users={"x", "y"})
    state = StateFile(tmp_path / "dtchat.state.json")
    plan = Manager(FakeBackend(), directory).plan(load_config([tmp_path]), state)
    actions = {c.key: (c.action, c.error) for c in plan.changes}
    assert actions["a"][0] is Action.ERROR and "ghost" in actions["a"][1]
    assert actions["b"] == (Action.CREATE, None)
    assert plan.writes == 1
    assert sorted(directory.calls) == [("user", "ghost"), ("user", "x"), ("user", "y")]
