"""An app created today: the v1.0 API end to end, and every v1.0 error class, against the real emulator.

The emulator plays a *new* app (``new_app=True``): the legacy chat writes are refused as DingTalk refuses
them, so whatever converges here converges through ``/v1.0/im/group/*`` alone.
"""

from __future__ import annotations

import json

import pytest

from reconciler.emulator import EmulatorServer

from helpers import APP_KEY, APP_SECRET, CREATE, UPDATE, dtchat, state_of, users, write_config

ALL_ON = {
    "muted": True,
    "searchable": True,
    "join_validation": True,
    "mention_all": "owner",
    "management": "owner",
    "show_history": True,
}
ALL_OFF = {
    "muted": False,
    "searchable": False,
    "join_validation": False,
    "mention_all": "everyone",
    "management": "everyone",
    "show_history": False,
}
API_FIELDS = {
    "muted": "chatBannedType",
    "searchable": "searchable",
    "join_validation": "validationType",
    "mention_all": "mentionAllAuthority",
    "management": "managementType",
    "show_history": "showHistoryType",
}


@pytest.fixture
def new_app():
    """An emulator for an app created after DingTalk closed the legacy chat writes."""
    with EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, new_app=True) as server:
        yield server


def v1(server, *args: str, **kwargs):
    return dtchat(server, *args, api="v1", **kwargs)


def test_a_new_app_creates_and_converges_a_1000_member_chat_through_v1(new_app, tmp_path):
    folder = tmp_path / "chats"
    members = list(users(999))
    chats = {"all-hands": {"name": "全员群", "owner": "boss", "members": members, "settings": ALL_ON}}
    write_config(folder, chats)
    applied = v1(new_app, "apply", str(folder), "--auto-approve")
    assert applied.exit_code == 0, applied.output
    chatid = state_of(folder / "dtchat.state.json")["all-hands"]
    live = new_app.chat(chatid)
    assert len(live["useridlist"]) == 1000 and live["owner"] == "boss" and live["name"] == "全员群"
    assert {live[API_FIELDS[k]] for k in ALL_ON} == {1}
    creates = new_app.calls_to(CREATE["v1"])
    assert len(creates) == 1 and len(creates[0].body["useridlist"]) == 40  # then 24 updates of 40
    assert len(new_app.calls_to(UPDATE["v1"])) == 24
    assert all(c.errcode is None for c in new_app.calls) or not new_app.calls_to(CREATE["legacy"])
    state = json.loads((folder / "dtchat.state.json").read_text())["chats"]["all-hands"]
    assert state["open_conversation_id"] == new_app.open_conversation_id(chatid)  # from the create's answer

    # owner, name, members and every setting change at once
    chats["all-hands"].update(
        name="全员大群", owner="u0001", members=[*members[1:950], *users(50, "n")], settings=ALL_OFF
    )
    write_config(folder, chats)
    changed = v1(new_app, "apply", str(folder), "--auto-approve", "--force")
    assert changed.exit_code == 0, changed.output
    live = new_app.chat(chatid)
    assert live["name"] == "全员大群" and live["owner"] == "u0001"
    assert sorted(live["useridlist"]) == sorted({*members[1:950], *users(50, "n"), "u0001"})
    assert {live[API_FIELDS[k]] for k in ALL_OFF} == {0}
    again = v1(new_app, "plan", str(folder), "--detailed-exitcode")
    assert again.exit_code == 0 and "No changes" in again.stdout, again.output
    assert new_app.calls_to(CREATE["legacy"]) == [] and new_app.calls_to(UPDATE["legacy"]) == []


