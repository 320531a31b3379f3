"""The emulator's Stream gateway, over real sockets: DingTalk's official Stream SDK and a raw WebSocket client.

The SDK (``dingtalk-stream``) reads ``DINGTALK_OPENAPI_ENDPOINT`` when it is imported, so it runs in a
subprocess pointed at the emulator; it prints every event it gets as one JSON line and acks it.
"""

from __future__ import annotations

import inspect
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip("websockets.sync.client")
pytest.importorskip("dingtalk_stream")

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import ClientConnection, connect  # noqa: E402

from reconciler.emulator import API_OPERATOR, CORP_ID, SANDBOX_ORG, EmulatorServer, load_org, union_id  # noqa: E402

KEY, SECRET = "dingstreamkey", "stream-secret"
OPEN = "/v1.0/gateway/connections/open"
SUBSCRIBE_ALL = [{"type": "EVENT", "topic": "*"}]
#: Fast ack timeouts keep every test within a few seconds.
ACK_TIMEOUT = 0.4

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture
def srv() -> Iterator[EmulatorServer]:
    server = EmulatorServer(app_key=KEY, app_secret=SECRET, stream_ack_timeout=ACK_TIMEOUT)
    server.faults.stream_retry_delay = 0.1
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def org_srv() -> Iterator[EmulatorServer]:
    server = EmulatorServer(app_key=KEY, app_secret=SECRET, org=load_org(SANDBOX_ORG), stream_ack_timeout=ACK_TIMEOUT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- DingTalk's official Stream SDK, in a subprocess ----------------------------------------------

SDK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os
    import dingtalk_stream
    from dingtalk_stream import AckMessage

    mode = os.environ["ACK_MODE"]
    seen = set()

    class Handler(dingtalk_stream.EventHandler):
        async def process(self, event):
            h = event.headers
            print(json.dumps({
                "eventId": h.event_id, "eventType": h.event_type, "messageId": h.message_id,
                "bornTime": h.event_born_time, "corpId": h.event_corp_id, "topic": h.topic,
                "appId": h.event_unified_app_id, "data": event.data,
            }), flush=True)
            first = h.event_id not in seen
            seen.add(h.event_id)
            if mode == "ack-second" and first:
                await asyncio.sleep(3600)  # this delivery is never acked
            return AckMessage.STATUS_OK, "OK"

    class WrongTicket(dingtalk_stream.DingTalkStreamClient):
        def open_connection(self):
            answer = super().open_connection()
            if answer:
                answer["ticket"] = "forged-" + answer["ticket"]
            return answer

    kind = WrongTicket if mode == "wrong-ticket" else dingtalk_stream.DingTalkStreamClient
    client = kind(dingtalk_stream.Credential(os.environ["APP_KEY"], os.environ["APP_SECRET"]))
    client.register_all_event_handler(Handler())
    client.start_forever()
    """
)


class SdkClient:
    """The official SDK in a subprocess: its events, one JSON object per line, and its log."""

    def __init__(self, server: EmulatorServer, log: Path, mode: str = "ok") -> None:
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
        env.update(
            DINGTALK_OPENAPI_ENDPOINT=server.url,
            APP_KEY=KEY,
            APP_SECRET=SECRET,
            ACK_MODE=mode,
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
        )
        self.log = log
        self._err = log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SDK_SCRIPT], stdout=subprocess.PIPE, stderr=self._err, env=env, text=True
        )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self._lines.put(json.loads(line))

    def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s; SDK log:\n{self.log.read_text()[-3000:]}") from None

    def no_event(self, within: float) -> bool:
        try:
            self._lines.get(timeout=within)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)
        self._err.close()


@pytest.fixture
def sdk(srv: EmulatorServer, tmp_path: Path) -> Iterator[Callable[..., SdkClient]]:
    started: list[SdkClient] = []

    def start(server: EmulatorServer = srv, mode: str = "ok", connect_wait: bool = True) -> SdkClient:
        client = SdkClient(server, tmp_path / f"sdk{len(started)}.log", mode)
        started.append(client)
        if connect_wait:
            assert server.wait_stream_connections(1, timeout=15), client.log.read_text()[-3000:]
        return client

    yield start
    for client in started:
        client.close()


def v1_token(server: EmulatorServer) -> str:
    answer = requests.post(server.url + "/v1.0/oauth2/accessToken", json={"appKey": KEY, "appSecret": SECRET})
    return str(answer.json()["accessToken"])


def v1_update(server: EmulatorServer, body: dict[str, Any]) -> requests.Response:
    headers = {"x-acs-dingtalk-access-token": v1_token(server)}
    return requests.post(server.url + "/v1.0/im/group/update", json=body, headers=headers)


CHAT_KEYS = {"openConversationId", "corpId", "timeStamp", "operatorUnionId", "chatId", "operator"}


def test_sdk_gets_the_events_of_an_api_update_with_the_references_fields(srv, sdk):
    chat = srv.seed_chat("值班", "alice", ["alice", "bob"])
    client = sdk()
    assert v1_update(srv, {"chatid": chat, "add_useridlist": ["carol", "dave"]}).status_code == 200
    event = client.next_event()
    assert (event["eventType"], event["topic"], event["corpId"]) == ("chat_add_member", "*", CORP_ID)
    assert event["eventId"] and event["messageId"] and event["bornTime"] > 0 and event["appId"]
    data = event["data"]
    assert set(data) == CHAT_KEYS | {"userId", "unionId"}
    assert data["chatId"] == chat and data["openConversationId"] == srv.open_conversation_id(chat)
    assert data["userId"] == ["carol", "dave"] and data["unionId"] == [union_id("carol"), union_id("dave")]
    assert data["operator"] == API_OPERATOR and data["operatorUnionId"] == union_id(API_OPERATOR)
    assert data["corpId"] == CORP_ID and isinstance(data["timeStamp"], int)

    assert v1_update(srv, {"chatid": chat, "owner": "carol", "name": "新名字"}).status_code == 200
    owner, title = client.next_event(), client.next_event()
    assert owner["eventType"] == "chat_update_owner" and owner["data"]["owner"] == "carol"
    assert set(owner["data"]) == {"openConversationId", "corpId", "timeStamp", "operatorUnionId", "owner"}
    assert title["eventType"] == "chat_update_title" and title["data"]["title"] == "新名字"
    assert title["data"]["chatId"] == chat
    assert srv.wait_stream_acked(title["eventId"], timeout=5)
    assert [m["acked"] for m in srv.stream_messages()] == [True, True, True]


def test_sdk_gets_a_change_made_by_hand_and_nothing_for_settings(srv, sdk):
    chat = srv.seed_chat("值班", "alice", ["alice", "bob"])
    client = sdk()
    assert srv.change_by_hand(chat, settings={"searchable": 1}) == []  # no event exists for settings
    (event_id,) = srv.change_by_hand(chat, add=["mallory"], operator="bob")
    event = client.next_event()
    assert event["eventId"] == event_id and event["eventType"] == "chat_add_member"
    assert event["data"]["userId"] == ["mallory"] and event["data"]["operator"] == "bob"
    assert event["data"]["operatorUnionId"] == union_id("bob")
    assert srv.chat(chat)["useridlist"] == ["alice", "bob", "mallory"] and srv.chat(chat)["searchable"] == 1


def test_sdk_gets_a_directory_leaver(org_srv, sdk):
    client = sdk(org_srv)
    org_srv.remove_user("xiechen")
    event = client.next_event()
    assert event["eventType"] == "user_leave_org"
    assert event["data"]["userId"] == ["xiechen"] and isinstance(event["data"]["timeStamp"], str)
    assert org_srv.wait_stream_acked(event["eventId"], timeout=5)
    meter = org_srv.meter()
    assert (meter["pushes"], meter["pushes_exempt"]) == (0, 1)  # directory events are exempt


def test_sdk_unacked_event_is_redelivered_with_its_event_id_and_an_ack_stops_it(srv, sdk):
    client = sdk(mode="ack-second")
    event_id = srv.push_event("chat_quit", {"chatId": "chat00", "operator": "bob"})
    first, second = client.next_event(), client.next_event(timeout=ACK_TIMEOUT + 5)
    assert first["eventId"] == second["eventId"] == event_id
    assert first["messageId"] != second["messageId"]
    assert srv.wait_stream_acked(event_id, timeout=5)
    assert client.no_event(within=ACK_TIMEOUT * 3)  # acked with 200: no third delivery
    message = srv.stream_message(event_id)
    assert message is not None
    assert (message["deliveries"], message["acked"], message["outcomes"]) == (2, True, ["timeout", "ok"])
    assert srv.meter()["pushes"] == 1  # the redelivery is not another push


def test_sdk_reconnects_after_the_gateway_drops_it(srv, sdk):
    client = sdk()
    assert srv.close_stream_connections() == 1
    deadline = time.monotonic() + 10  # a normal close: the SDK reconnects at once (it may already have)
    while srv.stream_stats()["accepted"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.stream_stats()["accepted"] == 2 and srv.wait_stream_connections(1, timeout=10)
    event_id = srv.push_event("chat_disband", {"chatId": "chat01"})
    assert client.next_event()["eventId"] == event_id


def test_sdk_with_a_wrong_ticket_is_refused(srv, sdk):
    client = sdk(mode="wrong-ticket", connect_wait=False)
    deadline = time.monotonic() + 10
    while srv.stream_stats()["refused"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.stream_stats()["refused"] == 1 and srv.stream_connections() == 0
    srv.push_event("chat_disband", {"chatId": "chat01"})
    assert client.no_event(within=0.5)
    deadline = time.monotonic() + 5
    while "1008" not in client.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "1008" in client.log.read_text()  # the SDK saw the policy-violation close


# ---- a raw WebSocket client: the frames exactly -----------------------------------------------------


def open_connection(server: EmulatorServer, **body: Any) -> requests.Response:
    payload = {"clientId": KEY, "clientSecret": SECRET, "subscriptions": SUBSCRIBE_ALL, "ua": "test", "localIp": ""}
    payload.update(body)
    return requests.post(server.url + OPEN, json=payload)


def _connect(uri: str) -> ClientConnection:
    if "proxy" in inspect.signature(connect).parameters:
        return connect(uri, proxy=None)
    return connect(uri)


def ws_connect(server: EmulatorServer, subscriptions: list[dict[str, str]] | None = None) -> ClientConnection:
    answer = open_connection(server, subscriptions=SUBSCRIBE_ALL if subscriptions is None else subscriptions)
    assert answer.status_code == 200, answer.text
    ws = _connect(f"{answer.json()['endpoint']}?ticket={answer.json()['ticket']}")
    return ws


def recv(ws: ClientConnection, timeout: float = 3.0) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=timeout)))


def ack(ws: ClientConnection, frame: dict[str, Any], code: int = 200, data: str | None = None) -> None:
    message_id = frame["headers"]["messageId"]
    body = {"code": code, "headers": {"messageId": message_id, "contentType": "application/json"}, "message": "OK"}
    ws.send(json.dumps({**body, "data": frame["data"] if data is None else data}))


def silent(ws: ClientConnection, within: float) -> bool:
    try:
        ws.recv(timeout=within)
    except TimeoutError:
        return True
    return False


def test_connections_open_answers_an_endpoint_and_a_ticket_and_is_not_metered(srv):
    answer = open_connection(srv)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"endpoint", "ticket"}
    assert body["endpoint"].startswith("ws://127.0.0.1:") and body["endpoint"].endswith("/connect")
    assert srv.meter() == {"metered": 0, "exempt": 1, "quota_left": None, "pushes": 0, "pushes_exempt": 0}
    (call,) = srv.calls_to(OPEN)
    assert call.status == 200 and call.metered is False and call.body is not None
    assert call.body["clientSecret"] == "<redacted>"
    assert open_connection(srv).json()["ticket"] != body["ticket"]


def test_connections_open_refuses_bad_credentials_and_bodies(srv):
    wrong = open_connection(srv, clientSecret="nope")
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalidClientIdOrSecret"
    assert "requestid" in wrong.json() and "message" in wrong.json()
    assert open_connection(srv, clientId=None).json()["code"] == "invalidClientIdOrSecret"
    bad_subs = open_connection(srv, subscriptions=[{"type": "NOPE", "topic": "*"}])
    assert bad_subs.status_code == 400 and bad_subs.json()["code"] == "parameter.invalid"
    not_json = requests.post(srv.url + OPEN, data=b"[", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["code"] == "parameter.invalid"
    assert requests.get(srv.url + OPEN).status_code == 404
    assert srv.stream_stats()["opened"] == 0


def test_connections_open_fails_on_demand_then_recovers(srv):
    srv.faults.update({"stream_open_failures": 2, "stream_open_error": "503:system.busy"})
    answers = [open_connection(srv) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].json()["code"] == "system.busy"
    assert srv.meter()["exempt"] == 1  # injected failures are not processed calls


def test_without_websockets_connections_open_says_how_to_install_it():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["websockets"] = None  # as if the package were not installed
        import requests
        from reconciler.emulator import EmulatorServer
        with EmulatorServer() as srv:
            body = {"clientId": "k", "clientSecret": "s", "subscriptions": [], "ua": "", "localIp": ""}
            answer = requests.post(srv.url + "/v1.0/gateway/connections/open", json=body)
            print(answer.status_code, answer.json()["code"], answer.json()["message"])
            chat = srv.seed_chat("x", "a", ["a"])
            print(srv.change_by_hand(chat, add=["b"]) != [])
        """
    )
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("500 system.error") and "pip install 'dingtalk-chat-reconciler[watch]'" in first
    assert second == "True"  # everything else works, events are still recorded


