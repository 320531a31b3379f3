"""The seed SDK (dingtalk-sdk 1.3.8) works against the emulator unchanged.

That is the evidence that the emulator speaks DingTalk's real wire format
(paths, query token, JSON bodies, response keys), and it pins down the SDK
bug dtchat exists to avoid: ``Chat.update`` resets every setting to 0.
"""

from __future__ import annotations

import logging

import pytest

from reconciler.emulator import EmulatorServer

pytest.importorskip("dingtalk", reason="the seed SDK dingtalk-sdk==1.3.8 is not installed (pip install '.[test]')")

from dingtalk.client import AppKeyClient  # noqa: E402
from dingtalk.core.exceptions import DingTalkClientException  # noqa: E402

KEY = "sdk-key"
SECRET = "sdk-secret-NEVER-PRINTED"


@pytest.fixture
def srv():
    with EmulatorServer(app_key=KEY, app_secret=SECRET) as server:
        yield server


@pytest.fixture
def sdk(srv, caplog):
    # The SDK logs failed calls with their URL, access token included: keep that out of test output.
    caplog.set_level(logging.CRITICAL, logger="dingtalk")
    client = AppKeyClient(corp_id="x", app_key=KEY, app_secret=SECRET)
    client.API_BASE_URL = srv.url + "/"
    return client


def test_the_seed_sdk_drives_every_chat_endpoint(srv, sdk):
    chatid = sdk.chat.create("工程值班", "alice", ["alice", "bob"], searchable=1)
    assert srv.chat(chatid)["searchable"] == 1

    sdk.chat.update(chatid, name="新名字", add_useridlist=["carol"], del_useridlist=["bob"])
    info = sdk.chat.get(chatid)
    assert (info["chatid"], info["name"], info["owner"]) == (chatid, "新名字", "alice")
    assert info["useridlist"] == ["alice", "carol"]

    message_id = sdk.chat.send(chatid, {"msgtype": "text", "text": {"content": "hi"}})
    page = sdk.chat.get_read_list(message_id, cursor=0, size=1)
    assert page["readUserIdList"] == ["alice"] and page["next_cursor"] == 1
    last = sdk.chat.get_read_list(message_id, cursor=1, size=100)
    assert last["readUserIdList"] == ["carol"] and "next_cursor" not in last

    assert [c.endpoint for c in srv.calls] == [
        "/gettoken",
        "/chat/create",
        "/chat/update",
        "/chat/get",
        "/chat/send",
        "/chat/getReadList",
        "/chat/getReadList",
    ]


def test_the_seed_sdk_update_resets_settings_nobody_asked_to_change(srv, sdk):
    """The known bug: ``update`` sends every setting, defaulting to 0, on every call."""
    chatid = sdk.chat.create("on-call", "alice", ["alice", "bob"], searchable=1, chat_banned_type=1)
    sdk.chat.update(chatid, add_useridlist=["carol"])  # meant: only add a member
    info = sdk.chat.get(chatid)
    assert info["useridlist"] == ["alice", "bob", "carol"]
    assert (info["searchable"], info["chatBannedType"]) == (0, 0)  # silently reset
    sent = srv.calls_to("/chat/update")[0].body
    assert sent["searchable"] == 0 and sent["icon"] == "" and sent["name"] is None


def test_the_seed_sdk_sees_emulator_errors_and_refreshes_expired_tokens(srv, sdk):
    with pytest.raises(DingTalkClientException) as err:
        sdk.chat.get("chat" + "0" * 32)
    assert err.value.errcode == 34013
    srv.expire_tokens()
    chatid = sdk.chat.create("fresh", "alice", ["alice"])  # 42001, new token, retried once
    assert srv.chat(chatid) is not None
    assert [c.errcode for c in srv.calls[-3:]] == [42001, 0, 0]
