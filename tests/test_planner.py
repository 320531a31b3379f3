"""The planner is pure: these tests feed it values and read the Plan."""

from __future__ import annotations

from reconciler import planner
from reconciler.model import DesiredChat, LiveChat, ReadFailure
from reconciler.plan import Action, SettingChange
from reconciler.planner import resolve
from reconciler.state import Binding

from fake_backend import FakeBackend


def make_plan(*args, **kwargs):
    """The planner with the in-memory backend (its calls are the API's packing rules)."""
    return planner.make_plan(*args, backend=FakeBackend(), **kwargs)


def desired(
    key="team", members=("alice", "bob"), owner="alice", policy="exact", settings=None, chatid=None, name="Team"
):
    return DesiredChat(
        key=key, name=name, owner=owner, members=members, members_policy=policy, settings=settings or {}, chatid=chatid
    )


def live(chatid="chat1", members=("alice", "bob"), owner="alice", settings=None, name="Team"):
    base = {
        "muted": False,
        "searchable": False,
        "join_validation": False,
        "mention_all": "everyone",
        "management": "everyone",
        "show_history": False,
    }
    base.update(settings or {})
    return LiveChat(chatid=chatid, name=name, owner=owner, members=members, settings=base)


def test_no_chatid_means_create_with_every_member_and_declared_settings_only():
    plan = make_plan([desired(settings={"muted": True})], {}, {})
    (c,) = plan.changes
    assert c.action is Action.CREATE
    assert c.add == ("alice", "bob")
    assert c.settings == (SettingChange("muted", None, True),)
    assert plan.summary() == "Plan: 1 to create, 0 to update, 0 to forget; +2 / -0 members."


def test_in_sync_chat_is_noop():
    plan = make_plan([desired()], {"team": Binding("chat1")}, {"chat1": live()})
    assert [c.action for c in plan.changes] == [Action.NOOP]
    assert not plan.has_changes


def test_members_added_and_removed_exact():
    plan = make_plan([desired(members=("alice", "carol"))], {"team": Binding("chat1")}, {"chat1": live()})
    (c,) = plan.changes
    assert (c.action, c.add, c.remove, c.settings) == (Action.UPDATE, ("carol",), ("bob",), ())


def test_additive_never_removes_and_reports_kept():
    plan = make_plan(
        [desired(members=("alice",), policy="additive")],
        {"team": Binding("chat1")},
        {"chat1": live(members=("alice", "bob", "zed"))},
    )
    (c,) = plan.changes
    assert c.action is Action.NOOP and c.remove == () and c.kept == ("bob", "zed")


def test_undeclared_setting_changed_by_hand_is_left_alone():
    plan = make_plan(
        [desired(settings={"muted": False})], {"team": Binding("chat1")}, {"chat1": live(settings={"searchable": True})}
    )
    assert plan.changes[0].action is Action.NOOP


def test_declared_setting_difference_is_planned():
    plan = make_plan([desired(settings={"mention_all": "owner"})], {"team": Binding("chat1")}, {"chat1": live()})
    assert plan.changes[0].settings == (SettingChange("mention_all", "everyone", "owner"),)


def test_owner_and_name_change():
    plan = make_plan([desired(owner="bob", name="New")], {"team": Binding("chat1")}, {"chat1": live()})
    c = plan.changes[0]
    assert c.owner == ("alice", "bob") and c.name == ("Team", "New")


def test_key_gone_from_yaml_is_an_orphan_that_is_kept_unless_pruned():
    plan = make_plan([], {"old": Binding("chat9")}, {})
    assert [(c.key, c.action, c.chatid) for c in plan.changes] == [("old", Action.ORPHAN, "chat9")]
    assert not plan.has_changes
    pruned = make_plan([], {"old": Binding("chat9")}, {}, prune=True)
    assert [(c.key, c.action, c.chatid) for c in pruned.changes] == [("old", Action.FORGET, "chat9")]


def test_unreadable_chat_is_an_error_for_that_chat_only():
    plan = make_plan(
        [desired("a"), desired("b")],
        {"a": Binding("chat1"), "b": Binding("chat2")},
        {"chat1": ReadFailure("gone"), "chat2": live("chat2")},
    )
    assert [(c.key, c.action) for c in plan.changes] == [("a", Action.ERROR), ("b", Action.NOOP)]
    assert plan.changes[0].error == "gone"


def test_pin_wins_and_disagreement_is_error():
    res = resolve([desired(chatid="chatP")], {})
    assert res.chatids == {"team": "chatP"}
    res = resolve([desired(chatid="chatP")], {"team": Binding("chatQ")})
    assert "team" in res.errors and "chatQ" in res.errors["team"] and "dtchat import team chatP" in res.errors["team"]


def test_pending_create_blocks_a_second_create():
    plan = make_plan([desired()], {"team": Binding(None, pending=True)}, {})
    (c,) = plan.changes
    assert c.action is Action.ERROR and "dtchat import team" in c.error and "dtchat forget team" in c.error


def test_same_chatid_on_two_keys_is_error():
    res = resolve([desired("a", chatid="chat1"), desired("b")], {"b": Binding("chat1")})
    assert set(res.errors) == {"a", "b"} and res.chatids == {}


def test_targets_limit_the_plan_and_order_is_sorted():
    chats = [desired("zeta"), desired("alpha"), desired("mid")]
    plan = make_plan(chats, {"gone": Binding("chat7")}, {})
    assert [c.key for c in plan.changes] == ["alpha", "gone", "mid", "zeta"]
    plan = make_plan(chats, {"gone": Binding("chat7")}, {}, targets={"mid"})
    assert [c.key for c in plan.changes] == ["mid"]


def test_fingerprint_changes_when_live_changes():
    a = make_plan([desired()], {"team": Binding("chat1")}, {"chat1": live()}).changes[0].fingerprint
    b = (
        make_plan([desired()], {"team": Binding("chat1")}, {"chat1": live(members=("alice", "bob", "x"))})
        .changes[0]
        .fingerprint
    )
    assert a and b and a != b
