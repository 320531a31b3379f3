"""The emulator speaks dingtalk-api.md over real HTTP: every endpoint, every rule, its errcode."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import pytest
import requests

from reconciler.emulator import Call, EmulatorServer, Faults, load_users

# DingTalk's numbers as the emulator states them, never the client's (reconciler.rules): see test_emulator_ops.py, which proves the emulator catches a wrong client constant.
from reconciler.emulator.limits import IDS_PER_CALL as BATCH_SIZE
from reconciler.emulator.limits import MEMBER_CAP, NAME_MAX, READ_LIST_PAGE_MAX, SETTING_FIELDS

from helpers import RawApi

KEY = "emu-key"
SECRET = "emu-secret-NEVER-PRINTED"


@pytest.fixture
def srv():
    with EmulatorServer(app_key=KEY, app_secret=SECRET) as server:
        yield server


@pytest.fixture
def api(srv):
    with RawApi(srv, KEY, SECRET) as client:
        yield client


def ids(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


# ---- /gettoken and tokens ------------------------------------------------------------------


def test_gettoken_issues_a_random_token_with_the_ttl(srv, api):
    first, second = api.gettoken().json(), api.gettoken().json()
    assert first["errcode"] == 0 and first["expires_in"] == 7200
    assert len(first["access_token"]) == 32 and first["access_token"] != second["access_token"]


@pytest.mark.parametrize(
    "params",
    [
        {"appkey": KEY},
        {"appsecret": SECRET},
        {"appkey": "", "appsecret": SECRET},
        {"appkey": "wrong", "appsecret": SECRET},
        {"appkey": KEY, "appsecret": "wrong"},
    ],
)
def test_gettoken_rejects_bad_credentials_with_40089(srv, params):
    reply = requests.get(srv.url + "/gettoken", params=params).json()
    assert reply["errcode"] == 40089 and "access_token" not in reply


def test_any_nonempty_credentials_are_accepted_when_none_are_configured():
    with EmulatorServer() as server, requests.Session() as http:
        reply = http.get(server.url + "/gettoken", params={"appkey": "a", "appsecret": "b"}).json()
        assert reply["errcode"] == 0
        assert http.get(server.url + "/gettoken", params={"appkey": "a", "appsecret": ""}).json()["errcode"] == 40089


@pytest.mark.parametrize("token, errcode", [(None, 40014), ("", 40014), ("0" * 32, 40014)])
def test_missing_or_unknown_token_is_40014(srv, api, token, errcode):
    params = {} if token is None else {"access_token": token}
    reply = api.http.get(srv.url + "/chat/get", params={"chatid": "chat00", **params}).json()
    assert reply["errcode"] == errcode


def test_token_expires_after_its_ttl():
    with EmulatorServer(token_ttl=0.2) as server, RawApi(server) as client:
        assert client.get_json("/chat/get", chatid="chat00")["errcode"] == 34013
        time.sleep(0.25)
        assert client.get_json("/chat/get", chatid="chat00")["errcode"] == 42001
        client.new_token()
        assert client.get_json("/chat/get", chatid="chat00")["errcode"] == 34013


def test_expire_tokens_expires_every_issued_token_but_not_new_ones(srv, api):
    other = api.gettoken().json()["access_token"]
    srv.expire_tokens()
    assert api.get_json("/chat/get", chatid="chat00")["errcode"] == 42001
    assert api.get_json("/chat/get", chatid="chat00", access_token=other)["errcode"] == 42001
    api.new_token()
    assert api.get_json("/chat/get", chatid="chat00")["errcode"] == 34013


# ---- /chat/create ---------------------------------------------------------------------------


def test_create_answers_ids_and_stores_the_chat(srv, api):
    reply = api.post_json(
        "/chat/create",
        {
            "name": "工程值班",
            "owner": "alice",
            "useridlist": ["alice", "bob", "alice"],
            "searchable": 1,
            "chatBannedType": 0,
        },
    )
    assert reply["errcode"] == 0 and reply["conversationTag"] == 2
    assert reply["chatid"].startswith("chat") and len(reply["chatid"]) == 4 + 32
    assert int(reply["chatid"][4:], 16) >= 0 and reply["openConversationId"].startswith("cid")
    info = srv.chat(reply["chatid"])
    assert info["useridlist"] == ["alice", "bob"]  # deduplicated, join order
    assert info["owner"] == "alice" and info["name"] == "工程值班"
    assert {f: info[f] for f in SETTING_FIELDS} == {f: int(f == "searchable") for f in SETTING_FIELDS}


def test_create_counts_characters_not_bytes_and_accepts_the_limits(srv, api):
    members = ids(BATCH_SIZE)
    cid = api.create(name="群" * NAME_MAX, owner=members[0], members=members)
    assert srv.chat(cid)["name"] == "群" * NAME_MAX and len(srv.chat(cid)["useridlist"]) == BATCH_SIZE


@pytest.mark.parametrize(
    "change, errcode",
    [
        ({"name": ""}, 40035),
        ({"name": "x" * (NAME_MAX + 1)}, 40035),
        ({"name": None}, 40035),
        ({"name": 12}, 40035),
        ({"useridlist": []}, 40032),
        ({"useridlist": ids(BATCH_SIZE + 1)}, 40032),
        ({"useridlist": "alice,bob"}, 40032),
        ({"useridlist": ["alice", 7]}, 40032),
        ({"useridlist": None}, 40032),
        ({"owner": "carol"}, 40035),
        ({"owner": None}, 40035),
        ({"searchable": 2}, 40035),
        ({"searchable": True}, 40035),
        ({"chatBannedType": "1"}, 40035),
        ({"showHistoryType": -1}, 40035),
    ],
)
def test_create_rules(srv, api, change, errcode):
    body = {"name": "ok", "owner": "alice", "useridlist": ["alice", "bob"], **change}
    reply = api.post_json("/chat/create", body)
    assert reply["errcode"] == errcode and reply["errmsg"]
    assert srv.chat(reply.get("chatid", "")) is None and "chatid" not in reply


def test_create_and_update_reject_users_outside_the_directory_naming_them():
    with EmulatorServer(users=["alice", "bob", "carol"]) as server, RawApi(server) as client:
        reply = client.post_json("/chat/create", {"name": "x", "owner": "alice", "useridlist": ["alice", "zed", "yan"]})
        assert reply["errcode"] == 60121 and "zed" in reply["errmsg"] and "yan" in reply["errmsg"]
        cid = client.create(members=["alice", "bob"])
        reply = client.post_json("/chat/update", {"chatid": cid, "add_useridlist": ["carol", "zed"]})
        assert reply["errcode"] == 60121 and "zed" in reply["errmsg"] and "carol" not in reply["errmsg"]
        assert server.chat(cid)["useridlist"] == ["alice", "bob"]


# ---- /chat/update ---------------------------------------------------------------------------


def test_update_changes_what_is_sent_and_nothing_else(srv, api):
    cid = api.create(members=["alice", "bob", "dave"], searchable=1, validationType=1)
    reply = api.post_json(
        "/chat/update",
        {
            "chatid": cid,
            "name": "新名字",
            "owner": "bob",
            "add_useridlist": ["carol"],
            "del_useridlist": ["dave"],
            "icon": "@media",
            "chatBannedType": 1,
            "searchable": None,
            "add_extidlist": ["x"],
            "del_extidlist": [],
            "isBan": True,
        },
    )
    assert reply == {"errcode": 0, "errmsg": "ok"}
    info = srv.chat(cid)
    assert (info["name"], info["owner"], info["icon"]) == ("新名字", "bob", "@media")
    assert info["useridlist"] == ["alice", "bob", "carol"]
    assert (info["chatBannedType"], info["searchable"], info["validationType"]) == (1, 1, 1)
    assert info["extidlist"] == []


def test_update_with_only_chatid_or_empty_icon_changes_nothing(srv, api):
    cid = api.create(searchable=1)
    api.post_json("/chat/update", {"chatid": cid, "icon": "@media"})
    before = srv.chat(cid)
    assert api.post_json("/chat/update", {"chatid": cid})["errcode"] == 0
    assert (
        api.post_json(
            "/chat/update",
            {"chatid": cid, "icon": "", "name": None, "owner": None, "add_useridlist": [], "del_useridlist": None},
        )["errcode"]
        == 0
    )
    assert srv.chat(cid) == before


def test_a_setting_sent_as_zero_is_set_to_zero(srv, api):
    cid = api.create(searchable=1)
    assert api.post_json("/chat/update", {"chatid": cid, "searchable": 0})["errcode"] == 0
    assert srv.chat(cid)["searchable"] == 0


def test_adding_a_member_or_deleting_a_non_member_is_harmless(srv, api):
    cid = api.create(members=["alice", "bob"])
    reply = api.post_json(
        "/chat/update", {"chatid": cid, "add_useridlist": ["bob", "carol"], "del_useridlist": ["nobody"]}
    )
    assert reply["errcode"] == 0 and srv.chat(cid)["useridlist"] == ["alice", "bob", "carol"]


def test_update_may_fill_a_chat_to_exactly_the_member_cap(srv, api):
    cid = srv.seed_chat("big", "u0000", ids(MEMBER_CAP - BATCH_SIZE))
    reply = api.post_json("/chat/update", {"chatid": cid, "add_useridlist": ids(BATCH_SIZE, "n")})
    assert reply["errcode"] == 0 and len(srv.chat(cid)["useridlist"]) == MEMBER_CAP


@pytest.mark.parametrize(
    "change, errcode",
    [
        ({"chatid": None}, 34001),
        ({"chatid": "not-a-chat"}, 34001),
        ({"chatid": "chatXYZ"}, 34001),
        ({"chatid": "chat" + "0" * 32}, 34013),
        ({"add_useridlist": ids(BATCH_SIZE + 1)}, 40032),
        ({"del_useridlist": ids(BATCH_SIZE + 1)}, 40032),
        ({"add_useridlist": "carol"}, 40032),
        ({"del_useridlist": ["alice"]}, 40035),  # the current owner
        ({"owner": "carol"}, 40035),  # not a member
        ({"owner": "carol", "add_useridlist": ["carol"]}, 40035),  # only becomes one in this call
        ({"owner": "bob", "del_useridlist": ["bob"]}, 40035),  # new owner removed
        ({"owner": "bob", "del_useridlist": ["alice"]}, 40035),  # old owner removed in the transfer call
        ({"owner": 5}, 40035),
        ({"name": ""}, 40035),
        ({"name": "x" * (NAME_MAX + 1)}, 40035),
        ({"searchable": 2}, 40035),
        ({"managementType": False}, 40035),
        ({"icon": 3}, 40035),
    ],
)
def test_update_rules_reject_the_whole_call(srv, api, change, errcode):
    cid = api.create(members=["alice", "bob"], searchable=1)
    before = srv.chat(cid)
    body = {"chatid": cid, "name": "changed", "add_useridlist": ["dave"], "managementType": 1, **change}
    reply = api.post_json("/chat/update", body)
    assert reply["errcode"] == errcode and reply["errmsg"]
    assert srv.chat(cid) == before  # all or nothing


def test_update_over_the_member_cap_is_40035_and_says_so(srv, api):
    cid = srv.seed_chat("big", "u0000", ids(MEMBER_CAP - 5))
    reply = api.post_json("/chat/update", {"chatid": cid, "add_useridlist": ids(6, "n"), "del_useridlist": ["u0001"]})
    assert reply["errcode"] == 0
    reply = api.post_json("/chat/update", {"chatid": cid, "add_useridlist": ["one-too-many"]})
    assert reply["errcode"] == 40035 and str(MEMBER_CAP) in reply["errmsg"]
    assert len(srv.chat(cid)["useridlist"]) == MEMBER_CAP


def test_owner_transfer_then_removal_in_separate_calls_works(srv, api):
    cid = api.create(members=["alice", "bob"])
    assert api.post_json("/chat/update", {"chatid": cid, "add_useridlist": ["carol"]})["errcode"] == 0
    assert api.post_json("/chat/update", {"chatid": cid, "owner": "carol"})["errcode"] == 0
    assert api.post_json("/chat/update", {"chatid": cid, "del_useridlist": ["alice"]})["errcode"] == 0
    info = srv.chat(cid)
    assert info["owner"] == "carol" and info["useridlist"] == ["bob", "carol"]


# ---- /chat/get ---------------------------------------------------------------------------------


def test_get_returns_chat_info_exactly_as_documented(srv, api):
    cid = api.create(members=["alice", "bob"], showHistoryType=1)
    reply = api.get_json("/chat/get", chatid=cid)
    assert reply["errcode"] == 0 and reply["errmsg"] == "ok"
    assert reply["chat_info"] == {
        "chatid": cid,
        "name": "工程值班",
        "owner": "alice",
        "useridlist": ["alice", "bob"],
        "extidlist": [],
        "agentidlist": [],
        "icon": "",
        "conversationTag": 2,
        "status": 1,
        "searchable": 0,
        "validationType": 0,
        "mentionAllAuthority": 0,
        "managementType": 0,
        "chatBannedType": 0,
        "showHistoryType": 1,
    }


@pytest.mark.parametrize(
    "params, errcode", [({}, 34001), ({"chatid": "oops"}, 34001), ({"chatid": "chat" + "f" * 32}, 34013)]
)
def test_get_unknown_or_malformed_chatid(srv, api, params, errcode):
    assert api.get_json("/chat/get", **params)["errcode"] == errcode


# ---- /chat/send and /chat/getReadList -----------------------------------------------------------


def test_send_then_read_list_pages_through_members_at_send_time(srv, api):
    members = ids(250)
    cid = srv.seed_chat("many", members[0], list(reversed(members)))
    reply = api.post_json("/chat/send", {"chatid": cid, "msgtype": "text", "text": {"content": "hello"}})
    assert reply["errcode"] == 0 and reply["messageId"]
    api.post_json("/chat/update", {"chatid": cid, "add_useridlist": ["late"]})
    pages, cursor = [], 0
    while True:
        page = api.get_json("/chat/getReadList", messageId=reply["messageId"], cursor=cursor, size=READ_LIST_PAGE_MAX)
        assert page["errcode"] == 0
        pages.append(page["readUserIdList"])
        if "next_cursor" not in page:
            break
        cursor = page["next_cursor"]
    assert [len(p) for p in pages] == [100, 100, 50]
    assert sum(pages, []) == sorted(members)


@pytest.mark.parametrize(
    "message",
    [
        {"msgtype": "markdown", "markdown": {"title": "t", "text": "**x**"}},
        {"msgtype": "link", "link": {"messageUrl": "https://x", "title": "t", "text": "x", "picUrl": ""}},
        {"msgtype": "action_card", "action_card": {"title": "t", "markdown": "x"}},
    ],
)
def test_send_accepts_other_message_types(srv, api, message):
    cid = api.create()
    assert api.post_json("/chat/send", {"chatid": cid, **message})["errcode"] == 0


@pytest.mark.parametrize(
    "message, errcode",
    [
        ({"msgtype": "sms", "sms": {"content": "x"}}, 40035),
        ({"msgtype": "text"}, 40035),
        ({"msgtype": "text", "text": {}}, 40035),
        ({"msgtype": "text", "text": "hello"}, 40035),
        ({"msgtype": "markdown", "markdown": {"text": "no title"}}, 40035),
        ({"chatid": "chat" + "a" * 32, "msgtype": "text", "text": {"content": "x"}}, 34013),
        ({"chatid": "bad", "msgtype": "text", "text": {"content": "x"}}, 34001),
    ],
)
def test_send_rules(srv, api, message, errcode):
    cid = api.create()
    assert api.post_json("/chat/send", {"chatid": cid, **message})["errcode"] == errcode


@pytest.mark.parametrize(
    "params",
    [
        {"messageId": "nope", "cursor": 0, "size": 10},
        {"messageId": None},
        {"size": 0},
        {"size": READ_LIST_PAGE_MAX + 1},
        {"size": "ten"},
        {"cursor": -1},
        {"cursor": None},
    ],
)
def test_read_list_rules_are_40035(srv, api, params):
    cid = api.create()
    mid = api.post_json("/chat/send", {"chatid": cid, "msgtype": "text", "text": {"content": "x"}})["messageId"]
    query = {"messageId": mid, "cursor": 0, "size": 10, **params}
    query = {k: v for k, v in query.items() if v is not None}
    assert api.get_json("/chat/getReadList", **query)["errcode"] == 40035


# ---- protocol edges ------------------------------------------------------------------------------


def test_protocol_edges(srv, api):
    url = srv.url + "/chat/create"
    token = {"access_token": api.token}
    assert api.http.post(url, params=token, data=b"{not json").json()["errcode"] == 40035
    assert api.http.post(url, params=token, data=b"\xff\xfe").json()["errcode"] == 40035
    assert api.http.post(url, params=token, json=["a list"]).json()["errcode"] == 40035
    assert api.http.get(url, params=token).json()["errcode"] == 43002
    assert api.http.post(srv.url + "/chat/get", params=token, json={}).json()["errcode"] == 43001
    missing = api.http.get(srv.url + "/chat/list", params=token)
    assert missing.status_code == 404 and missing.json()["errcode"] == 404


def test_chunked_request_bodies_are_read(srv, api):
    body = json.dumps({"name": "chunked", "owner": "alice", "useridlist": ["alice"]}).encode()
    reply = api.http.post(
        srv.url + "/chat/create", params={"access_token": api.token}, data=iter([body[:10], body[10:]])
    )
    assert reply.json()["errcode"] == 0


def test_keep_alive_serves_many_requests_on_one_connection(srv, api):
    cid = api.create()
    for _ in range(20):
        assert api.get_json("/chat/get", chatid=cid)["errcode"] == 0
    assert srv.counters()["/chat/get"] == 20


# ---- call log, counters, reset, direct access ----------------------------------------------------


def test_call_log_and_counters_record_every_api_request_without_secrets(srv, api):
    cid = api.create()
    api.get_json("/chat/get", chatid=cid)
    api.get_json("/chat/get", chatid="bad")
    calls = srv.calls
    assert [c.endpoint for c in calls] == ["/gettoken", "/chat/create", "/chat/get", "/chat/get"]
    assert [c.seq for c in calls] == [1, 2, 3, 4]
    assert calls[0].params == {"appkey": KEY, "appsecret": "<redacted>"}
    assert calls[1].method == "POST" and calls[1].body["useridlist"] == ["alice", "bob"] and calls[1].params == {}
    assert calls[2].params == {"chatid": cid} and calls[2].body is None
    assert (calls[3].status, calls[3].errcode) == (200, 34001)
    assert all(isinstance(c, Call) and c.elapsed_ms >= 0 for c in calls)
    assert [c.params["chatid"] for c in srv.calls_to("/chat/get")] == [cid, "bad"]
    assert srv.counters() == {"/gettoken": 1, "/chat/create": 1, "/chat/get": 2}
    assert SECRET not in repr(calls) and api.token not in repr(calls)


def test_reset_forgets_chats_tokens_calls_counters_and_faults(srv, api):
    cid = api.create()
    srv.faults.busy_every = 5
    srv.reset()
    assert srv.chat(cid) is None and srv.calls == [] and srv.counters() == {}
    assert srv.faults == Faults()
    assert api.get_json("/chat/get", chatid=cid)["errcode"] == 40014


def test_seed_and_set_chat_edit_directly_and_are_not_logged(srv, api):
    cid = srv.seed_chat("seeded", "alice", ["bob"], chatid="chat0123abcd", searchable=1)
    assert cid == "chat0123abcd"
    assert srv.chat(cid)["useridlist"] == ["alice", "bob"] and srv.chat(cid)["searchable"] == 1
    srv.set_chat(cid, searchable=0, useridlist=["alice", "bob", "carol"], owner="bob", name="by hand")
    info = api.get_json("/chat/get", chatid=cid)["chat_info"]
    assert (info["owner"], info["name"], info["searchable"]) == ("bob", "by hand", 0)
    assert info["useridlist"] == ["alice", "bob", "carol"]
    assert [c.endpoint for c in srv.calls] == ["/gettoken", "/chat/get"]
    srv.chat(cid)["useridlist"].append("mutating-a-copy")
    assert "mutating-a-copy" not in srv.chat(cid)["useridlist"]
    with pytest.raises(ValueError):
        srv.seed_chat("dup", "a", ["a"], chatid=cid)
    with pytest.raises(ValueError):
        srv.seed_chat("bad", "a", ["a"], bogus=1)
    with pytest.raises(ValueError):
        srv.set_chat(cid, chatid="chat99")
    with pytest.raises(KeyError):
        srv.set_chat("chat" + "0" * 32, name="x")


def test_admin_routes(srv, api):
    cid = api.create()
    admin = srv.url + "/__emulator__/"
    http = api.http
    calls = http.get(admin + "calls").json()["calls"]
    assert [c["endpoint"] for c in calls] == ["/gettoken", "/chat/create"]
    assert http.get(admin + "counters").json()["counters"] == {"/gettoken": 1, "/chat/create": 1}
    assert list(http.get(admin + "chats").json()["chats"]) == [cid]
    reply = http.post(admin + "faults", json={"busy_every": 1, "fault_endpoints": ["/chat/get"]}).json()
    assert reply["ok"] and srv.faults.busy_every == 1 and srv.faults.fault_endpoints == frozenset({"/chat/get"})
    assert http.get(admin + "faults").json()["faults"]["fault_endpoints"] == ["/chat/get"]
    assert api.get_json("/chat/get", chatid=cid)["errcode"] == -1
    assert http.post(admin + "faults", json={"no_such": 1}).status_code == 400
    assert http.post(admin + "faults", json={"busy_every": "x"}).status_code == 400
    assert http.post(admin + "faults", data=b"[]").status_code == 400
    assert http.post(admin + "expire-tokens").json()["ok"]
    assert api.post_json("/chat/update", {"chatid": cid})["errcode"] == 42001
    assert http.post(admin + "reset").json()["ok"]
    assert srv.chat(cid) is None and srv.faults == Faults()
    assert http.get(admin + "nothing").status_code == 404
    assert srv.calls == [] and SECRET not in json.dumps(calls)


# ---- persistence ---------------------------------------------------------------------------------


def test_data_survives_a_restart_in_the_documented_format(tmp_path):
    path = tmp_path / "sandbox" / "emulator.json"
    path.parent.mkdir()
    with EmulatorServer(data_path=str(path)) as first, RawApi(first) as client:
        cid = client.create(searchable=1)
        mid = client.post_json("/chat/send", {"chatid": cid, "msgtype": "text", "text": {"content": "x"}})["messageId"]
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["format"], data["version"]) == ("dtchat-emulator", 1) and list(data["chats"]) == [cid]
    assert os.listdir(path.parent) == ["emulator.json"]  # no temp files left behind
    with EmulatorServer(data_path=str(path)) as second, RawApi(second) as client:
        assert client.get_json("/chat/get", chatid=cid)["chat_info"]["searchable"] == 1
        assert client.get_json("/chat/getReadList", messageId=mid, cursor=0, size=10)["readUserIdList"] == [
            "alice",
            "bob",
        ]


def test_a_data_file_in_a_missing_folder_is_refused_at_start(tmp_path):
    path = tmp_path / "nowhere" / "emulator.json"
    with pytest.raises(ValueError, match="does not exist"):
        EmulatorServer(data_path=str(path))
    assert not path.parent.exists()


@pytest.mark.parametrize(
    "content",
    [
        "{truncated",
        "[]",
        '{"format": "other", "version": 1, "chats": {}}',
        '{"format": "dtchat-emulator", "version": 1, "chats": {"chat1": {"name": 1}}}',
    ],
)
def test_a_corrupt_data_file_raises_naming_it_and_is_left_alone(tmp_path, content):
    path = tmp_path / "emulator.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="emulator.json"):
        EmulatorServer(data_path=str(path))
    assert path.read_text(encoding="utf-8") == content


# ---- org directory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("users.yaml", "- alice\n- bob\n"),
        ("users.yml", "users: [alice, bob]\n"),
        ("users.json", '{"users": ["alice", "bob"]}'),
        ("users.json", '["alice", "bob", "alice"]'),
    ],
)
def test_load_users_reads_list_and_mapping_forms(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert load_users(path) == frozenset({"alice", "bob"})


@pytest.mark.parametrize(
    "name, content",
    [
        ("users.yaml", "alice: 1\n"),
        ("users.yaml", "- alice\n- 12345\n"),
        ("users.yaml", "users: alice\n"),
        ("users.yaml", "- [unclosed\n"),
        ("users.json", "{nope"),
        ("users.json", '[""]'),
    ],
)
def test_load_users_rejects_bad_content_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=name):
        load_users(path)


# ---- concurrency ---------------------------------------------------------------------------------------


def test_fifty_concurrent_creates_make_fifty_distinct_chats(srv, api):
    barrier = threading.Barrier(50)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with requests.Session() as http:
                barrier.wait()
                reply = http.post(
                    srv.url + "/chat/create",
                    params={"access_token": api.token},
                    json={"name": f"c{i}", "owner": "alice", "useridlist": ["alice", f"u{i}"]},
                ).json()
                results.append(reply["chatid"])
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 50
    assert sorted(srv.chat(c)["name"] for c in results) == sorted(f"c{i}" for i in range(50))
    assert srv.counters()["/chat/create"] == 50
    assert sorted(c.seq for c in srv.calls) == list(range(1, 52))


def test_stop_closes_the_socket_and_open_connections(srv, api):
    url = srv.url
    api.create()
    srv.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/gettoken", params={"appkey": KEY, "appsecret": SECRET}, timeout=2)


def test_serve_forever_blocks_until_stopped_from_another_thread():
    server = EmulatorServer()
    answers: list[Any] = []

    def drive() -> None:
        try:
            with requests.Session() as http:
                answers.append(http.get(server.url + "/gettoken", params={"appkey": "a", "appsecret": "b"}).json())
        finally:
            server.stop()

    threading.Timer(0.05, drive).start()
    server.serve_forever()  # returns once drive() stopped it
    assert answers[0]["errcode"] == 0
