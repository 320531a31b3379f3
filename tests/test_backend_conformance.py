"""The ChatBackend contract, one suite for both real backends (``legacy`` and ``v1``) against the emulator.

What the engine relies on, whichever generation: ``read`` returns the live chat or a typed error;
``calls`` of a change, sent in order through ``send``, converge the chat and produce the ids the state
records; ``notify_calls`` post through the app's robot; the meter counts what the quota counts; and an
answer that is not the documented shape is never trusted.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from reconciler.backends import (
    CHATID,
    OPEN_CONVERSATION_ID,
    DingTalkError,
    MalformedAnswerError,
    NotFoundError,
    UnreachableError,
)
from reconciler.emulator import EmulatorServer
from reconciler.model import DesiredChat
from reconciler.plan import Action, ChatChange
from reconciler.planner import plan_create, plan_update

from helpers import APP_KEY, APP_SECRET, LocalServer, users
from wire import Wire

APIS = ["legacy", "v1"]


@pytest.fixture(params=APIS)
def wire(request):
    with EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, robot_code="robot-1") as server:
        with Wire(APP_KEY, APP_SECRET, api=request.param, api_base=server.url, max_qps=0, robot_code="robot-1") as w:
            w.server = server
            yield w


def send_all(backend, calls):
    """Send each call in order, filling in what earlier answers produced, as the applier does."""
    known: dict[str, str | None] = {}
    for call in calls:
        known.update(backend.send(call.bound(known)))
    return known


def test_read_returns_the_live_chat(wire):
    chatid = wire.server.seed_chat("值班", "alice", ["alice", "bob"], chatBannedType=1, mentionAllAuthority=1)
    live = wire.backend.read(chatid)
    assert (live.chatid, live.name, live.owner, live.members) == (chatid, "值班", "alice", ("alice", "bob"))
    assert live.settings["muted"] is True and live.settings["mention_all"] == "owner"
    assert live.settings["searchable"] is False


def test_read_of_a_missing_or_dissolved_chat_is_not_found(wire):
    with pytest.raises(NotFoundError):
        wire.backend.read("chat" + "0" * 32)
    chatid = wire.server.seed_chat("Gone", "alice", ["alice"])
    wire.server.set_chat(chatid, status=2)
    with pytest.raises(NotFoundError, match="dissolved"):
        wire.backend.read(chatid)


def test_a_create_of_150_members_converges_and_produces_both_ids(wire):
    chat = DesiredChat("k", "Big", "boss", users(149), settings={"muted": True, "show_history": True})
    produced = send_all(wire.backend, wire.backend.calls(plan_create(chat)))
    chatid = produced[CHATID]
    assert produced[OPEN_CONVERSATION_ID] == wire.server.open_conversation_id(chatid)
    live = wire.backend.read(chatid)
    assert set(live.members) == set(chat.members) and live.owner == "boss"
    assert live.settings["muted"] is True and live.settings["show_history"] is True


def test_an_update_converges_and_leaves_undeclared_settings_alone(wire):
    chatid = wire.server.seed_chat("Old", "alice", ["alice", *users(60)], searchable=1, managementType=1)
    want = DesiredChat("k", "New", "u0001", users(30, "n"), settings={"muted": True})
    change = plan_update(want, wire.backend.read(chatid), backend=wire.backend)
    send_all(wire.backend, wire.backend.calls(change))
    live = wire.backend.read(chatid)
    assert (live.name, live.owner) == ("New", "u0001")
    assert set(live.members) == {*users(30, "n"), "u0001"}
    assert live.settings["muted"] is True
    assert live.settings["searchable"] is True and live.settings["management"] == "owner"  # untouched


def test_an_owner_swap_in_a_full_chat_is_unreachable_in_both(wire):
    """A full chat whose owner hands over to a newcomer and leaves: no room to add, the owner cannot go first."""
    chatid = wire.server.seed_chat("Full", "alice", ["alice", *users(999)])
    want = DesiredChat("k", "Full", "zed", users(999))  # still 1,000: only alice leaves
    change = plan_update(want, wire.backend.read(chatid), backend=wire.backend)
    assert change.action is Action.ERROR and "cannot apply" in change.error
    swap = ChatChange("k", Action.UPDATE, chatid=chatid, owner=("alice", "zed"), add=("zed",), remove=("alice",))
    with pytest.raises(UnreachableError):
        wire.backend.calls(replace(swap, live_count=1000))


def test_notify_posts_through_the_robot_after_one_lookup(wire):
    chatid = wire.server.seed_chat("Ops", "alice", ["alice"])
    produced = send_all(wire.backend, wire.backend.notify_calls("你好", chatid=chatid, open_conversation_id=None))
    assert produced[OPEN_CONVERSATION_ID] == wire.server.open_conversation_id(chatid)
    (convert,) = [c for c in wire.server.calls if "convertToOpenConversationId" in c.endpoint]
    assert convert.body is None  # the reference: no body
    (message,) = wire.server.robot_messages()
    assert (
        message["chatid"] == chatid and message["params"] == {"content": "你好"} and message["robotCode"] == "robot-1"
    )
    again = wire.backend.notify_calls("x", chatid=chatid, open_conversation_id=produced[OPEN_CONVERSATION_ID])
    assert [c.path for c in again] == ["/v1.0/robot/groupMessages/send"]  # known now: no second lookup


def test_a_robot_that_is_not_in_the_chat_is_a_typed_error(wire):
    chatid = wire.server.seed_chat("Ops", "alice", ["alice"])
    wire.server.set_robot(chatid, False)
    with pytest.raises(DingTalkError, match="robot"):
        send_all(wire.backend, wire.backend.notify_calls("x", chatid=chatid, open_conversation_id=None))


def test_the_meter_counts_what_the_server_counts(wire):
    chatid = wire.server.seed_chat("Ops", "alice", ["alice"])
    wire.backend.read(chatid)
    send_all(wire.backend, wire.backend.calls(plan_create(DesiredChat("k", "New", "bob", users(50)))))
    with pytest.raises(NotFoundError):
        wire.backend.read("chat" + "0" * 32)  # a request-level error: processed, counted
    assert wire.backend.meter().metered == wire.server.meter()["metered"] == 4


# -- answers that are not the documented shape: an error for that chat, never trusted ---------------


def _chat_get_server(chat_info):
    def reply(handler):
        if handler.path.startswith("/gettoken"):
            body = {"errcode": 0, "access_token": "t" * 32, "expires_in": 7200}
        elif handler.path.startswith("/v1.0/oauth2/accessToken"):
            body = {"accessToken": "t" * 32, "expireIn": 7200}
        else:
            body = {"errcode": 0, "chat_info": chat_info}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    return LocalServer(reply)


GOOD = {"chatid": "chat1", "name": "n", "owner": "alice", "useridlist": ["alice", "bob"], "searchable": 0}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    "info, why",
    [
        ({**GOOD, "chatid": "chat2"}, "names another chat"),
        ({**GOOD, "useridlist": "alice,bob"}, "useridlist is str"),
        ({**GOOD, "useridlist": [1, None, True, {}]}, "something other than user ids"),
        ({**GOOD, "useridlist": {"alice": 1}}, "useridlist is dict"),
        ({**GOOD, "owner": None}, "no owner"),
        ({**GOOD, "name": 7}, "name is int"),
        ({**GOOD, "searchable": "1"}, "searchable is '1'"),
        ({**GOOD, "chatBannedType": True}, "chatBannedType is True"),
        ({**GOOD, "useridlist": [f"u{i}" for i in range(1001)]}, "1,001 ids"),
        ("not an object", "no chat_info"),
    ],
)
def test_a_wrong_answer_is_refused_for_that_chat(api, info, why):
    server = _chat_get_server(info)
    try:
        with Wire("k", "s", api=api, api_base=server.url, max_qps=0) as w:
            with pytest.raises(MalformedAnswerError, match=why):
                w.backend.read("chat1")
    finally:
        server.stop()


@pytest.mark.parametrize("api", APIS)
def test_the_documented_answer_reads(api):
    server = _chat_get_server(GOOD)
    try:
        with Wire("k", "s", api=api, api_base=server.url, max_qps=0) as w:
            assert w.backend.read("chat1").members == ("alice", "bob")
    finally:
        server.stop()
