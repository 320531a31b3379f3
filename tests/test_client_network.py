"""The client against hostile or wrong servers, proxies and IP bans, over real sockets on 127.0.0.1.

Wrong --api-base (a plain web server, a redirect, an unknown host, a closed
port), a connection reset, credentials in the base URL, a forwarding proxy
from the environment, IP bans for creates, the WARNING line per retry,
``authenticate``, ``write`` and the lazy package import.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from reconciler.backends import (
    AmbiguousCreateError,
    AuthError,
    InvalidUserError,
    IpBanError,
    NotFoundError,
    QuotaExhaustedError,
    ThrottledError,
    TransportError,
    is_fatal,
    redact,
)
from reconciler.backends.errors import DingTalkError
from reconciler.backends.transport import CONNECT_ATTEMPTS

from helpers import APP_KEY, APP_SECRET, LocalServer
from wire import Wire

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def servers():
    started: list = []

    def start(reply) -> LocalServer:
        server = LocalServer(reply)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def fast_client(base: str, **overrides) -> Wire:
    options = dict(api_base=base, max_qps=0, backoff_base=0.01, backoff_cap=0.02)
    options.update(overrides)
    return Wire(APP_KEY, APP_SECRET, **options)


# ----------------------------------------------------------------- wrong --api-base


def test_a_redirect_is_never_followed_and_the_secret_stays_home(servers, no_proxy_env):
    elsewhere = servers(lambda h: (200, {}, b'{"errcode": 0, "access_token": "stolen", "expires_in": 7200}'))
    target = f"{elsewhere.url}/gettoken?appkey={APP_KEY}&appsecret={APP_SECRET}&x=hidden-query"
    redirector = servers(lambda h: (302, {"Location": target}, b""))
    with fast_client(redirector.url) as client, pytest.raises(TransportError) as info:
        client.authenticate()
    message = str(info.value)
    assert "redirect" in message and "HTTP 302" in message
    assert elsewhere.lines == []  # nothing, and so no appsecret, ever reached the other host
    assert len(redirector.lines) == 1  # definite: not retried
    assert "hidden-query" not in message and APP_SECRET not in message
    assert not isinstance(info.value, AmbiguousCreateError) and is_fatal(info.value)


def test_a_redirect_on_create_is_a_definite_failure_not_an_ambiguous_one(servers, no_proxy_env):
    def reply(handler):
        if handler.path.startswith("/gettoken"):
            return 200, {}, b'{"errcode": 0, "access_token": "tok-123456", "expires_in": 7200}'
        return 307, {"Location": "http://127.0.0.1:9/chat/create"}, b""

    with fast_client(servers(reply).url) as client, pytest.raises(TransportError, match="redirect") as info:
        client.create_chat("n", "alice", ["alice"])
    assert not isinstance(info.value, AmbiguousCreateError)


class PlainWebServer(SimpleHTTPRequestHandler):
    """``python -m http.server`` on an empty folder: every DingTalk path is an HTML 404."""

    def log_message(self, *args) -> None:
        pass


def test_a_plain_web_server_answering_404_fails_at_once(tmp_path, no_proxy_env):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(PlainWebServer, directory=str(tmp_path)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        base = "http://127.0.0.1:%d" % httpd.server_address[1]
        with fast_client(base, max_attempts=5) as client:
            with pytest.raises(TransportError) as info:
                client.get_chat("chat1")
            assert client.stats["calls"] == {"/gettoken": 1} and client.stats["retries"] == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    message = str(info.value)
    assert message == f"/gettoken failed: HTTP 404 from {base}/gettoken: not the DingTalk API; check --api-base"
    assert is_fatal(info.value)


def test_an_unknown_host_is_not_retried(no_proxy_env):
    with fast_client("http://nonexistent.invalid", max_attempts=5) as client:
        with pytest.raises(TransportError) as info:
            client.authenticate()
        assert client.stats["calls"] == {"/gettoken": 1} and client.stats["retries"] == 0
    assert str(info.value) == (
        "/gettoken failed: cannot connect to http://nonexistent.invalid: host name not found; check --api-base"
    )


def test_connection_refused_gets_a_short_bounded_retry(no_proxy_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    with fast_client(f"http://127.0.0.1:{port}", max_attempts=10) as client:
        with pytest.raises(TransportError) as info:
            client.authenticate()
        assert client.stats["calls"] == {"/gettoken": CONNECT_ATTEMPTS}
    assert str(info.value) == f"/gettoken failed: cannot connect to http://127.0.0.1:{port}: connection refused"


class ResetServer:
    """Accepts, reads the request, then resets the connection (SO_LINGER 0): no answer at all."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.url = "http://127.0.0.1:%d" % self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()

    def stop(self) -> None:
        self._sock.close()


