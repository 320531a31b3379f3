"""Packing: the fewest calls within the API's rules, in both generations, proven against the emulator's rules."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.backends import backend_for
from reconciler.backends.packing import IDS_PER_CALL, minimum_calls, steps_for
from reconciler.emulator import EmulatorServer
from reconciler.model import DesiredChat
from reconciler.plan import Action, ChatChange, SettingChange
from reconciler.planner import plan_create, plan_update
from reconciler.rules import MEMBER_CAP

from helpers import CREATE, UPDATE
from wire import Wire

LEGACY, V1 = backend_for("legacy"), backend_for("v1")
ALL_SIX = {
    "muted": False,
    "searchable": False,
    "join_validation": False,
    "mention_all": "everyone",
    "management": "everyone",
    "show_history": False,
}


def users(n, prefix="u"):
    return tuple(f"{prefix}{i:04d}" for i in range(n))


def update(add=(), remove=(), owner=None, live_count=100, settings=(), live_settings=ALL_SIX):
    return ChatChange(
        "k",
        Action.UPDATE,
        chatid="chat1",
        add=tuple(add),
        remove=tuple(remove),
        owner=owner,
        live_count=live_count,
        settings=settings,
        live_settings=live_settings,
    )


@pytest.mark.parametrize("api", ["legacy", "v1"])
def test_create_300_is_one_create_then_seven_updates(api):
    chat = DesiredChat("k", "Big", "u0000", users(300))
    calls = backend_for(api).calls(plan_create(chat))
    assert [c.path for c in calls] == [CREATE[api]] + [UPDATE[api]] * 7
    assert calls[0].body["useridlist"][0] == "u0000" and len(calls[0].body["useridlist"]) == IDS_PER_CALL
    assert all(len(c.body["add_useridlist"]) <= IDS_PER_CALL for c in calls[1:])
    assert all(c.needs == {"chatid": "chatid"} for c in calls[1:])  # the new chat's id goes in first
    assert len(calls) == minimum_calls(plan_create(chat)) == 8


def test_churn_plus_200_minus_299_packs_40_and_40():
    calls = steps_for(update(add=users(200, "a"), remove=users(299, "r"), live_count=600))
    assert len(calls) == 8 == minimum_calls(update(add=users(200, "a"), remove=users(299, "r")))
    assert sum(len(c.add) for c in calls) == 200
    assert sum(len(c.remove) for c in calls) == 299


@pytest.mark.parametrize("backend", [LEGACY, V1], ids=["legacy", "v1"])
def test_members_only_update_carries_no_setting_fields(backend):
    (call,) = backend.calls(update(add=["x"]))
    assert set(call.body) == {"chatid", "add_useridlist"}


def test_setting_and_name_ride_on_the_first_member_call():
    change = ChatChange(
        "k",
        Action.UPDATE,
        chatid="c",
        name=("a", "b"),
        add=("x",),
        settings=(SettingChange("muted", False, True),),
        live_count=3,
        live_settings={**ALL_SIX, "searchable": True, "management": "owner"},
    )
    (legacy,) = LEGACY.calls(change)
    assert legacy.body == {"chatid": "c", "name": "b", "chatBannedType": 1, "add_useridlist": ["x"]}
    (v1,) = V1.calls(change)
    # v1.0: every setting restated (the changed one desired, the rest live), nested
    assert v1.body == {
        "chatid": "c",
        "name": "b",
        "managementOptions": {
            "chatBannedType": 1,
            "searchable": 1,
            "validationType": 0,
            "mentionAllAuthority": 0,
            "managementType": 1,
            "showHistoryType": 0,
        },
        "add_useridlist": ["x"],
    }


def test_v1_refuses_a_setting_change_when_a_live_setting_is_unknown():
    change = update(settings=(SettingChange("muted", False, True),), live_settings={"muted": False})
    assert LEGACY.calls(change)[0].body == {"chatid": "chat1", "chatBannedType": 1}
    with pytest.raises(Exception, match="did not report searchable, join_validation"):
        V1.calls(change)


def test_v1_create_nests_only_the_declared_settings():
    chat = DesiredChat("k", "n", "alice", ("alice", "bob"), settings={"muted": True, "show_history": True})
    (call,) = V1.calls(plan_create(chat))
    assert call.body == {
        "name": "n",
        "owner": "alice",
        "useridlist": ["alice", "bob"],
        "managementOptions": {"chatBannedType": 1, "showHistoryType": 1},
    }
    (bare,) = V1.calls(plan_create(DesiredChat("k", "n", "alice", ("alice",))))
    assert "managementOptions" not in bare.body


@pytest.mark.parametrize("backend", [LEGACY, V1], ids=["legacy", "v1"])
def test_owner_transfer_to_non_member_who_replaces_the_old_owner_takes_three_ordered_calls(backend):
    calls = backend.calls(update(add=["new"], remove=["old"], owner=("old", "new")))
    assert [c.body for c in calls] == [
        {"chatid": "chat1", "add_useridlist": ["new"]},
        {"chatid": "chat1", "owner": "new"},
        {"chatid": "chat1", "del_useridlist": ["old"]},
    ]


def test_full_chat_removes_before_it_adds():
    steps = steps_for(update(add=users(80, "a"), remove=users(80, "r"), live_count=MEMBER_CAP))
    count = MEMBER_CAP
    for step in steps:
        count += len(step.add) - len(step.remove)
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
    searchable = draw(st.sampled_from([0, 1]))
    return live_members, live_owner, want, owner, policy, muted, searchable


@pytest.mark.parametrize("api", ["legacy", "v1"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_any_update_converges_under_the_emulators_rules_with_the_minimum_calls(server, api, scenario):
    live_members, live_owner, want, owner, policy, muted, searchable = scenario
    chatid = server.seed_chat("Chat", live_owner, live_members, searchable=searchable, showHistoryType=1)
    with Wire("k", "s", api=api, api_base=server.url, max_qps=0) as wire:
        current = wire.read(chatid)
        settings_decl = {} if muted is None else {"muted": muted}
        chat = DesiredChat("k", "Chat", owner, tuple(want), members_policy=policy, settings=settings_decl)
        backend = wire.backend
        change = plan_update(chat, current, backend=backend)
        calls = backend.calls(change)
        assert len(calls) == minimum_calls(change)
        for call in calls:
            backend.send(call)
        after = wire.read(chatid)
    expected = set(chat.members) if policy == "exact" else set(chat.members) | set(live_members)
    assert set(after.members) == expected
    assert after.owner == owner
    if muted is not None:
        assert after.settings["muted"] is muted
    # nobody asked to change these: they survive in both generations (v1.0 restates them)
    assert after.settings["searchable"] is bool(searchable) and after.settings["show_history"] is True