def test_event_frames_are_shaped_as_the_sdk_parses_them(srv):
    chat = srv.seed_chat("值班", "alice", ["alice", "bob"])
    with ws_connect(srv) as ws:
        (event_id,) = srv.change_by_hand(chat, remove=["bob"], operator="alice")
        frame = recv(ws)
        assert set(frame) == {"specVersion", "type", "headers", "data"}
        assert (frame["specVersion"], frame["type"]) == ("1.0", "EVENT")
        headers = frame["headers"]
        assert set(headers) == {
            "messageId",
            "topic",
            "contentType",
            "time",
            "eventId",
            "eventType",
            "eventBornTime",
            "eventCorpId",
            "eventUnifiedAppId",
        }
        assert all(isinstance(v, str) for v in headers.values())  # the Go SDK reads a string map
        assert (headers["topic"], headers["contentType"], headers["eventType"]) == (
            "*",
            "application/json",
            "chat_remove_member",
        )
        assert headers["eventId"] == event_id and headers["eventCorpId"] == CORP_ID
        assert int(headers["time"]) >= int(headers["eventBornTime"]) > 0
        assert isinstance(frame["data"], str)
        data = json.loads(frame["data"])
        assert data["userId"] == ["bob"] and data["operator"] == "alice" and data["chatId"] == chat
        ack(ws, frame)
        assert srv.wait_stream_acked(event_id, timeout=2)
    (recorded,) = srv.stream_acks()
    assert (recorded["kind"], recorded["code"], recorded["ok"], recorded["event_id"]) == ("event", 200, True, event_id)
    assert recorded["message_id"] == headers["messageId"]