def test_a_connection_reset_reads_as_one_clean_sentence(no_proxy_env):
    server = ResetServer()
    try:
        with fast_client(server.url, max_attempts=1) as client, pytest.raises(TransportError) as info:
            client.authenticate()
    finally:
        server.stop()
    assert str(info.value) == f"/gettoken failed: connection to {server.url} failed: connection reset by peer"


# ----------------------------------------------------------------- credentials in the base URL


def test_credentials_in_the_api_base_are_never_printed(emulator, caplog, no_proxy_env):
    caplog.set_level(logging.DEBUG)
    host = urlsplit(emulator.url).netloc
    errors: list[BaseException] = []
    with fast_client(f"http://admin:pw@{host}", max_attempts=2) as client:
        chatid = emulator.seed_chat("n", "alice", ["alice"])
        assert client.get_chat(chatid)["chatid"] == chatid  # the base works, userinfo and all
        shown = repr(client)
        emulator.faults.http500_every = 1
        try:
            client.get_chat(chatid)
        except TransportError as exc:
            errors.append(exc)
        emulator.stop()
        try:
            client.get_chat(chatid)
        except TransportError as exc:
            errors.append(exc)
    assert len(errors) == 2
    rendered = [shown, caplog.text] + ["".join(traceback.format_exception(type(e), e, e.__traceback__)) for e in errors]
    for text in rendered:
        assert "admin:pw" not in text and ":pw@" not in text
    assert f"http://{host}" in str(errors[1])


@pytest.mark.parametrize("password", ["p", "pw", "a-much-longer-password-value"])
def test_redact_masks_url_userinfo_whatever_the_password_length(password):
    text = f"cannot connect to https://admin:{password}@oapi.example.com:8443/x?y=1"
    assert redact(text) == "cannot connect to https://***@oapi.example.com:8443/x?y=1"


# ----------------------------------------------------------------- proxies from the environment


