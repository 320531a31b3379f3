"""The emulator states DingTalk's rules itself, and gives operators and crash tests their handles."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests

import reconciler.backends.packing
from reconciler.backends import backend_for
from reconciler.emulator import Call, EmulatorServer, Faults, ListenError, limits
from reconciler.plan import Action, ChatChange

EMULATOR_DIR = Path(limits.__file__).resolve().parent


def token_of(http: requests.Session, srv: EmulatorServer) -> str:
    return http.get(srv.url + "/gettoken", params={"appkey": "k", "appsecret": "s"}).json()["access_token"]


# ---- independence from the client's rules (issue 13 #3) ----------------------------------------


def test_no_emulator_module_imports_the_clients_rules():
    pattern = re.compile(r"from \.\.rules|from reconciler\.rules|import rules")
    offenders = [
        f"{p.name}:{n}"
        for p in sorted(EMULATOR_DIR.glob("*.py"))
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_the_emulator_states_dingtalks_numbers_from_the_reference():
    assert (limits.IDS_PER_CALL, limits.MEMBER_CAP, limits.NAME_MIN, limits.NAME_MAX) == (40, 1000, 1, 20)
    assert limits.SETTING_FIELDS == (
        "chatBannedType",
        "searchable",
        "validationType",
        "mentionAllAuthority",
        "managementType",
        "showHistoryType",
    )
    assert (limits.TOKEN_TTL_SECONDS, limits.QPS_PER_API, limits.READ_LIST_PAGE_MAX) == (7200, 20, 100)
    assert (limits.ROLE_USERS_PAGE_DEFAULT, limits.ROLE_USERS_PAGE_MAX, limits.ROLE_LIST_PAGE_MAX) == (20, 100, 200)
    assert (limits.IP_LIMIT_CALLS, limits.IP_LIMIT_WINDOW, limits.IP_BAN_SECONDS) == (10_000, 20.0, 300.0)


def _create_change(n: int) -> ChatChange:
    members = tuple(f"u{i:03d}" for i in range(n))
    return ChatChange(key="big", action=Action.CREATE, name=(None, "大群"), owner=(None, members[0]), add=members)


def _send(srv: EmulatorServer, calls: list[Any]) -> list[int]:
    """Send the client's write calls in order (a create's chatid fills the updates); the errcodes."""
    codes, chatid = [], None
    with requests.Session() as http:
        token = token_of(http, srv)
        for call in calls:
            body = dict(call.body) if call.creates else {**call.body, "chatid": chatid}
            answer = http.post(srv.url + call.path, params={"access_token": token}, json=body).json()
            codes.append(answer["errcode"])
            chatid = answer.get("chatid", chatid)
    return codes


def test_a_wrong_client_batch_size_is_refused_by_the_emulator(monkeypatch):
    monkeypatch.setattr(reconciler.backends.packing, "IDS_PER_CALL", 41)
    calls = backend_for("legacy").calls(_create_change(100))
    assert len(calls[0].body["useridlist"]) == 41
    with EmulatorServer() as srv:
        codes = _send(srv, calls)
        assert codes[0] == 40032 and srv.chats() == {}


def test_the_clients_real_batches_are_accepted():
    calls = backend_for("legacy").calls(_create_change(100))
    with EmulatorServer() as srv:
        assert set(_send(srv, calls)) == {0}
        (chat,) = srv.chats().values()
        assert len(chat["useridlist"]) == 100


# ---- constructor knobs and the request log (issue 14) ---------------------------------------------


def test_qps_limit_and_latency_are_constructor_parameters_that_reset_restores():
    with EmulatorServer(qps_limit=2, latency_ms=1) as srv, requests.Session() as http:
        assert (srv.faults.qps_limit, srv.faults.latency_ms) == (2, 1)
        token = token_of(http, srv)
        codes = [
            http.get(srv.url + "/chat/get", params={"access_token": token, "chatid": "chat00"}).json()["errcode"]
            for _ in range(3)
        ]
        assert codes == [34013, 34013, 90018]
        srv.faults.qps_limit = 0
        srv.reset()
        assert srv.faults == Faults(qps_limit=2, latency_ms=1)


def test_on_request_sees_every_call_without_secrets():
    seen: list[Call] = []
    with EmulatorServer(on_request=seen.append) as srv, requests.Session() as http:
        secret = "s3cr3t-app-secret"
        token = http.get(srv.url + "/gettoken", params={"appkey": "k", "appsecret": secret}).json()["access_token"]
        http.post(
            srv.url + "/chat/create",
            params={"access_token": token},
            json={"name": "x", "owner": "a", "useridlist": ["a", "b"]},
        )
        http.get(srv.url + "/__emulator__/counters")  # admin routes are not API calls
        assert [c.endpoint for c in seen] == ["/gettoken", "/chat/create"]
        lines = [c.describe() for c in seen]
        assert lines[0].startswith("#1 GET /gettoken appkey=k appsecret=<redacted> → errcode 0 (")
        assert lines[1].startswith("#2 POST /chat/create name=x useridlist=[2 ids] → errcode 0 (")
        assert all(secret not in line and token not in line for line in lines)
        assert secret not in repr(seen) and token not in repr(seen)


def test_a_failing_on_request_callback_does_not_break_the_api():
    def explode(call: Call) -> None:
        raise RuntimeError("printer broke")

    with EmulatorServer(on_request=explode) as srv, requests.Session() as http:
        assert token_of(http, srv)


def test_describe_says_when_there_was_no_errcode_or_no_answer():
    base: dict[str, Any] = dict(
        seq=3, method="GET", endpoint="/chat/get", params={"chatid": "chat1"}, body=None, elapsed_ms=1.0
    )
    assert Call(status=200, errcode=None, **base).describe().endswith("→ HTTP 200, no errcode (1.0 ms)")
    assert "dropped, no answer" in Call(status=0, errcode=0, **base).describe()


def test_a_busy_port_is_a_clear_error():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        srv = EmulatorServer(port=port)
        with pytest.raises(ListenError) as info:
            srv.start()
        assert str(info.value) == (
            f"cannot listen on 127.0.0.1:{port}: the port is already in use; pick another with --port"
        )
        assert isinstance(info.value, OSError) and info.value.errno == errno.EADDRINUSE
        with pytest.raises(ListenError):
            srv.serve_forever()


# ---- before_reply: the crash tests' hook ------------------------------------------------------------


def test_before_reply_runs_after_the_commit_and_before_the_answer():
    with EmulatorServer() as srv, requests.Session() as http:
        token = token_of(http, srv)
        seen: list[tuple[str, int, int]] = []
        srv.before_reply = lambda call: seen.append((call.endpoint, call.errcode, len(srv.chats())))
        answer = http.post(
            srv.url + "/chat/create",
            params={"access_token": token},
            json={"name": "x", "owner": "a", "useridlist": ["a"]},
        ).json()
        assert answer["errcode"] == 0
        assert seen == [("/chat/create", 0, 1)]  # the chat existed before its answer was written


def test_before_reply_raising_closes_the_connection_unanswered():
    with EmulatorServer() as srv, requests.Session() as http:
        token = token_of(http, srv)

        def lose_it(call: Call) -> None:
            raise ConnectionAbortedError("answer lost")

        srv.before_reply = lose_it
        with pytest.raises(requests.ConnectionError):
            http.post(
                srv.url + "/chat/create",
                params={"access_token": token},
                json={"name": "x", "owner": "a", "useridlist": ["a"]},
            )
        assert len(srv.chats()) == 1


CLIENT = textwrap.dedent("""
    import os, sys, requests
    answer = requests.post(os.environ["EMU_URL"] + "/chat/create", params={"access_token": os.environ["EMU_TOKEN"]},
                           json={"name": "crash", "owner": "a", "useridlist": ["a", "b"]}, timeout=60)
    print("ANSWERED", answer.text, flush=True)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_client_killed_between_commit_and_answer_leaves_the_chat_behind():
    with EmulatorServer() as srv, requests.Session() as http:
        env = {**os.environ, "EMU_URL": srv.url, "EMU_TOKEN": token_of(http, srv)}
        killed: list[int] = []
        holder: dict[str, subprocess.Popen] = {}

        def kill_client(call: Call) -> None:
            if call.endpoint == "/chat/create":
                killed.append(len(srv.chats()))
                holder["proc"].send_signal(signal.SIGKILL)
                holder["proc"].wait()

        srv.before_reply = kill_client
        holder["proc"] = proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL and b"ANSWERED" not in out
        assert killed == [1]
        (chat,) = srv.chats().values()
        assert chat["name"] == "crash" and srv.calls_to("/chat/create")[0].errcode == 0


# ---- the documentation keeps up --------------------------------------------------------------------


def test_every_fault_knob_and_admin_route_is_documented():
    from dataclasses import fields

    from reconciler.emulator.server import _ORG_EDITS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "emulator.md").read_text(encoding="utf-8")
    missing = [f.name for f in fields(Faults) if f"`{f.name}`" not in doc]
    routes = [
        "GET calls",
        "GET counters",
        "GET chats",
        "GET faults",
        "POST faults",
        "POST reset",
        "POST expire-tokens",
        "GET org",
        "POST org",
        *(f"POST {name}" for name in _ORG_EDITS),
    ]
    missing += [r for r in routes if f"`{r}" not in doc]
    assert missing == []
