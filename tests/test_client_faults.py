"""Wire under faults, over real HTTP: retries, the create rule, malformed answers, secrets.

Most faults come from the emulator's knobs. Answers the emulator never gives
(a successful reply missing its payload, garbage without an ban hint, a GET
whose connection drops) come from ``CannedServer``, a tiny real HTTP server
that replays scripted responses; nothing here patches ``requests``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from types import SimpleNamespace

import pytest
import requests

from reconciler.backends import (
    AmbiguousCreateError,
    AuthError,
    DingTalkError,
    ThrottledError,
    TransportError,
)

from helpers import APP_KEY, APP_SECRET, LocalServer
from wire import Wire

DROP = object()


@pytest.fixture
def client_sleeps(monkeypatch) -> list[float]:
    """Every wait the client takes (backoff, honouring a ban); it still sleeps. Empty = it gave up at once."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr("reconciler.backends.transport.time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    return slept


class CannedServer(LocalServer):
    """Answers /gettoken with a fixed token and every other request with the next scripted reply."""

    TOKEN = "canned-token-4f1e9a0b7c"

    def __init__(self) -> None:
        self.replies: list = []
        self.paths: list[str] = []
        super().__init__(self._reply)

    def _reply(self, handler) -> tuple[int, dict, bytes] | None:
        path = handler.path.split("?")[0]
        if path == "/gettoken":
            reply = (200, {"errcode": 0, "access_token": self.TOKEN, "expires_in": 7200})
        else:
            self.paths.append(path)
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if reply is DROP:
            return None
        status, body = reply
        return status, {}, body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture
def canned():
    server = CannedServer()
    clients: list[Wire] = []

    def make(*replies, **overrides) -> Wire:
        server.replies = list(replies)
        options = dict(api_base=server.url, max_qps=0, backoff_base=0.01, backoff_cap=0.02, max_attempts=3)
        options.update(overrides)
        c = Wire(APP_KEY, APP_SECRET, **options)
        clients.append(c)
        return c

    make.server = server
    yield make
    for c in clients:
        c.close()
    server.stop()


@pytest.fixture
def chat(emulator) -> str:
    return emulator.seed_chat("值班", "alice", ["alice", "bob"])


def live_chats(emulator) -> dict:
    """Every chat the emulator holds, via its admin route."""
    return requests.get(emulator.url + "/__emulator__/chats", timeout=5).json()["chats"]


def wait_for_calls(emulator, endpoint: str, n: int) -> list:
    """The emulator logs a call after answering; give a slow (timed-out) one a moment to land."""
    deadline = time.monotonic() + 3
    while len(emulator.calls_to(endpoint)) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return emulator.calls_to(endpoint)


# ------------------------------------------------------------ transient faults


def test_busy_answers_are_retried(client, emulator, chat):
    emulator.faults.busy_every = 2
    for _ in range(4):
        assert client.get_chat(chat)["chatid"] == chat
    codes = [c.errcode for c in emulator.calls_to("/chat/get")]
    assert codes == [0, -1, 0, -1, 0, -1, 0]
    assert client.stats["retries"] == 3


def test_http_500_is_retried_for_reads_and_updates(client, emulator, chat):
    emulator.faults.http500_every = 2
    client.get_chat(chat)
    client.update_chat(chat, add=["carol"])
    client.get_chat(chat)
    assert [c.status for c in emulator.calls][1:] == [200, 500, 200, 500, 200]
    assert "carol" in emulator.chat(chat)["useridlist"]


def test_app_frequency_limit_90018_is_retried_after_backoff(make_client, emulator, chat, monkeypatch):
    monkeypatch.setattr("reconciler.backends.transport.random.uniform", lambda a, b: b)  # deterministic backoff
    client = make_client(max_qps=0, backoff_base=0.3, backoff_cap=0.6, max_attempts=6)
    emulator.faults.qps_limit = 3
    for _ in range(4):
        client.get_chat(chat)
    codes = [c.errcode for c in emulator.calls_to("/chat/get")]
    assert codes[:4] == [0, 0, 0, 90018] and codes[-1] == 0 and codes.count(0) == 4


