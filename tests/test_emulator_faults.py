"""Injected faults: each one over real HTTP, as a DingTalk client would meet it."""

from __future__ import annotations

import http.client
import json
import threading
import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from reconciler.emulator import EmulatorServer, Faults
from reconciler.emulator import faults as faults_module

from helpers import RawApi


@pytest.fixture
def srv():
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def api(srv):
    with RawApi(srv) as client:
        yield client


@pytest.fixture
def cid(srv):
    return srv.seed_chat("chat", "alice", ["alice", "bob"])


def test_latency_delays_api_requests_but_not_admin_routes(srv, api, cid):
    srv.faults.latency_ms = 120
    started = time.perf_counter()
    assert api.errcode(api.get("/chat/get", chatid=cid)) == 0
    assert time.perf_counter() - started >= 0.12  # the injected sleep guarantees the lower bound
    assert srv.calls[-1].elapsed_ms >= 120
    # Admin routes are never delayed: with a minute of latency configured they still answer inside a
    # timeout far below it (were they delayed, the read would time out, not merely pass slowly).
    srv.faults.latency_ms = 60_000
    assert api.admin("counters", timeout=10).json()["counters"] == {"/gettoken": 1, "/chat/get": 1}


def test_qps_limit_answers_90018_per_endpoint_and_spares_gettoken(srv, api, cid):
    srv.faults.qps_limit = 3
    codes = [api.errcode(api.get("/chat/get", chatid=cid)) for _ in range(5)]
    assert codes == [0, 0, 0, 90018, 90018]
    assert api.errcode(api.post("/chat/update", {"chatid": cid})) == 0  # its own window
    assert all(api.errcode(api.gettoken()) == 0 for _ in range(5))
    time.sleep(1.0)  # the window is one second wide; rejected calls did not extend it
    assert api.errcode(api.get("/chat/get", chatid=cid)) == 0


def test_busy_every_nth_answers_minus_one_and_does_nothing(srv, api, cid):
    srv.faults.busy_every = 2
    first = api.post("/chat/update", {"chatid": cid, "name": "first"})
    second = api.post("/chat/update", {"chatid": cid, "name": "second"})
    assert (api.errcode(first), api.errcode(second)) == (0, -1)
    assert second.json()["errmsg"] == "系统繁忙"
    assert srv.chat(cid)["name"] == "first"
    assert api.errcode(api.gettoken()) == 0  # /gettoken never counts


def test_changing_an_every_nth_knob_restarts_its_count(srv, api, cid):
    for _ in range(3):
        api.get("/chat/get", chatid=cid)
    srv.faults.busy_every = 3
    codes = [api.errcode(api.get("/chat/get", chatid=cid)) for _ in range(6)]
    assert codes == [0, 0, -1, 0, 0, -1]


def test_http500_every_nth_answers_html_and_does_nothing(srv, api):
    srv.faults.http500_every = 1
    response = api.post("/chat/create", {"name": "x", "owner": "a", "useridlist": ["a"]})
    assert response.status_code == 500 and response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text
    assert srv.calls[-1].status == 500 and srv.calls[-1].errcode is None
    srv.faults.http500_every = 0
    assert api.errcode(api.post("/chat/create", {"name": "x", "owner": "a", "useridlist": ["a"]})) == 0
    assert len(srv.calls_to("/chat/create")) == 2 and len(api.stored_chats()) == 1


def test_ip_ban_answers_a_json_ban_without_errcode(srv, api, cid):
    srv.faults.ip_ban_every = 1
    srv.faults.ban_wait = 3
    response = api.get("/chat/get", chatid=cid)
    body = response.json()
    assert response.status_code == 200 and "errcode" not in body
    assert (body["status"], body["wait"], body["punish"]) == (1111, 3, "deny") and body["message"]


def test_ip_ban_can_be_an_html_page(srv, api, cid):
    srv.faults.ip_ban_every = 1
    srv.faults.ip_ban_html = True
    response = api.get("/chat/get", chatid=cid)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()


def test_fault_endpoints_limits_which_endpoints_count_and_fail(srv, api, cid):
    srv.faults.busy_every = 2
    srv.faults.fault_endpoints = {"/chat/update"}
    codes = []
    for _ in range(2):
        codes.append(("get", api.errcode(api.get("/chat/get", chatid=cid))))
        codes.append(("update", api.errcode(api.post("/chat/update", {"chatid": cid}))))
    assert codes == [("get", 0), ("update", 0), ("get", 0), ("update", -1)]


def test_token_uses_expires_each_token_after_n_uses(srv, api, cid):
    srv.faults.token_uses = 2
    codes = [api.errcode(api.get("/chat/get", chatid=cid)) for _ in range(3)]
    assert codes == [0, 0, 42001]
    api.new_token()
    assert api.errcode(api.get("/chat/get", chatid=cid)) == 0


def test_fail_chatids_fails_every_request_naming_the_chat(srv, api, cid):
    other = srv.seed_chat("other", "alice", ["alice"])
    srv.faults.fail_chatids = {cid: 60011}
    assert api.errcode(api.get("/chat/get", chatid=cid)) == 60011
    assert api.errcode(api.post("/chat/update", {"chatid": cid, "name": "nope"})) == 60011
    assert api.errcode(api.post("/chat/send", {"chatid": cid, "msgtype": "text", "text": {"content": "x"}})) == 60011
    assert api.errcode(api.get("/chat/get", chatid=other)) == 0
    assert srv.chat(cid)["name"] == "chat"


