"""Wire over real HTTP against the emulator: endpoints, tokens, error mapping."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.backends import (
    ApiClosedError,
    AuthError,
    DingTalkError,
    InvalidParameterError,
    InvalidUserError,
    NotFoundError,
    QuotaExhaustedError,
    redact,
)
from reconciler.backends import endpoints as ep
from reconciler.backends.errors import ERRCODE_CLASSES, classify_oapi
from reconciler.emulator import EmulatorServer

from helpers import APP_KEY, APP_SECRET
from wire import Wire


@pytest.fixture
def chat(emulator) -> str:
    return emulator.seed_chat("值班", "alice", ["alice", "bob"], searchable=1, chatBannedType=1)


# ---------------------------------------------------------------- endpoints


def test_get_chat_returns_chat_info(client, emulator, chat):
    info = client.get_chat(chat)
    assert info["chatid"] == chat
    assert info["name"] == "值班"
    assert info["owner"] == "alice"
    assert sorted(info["useridlist"]) == ["alice", "bob"]
    assert info["searchable"] == 1 and info["chatBannedType"] == 1
    assert emulator.calls_to("/chat/get")[-1].params == {"chatid": chat}


def test_create_chat_sends_members_and_settings_and_returns_chatid(client, emulator):
    chatid = client.create_chat("工程值班", "alice", ["alice", "bob"], {"searchable": 1, "managementType": 1})
    stored = emulator.chat(chatid)
    assert stored["name"] == "工程值班"
    assert stored["owner"] == "alice"
    assert sorted(stored["useridlist"]) == ["alice", "bob"]
    assert stored["searchable"] == 1 and stored["managementType"] == 1 and stored["chatBannedType"] == 0
    body = emulator.calls_to("/chat/create")[-1].body
    assert body == {
        "name": "工程值班",
        "owner": "alice",
        "useridlist": ["alice", "bob"],
        "searchable": 1,
        "managementType": 1,
    }


def test_create_without_settings_sends_no_setting_fields(client, emulator):
    client.create_chat("n", "alice", ["alice"])
    assert emulator.calls_to("/chat/create")[-1].body == {"name": "n", "owner": "alice", "useridlist": ["alice"]}


def test_body_is_utf8_json_not_ascii_escaped(client, emulator):
    """The emulator parses the body as UTF-8 JSON; a name that round-trips proves the encoding."""
    chatid = client.create_chat("日本語と中文😀", "alice", ["alice"])
    assert emulator.chat(chatid)["name"] == "日本語と中文😀"


UPDATE_CASES = [
    ({"add": ["carol"]}, {"add_useridlist": ["carol"]}),
    ({"remove": ["bob"]}, {"del_useridlist": ["bob"]}),
    ({"settings": {"searchable": 0}}, {"searchable": 0}),
    ({"name": "新名字"}, {"name": "新名字"}),
    ({"owner": "carol"}, {"owner": "carol"}),
    (
        {"name": "x", "add": ["carol"], "remove": ["bob"], "settings": {"showHistoryType": 1}},
        {"name": "x", "add_useridlist": ["carol"], "del_useridlist": ["bob"], "showHistoryType": 1},
    ),
]


def test_update_sends_only_the_given_fields(client, emulator, chat):
    for kwargs, expected in UPDATE_CASES:
        client.update_chat(chat, **kwargs)
        assert emulator.calls_to("/chat/update")[-1].body == {"chatid": chat, **expected}, kwargs


def test_update_changes_only_what_was_sent(client, emulator, chat):
    client.update_chat(chat, add=["carol"])
    stored = emulator.chat(chat)
    assert sorted(stored["useridlist"]) == ["alice", "bob", "carol"]
    assert stored["searchable"] == 1 and stored["chatBannedType"] == 1  # untouched settings survive
    client.update_chat(chat, owner="carol", remove=["bob"], settings={"chatBannedType": 0})
    stored = emulator.chat(chat)
    assert stored["owner"] == "carol" and sorted(stored["useridlist"]) == ["alice", "carol"]
    assert stored["chatBannedType"] == 0 and stored["searchable"] == 1


def test_stats_count_calls_per_endpoint(client, chat):
    client.get_chat(chat)
    client.get_chat(chat)
    client.update_chat(chat, add=["x"])
    stats = client.stats
    assert stats["calls"] == {"/gettoken": 1, "/chat/get": 2, "/chat/update": 1}
    assert stats["retries"] == 0 and stats["token_refreshes"] == 0
    stats["calls"]["/chat/get"] = 99  # a copy: the client's counters are unaffected
    assert client.stats["calls"]["/chat/get"] == 2


def test_context_manager_closes_the_pooled_connections(emulator, chat):
    with Wire(APP_KEY, APP_SECRET, api_base=emulator.url, max_qps=0) as c:
        assert c.get_chat(chat)["chatid"] == chat
        pools = c.transport._adapter.poolmanager.pools  # requests' HTTPAdapter -> urllib3 PoolManager
        pooled = [conn for key in list(pools.keys()) for conn in list(pools[key].pool.queue) if conn is not None]
        sockets = [conn.sock for conn in pooled if conn.sock is not None]
        assert len(sockets) == 1 and sockets[0].fileno() >= 0  # /gettoken and /chat/get shared one keep-alive
    assert len(c.transport._adapter.poolmanager.pools) == 0
    assert all(conn.sock is None for conn in pooled) and sockets[0].fileno() == -1  # the socket itself is closed


# -------------------------------------------------------------------- token


def test_token_is_fetched_once_for_many_calls(client, emulator, chat):
    for _ in range(10):
        client.get_chat(chat)
    assert emulator.counters()["/gettoken"] == 1
    assert emulator.calls_to("/gettoken")[0].params == {"appkey": APP_KEY, "appsecret": "<redacted>"}


def test_token_refreshed_after_it_expires_by_use(client, emulator, chat):
    emulator.faults.token_uses = 3
    for _ in range(7):
        client.get_chat(chat)
    gets = emulator.calls_to("/chat/get")
    assert [c.errcode for c in gets].count(42001) == 2
    assert [c.errcode for c in gets].count(0) == 7
    assert emulator.counters()["/gettoken"] == 3
    assert client.stats["token_refreshes"] == 2


def test_token_refreshed_after_server_side_expiry(client, emulator, chat):
    client.get_chat(chat)
    emulator.expire_tokens()
    assert client.get_chat(chat)["chatid"] == chat
    assert [c.errcode for c in emulator.calls_to("/chat/get")] == [0, 42001, 0]
    assert emulator.counters()["/gettoken"] == 2


def test_token_refreshed_before_expiry_without_a_failed_call(make_client):
    server = EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, token_ttl=1).start()
    try:
        chatid = server.seed_chat("n", "alice", ["alice"])
        c = Wire(APP_KEY, APP_SECRET, api_base=server.url, max_qps=0)
        with c:
            c.get_chat(chatid)
            c.get_chat(chatid)
            assert server.counters()["/gettoken"] == 1
            time.sleep(0.95)  # expires_in=1 -> refreshed once fewer than 0.1 s remain
            c.get_chat(chatid)
        assert server.counters()["/gettoken"] == 2
        assert all(call.errcode == 0 for call in server.calls)
    finally:
        server.stop()


def test_token_error_that_persists_after_one_refresh_is_auth_error(client, emulator, chat):
    emulator.faults.fail_chatids = {chat: 40014}
    with pytest.raises(AuthError) as info:
        client.get_chat(chat)
    assert info.value.errcode == 40014
    assert "after a refresh" in str(info.value)
    assert len(emulator.calls_to("/chat/get")) == 2
    assert emulator.counters()["/gettoken"] == 2


def test_concurrent_callers_share_one_token_fetch(make_client, emulator, chat):
    client = make_client(max_qps=0)
    emulator.faults.latency_ms = 50  # widen the window in which threads would race for a token
    barrier = threading.Barrier(12)
    errors: list[BaseException] = []

    def worker():
        barrier.wait()
        try:
            client.get_chat(chat)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert emulator.counters()["/gettoken"] == 1
    assert emulator.counters()["/chat/get"] == 12


def test_refresh_does_not_discard_a_token_another_thread_just_fetched(client, emulator, chat):
    """After expiry, many threads see 42001 with the old token; only one new token is fetched."""
    client.get_chat(chat)
    emulator.expire_tokens()
    threads = [threading.Thread(target=client.get_chat, args=(chat,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert emulator.counters()["/gettoken"] == 2
    assert [c.errcode for c in emulator.calls_to("/chat/get")].count(0) == 9


def test_bad_credentials_raise_auth_error_without_retry(emulator):
    secret = "wrong-secret-value-XYZ"
    with Wire(APP_KEY, secret, api_base=emulator.url, max_qps=0) as c, pytest.raises(AuthError) as info:
        c.get_chat("chat0")
    err = info.value
    assert err.errcode == 40089 and err.endpoint == "/gettoken"
    assert "app key and app secret" in str(err)
    assert secret not in str(err) and secret not in repr(err)
    assert emulator.counters() == {"/gettoken": 1}


# ----------------------------------------------------------- error mapping


ERRCODE_CASES = {
    34001: NotFoundError,
    34013: NotFoundError,
    40016: NotFoundError,
    60011: ApiClosedError,  # on a legacy write: closed to apps created since DingTalk's change
    60020: AuthError,
    88: AuthError,
    40035: InvalidParameterError,
    60121: InvalidUserError,
    40003: InvalidUserError,
    40031: InvalidUserError,
    40032: InvalidUserError,
    60111: InvalidUserError,
    90020: QuotaExhaustedError,
    12345: DingTalkError,
}


def test_errcodes_map_to_classes_without_retry(client, emulator, chat):
    for n, (errcode, cls) in enumerate(ERRCODE_CASES.items(), start=1):
        emulator.faults.fail_chatids = {chat: errcode}
        with pytest.raises(DingTalkError) as info:
            client.update_chat(chat, add=["carol", "dave"])
        err = info.value
        assert type(err) is cls, errcode
        assert err.errcode == errcode and err.endpoint == "/chat/update"
        assert str(err).startswith(f"/chat/update failed: errcode {errcode}: ")
        assert "\n" not in str(err)
        assert len(emulator.calls_to("/chat/update")) == n  # one request each: nothing retried
    assert client.stats["retries"] == 0


def test_the_real_unknown_chat_answer_is_not_found(client):
    with pytest.raises(NotFoundError) as info:
        client.get_chat("chat" + "0" * 32)
    assert info.value.errcode == 34013


def test_invalid_user_error_names_the_ids_sent(client, emulator, chat):
    emulator.faults.fail_chatids = {chat: 60121}
    with pytest.raises(InvalidUserError) as info:
        client.update_chat(chat, add=["carol"], remove=["bob"])
    assert info.value.userids == ("carol", "bob")
    assert "carol, bob" in str(info.value)


def test_invalid_user_from_create_names_the_members(make_client):
    server = EmulatorServer(users=["alice"], app_key=APP_KEY, app_secret=APP_SECRET).start()
    try:
        with Wire(APP_KEY, APP_SECRET, api_base=server.url, max_qps=0) as c:
            with pytest.raises(InvalidUserError) as info:
                c.create_chat("n", "alice", ["alice", "ghost"])
        assert info.value.errcode == 60121
        assert "ghost" in str(info.value)
    finally:
        server.stop()


def test_plain_language_for_whitelist_permission_and_quota(client, emulator, chat):
    expected = {
        60020: "IP whitelist",
        60011: "lacks the permission .qyapi_chat_read.",
        90020: "monthly DingTalk API quota",
    }
    for errcode, phrase in expected.items():
        emulator.faults.fail_chatids = {chat: errcode}
        with pytest.raises(DingTalkError, match=phrase):
            client.get_chat(chat)


def test_quota_exhausted_is_not_retried(client, emulator, chat):
    client.get_chat(chat)
    emulator.faults.monthly_quota = 0
    with pytest.raises(QuotaExhaustedError) as info:
        client.get_chat(chat)
    assert "monthly" in str(info.value)
    assert len(emulator.calls_to("/chat/get")) == 2


def test_sub_msg_is_shown_for_errcode_88():
    refusal = classify_oapi(
        ep.CHAT_GET, {"errcode": 88, "errmsg": "auth fail", "sub_code": "60011", "sub_msg": "没有调用该接口的权限"}
    )
    err = refusal.error
    assert isinstance(err, AuthError) and "qyapi_chat_read" in str(err)
    assert err.sub_code == "60011" and err.sub_msg == "没有调用该接口的权限"
    assert "没有调用该接口的权限" in str(err)


def test_token_errcodes_on_gettoken_are_credential_errors_but_busy_is_not():
    assert isinstance(classify_oapi(ep.GETTOKEN, {"errcode": 40001, "errmsg": "x"}).error, AuthError)
    assert not isinstance(classify_oapi(ep.GETTOKEN, {"errcode": -1, "errmsg": "x"}).error, AuthError)


def test_every_documented_errcode_is_classified():
    documented = {
        -1,
        88,
        40001,
        40014,
        42001,
        33001,
        90002,
        90018,
        90019,
        90020,
        60011,
        60121,
        34001,
        34013,
        40016,
        40003,
        40031,
        40032,
        60111,
        40035,
        45009,
        60020,
        40089,
    }
    assert documented <= set(ERRCODE_CLASSES)


# ---------------------------------------------------------------- redaction


def test_redact_masks_query_secrets_and_registered_secrets():
    text = "GET /gettoken?appkey=k&appsecret=s3cr3t&x=1 /chat/get?access_token=abc123&chatid=c corpsecret=zz"
    assert redact(text) == "GET /gettoken?appkey=k&appsecret=***&x=1 /chat/get?access_token=***&chatid=c corpsecret=***"
    Wire(APP_KEY, "registered-secret-0042", api_base="http://127.0.0.1:9").close()
    assert redact("body: {'appsecret': 'registered-secret-0042'}") == "body: {'appsecret': '***'}"