def test_the_legacy_api_on_a_new_app_fails_in_one_line_that_names_api_v1(new_app, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, {f"team-{i}": {"name": f"Team {i}", "owner": "x", "members": ["y"]} for i in range(6)})
    plan = dtchat(new_app, "plan", str(folder), api="legacy")
    assert plan.exit_code == 0  # reading stays open to new apps
    result = dtchat(new_app, "apply", str(folder), "--auto-approve", api="legacy")
    assert result.exit_code == 1
    naming = [line for line in result.stderr.splitlines() if "--api v1" in line]
    assert len(naming) == 1, result.stderr  # the refusal once, however many creates were in flight
    assert "legacy chat API refuses this app" in naming[0]
    assert new_app.chats() == {}  # zero chats created
    state = json.loads((folder / "dtchat.state.json").read_text())["chats"]
    assert state == {}  # the write-ahead records were cleared: a definite refusal
    retry = v1(new_app, "apply", str(folder), "--auto-approve")  # and the way out works
    assert retry.exit_code == 0 and len(new_app.chats()) == 6


def test_an_update_that_changes_no_setting_carries_no_management_options(new_app, tmp_path):
    chatid = new_app.seed_chat("Ops", "bob", ["bob", "carol"], chatBannedType=1, showHistoryType=1)
    folder = tmp_path / "chats"
    write_config(folder, {"ops": {"name": "Ops", "owner": "bob", "members": ["carol", "dave"], "chatid": chatid}})
    assert v1(new_app, "apply", str(folder), "--auto-approve").exit_code == 0
    (call,) = new_app.calls_to(UPDATE["v1"])
    assert call.body == {"chatid": chatid, "add_useridlist": ["dave"]}
    live = new_app.chat(chatid)
    assert (live["chatBannedType"], live["showHistoryType"]) == (1, 1)  # nobody asked: untouched


def test_a_setting_change_restates_the_undeclared_ones_at_their_live_values(new_app, tmp_path):
    chatid = new_app.seed_chat("Ops", "bob", ["bob"], searchable=1, showHistoryType=1, managementType=1)
    folder = tmp_path / "chats"
    write_config(folder, {"ops": {"name": "Ops", "owner": "bob", "chatid": chatid, "settings": {"muted": True}}})
    assert v1(new_app, "apply", str(folder), "--auto-approve").exit_code == 0
    (call,) = new_app.calls_to(UPDATE["v1"])
    assert call.body["managementOptions"] == {
        "chatBannedType": 1,
        "searchable": 1,
        "validationType": 0,
        "mentionAllAuthority": 0,
        "managementType": 1,
        "showHistoryType": 1,
    }
    live = new_app.chat(chatid)  # the emulator resets anything managementOptions leaves out: nothing was
    assert (live["chatBannedType"], live["searchable"], live["managementType"], live["showHistoryType"]) == (1, 1, 1, 1)


# -- every v1.0 error class, staged by the server -----------------------------------------------------


def many(folder, n=5, size=90):
    write_config(
        folder, {f"team-{i}": {"name": f"Team {i}", "owner": f"lead{i}", "members": users(size)} for i in range(n)}
    )


def test_throttling_feeds_the_adaptive_rate_and_everything_converges(new_app, tmp_path):
    folder = tmp_path / "c"
    many(folder, n=12, size=8)  # many small chats: many writes at once, few user ids for the plan to look up
    new_app.faults.qps_limit = 5
    result = dtchat(new_app, "--max-qps", "60", "apply", str(folder), "--auto-approve", api="v1")
    assert result.exit_code == 0, result.output
    codes = {c.code for c in new_app.calls if c.code}
    assert "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi" in codes
    assert "pacing this API at" in result.stderr  # the rate was lowered
    assert len(new_app.chats()) == 12