class ForwardingProxy:
    """A plain-HTTP forward proxy: records each request line (query dropped), forwards it, relays the answer."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                method, target, version = self.requestline.split(" ")
                outer.lines.append(f"{method} {target.split('?')[0]} {version}")
                parts = urlsplit(target)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                upstream.request(method, path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self._httpd.server_address[1]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _set_proxy_env(monkeypatch, http_proxy: str) -> None:
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, http_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")  # 127.0.0.1 would otherwise be a candidate for bypassing


def test_a_proxy_from_the_environment_is_used_and_resolved_once(emulator, monkeypatch, no_proxy_env):
    proxy = ForwardingProxy()
    try:
        _set_proxy_env(monkeypatch, proxy.url)
        chatid = emulator.seed_chat("n", "alice", ["alice"])
        with fast_client(emulator.url) as client:
            # Resolved at construction: a later change of the environment does not reach this client.
            _set_proxy_env(monkeypatch, "http://127.0.0.1:9")
            assert client.get_chat(chatid)["chatid"] == chatid
            client.update_chat(chatid, add=["bob"])
        assert proxy.lines == [
            f"GET {emulator.url}/gettoken HTTP/1.1",
            f"GET {emulator.url}/chat/get HTTP/1.1",
            f"POST {emulator.url}/chat/update HTTP/1.1",
        ]
        assert "bob" in emulator.chat(chatid)["useridlist"]
    finally:
        proxy.stop()


def test_no_proxy_bypasses_the_proxy(emulator, monkeypatch, no_proxy_env):
    _set_proxy_env(monkeypatch, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    chatid = emulator.seed_chat("n", "alice", ["alice"])
    with fast_client(emulator.url) as client:
        assert client.get_chat(chatid)["chatid"] == chatid


def test_an_unreachable_proxy_is_named_without_its_credentials(monkeypatch, no_proxy_env):
    _set_proxy_env(monkeypatch, "http://puser:proxy-pass-123@127.0.0.1:9")
    with fast_client("http://dingtalk.example", max_attempts=5) as client:
        with pytest.raises(TransportError) as info:
            client.authenticate()
        assert client.stats["calls"] == {"/gettoken": CONNECT_ATTEMPTS}
    assert "proxy http://127.0.0.1:9" in str(info.value)
    assert "proxy-pass-123" not in str(info.value) and "puser" not in str(info.value)


def test_the_ca_bundle_from_the_environment_is_used(monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with fast_client("https://dingtalk.example") as client:
        assert client.transport._session.verify == str(bundle)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bundle))
    with fast_client("https://dingtalk.example") as client:
        assert client.transport._session.verify == str(bundle)


# ----------------------------------------------------------------- IP bans


def test_an_ip_ban_on_create_is_a_definite_refusal_waited_out_and_retried(client, emulator):
    emulator.faults.fault_endpoints = {"/chat/create"}
    emulator.faults.ip_ban_every = 2
    emulator.faults.ban_wait = 1
    client.create_chat("first", "alice", ["alice"])
    client.create_chat("second", "alice", ["alice"])  # banned (JSON), waits 1 s, sent again
    emulator.faults.ip_ban_html = True
    client.create_chat("third", "alice", ["alice"])
    client.create_chat("fourth", "alice", ["alice"])  # banned (HTML page), waits, sent again
    creates = emulator.calls_to("/chat/create")
    assert [c.errcode for c in creates] == [0, None, 0, None, 0, None, 0]  # every 2nd request banned
    assert sorted(c["name"] for c in emulator.chats().values()) == ["first", "fourth", "second", "third"]


def test_a_ban_longer_than_the_budget_is_fatal_and_stops_every_later_call(make_client, emulator):
    chatid = emulator.seed_chat("n", "alice", ["alice"])
    client = make_client(max_retry_seconds=5)
    client.get_chat(chatid)
    emulator.faults.ip_ban_every = 1
    emulator.faults.ban_wait = 300
    with pytest.raises(IpBanError, match="300 s") as info:
        client.create_chat("n", "alice", ["alice"])
    assert isinstance(info.value, ThrottledError) and is_fatal(info.value)
    assert not isinstance(info.value, AmbiguousCreateError)
    sent = len(emulator.calls)
    with pytest.raises(IpBanError):
        client.get_chat(chatid)  # the ban is known: nothing is sent into it
    assert len(emulator.calls) == sent


def test_is_fatal_classification():
    assert is_fatal(IpBanError("/chat/get", "banned"))
    assert not is_fatal(ThrottledError("/chat/get", "busy", -1))
    assert is_fatal(QuotaExhaustedError("/chat/get", "quota", 90020))
    assert is_fatal(TransportError("/chat/get", "unreachable"))
    assert is_fatal(AuthError("/gettoken", "bad secret", 40089))
    assert not is_fatal(AuthError("/chat/get", "no permission", 60011))
    assert not is_fatal(NotFoundError("/chat/get", "gone", 34013))


# ----------------------------------------------------------------- rate: per endpoint, adaptive


def test_throttling_lowers_only_that_endpoints_rate(make_client, emulator):
    client = make_client(max_qps=100, max_attempts=2)
    chatid = emulator.seed_chat("n", "alice", ["alice"])
    client.update_chat(chatid, add=["bob"])
    emulator.faults.fail_chatids = {chatid: 90018}
    with pytest.raises(ThrottledError):
        client.get_chat(chatid)  # refused twice: each attempt went out at the rate of its round
    assert client.rate("/chat/get") == pytest.approx(95 / 4)
    assert client.rate("/chat/update") == pytest.approx(95)  # a per-endpoint limit, like DingTalk's
    assert client.stats["rate_cuts"] == 2


def test_the_per_ip_ceiling_spans_all_endpoints(emulator):
    """Each endpoint alone is far under its limit; together they would break the IP's, and do not."""
    emulator.faults.ip_limit_calls = 20
    emulator.faults.ip_limit_window = 1.0
    emulator.faults.ip_ban_seconds = 300
    chatid = emulator.seed_chat("n", "alice", ["alice"])
    with fast_client(emulator.url, max_qps=1000, ip_limit=(20, 1.0), max_retry_seconds=1) as client:
        client.authenticate()

        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                client.get_chat(chatid) if i % 2 else client.update_chat(chatid, add=[f"u{i}"])
            except DingTalkError as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert all(c.errcode == 0 for c in emulator.calls), [c.errcode for c in emulator.calls]
    assert len(emulator.calls) == 41


def test_a_client_above_the_servers_limit_adapts_and_no_call_fails(make_client, emulator):
    chatids = [emulator.seed_chat(f"c{i}", "alice", ["alice"]) for i in range(200)]
    client = make_client(max_qps=60, backoff_base=0.5, backoff_cap=8.0)  # production backoff
    client.authenticate()
    emulator.faults.qps_limit = 20
    failures: list[BaseException] = []
    lock = threading.Lock()
    queue = list(chatids)

    def reader() -> None:
        while True:
            with lock:
                if not queue:
                    return
                chatid = queue.pop()
            try:
                client.get_chat(chatid)
            except DingTalkError as exc:  # pragma: no cover - the assertion below reports it
                failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(24)]  # live.default_parallelism(60)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    gets = emulator.calls_to("/chat/get")
    assert sum(c.errcode == 0 for c in gets) == 200
    assert client.stats["rate_cuts"] >= 1 and client.rate("/chat/get") < 57


# ----------------------------------------------------------------- logging