def test_an_unacked_message_is_redelivered_with_the_same_event_id_after_the_ack_timeout(srv):
    with ws_connect(srv) as ws:
        event_id = srv.push_event("chat_add_member", {"chatId": "chat01", "userId": ["x"]})
        first = recv(ws)
        started = time.monotonic()
        second = recv(ws, timeout=ACK_TIMEOUT + 2)
        assert time.monotonic() - started >= ACK_TIMEOUT * 0.8
        assert first["headers"]["eventId"] == second["headers"]["eventId"] == event_id
        assert first["headers"]["messageId"] != second["headers"]["messageId"]
        assert first["headers"]["eventBornTime"] == second["headers"]["eventBornTime"]
        assert first["data"] == second["data"]
        ack(ws, second)
        assert silent(ws, ACK_TIMEOUT * 2.5)
        ack(ws, first)  # a late ack of an old delivery changes nothing
    message = srv.stream_message(event_id)
    assert message is not None and message["deliveries"] == 2 and message["state"] == "idle"


def test_a_failed_ack_code_or_later_status_is_redelivered(srv):
    with ws_connect(srv) as ws:
        event_id = srv.push_event("chat_quit", {"chatId": "chat01"})
        first = recv(ws)
        ack(ws, first, code=500)
        second = recv(ws, timeout=2)
        assert second["headers"]["eventId"] == event_id
        ack(ws, second, code=200, data=json.dumps({"status": "LATER", "message": "later"}))  # Java/Go SDK "LATER"
        third = recv(ws, timeout=2)
        ack(ws, third, code=200, data=json.dumps({"status": "SUCCESS", "message": "success"}))
        assert srv.wait_stream_acked(event_id, timeout=2) and silent(ws, ACK_TIMEOUT * 2)
    assert [a["ok"] for a in srv.stream_acks()] == [False, False, True]
    assert [a["status"] for a in srv.stream_acks()][1:] == ["LATER", "SUCCESS"]
    assert srv.stream_message(event_id)["outcomes"] == ["failed", "failed", "ok"]  # type: ignore[index]


