"""Batching: the fewest calls within the API's rules, proven against the emulator's strict rules."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.batching import CREATE, UPDATE, calls_for, minimum_calls
from reconciler.dingtalk import DingTalkClient
from reconciler.emulator import EmulatorServer
from reconciler.model import DesiredChat, LiveChat
from reconciler.plan import Action, ChatChange
from reconciler.planner import plan_create, plan_update
from reconciler.rules import BATCH_SIZE, MEMBER_CAP


def users(n, prefix="u"):
    return tuple(f"{prefix}{i:04d}" for i in range(n))


def update(add=(), remove=(), owner=None, live_count=100, settings=()):
    return ChatChange(
        "k",
        Action.UPDATE,
        chatid="chat1",
        add=tuple(add),
        remove=tuple(remove),
        owner=owner,
        live_count=live_count,
        settings=settings,
    )


def test_create_300_is_one_create_then_seven_updates():
    chat = DesiredChat("k", "Big", "u0000", users(300))
    calls = calls_for(plan_create(chat))
    assert [c.endpoint for c in calls] == [CREATE] + [UPDATE] * 7
    assert calls[0].body["useridlist"][0] == "u0000" and len(calls[0].body["useridlist"]) == BATCH_SIZE
    assert all(len(c.body["add_useridlist"]) <= BATCH_SIZE for c in calls[1:])
    assert len(calls) == minimum_calls(plan_create(chat)) == 8


def test_churn_plus_200_minus_299_packs_40_and_40():
    calls = calls_for(update(add=users(200, "a"), remove=users(299, "r"), live_count=600))
    assert len(calls) == 8 == minimum_calls(update(add=users(200, "a"), remove=users(299, "r")))
    assert sum(len(c.body.get("add_useridlist", ())) for c in calls) == 200
    assert sum(len(c.body.get("del_useridlist", ())) for c in calls) == 299


def test_members_only_update_carries_no_setting_fields():
    (call,) = calls_for(update(add=["x"]))
    assert set(call.body) == {"chatid", "add_useridlist"}


def test_setting_and_name_ride_on_the_first_member_call():
    from reconciler.plan import SettingChange

    change = ChatChange(
        "k",
        Action.UPDATE,
        chatid="c",
        name=("a", "b"),
        add=("x",),
        settings=(SettingChange("muted", False, True),),
        live_count=3,
    )
    (call,) = calls_for(change)
    assert call.body == {"chatid": "c", "name": "b", "chatBannedType": 1, "add_useridlist": ["x"]}


def test_owner_transfer_to_non_member_who_replaces_the_old_owner_takes_three_ordered_calls():
    calls = calls_for(update(add=["new"], remove=["old"], owner=("old", "new")))
    assert [c.body for c in calls] == [
        {"chatid": "chat1", "add_useridlist": ["new"]},
        {"chatid": "chat1", "owner": "new"},
        {"chatid": "chat1", "del_useridlist": ["old"]},
    ]


def test_full_chat_removes_before_it_adds():
    calls = calls_for(update(add=users(80, "a"), remove=users(80, "r"), live_count=MEMBER_CAP))
    count = MEMBER_CAP
    for c in calls:
        count += len(c.body.get("add_useridlist", ())) - len(c.body.get("del_useridlist", ()))
        assert count <= MEMBER_CAP


# -- property: any change, applied over HTTP to the strict emulator, converges -------------


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(port=0) as srv:
        yield srv


pool = [f"p{i:03d}" for i in range(160)]


@st.composite
def scenarios(draw):
    live_members = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=130, unique=True))
    live_owner = draw(st.sampled_from(live_members))
    want = draw(st.lists(st.sampled_from(pool), min_size=0, max_size=130, unique=True))
    owner = draw(st.sampled_from(pool))
    policy = draw(st.sampled_from(["exact", "additive"]))
    muted = draw(st.sampled_from([None, True, False]))
    return live_members, live_owner, want, owner, policy, muted


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenarios())
def test_any_update_converges_under_the_emulators_rules_with_the_minimum_calls(server, scenario):
    live_members, live_owner, want, owner, policy, muted = scenario
    chatid = server.seed_chat("Chat", live_owner, live_members)
    with DingTalkClient("k", "s", api_base=server.url, max_qps=0) as client:
        current = LiveChat.from_api(client.get_chat(chatid))
        settings_decl = {} if muted is None else {"muted": muted}
        chat = DesiredChat("k", "Chat", owner, tuple(want), members_policy=policy, settings=settings_decl)
        change = plan_update(chat, current)
        calls = calls_for(change)
        assert len(calls) == minimum_calls(change)
        for call in calls:
            client.write(call.endpoint, call.body)
        after = LiveChat.from_api(client.get_chat(chatid))
    expected = set(chat.members) if policy == "exact" else set(chat.members) | set(live_members)
    assert set(after.members) == expected
    assert after.owner == owner
    if muted is not None:
        assert after.settings["muted"] is muted