def test_every_retry_is_one_warning_line(client, emulator, caplog):
    chatid = emulator.seed_chat("n", "alice", ["alice"])
    emulator.faults.busy_every = 2
    caplog.set_level(logging.WARNING, logger="reconciler.dingtalk")
    client.get_chat(chatid)
    client.get_chat(chatid)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert re.fullmatch(r"/chat/get: errcode -1: \S+; retry 1 in \d+\.\d\d s", warnings[0]), warnings


# ----------------------------------------------------------------- authenticate and write


def test_authenticate_fetches_once_and_reuses_the_token(client, emulator):
    client.authenticate()
    client.authenticate()
    assert emulator.counters() == {"/gettoken": 1}


def test_authenticate_reports_bad_credentials(emulator):
    with Wire(APP_KEY, "wrong-secret-000", api_base=emulator.url, max_qps=0) as c:
        with pytest.raises(AuthError) as info:
            c.authenticate()
    assert is_fatal(info.value)


def test_write_posts_the_body_exactly_and_returns_what_it_produced(client, emulator):
    body = {"name": "值班", "owner": "alice", "useridlist": ["alice", "bob"], "searchable": 1}
    produced = client.write("/chat/create", body)
    assert produced["chatid"].startswith("chat") and produced["open_conversation_id"].startswith("cid")
    assert emulator.calls_to("/chat/create")[0].body == body
    update = {"chatid": produced["chatid"], "add_useridlist": ["carol"], "chatBannedType": 0}
    assert client.write("/chat/update", update) == {}
    assert emulator.calls_to("/chat/update")[0].body == update


def test_write_names_every_user_id_of_the_body(client, emulator):
    chatid = emulator.seed_chat("n", "alice", ["alice"])
    emulator.faults.fail_chatids = {chatid: 60121}
    with pytest.raises(InvalidUserError) as info:
        client.write(
            "/chat/update",
            {"chatid": chatid, "owner": "olga", "add_useridlist": ["ann", "olga"], "del_useridlist": ["dan"]},
        )
    assert info.value.userids == ("olga", "ann", "dan")


def test_write_never_retries_an_ambiguous_create(client, emulator):
    emulator.faults.drop_after_create = 1
    with pytest.raises(AmbiguousCreateError):
        client.write("/chat/create", {"name": "n", "owner": "alice", "useridlist": ["alice"]})
    assert len(emulator.calls_to("/chat/create")) == 1


# ----------------------------------------------------------------- import cost


def test_errors_redact_and_planning_do_not_import_requests():
    code = (
        "import sys, reconciler.backends.errors, reconciler.backends.redact, reconciler.backends as b; "
        "b.backend_for('v1').calls; "
        "print(json.dumps(['requests' in sys.modules, 'urllib3' in sys.modules])); "
        "import reconciler.backends.transport; print(json.dumps('requests' in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert json.loads(out[0]) == [False, False]
    assert json.loads(out[1]) is True


# ----------------------------------------------------------------- answers that lose data


def _topapi_reply(result: dict):
    """A server that hands out a token and answers every other call with ``result``."""

    def reply(handler) -> tuple:
        if handler.path.startswith("/gettoken"):
            body = {"errcode": 0, "access_token": "token-for-the-malformed-test", "expires_in": 7200}
        else:
            body = {"errcode": 0, "errmsg": "ok", "result": result}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    return reply


@pytest.mark.parametrize(
    "result, call",
    [
        ({}, lambda c: c.list_department_user_ids(100)),  # no userid_list: not "nobody"
        ({"hasMore": False}, lambda c: c.list_role_user_ids(3001)),  # no list: a lost page, not fewer people
    ],
)
def test_a_successful_answer_missing_its_list_is_malformed_not_empty(servers, no_proxy_env, result, call):
    server = servers(_topapi_reply(result))
    with fast_client(server.url) as client, pytest.raises(DingTalkError, match="malformed response"):
        call(client)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_a_tls_failure_after_a_create_was_sent_is_an_unknown_outcome(tmp_path, monkeypatch, no_proxy_env):
    """The create reached the server; its answer died in TLS. A definite error here would mean a second chat."""
    import os
    import ssl

    from reconciler.backends import AmbiguousCreateError

    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    creates: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            conn = context.wrap_socket(raw, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            if data.startswith(b"GET /gettoken"):
                body = json.dumps({"errcode": 0, "access_token": "token-for-the-tls-test", "expires_in": 7200}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
            else:
                creates.append(data)
                os.write(conn.fileno(), b"\x17\x03\x03\x00\x20" + os.urandom(32))  # a corrupt TLS record
            time.sleep(0.2)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    try:
        with fast_client(f"https://127.0.0.1:{listener.getsockname()[1]}") as client:
            with pytest.raises(AmbiguousCreateError):
                client.write("/chat/create", {"name": "n", "owner": "a", "useridlist": ["a"]})
    finally:
        listener.close()
    assert len(creates) == 1  # sent once, never again