def test_redeliver_pushes_a_duplicate_of_an_acked_event(srv):
    with ws_connect(srv) as ws:
        event_id = srv.push_event("chat_disband", {"chatId": "chat01"})
        first = recv(ws)
        ack(ws, first)
        assert srv.wait_stream_acked(event_id, timeout=2)
        srv.redeliver(event_id)
        copy = recv(ws)
        assert copy["headers"]["eventId"] == event_id and copy["headers"]["messageId"] != first["headers"]["messageId"]
        assert silent(ws, ACK_TIMEOUT * 2)  # an acked event is not redelivered again, acked or not
    with pytest.raises(KeyError):
        srv.redeliver("no-such-event")


def test_events_wait_for_a_client_and_go_to_one_client_each(srv):
    waiting = [srv.push_event("chat_disband", {"chatId": f"chat0{n}"}) for n in (1, 2)]
    assert srv.stream_stats()["queued"] == 2
    with ws_connect(srv) as a:
        got = []
        for _ in waiting:  # the first client to connect gets every event that waited, in order
            frame = recv(a)
            ack(a, frame)
            got.append(frame["headers"]["eventId"])
        assert got == waiting
        with ws_connect(srv) as b:
            deadline = time.monotonic() + 3
            while srv.stream_connections() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert srv.stream_connections() == 2
            pushed = [srv.push_event("chat_disband", {"chatId": f"chat1{n}"}) for n in (1, 2)]
            got = []
            for ws in (a, b):  # round-robin between connected clients: one each
                frame = recv(ws)
                ack(ws, frame)
                got.append(frame["headers"]["eventId"])
            assert sorted(got) == sorted(pushed)
            assert silent(a, 0.3) and silent(b, 0.3)