def test_drop_after_create_commits_the_chat_then_drops_the_connection(srv, api):
    srv.faults.drop_after_create = 1
    body = {"name": "lost reply", "owner": "alice", "useridlist": ["alice"]}
    with pytest.raises(requests.ConnectionError):
        api.post("/chat/create", body)
    assert [c["name"] for c in api.stored_chats().values()] == ["lost reply"]
    assert srv.calls[-1].status == 0 and srv.faults.drop_after_create == 0
    assert api.errcode(api.post("/chat/create", body)) == 0  # a second chat, same name: create is not idempotent
    assert len(api.stored_chats()) == 2


def test_drop_after_create_spares_failed_creates(srv, api):
    srv.faults.drop_after_create = 1
    assert api.errcode(api.post("/chat/create", {"name": "", "owner": "a", "useridlist": ["a"]})) == 40035
    assert srv.faults.drop_after_create == 1


def test_monthly_quota_runs_out_with_90020(srv, api, cid):
    srv.faults.monthly_quota = 2
    codes = [api.errcode(api.get("/chat/get", chatid=cid)) for _ in range(3)]
    assert codes == [0, 0, 90020]
    assert api.errcode(api.gettoken()) == 0
    assert api.errcode(api.post("/chat/update", {"chatid": cid})) == 90020
    assert srv.faults.monthly_quota == 0


def test_faults_can_be_set_over_the_admin_route(srv, api, cid):
    reply = api.admin("faults", {"fail_chatids": {cid: 34013}, "qps_limit": 0.5})
    assert reply.status_code == 200
    assert srv.faults.fail_chatids == {cid: 34013} and srv.faults.qps_limit == 0.5
    assert api.errcode(api.get("/chat/get", chatid=cid)) == 34013


@pytest.mark.parametrize(
    "values",
    [
        {"busy_every": 1.5},
        {"busy_every": True},
        {"ip_ban_html": 1},
        {"latency_ms": "10"},
        {"fault_endpoints": "/chat/get"},
        {"fail_chatids": {"chat1": "60011"}},
        {"bogus": 1},
    ],
)
def test_faults_update_refuses_bad_values(values):
    faults = Faults()
    with pytest.raises(ValueError):
        faults.update(values)
    assert faults == Faults()


def test_calls_are_listed_in_arrival_order_even_when_they_finish_out_of_order(srv, api, cid):
    srv.faults.latency_ms = 150
    slow = threading.Thread(target=lambda: requests.get(srv.url + "/chat/get", params={"chatid": cid}).close())
    slow.start()
    time.sleep(0.05)
    srv.faults.latency_ms = 0
    api.get("/chat/get", chatid=cid, marker="fast")
    slow.join()
    gets = srv.calls_to("/chat/get")
    assert [c.params.get("marker") for c in gets] == [None, "fast"] and gets[0].seq < gets[1].seq


def test_the_per_ip_limit_bans_every_endpoint_then_lifts(srv, api):
    srv.faults.ip_limit_calls = 5  # api's own /gettoken was the first call in the window
    srv.faults.ip_limit_window = 20.0
    srv.faults.ip_ban_seconds = 0.5
    assert [api.errcode(api.gettoken()) for _ in range(4)] == [0] * 4
    banned = api.gettoken().json()
    assert banned == {"status": 1111, "wait": 1, "punish": "deny", "message": banned["message"]}
    assert "errcode" not in api.get("/chat/get", chatid="x").json()
    time.sleep(0.6)
    assert api.errcode(api.gettoken()) == 0


def test_by_default_more_than_10000_calls_in_20_seconds_ban_the_ip_for_5_minutes(monkeypatch):
    """dingtalk-api.md's per-IP rule, as the default emulator enforces it over real HTTP.

    The injector's clock is a fake (only the ban bookkeeping reads it), so the window edges are exact
    and the test does not depend on how fast 10,000 requests go through.
    """
    now = [1000.0]
    monkeypatch.setattr(faults_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    with EmulatorServer() as server:  # every knob at its default
        address = urlsplit(server.url)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=10)  # one keep-alive connection

        def call(path: str = "/chat/get?chatid=x") -> dict[str, Any]:  # no token: 40014, unless banned
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())

        try:
            assert call()["errcode"] == 40014  # call 1, at t = 0
            now[0] += 5.0
            answers = [call() for _ in range(9_998)]  # calls 2..9,999, at t = 5
            assert all(a["errcode"] == 40014 for a in answers)
            assert call()["errcode"] == 40014  # call 10,000 within 20 s: still answered normally
            now[0] += 15.0
            assert call()["errcode"] == 40014  # t = 20: call 1 has left the window, so 10,000 in it again
            now[0] += 4.9
            banned = call()  # t = 24.9: calls 2..10,002 are 10,001 within the last 20 s
            assert banned == {"status": 1111, "wait": 300, "punish": "deny", "message": banned["message"]}
            now[0] += 299.5
            assert call("/gettoken?appkey=k&appsecret=s")["wait"] == 1  # every endpoint, until 5 minutes pass
            now[0] += 0.5
            assert call("/gettoken?appkey=k&appsecret=s")["errcode"] == 0
            assert call()["errcode"] == 40014
        finally:
            conn.close()
        assert server.counters() == {"/chat/get": 10_003, "/gettoken": 2}