def test_client_side_throttle_keeps_under_the_server_limit(make_client, emulator, chat):
    client = make_client(max_qps=10)  # a client budget below the server's limit absorbs timing jitter
    emulator.faults.qps_limit = 12
    started = time.monotonic()
    threads = [threading.Thread(target=client.get_chat, args=(chat,)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c.errcode == 0 for c in emulator.calls_to("/chat/get"))
    assert len(emulator.calls_to("/chat/get")) == 16
    assert time.monotonic() - started >= 16 / 10 - 0.05  # 17 requests incl. /gettoken, spaced 1/10 s


def test_ip_ban_json_and_html_are_survived_by_honouring_wait(client, emulator, chat):
    emulator.faults.ip_ban_every = 2
    emulator.faults.ban_wait = 1
    client.get_chat(chat)
    started = time.monotonic()
    client.get_chat(chat)  # banned (JSON), waits 1 s, succeeds
    assert time.monotonic() - started >= 1.0
    emulator.faults.ip_ban_html = True
    started = time.monotonic()
    client.get_chat(chat)  # banned (HTML page "wait 1 seconds"), waits 1 s, succeeds
    assert time.monotonic() - started >= 1.0
    assert [c.status for c in emulator.calls_to("/chat/get")] == [200] * 5
    assert [c.errcode for c in emulator.calls_to("/chat/get")] == [0, None, 0, None, 0]


def test_ban_longer_than_the_budget_gives_up_at_once(make_client, emulator, chat, client_sleeps):
    client = make_client(max_retry_seconds=5)
    emulator.faults.ip_ban_every = 1
    emulator.faults.ban_wait = 300
    with pytest.raises(ThrottledError, match="300 s") as info:
        client.get_chat(chat)
    assert client_sleeps == []  # neither a backoff nor a wait on the ban before giving up
    assert info.value.errcode is None
    assert len(emulator.calls_to("/chat/get")) == 1


def test_persistent_busy_raises_throttled_after_max_attempts(make_client, emulator, chat):
    client = make_client(max_attempts=3)
    emulator.faults.busy_every = 1
    with pytest.raises(ThrottledError) as info:
        client.get_chat(chat)
    assert info.value.errcode == -1
    assert len(emulator.calls_to("/chat/get")) == 3
    assert client.stats["retries"] == 2


def test_persistent_500_raises_transport_error_after_max_attempts(make_client, emulator, chat):
    client = make_client(max_attempts=4)
    emulator.faults.http500_every = 1
    with pytest.raises(TransportError, match="HTTP 500") as info:
        client.get_chat(chat)
    assert info.value.errcode is None and not isinstance(info.value, AmbiguousCreateError)
    assert len(emulator.calls_to("/chat/get")) == 4


def test_retry_budget_in_seconds_bounds_the_attempts(make_client, emulator, chat, monkeypatch):
    monkeypatch.setattr("reconciler.backends.transport.random.uniform", lambda a, b: b)
    client = make_client(max_attempts=50, backoff_base=0.1, backoff_cap=0.1, max_retry_seconds=0.35)
    emulator.faults.busy_every = 1
    with pytest.raises(ThrottledError):
        client.get_chat(chat)
    assert 2 <= len(emulator.calls_to("/chat/get")) <= 4  # 0.35 s of 0.1 s waits, not 50 attempts


def test_read_timeout_on_a_read_is_retried(make_client, emulator, chat):
    client = make_client(timeout=(2.0, 0.1), max_attempts=2)
    client.get_chat(chat)  # token fetched before the slowdown
    emulator.faults.latency_ms = 300
    with pytest.raises(TransportError, match="read timeout"):
        client.get_chat(chat)
    assert len(wait_for_calls(emulator, "/chat/get", 3)) == 3


# ----------------------------------------------------------- the create rule


def test_create_busy_is_retried_and_creates_exactly_one_chat(client, emulator):
    emulator.faults.fault_endpoints = {"/chat/create"}
    emulator.faults.busy_every = 2
    client.create_chat("first", "alice", ["alice"])
    chatid = client.create_chat("second", "alice", ["alice"])
    assert [c.errcode for c in emulator.calls_to("/chat/create")] == [0, -1, 0]
    assert sorted(c["name"] for c in live_chats(emulator).values()) == ["first", "second"]
    assert emulator.chat(chatid)["name"] == "second"


def test_create_http_500_is_ambiguous_and_not_retried(client, emulator):
    emulator.faults.fault_endpoints = {"/chat/create"}
    emulator.faults.http500_every = 1
    with pytest.raises(AmbiguousCreateError) as info:
        client.create_chat("n", "alice", ["alice"])
    message = str(info.value)
    assert "may have been created" in message and "dtchat import" in message
    assert info.value.errcode is None and isinstance(info.value, TransportError)
    assert len(emulator.calls_to("/chat/create")) == 1


def test_create_whose_connection_drops_after_commit_is_ambiguous(client, emulator):
    emulator.faults.drop_after_create = 1
    with pytest.raises(AmbiguousCreateError):
        client.create_chat("dropped", "alice", ["alice", "bob"])
    assert len(emulator.calls_to("/chat/create")) == 1
    assert [c["name"] for c in live_chats(emulator).values()] == ["dropped"]


def test_create_read_timeout_is_ambiguous_and_not_retried(make_client, emulator):
    client = make_client(timeout=(2.0, 0.1))
    client.get_chat(emulator.seed_chat("x", "alice", ["alice"]))  # token fetched before the slowdown
    emulator.faults.latency_ms = 300
    with pytest.raises(AmbiguousCreateError, match="read timeout"):
        client.create_chat("slow", "alice", ["alice"])
    assert len(wait_for_calls(emulator, "/chat/create", 1)) == 1
    assert client.stats["calls"]["/chat/create"] == 1
    assert "slow" in [c["name"] for c in live_chats(emulator).values()]


def test_create_against_a_closed_port_is_retried_and_not_ambiguous(make_client, emulator, chat):
    client = make_client(max_attempts=3)
    client.get_chat(chat)
    emulator.stop()  # connection refused from now on: the request provably never reached a server
    with pytest.raises(TransportError) as info:
        client.create_chat("n", "alice", ["alice"])
    assert not isinstance(info.value, AmbiguousCreateError)
    assert client.stats["calls"]["/chat/create"] == 3


def test_create_token_error_is_retried_with_a_new_token(client, emulator):
    client.get_chat(emulator.seed_chat("x", "alice", ["alice"]))
    emulator.expire_tokens()
    client.create_chat("after-expiry", "alice", ["alice"])
    assert [c.errcode for c in emulator.calls_to("/chat/create")] == [42001, 0]
    assert len(live_chats(emulator)) == 2


# ------------------------------------------------- garbled and malformed answers


def test_garbled_bodies_are_retried_then_transport_error(canned):
    client = canned((200, b"<html>gateway says no</html>"), max_attempts=3)
    with pytest.raises(TransportError, match="not a DingTalk JSON reply") as info:
        client.get_chat("chat1")
    assert not isinstance(info.value, ThrottledError)
    assert canned.server.paths == ["/chat/get"] * 3


def test_json_without_errcode_is_retried_and_can_recover(canned):
    client = canned((200, {"status": "weird"}), (200, {"errcode": 0, "chat_info": {"chatid": "c"}}))
    assert client.get_chat("c") == {"chatid": "c"}
    assert canned.server.paths == ["/chat/get"] * 2


def test_garbled_body_on_create_is_ambiguous(canned):
    client = canned((200, b"\x00\xff not json"))
    with pytest.raises(AmbiguousCreateError):
        client.create_chat("n", "alice", ["alice"])
    assert canned.server.paths == ["/chat/create"]


def test_dropped_connection_on_a_read_is_retried(canned):
    client = canned(DROP, (200, {"errcode": 0, "chat_info": {"chatid": "c"}}))
    assert client.get_chat("c") == {"chatid": "c"}
    assert canned.server.paths == ["/chat/get"] * 2


def test_dropped_connection_on_create_is_ambiguous(canned):
    client = canned(DROP)
    with pytest.raises(AmbiguousCreateError):
        client.create_chat("n", "alice", ["alice"])
    assert canned.server.paths == ["/chat/create"]


@pytest.mark.parametrize(
    "call, body",
    [
        (lambda c: c.read("c"), {"errcode": 0}),
        (lambda c: c.read("c"), {"errcode": 0, "chat_info": ["not", "a", "dict"]}),
        (lambda c: c.create_chat("n", "a", ["a"]), {"errcode": 0, "chatid": 42}),
        (lambda c: c.list_department_user_ids(1), {"errcode": 0, "result": {"userid_list": "alice"}}),
    ],
)
def test_malformed_success_answers_raise_dingtalk_error(canned, call, body):
    client = canned((200, body))
    with pytest.raises(DingTalkError, match="malformed (response|answer)"):
        call(client)


def test_gettoken_without_a_token_is_an_auth_error(canned):
    server = canned.server
    server.TOKEN = ""  # the canned /gettoken now answers errcode 0 with an empty token
    client = canned((200, {"errcode": 0}))
    with pytest.raises(AuthError, match="malformed response"):
        client.get_chat("c")


# --------------------------------------------------------------------- secrets


def _leaks(exc: BaseException, secrets: set[str]) -> list[str]:
    rendered = [str(exc), repr(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    return [s for s in secrets for text in rendered if s in text]


def test_no_secret_in_logs_or_errors_across_fault_paths(make_client, emulator, caplog):
    caplog.set_level(logging.DEBUG)
    chatid = emulator.seed_chat("n", "alice", ["alice"])
    client = make_client(max_attempts=2, timeout=(2.0, 0.1), max_retry_seconds=5)
    tokens: set[str] = set()
    errors: list[BaseException] = []

    # A ban longer than the budget is remembered by the client that saw it (its later calls give up
    # without sending), so the ban paths get a client of their own.
    banned = make_client(max_attempts=2, max_retry_seconds=5)

    def run(action, **faults) -> None:
        for name, value in faults.items():
            setattr(emulator.faults, name, value)
        try:
            action()
        except DingTalkError as exc:
            errors.append(exc)
        finally:
            for c in (client, banned):
                tokens.update(t.value for t in c.transport._tokens.values() if t.value)
            emulator.reset()
            emulator.seed_chat("n", "alice", ["alice"], chatid=chatid)

    run(lambda: client.get_chat(chatid))
    run(lambda: client.get_chat(chatid), busy_every=1)
    run(lambda: client.get_chat(chatid), http500_every=1)
    run(lambda: banned.get_chat(chatid), ip_ban_every=1, ban_wait=60)
    run(lambda: banned.get_chat(chatid), ip_ban_every=1, ban_wait=60, ip_ban_html=True)
    run(lambda: client.get_chat(chatid), fail_chatids={chatid: 40014})
    run(lambda: client.update_chat(chatid, add=["x"]), fail_chatids={chatid: 60121})
    run(lambda: client.get_chat(chatid), monthly_quota=0)
    run(lambda: client.get_chat(chatid), latency_ms=300)
    run(lambda: client.create_chat("n", "alice", ["alice"]), latency_ms=300)
    run(lambda: client.create_chat("n", "alice", ["alice"]), drop_after_create=1)
    run(lambda: client.create_chat("n", "alice", ["alice"]), fault_endpoints={"/chat/create"}, http500_every=1)
    run(lambda: client.get_chat(chatid), token_uses=1)
    run(lambda: (emulator.expire_tokens(), client.get_chat(chatid)))
    with Wire(APP_KEY, "wrong-" + APP_SECRET, api_base=emulator.url, max_qps=0) as bad:
        try:
            bad.get_chat(chatid)
        except AuthError as exc:
            errors.append(exc)
    emulator.stop()
    try:
        client.get_chat(chatid)  # connection refused: requests' message carries the full URL
    except TransportError as exc:
        errors.append(exc)

    assert len(tokens) >= 3
    kinds = {type(e).__name__ for e in errors}
    assert kinds == {
        "ThrottledError",
        "IpBanError",
        "TransportError",
        "AuthError",
        "InvalidUserError",
        "QuotaExhaustedError",
        "AmbiguousCreateError",
        "ReadTimeoutError",
    }, kinds
    secrets = tokens | {APP_SECRET, "wrong-" + APP_SECRET}
    for exc in errors:
        assert _leaks(exc, secrets) == [], exc
        assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert [s for s in secrets if s in logged] == []
    assert "access_token=***" in caplog.text  # urllib3's URL lines were logged, scrubbed
    assert any(r.name == "reconciler.dingtalk" and r.levelno == logging.WARNING for r in caplog.records)


def test_client_waits_out_a_real_ip_ban_and_gives_up_at_once_on_a_long_one(emulator, make_client, client_sleeps):
    chatid = emulator.seed_chat("c", "owner", ["owner"])
    client = make_client(max_qps=0)
    client.get_chat(chatid)  # token + 1 call
    emulator.faults.ip_limit_calls = 2
    emulator.faults.ip_ban_seconds = 1.0
    started = time.monotonic()
    client.get_chat(chatid)  # 3rd call in the window: banned, told to wait 1 s, then served
    assert time.monotonic() - started >= 1.0 and client_sleeps == [1.0]
    emulator.faults.ip_limit_calls = 1
    emulator.faults.ip_ban_seconds = 300.0
    with pytest.raises(ThrottledError, match="300"):
        client.get_chat(chatid)
    assert client_sleeps == [1.0]  # the 300 s ban: given up at once, not one more wait