def test_only_event_subscribers_get_events(srv):
    with ws_connect(srv, subscriptions=[{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}]) as ws:
        srv.push_event("chat_disband", {"chatId": "chat01"})
        assert silent(ws, 0.3)
        assert srv.stream_stats()["queued"] == 1


def test_a_ticket_is_single_use_and_must_be_issued(srv):
    answer = open_connection(srv).json()
    uri = f"{answer['endpoint']}?ticket={answer['ticket']}"
    with _connect(uri) as ws:
        assert srv.wait_stream_connections(1, timeout=2)
        for bad in (uri, answer["endpoint"] + "?ticket=forged", answer["endpoint"], uri.replace("/connect", "/other")):
            with _connect(bad) as other, pytest.raises(ConnectionClosed) as closed:
                other.recv(timeout=2)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert srv.stream_connections() == 1 and srv.stream_stats()["refused"] == 4
        assert silent(ws, 0.05)


def test_closing_connections_requeues_what_was_in_flight(srv):
    ws = ws_connect(srv)
    event_id = srv.push_event("chat_disband", {"chatId": "chat01"})
    recv(ws)  # delivered, never acked
    assert srv.close_stream_connections(code=4000, reason="maintenance") == 1
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=2)
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "maintenance")
    assert srv.stream_message(event_id)["state"] == "queued"  # type: ignore[index]
    with ws_connect(srv) as again:
        frame = recv(again)  # at once, not after the ack timeout
        assert frame["headers"]["eventId"] == event_id
    with pytest.raises(ValueError):
        srv.close_stream_connections(code=1006)