def test_a_rejected_token_is_refreshed_once(new_app, tmp_path):
    folder = tmp_path / "c"
    many(folder, n=2, size=60)  # a create and an update each: four calls on one token
    new_app.faults.token_uses = 3  # every token stops working after three calls
    result = v1(new_app, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert "InvalidAuthentication" in result.stderr and "retry with a new token" in result.stderr
    assert len(new_app.chats()) == 2


def test_system_error_on_update_is_retried(new_app, tmp_path):
    chatid = new_app.seed_chat("Ops", "bob", ["bob"])
    folder = tmp_path / "c"
    write_config(folder, {"ops": {"name": "Ops", "owner": "bob", "members": list(users(100)), "chatid": chatid}})
    new_app.faults.update({"http500_every": 2, "fault_endpoints": [UPDATE["v1"]]})
    result = v1(new_app, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 0, result.output
    assert any(c.code == "system.error" for c in new_app.calls_to(UPDATE["v1"]))
    assert len(new_app.chat(chatid)["useridlist"]) == 101


def test_system_error_on_create_is_an_unknown_outcome_never_repeated(new_app, tmp_path):
    folder = tmp_path / "c"
    write_config(folder, {"ops": {"name": "Ops", "owner": "bob"}})
    new_app.faults.update({"http500_every": 1, "fault_endpoints": [CREATE["v1"]]})
    result = v1(new_app, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 1
    assert len(new_app.calls_to(CREATE["v1"])) == 1  # never sent twice
    assert "outcome unknown" in result.stderr and "dtchat import ops CHATID" in result.stderr
    state = json.loads((folder / "dtchat.state.json").read_text())["chats"]
    assert state["ops"]["pending_create"] is True  # until a person settles it
    new_app.faults.update({"http500_every": 0})
    again = v1(new_app, "apply", str(folder), "--auto-approve")
    assert again.exit_code == 1 and "may have succeeded" in again.output and len(new_app.calls_to(CREATE["v1"])) == 1


def test_quota_used_up_stops_the_run_with_one_line(new_app, tmp_path):
    folder = tmp_path / "c"
    many(folder, n=6, size=3)
    new_app.faults.monthly_quota = 2
    result = dtchat(new_app, "apply", str(folder), "--auto-approve", "--parallelism", "1", api="v1")
    assert result.exit_code == 1
    quota = [line for line in result.stderr.splitlines() if "ApiCountLimitForOrg" in line]
    assert len(quota) == 1 and "monthly DingTalk API quota is used up" in quota[0]
    assert len(new_app.chats()) == 2  # and nothing after it was even tried
    assert "Not started: 3 chats" in result.stderr
    assert len(new_app.calls_to(CREATE["v1"])) == 3


def test_a_missing_permission_names_qyapi_chat_manage(new_app, tmp_path):
    folder = tmp_path / "c"
    write_config(folder, {"ops": {"name": "Ops", "owner": "bob"}})
    new_app.faults.update({"no_permission": [CREATE["v1"]]})
    result = v1(new_app, "apply", str(folder), "--auto-approve")
    assert result.exit_code == 1
    assert "AccessTokenPermissionDenied" in result.stderr and "qyapi_chat_manage" in result.stderr
    assert new_app.chats() == {}
    assert json.loads((folder / "dtchat.state.json").read_text())["chats"] == {}  # a definite refusal


def test_a_permission_check_failure_on_update_names_qyapi_chat_manage_and_the_visible_range(new_app, tmp_path):
    """v1.0 create/update answer 400 `permession.checkFailed` (sic) for a missing permission or an owner outside
    the app's visible range: the line must say what to grant."""
    folder = tmp_path / "c"
    write_config(folder, {"ops": {"name": "Ops", "owner": "bob"}})
    assert v1(new_app, "apply", str(folder), "--auto-approve").exit_code == 0
    chatid = json.loads((folder / "dtchat.state.json").read_text())["chats"]["ops"]["chatid"]
    write_config(folder, {"ops": {"name": "Ops 2", "owner": "bob"}})

    def refuse_writes_once_read(call):  # the read is allowed (qyapi_chat_read); the update is refused
        if call.endpoint == "/chat/get":
            new_app.faults.update({"fail_chatids": {chatid: "400:permession.checkFailed"}})

    new_app.before_reply = refuse_writes_once_read
    result = v1(new_app, "apply", str(folder), "--auto-approve", "--refresh", "all")
    assert result.exit_code == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("✗ ops: ")]
    assert "permession.checkFailed" in line and "qyapi_chat_manage" in line and "可见范围" in line