def test_an_aborted_connection_looks_like_a_lost_network(srv):
    ws = ws_connect(srv)
    assert srv.close_stream_connections(abort=True) == 1
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=2)
    assert closed.value.rcvd is None  # no close frame: 1006 on the client's side


def test_system_ping_and_disconnect_frames(srv):
    with ws_connect(srv) as ws:
        (ping_id,) = srv.stream_ping()
        ping = recv(ws)
        assert (ping["type"], ping["headers"]["topic"], ping["headers"]["messageId"]) == ("SYSTEM", "ping", ping_id)
        assert set(json.loads(ping["data"])) == {"opaque"}
        ack(ws, ping)  # the SDKs echo the data
        assert srv.stream_disconnect(reason="server restart", grace=0.3) == 1
        bye = recv(ws)
        assert bye["headers"]["topic"] == "disconnect" and json.loads(bye["data"]) == {"reason": "server restart"}
        srv.push_event("chat_disband", {"chatId": "chat01"})  # not sent to a connection told to leave
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=2)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    acks = srv.stream_acks()
    assert [(a["kind"], a["ok"]) for a in acks] == [("system", True)]


def test_lost_acks_and_max_deliveries(srv):
    srv.faults.update({"stream_drop_acks": 1, "stream_max_deliveries": 2})
    with ws_connect(srv) as ws:
        event_id = srv.push_event("chat_disband", {"chatId": "chat01"})
        ack(ws, recv(ws))  # lost on the way
        recv(ws, timeout=ACK_TIMEOUT + 2)  # so it comes again; not acked this time
        assert silent(ws, ACK_TIMEOUT * 2.5)  # then given up
    message = srv.stream_message(event_id)
    assert message is not None and (message["state"], message["deliveries"], message["acked"]) == ("dropped", 2, False)
    assert srv.stream_acks()[0]["lost"] is True


def test_legacy_update_events_and_settings_or_disabled_api_events_raise_none(srv):
    chat = srv.seed_chat("值班", "alice", ["alice", "bob"])
    token = requests.get(srv.url + "/gettoken", params={"appkey": KEY, "appsecret": SECRET}).json()["access_token"]
    update = srv.url + "/chat/update?access_token=" + token
    assert requests.post(update, json={"chatid": chat, "del_useridlist": ["bob"], "name": "新"}).json()["errcode"] == 0
    assert requests.post(update, json={"chatid": chat, "searchable": 1, "add_useridlist": ["alice"]}).json() == {
        "errcode": 0,
        "errmsg": "ok",
    }
    assert v1_update(srv, {"chatid": chat, "managementOptions": {"searchable": 0}}).status_code == 200
    srv.faults.events_for_api_changes = False
    assert requests.post(update, json={"chatid": chat, "add_useridlist": ["carol"]}).json()["errcode"] == 0
    assert requests.post(update, json={"chatid": chat, "owner": "nobody"}).json()["errcode"] != 0
    messages = srv.stream_messages()
    assert [(m["event_type"], m["data"].get("userId"), m["data"].get("title")) for m in messages] == [
        ("chat_remove_member", ["bob"], None),
        ("chat_update_title", None, "新"),
    ]


def test_changes_by_hand_push_quit_disband_and_owner(srv):
    chat = srv.seed_chat("值班", "alice", ["alice", "bob", "carol"])
    srv.change_by_hand(chat, quit="bob", remove=["carol"], add=["dave"], owner="dave", operator="alice")
    srv.change_by_hand(chat, disband=True, operator="dave")
    kinds = [(m["event_type"], m["data"].get("operator")) for m in srv.stream_messages()]
    assert kinds == [
        ("chat_quit", "bob"),
        ("chat_remove_member", "alice"),
        ("chat_add_member", "alice"),
        ("chat_update_owner", None),
        ("chat_disband", "dave"),
    ]
    info = srv.chat(chat)
    assert info is not None and (info["useridlist"], info["owner"], info["status"]) == (["alice", "dave"], "dave", 2)
    with pytest.raises(KeyError):
        srv.change_by_hand("chat0123", add=["x"])
    with pytest.raises(ValueError):
        srv.change_by_hand(chat, add="dave")
    with pytest.raises(ValueError):
        srv.change_by_hand(chat, settings={"muted": 1})


def test_directory_edits_push_directory_events(org_srv):
    srv = org_srv
    srv.add_user("newbie", [110], name="New", mobile="13900000000", active=False)
    srv.set_active("newbie", True)
    srv.move_user("newbie", [120])
    srv.set_role_holders(3002, ["sunqiang", "newbie"])  # huangmin out, newbie in
    srv.remove_user("newbie")  # a leaver's roles go with them: no label event
    events = [(m["event_type"], m["data"]) for m in srv.stream_messages()]
    assert [e for e, _ in events] == [
        "user_add_org",
        "user_active_org",
        "user_modify_org",
        "label_user_change",
        "label_user_change",
        "user_leave_org",
    ]
    assert events[0][1]["userId"] == ["newbie"] and isinstance(events[0][1]["timeStamp"], str)
    assert events[1][1] == {"userId": ["newbie"]}
    assert events[2][1]["diffInfo"] == {
        "userid": "newbie",
        "prev": {"deptIdList": [110]},
        "curr": {"deptIdList": [120]},
    }
    assert events[3][1] == {"userIdList": ["newbie"], "labelIdList": [3002], "action": "add"}
    assert events[4][1] == {"userIdList": ["huangmin"], "labelIdList": [3002], "action": "remove"}
    assert all(m["exempt"] for m in srv.stream_messages())


def test_admin_org_routes_push_events_and_a_new_org_pushes_its_difference(org_srv):
    srv = org_srv
    admin = srv.url + "/__emulator__/"
    assert requests.post(admin + "org/remove-user", json={"userid": "xiechen"}).json() == {"ok": True}
    org = srv.org
    assert org is not None
    data = org.to_data()
    data["departments"].append({"id": 150, "name": "测试组", "parent": 100})
    data["departments"] = [d for d in data["departments"] if d["id"] != 230 and True]
    data["users"] = [u for u in data["users"] if 230 not in u["departments"]]
    assert requests.post(admin + "org", json=data).json() == {"ok": True}
    kinds = [(m["event_type"], m["data"].get("userId"), m["data"].get("deptId")) for m in srv.stream_messages()]
    assert kinds == [
        ("user_leave_org", ["xiechen"], None),
        ("org_dept_create", None, [150]),
        ("org_dept_remove", None, [230]),
        ("user_leave_org", ["sunli", "zhouyi", "wuting"], None),
    ]


def test_admin_stream_routes(srv):
    admin = srv.url + "/__emulator__/"
    chat = srv.seed_chat("值班", "alice", ["alice"])
    hand = requests.post(admin + "hand", json={"chatid": chat, "add": ["bob"], "operator": "alice"})
    assert hand.status_code == 200 and len(hand.json()["events"]) == 1
    pushed = requests.post(admin + "stream/push", json={"event_type": "org_change", "data": {"x": 1}, "event_id": "e1"})
    assert pushed.json() == {"ok": True, "event_id": "e1"}
    assert (
        requests.post(admin + "stream/push", json={"event_type": "x", "data": {}, "event_id": "e1"}).status_code == 400
    )
    assert requests.post(admin + "stream/redeliver", json={"event_id": "nope"}).status_code == 404
    assert requests.post(admin + "hand", json={"chatid": "chat00", "add": ["x"]}).status_code == 404
    assert requests.post(admin + "hand", json={"chatid": chat, "bogus": 1}).status_code == 400
    assert requests.post(admin + "stream/close", json={"code": 1005}).status_code == 400
    with ws_connect(srv) as ws:
        for _ in range(2):
            ack(ws, recv(ws))
        assert requests.post(admin + "stream/redeliver", json={"event_id": "e1"}).json() == {"ok": True}
        assert recv(ws)["headers"]["eventId"] == "e1"
        assert requests.post(admin + "stream/ping", json={}).json()["ok"] is True
        recv(ws)
        stats = requests.get(admin + "stream").json()["stream"]
        assert (stats["connections"], stats["accepted"], stats["messages"]) == (1, 1, 2)
        assert requests.post(admin + "stream/close", json={"code": 1000}).json() == {"ok": True, "closed": 1}
    messages = requests.get(admin + "stream/messages").json()["messages"]
    assert [(m["event_id"] == "e1", m["deliveries"]) for m in messages] == [(False, 1), (True, 2)]
    assert len(requests.get(admin + "stream/acks").json()["acks"]) == 2
    assert requests.post(admin + "stream/clear").json() == {"ok": True}
    assert srv.stream_messages() == [] and srv.stream_acks() == []
    faults = requests.post(admin + "faults", json={"stream_ack_timeout": 1.5, "events_for_api_changes": False})
    assert faults.status_code == 200 and faults.json()["faults"]["stream_ack_timeout"] == 1.5
    assert requests.post(admin + "faults", json={"stream_ack_timeout": -1}).status_code == 400
    assert requests.post(admin + "faults", json={"stream_open_error": "oops"}).status_code == 400


def test_pushes_are_metered_apart_and_reset_and_stop_clear_the_gateway(srv):
    assert set(srv.meter()) == {"metered", "exempt", "quota_left"}  # no Stream use yet: the meter reads as before
    with ws_connect(srv) as ws:
        for event_type in ("chat_add_member", "user_add_org", "org_dept_create", "chat_disband"):
            srv.push_event(event_type, {})
        for _ in range(4):
            ack(ws, recv(ws))
        meter = srv.meter()
        assert (meter["metered"], meter["pushes"], meter["pushes_exempt"]) == (0, 2, 2)
        srv.reset()
        assert srv.stream_messages() == [] and set(srv.meter()) == {"metered", "exempt", "quota_left"}
        assert srv.stream_connections() == 1  # reset keeps connections
        assert srv.faults.stream_ack_timeout == ACK_TIMEOUT  # restored as constructed
        port = int(ws_connect(srv).close() or 0)  # a second ticket still works after a reset
        del port
    endpoint = open_connection(srv).json()["endpoint"]
    srv.stop()
    assert srv.stream_stats()["running"] is False
    with pytest.raises(OSError):
        _connect(endpoint + "?ticket=x")
