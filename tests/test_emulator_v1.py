"""The emulator's v1.0 API (api.dingtalk.com on the same port), over real HTTP, as dingtalk-api.md states it.

Self-contained on purpose (its own fixtures, raw ``requests``): it must run while the client side of the
repository is being rewritten, with ``--noconftest``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from reconciler.emulator import EmulatorServer, EmulatorSetupError, Faults, Org

from helpers import CONVERT, ROBOT_SEND, SETTINGS
from helpers import CREATE as CREATES
from helpers import UPDATE as UPDATES

APP_KEY = "v1-test-key"
APP_SECRET = "v1-test-secret-DO-NOT-LEAK"
TOKEN_HEADER = "x-acs-dingtalk-access-token"

V1_TOKEN = "/v1.0/oauth2/accessToken"
CREATE, UPDATE, SEND = CREATES["v1"], UPDATES["v1"], ROBOT_SEND

ORG = {
    "departments": [{"id": 1, "name": "公司"}, {"id": 100, "name": "研发部", "parent": 1}],
    "users": [{"userid": u, "departments": [100]} for u in ("alice", "bob", "carol", "dave")],
}


def convert_path(chatid: str) -> str:
    return CONVERT.replace("{chatId}", chatid)


class Api:
    """Raw HTTP against one emulator: v1.0 calls with the token header, legacy calls with ?access_token=."""

    def __init__(self, srv: EmulatorServer) -> None:
        self.srv = srv
        self.base = srv.url
        self.http = requests.Session()
        self._token: str | None = None

    def close(self) -> None:
        self.http.close()

    # ---- tokens
    def v1_token_response(self, key: str | None = APP_KEY, secret: str | None = APP_SECRET) -> requests.Response:
        body = {k: v for k, v in (("appKey", key), ("appSecret", secret)) if v is not None}
        return self.http.post(self.base + V1_TOKEN, json=body)

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = self.v1_token_response().json()["accessToken"]
        return self._token

    def legacy_token(self) -> str:
        params = {"appkey": APP_KEY, "appsecret": APP_SECRET}
        return self.http.get(self.base + "/gettoken", params=params).json()["access_token"]

    # ---- v1.0
    def v1(self, path: str, body: Any = None, token: str | None = "", **kw: Any) -> requests.Response:
        """POST a v1.0 call; token "" = this client's v1.0 token, None = no header; ``data=`` sends raw bytes."""
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers[TOKEN_HEADER] = token or self.token
        if "data" in kw:
            return self.http.post(self.base + path, headers=headers, **kw)
        return self.http.post(self.base + path, headers=headers, json=body, **kw)

    def v1_json(self, path: str, body: Any = None, **kw: Any) -> Any:
        reply = self.v1(path, body, **kw)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def create(
        self, name: str = "工程值班", owner: str = "alice", members: list[str] | None = None, **extra: Any
    ) -> dict:
        body = {"name": name, "owner": owner, "useridlist": members or ["alice", "bob"], **extra}
        return self.v1_json(CREATE, body)

    def send(self, ocid: str, content: str = "hi", robot: str = "robot-1", **over: Any) -> requests.Response:
        body = {
            "robotCode": robot,
            "openConversationId": ocid,
            "msgKey": "sampleText",
            "msgParam": json.dumps({"content": content}, ensure_ascii=False),
            **over,
        }
        return self.v1(SEND, body)

    # ---- legacy
    def get(self, path: str, token: str | None = None, **params: Any) -> requests.Response:
        params["access_token"] = token or self.token
        return self.http.get(self.base + path, params=params)

    def post(self, path: str, body: Any, token: str | None = None) -> requests.Response:
        return self.http.post(self.base + path, params={"access_token": token or self.token}, json=body)

    def admin(self, name: str, body: Any = None) -> requests.Response:
        url = f"{self.base}/__emulator__/{name}"
        return self.http.get(url) if body is None else self.http.post(url, json=body)


def v1_error(reply: requests.Response, status: int, code: str) -> dict:
    """Assert the v1.0 failure shape and return the body."""
    assert reply.status_code == status, (reply.status_code, reply.text)
    body = reply.json()
    assert body["code"] == code, body
    assert set(body) == {"code", "message", "requestid"} and body["message"] and body["requestid"], body
    assert "errcode" not in body
    return body


@pytest.fixture
def srv() -> Iterator[EmulatorServer]:
    with EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET) as server:
        yield server


@pytest.fixture
def api(srv: EmulatorServer) -> Iterator[Api]:
    client = Api(srv)
    yield client
    client.close()


@pytest.fixture
def chat(srv: EmulatorServer) -> str:
    return srv.seed_chat("seeded", "alice", ["alice", "bob", "carol"])


def server_with(**kw: Any) -> EmulatorServer:
    """An emulator with the test app's credentials and ``kw``, not started yet (``with`` starts it)."""
    return EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, **kw)


# ---- the token --------------------------------------------------------------------------------------


def test_the_v1_token_call_answers_the_token_and_its_lifetime(api):
    reply = api.v1_token_response()
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"accessToken", "expireIn"} and body["expireIn"] == 7200 and body["accessToken"]


@pytest.mark.parametrize("key, secret", [(APP_KEY, "wrong"), ("other", APP_SECRET), (None, APP_SECRET), (APP_KEY, "")])
def test_wrong_or_missing_credentials_are_400_invalidClientIdOrSecret(api, key, secret):
    v1_error(api.v1_token_response(key, secret), 400, "invalidClientIdOrSecret")


def test_a_token_body_that_is_not_json_is_invalidClientIdOrSecret(api):
    v1_error(api.http.post(api.base + V1_TOKEN, data=b"appKey=x"), 400, "invalidClientIdOrSecret")


def test_without_configured_credentials_any_non_empty_pair_gets_a_token():
    with EmulatorServer() as server:
        client = Api(server)
        assert client.v1_token_response("any", "pair").status_code == 200
        v1_error(client.v1_token_response("any", ""), 400, "invalidClientIdOrSecret")
        client.close()


def test_asking_again_while_valid_returns_the_same_token_and_extends_it():
    with server_with(token_ttl=0.6) as server:
        client = Api(server)
        first = client.v1_token_response().json()["accessToken"]
        time.sleep(0.4)
        assert client.v1_token_response().json()["accessToken"] == first  # extended to 0.4 + 0.6 s
        time.sleep(0.4)  # 0.8 s after it was issued: alive only because it was extended
        assert client.v1(CONVERT.replace("{chatId}", "chat00"), token=first).json()["code"] == "invalideChatId"
        time.sleep(0.7)
        v1_error(client.v1(convert_path("chat00"), token=first), 400, "InvalidAuthentication")
        assert client.v1_token_response().json()["accessToken"] != first  # expired: a fresh one
        client.close()


def test_expired_tokens_are_InvalidAuthentication_and_the_next_ask_is_a_fresh_token(srv, api, chat):
    token = api.token
    srv.expire_tokens()
    v1_error(api.v1(convert_path(chat), token=token), 400, "InvalidAuthentication")
    fresh = api.v1_token_response().json()["accessToken"]
    assert fresh != token
    assert api.v1(convert_path(chat), token=fresh).status_code == 200


def test_an_unknown_token_is_InvalidAuthentication(api, chat):
    v1_error(api.v1(convert_path(chat), token="not-a-token"), 400, "InvalidAuthentication")


def test_a_missing_token_header_is_401_without_a_code(api, chat):
    for reply in (
        api.v1(convert_path(chat), token=None),
        api.http.post(api.base + convert_path(chat), params={"access_token": api.token}),  # the URL is no place for it
        api.http.post(api.base + convert_path(chat), headers={TOKEN_HEADER: ""}),
    ):
        assert reply.status_code == 401
        body = reply.json()
        assert "code" not in body and body["message"] == "Unauthorized" and body["requestid"]


def test_token_uses_also_expire_v1_tokens(srv, api, chat):
    srv.faults.token_uses = 2
    token = api.token
    assert [api.v1(convert_path(chat), token=token).status_code for _ in range(3)] == [200, 200, 400]
    assert api.v1_token_response().json()["accessToken"] != token  # used up: not handed back


def test_tokens_are_one_book_for_both_generations(api, chat):
    legacy = api.legacy_token()
    assert api.v1(convert_path(chat), token=legacy).status_code == 200
    reply = api.get("/chat/get", token=api.token, chatid=chat).json()
    assert reply["errcode"] == 0 and reply["chat_info"]["chatid"] == chat


def test_the_v1_token_works_on_the_contact_api():
    with EmulatorServer(org=Org.from_data(ORG)) as server:
        client = Api(server)
        reply = client.post("/topapi/user/listid", {"dept_id": 100}).json()
        assert reply["errcode"] == 0 and reply["result"]["userid_list"] == ["alice", "bob", "carol", "dave"]
        client.close()


def test_token_calls_are_never_metered_rate_limited_or_faulted(srv, api):
    srv.faults.update({"qps_limit": 1, "busy_every": 1, "monthly_quota": 0})
    srv.faults.no_permission = {V1_TOKEN, "/gettoken"}
    assert all(api.v1_token_response().status_code == 200 for _ in range(4))
    assert all(api.legacy_token() for _ in range(2))
    assert srv.meter() == {"metered": 0, "exempt": 6, "quota_left": 0}


# ---- the error shape, the gateway and the faults ------------------------------------------------------


def test_unknown_v1_paths_and_wrong_methods_are_404_InvalidAction_NotFound(api):
    v1_error(api.v1("/v1.0/im/group/nothing", {}), 404, "InvalidAction.NotFound")
    v1_error(api.http.get(api.base + CREATE, headers={TOKEN_HEADER: api.token}), 404, "InvalidAction.NotFound")


def test_the_rate_limit_is_403_QpsLimitForAppkeyAndApi_per_endpoint(srv, api, chat):
    srv.faults.qps_limit = 2
    codes = [api.v1(convert_path(chat)).status_code for _ in range(3)]
    assert codes == [200, 200, 403]
    v1_error(api.v1(convert_path(chat)), 403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi")
    assert api.v1(UPDATE, {"chatid": chat}).status_code == 200  # its own window
    time.sleep(1.0)
    assert api.v1(convert_path(chat)).status_code == 200


def test_busy_is_429_system_busy_and_http500_is_a_json_system_error(srv, api, chat):
    srv.faults.busy_every = 2
    assert api.v1(convert_path(chat)).status_code == 200
    v1_error(api.v1(convert_path(chat)), 429, "system.busy")
    srv.faults.update({"busy_every": 0, "http500_every": 1})
    reply = api.v1(convert_path(chat))
    assert reply.headers["Content-Type"].startswith("application/json")
    v1_error(reply, 500, "system.error")
    assert api.get("/chat/get", chatid=chat).status_code == 500  # the legacy host's 500 is its HTML page
    assert "<html>" in api.get("/chat/get", chatid=chat).text


def test_the_ip_ban_answers_v1_paths_like_legacy_ones(srv, api, chat):
    srv.faults.update({"ip_ban_every": 1, "ban_wait": 3})
    v1_reply, legacy_reply = api.v1(convert_path(chat)), api.get("/chat/get", chatid=chat)
    assert v1_reply.status_code == legacy_reply.status_code == 200
    assert v1_reply.json() == legacy_reply.json() and v1_reply.json()["wait"] == 3 and "code" not in v1_reply.json()


def test_fault_endpoints_names_the_convert_call_by_its_template(srv, api, chat):
    srv.faults.update({"busy_every": 1, "fault_endpoints": [CONVERT]})
    v1_error(api.v1(convert_path(chat)), 429, "system.busy")
    assert api.v1(UPDATE, {"chatid": chat}).status_code == 200


def test_the_quota_used_up_is_403_ApiCountLimitForOrg(srv, api, chat):
    srv.faults.monthly_quota = 0
    v1_error(api.v1(convert_path(chat)), 403, "Forbidden.AccessDenied.ApiCountLimitForOrg")
    v1_error(
        api.v1(CREATE, {"name": "x", "owner": "alice", "useridlist": ["alice"]}),
        403,
        "Forbidden.AccessDenied.ApiCountLimitForOrg",
    )
    assert api.get("/chat/get", chatid=chat).json()["errcode"] == 90020


@pytest.mark.parametrize(
    "endpoint, permission",
    [
        (CREATE, "qyapi_chat_manage"),
        (UPDATE, "qyapi_chat_manage"),
        (CONVERT, "qyapi_chat_read"),
        (SEND, "qyapi_robot_sendmsg"),
    ],
)
def test_a_missing_permission_is_403_AccessTokenPermissionDenied_naming_it(srv, api, chat, endpoint, permission):
    srv.faults.no_permission = {endpoint}
    path = convert_path(chat) if endpoint == CONVERT else endpoint
    body = v1_error(api.v1(path, {"chatid": chat}), 403, "Forbidden.AccessDenied.AccessTokenPermissionDenied")
    assert permission in body["message"]
    assert srv.meter()["metered"] == 0


def test_no_permission_on_legacy_and_contact_paths():
    with EmulatorServer(org=Org.from_data(ORG)) as server:
        client = Api(server)
        chat = server.seed_chat("c", "alice", ["alice"])
        server.faults.no_permission = {"/chat/get", "/topapi/user/listid"}
        reply = client.get("/chat/get", chatid=chat).json()
        assert reply["errcode"] == 60011 and "qyapi_chat_read" in reply["errmsg"]
        reply = client.post("/topapi/user/listid", {"dept_id": 100}).json()
        assert (reply["errcode"], reply["sub_code"]) == (88, "60011")
        assert server.meter() == {"metered": 0, "exempt": 1, "quota_left": None}  # the v1.0 token call
        client.close()


def test_fail_chatids_int_is_translated_on_v1(srv, api, chat):
    srv.faults.fail_chatids = {chat: 34013}
    v1_error(api.v1(UPDATE, {"chatid": chat, "name": "no"}), 400, "invalideChatId")
    v1_error(api.v1(convert_path(chat)), 400, "invalideChatId")
    srv.faults.fail_chatids = {chat: 60121}
    v1_error(api.v1(UPDATE, {"chatid": chat, "name": "no"}), 400, "parameter.invalid")
    assert srv.chat(chat)["name"] == "seeded"
    assert api.get("/chat/get", chatid=chat).json()["errcode"] == 60121  # legacy answers the int as is


def test_fail_chatids_string_is_verbatim_on_v1_and_the_nearest_errcode_on_legacy(srv, api, chat):
    srv.faults.fail_chatids = {chat: "500:system.error"}
    v1_error(api.v1(convert_path(chat)), 500, "system.error")
    ocid = srv.open_conversation_id(chat)
    v1_error(api.send(ocid), 500, "system.error")  # a robot send names its chat by openConversationId
    assert api.get("/chat/get", chatid=chat).json()["errcode"] == -1
    srv.faults.fail_chatids = {chat: "403:Forbidden.AccessDenied.AccessTokenPermissionDenied"}
    assert api.get("/chat/get", chatid=chat).json()["errcode"] == 60011
    srv.faults.fail_chatids = {chat: "400:some.other.code"}
    v1_error(api.v1(convert_path(chat)), 400, "some.other.code")
    assert api.get("/chat/get", chatid=chat).json()["errcode"] == 40035
    assert srv.robot_messages() == []


@pytest.mark.parametrize("value", ["60011", "600:x", "500:", "500 system.error", 1.5])
def test_fail_chatids_refuses_other_values(value):
    faults = Faults()
    with pytest.raises(ValueError):
        faults.update({"fail_chatids": {"chat1": value}})
    faults.update({"fail_chatids": {"chat1": "429:system.busy", "chat2": 34013}})
    assert faults.fail_chatids == {"chat1": "429:system.busy", "chat2": 34013}


def test_the_new_faults_are_settable_and_visible_over_the_admin_route(srv, api, chat):
    reply = api.admin("faults", {"no_permission": [UPDATE, CREATE], "fail_chatids": {chat: "500:system.error"}})
    assert reply.status_code == 200 and reply.json()["faults"]["no_permission"] == [CREATE, UPDATE]
    assert api.admin("faults").json()["faults"]["fail_chatids"] == {chat: "500:system.error"}
    assert api.admin("faults", {"no_permission": CREATE}).status_code == 400
    v1_error(api.v1(UPDATE, {"chatid": chat}), 403, "Forbidden.AccessDenied.AccessTokenPermissionDenied")


def test_latency_applies_to_v1_paths_and_endpoint_latency_to_the_template(srv, api, chat):
    srv.faults.endpoint_latency_ms = {CONVERT: 150}
    began = time.perf_counter()
    assert api.v1(convert_path(chat)).status_code == 200
    assert time.perf_counter() - began >= 0.15
    began = time.perf_counter()
    assert api.v1(UPDATE, {"chatid": chat}).status_code == 200
    assert time.perf_counter() - began < 0.15
    srv.faults.endpoint_latency_ms = {}
    srv.faults.latency_ms = 120
    began = time.perf_counter()
    api.v1(UPDATE, {"chatid": chat})
    assert time.perf_counter() - began >= 0.12


def test_drop_after_create_drops_a_committed_v1_create(srv, api):
    srv.faults.drop_after_create = 1
    with pytest.raises(requests.ConnectionError):
        api.v1(CREATE, {"name": "lost", "owner": "alice", "useridlist": ["alice"]})
    assert [c["name"] for c in srv.chats().values()] == ["lost"]
    call = srv.calls_to(CREATE)[-1]
    assert call.status == 0 and call.metered  # the API processed it: it counts
    assert srv.faults.drop_after_create == 0


def test_before_reply_runs_for_v1_calls(srv, api, chat):
    def crash(call: Any) -> None:
        raise RuntimeError("the client is killed here")

    assert api.token
    seen: list[Any] = []
    srv.before_reply = seen.append
    api.v1(convert_path(chat))
    srv.before_reply = crash
    with pytest.raises(requests.ConnectionError):
        api.v1(UPDATE, {"chatid": chat, "name": "committed"})
    assert [c.endpoint for c in seen] == [CONVERT]
    assert srv.chat(chat)["name"] == "committed" and srv.meter()["metered"] == 2


def test_the_call_log_of_v1_calls(srv, api, chat):
    api.v1(convert_path(chat))
    api.v1(UPDATE, {"chatid": "chat00"})
    api.v1(convert_path(chat), token=None)
    calls = srv.calls
    token_call, convert_call, update_call, unauthorized = calls
    assert token_call.endpoint == V1_TOKEN and token_call.body == {"appKey": APP_KEY, "appSecret": "<redacted>"}
    assert not token_call.metered and token_call.errcode is None and token_call.code is None
    assert convert_call.endpoint == CONVERT and convert_call.params == {"chatid": chat} and convert_call.metered
    assert (update_call.status, update_call.code, update_call.metered) == (400, "parameter.invalid", True)
    assert (unauthorized.status, unauthorized.code, unauthorized.metered) == (401, None, False)
    assert update_call.describe().endswith(f"→ HTTP 400 parameter.invalid ({update_call.elapsed_ms:.1f} ms)")
    assert "→ HTTP 200 (" in convert_call.describe()
    logged = api.admin("calls").json()["calls"]
    assert [(c["metered"], c["code"]) for c in logged] == [
        (False, None),
        (True, None),
        (True, "parameter.invalid"),
        (False, None),
    ]
    dumped = json.dumps(logged) + repr(calls)
    assert APP_SECRET not in dumped and api.token not in dumped
    assert srv.counters() == {V1_TOKEN: 1, CONVERT: 2, UPDATE: 1}


# ---- group/create -----------------------------------------------------------------------------------


def test_create_answers_both_ids_and_stores_the_chat(srv, api):
    options = dict.fromkeys(SETTINGS, 1) | {"searchable": 0}
    reply = api.create("新群", "bob", ["alice", "bob"], managementOptions=options, icon="@media")
    assert set(reply) == {"openConversationId", "chatid", "conversationTag"} and reply["conversationTag"] == 2
    assert reply["chatid"].startswith("chat") and reply["openConversationId"].startswith("cid")
    info = srv.chat(reply["chatid"])
    assert (info["name"], info["owner"], info["useridlist"], info["icon"]) == (
        "新群",
        "bob",
        ["alice", "bob"],
        "@media",
    )
    assert {k: info[k] for k in SETTINGS} == options
    assert "openConversationId" not in info and info["status"] == 1 and info["conversationTag"] == 2


def test_create_without_management_options_has_every_setting_0_and_ignores_top_level_settings(srv, api):
    reply = api.create(searchable=1, showHistoryType=1, ownerType="emp", extidlist=[], conversationTag=2)
    info = srv.chat(reply["chatid"])
    assert all(info[k] == 0 for k in SETTINGS)


def test_create_accepts_40_ids_and_refuses_41(srv, api):
    ids = [f"u{i:02d}" for i in range(41)]
    assert api.create(owner="u00", members=ids[:40])["chatid"]
    body = v1_error(api.v1(CREATE, {"name": "n", "owner": "u00", "useridlist": ids}), 400, "parameter.invalid")
    assert "40" in body["message"]
    assert len(srv.chats()) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"owner": "carol"},  # not in useridlist: strict
        {"owner": ""},
        {"owner": None},
        {"name": ""},
        {"name": "x" * 21},
        {"name": None},
        {"useridlist": []},
        {"useridlist": None},
        {"useridlist": "alice"},
        {"useridlist": ["alice", ""]},
        {"conversationTag": 1},
        {"conversationTag": "2"},
        {"ownerType": "boss"},
        {"extidlist": "x"},
        {"icon": 7},
        {"managementOptions": []},
        {"managementOptions": {"bogus": 1}},
        {"managementOptions": {"searchable": 2}},
        {"managementOptions": {"searchable": "1"}},
        {"managementOptions": {"searchable": True}},
    ],
)
def test_create_refuses_bad_parameters_with_parameter_invalid(srv, api, change):
    body = {"name": "ok", "owner": "alice", "useridlist": ["alice", "bob"], **change}
    v1_error(api.v1(CREATE, body), 400, "parameter.invalid")
    assert srv.chats() == {}


def test_create_accepts_a_20_character_name(api):
    assert api.create("名" * 20)["chatid"]


def test_an_ordinary_group_needs_whitelisting(api):
    body = v1_error(
        api.v1(CREATE, {"name": "n", "owner": "alice", "useridlist": ["alice"], "conversationTag": 0}),
        400,
        "parameter.invalid",
    )
    assert "普通群需要找技术支持加白" in body["message"]


def test_a_body_that_is_not_a_json_object_is_parameter_invalid(api):
    v1_error(api.v1(CREATE, data=b"{oops", headers={"Content-Type": "application/json"}), 400, "parameter.invalid")
    v1_error(api.v1(CREATE, ["alice"]), 400, "parameter.invalid")


def test_create_refuses_unknown_users_naming_them():
    with EmulatorServer(org=Org.from_data(ORG)) as server:
        client = Api(server)
        body = {"name": "n", "owner": "alice", "useridlist": ["alice", "zed", "yan"]}
        message = v1_error(client.v1(CREATE, body), 400, "parameter.invalid")["message"]
        assert "yan" in message and "zed" in message
        server.remove_user("bob")
        message = v1_error(client.v1(CREATE, {**body, "useridlist": ["alice", "bob"]}), 400, "parameter.invalid")[
            "message"
        ]
        assert "bob" in message
        client.close()


# ---- group/update -----------------------------------------------------------------------------------


def test_update_changes_what_it_names_and_answers_success(srv, api, chat):
    body = {"chatid": chat, "name": "新名字", "owner": "bob", "add_useridlist": ["dave"], "del_useridlist": ["carol"]}
    assert api.v1_json(UPDATE, {**body, "icon": "@m", "ownerType": "emp", "add_extidlist": ["u1"]}) == {"success": True}
    info = srv.chat(chat)
    assert (info["name"], info["owner"], info["useridlist"], info["icon"]) == (
        "新名字",
        "bob",
        ["alice", "bob", "dave"],
        "@m",
    )


def test_a_partial_management_options_resets_every_setting_it_does_not_carry(srv, api):
    chat = srv.seed_chat("all on", "alice", ["alice"], **dict.fromkeys(SETTINGS, 1))
    api.v1_json(UPDATE, {"chatid": chat, "managementOptions": {"searchable": 1}})
    info = srv.chat(chat)
    assert {k: info[k] for k in SETTINGS} == dict.fromkeys(SETTINGS, 0) | {"searchable": 1}


def test_an_absent_management_options_leaves_every_setting_alone(srv, api):
    chat = srv.seed_chat("all on", "alice", ["alice", "bob"], **dict.fromkeys(SETTINGS, 1))
    api.v1_json(UPDATE, {"chatid": chat, "name": "renamed", "add_useridlist": ["carol"], "searchable": 0})
    info = srv.chat(chat)
    assert {k: info[k] for k in SETTINGS} == dict.fromkeys(SETTINGS, 1)  # top-level settings are ignored


def test_a_full_management_options_sets_all_six(srv, api, chat):
    options = {
        "chatBannedType": 1,
        "searchable": 0,
        "validationType": 1,
        "mentionAllAuthority": 0,
        "managementType": 1,
        "showHistoryType": 1,
    }
    api.v1_json(UPDATE, {"chatid": chat, "managementOptions": options})
    assert {k: srv.chat(chat)[k] for k in SETTINGS} == options


@pytest.mark.parametrize(
    "change",
    [
        {"owner": "dave"},  # not a member
        {"owner": "bob", "del_useridlist": ["bob"]},  # the new owner cannot be deleted
        {"del_useridlist": ["alice"]},  # nor the current one
        {"add_useridlist": [f"u{i}" for i in range(41)]},
        {"del_useridlist": [f"u{i}" for i in range(41)]},
        {"name": ""},
        {"add_useridlist": "dave"},
        {"managementOptions": {"searchable": 3}},
        {"ownerType": "x"},
        {"del_extidlist": [1]},
    ],
)
def test_update_follows_the_legacy_rules_with_parameter_invalid(srv, api, chat, change):
    before = srv.chat(chat)
    v1_error(api.v1(UPDATE, {"chatid": chat, **change}), 400, "parameter.invalid")
    assert srv.chat(chat) == before


def test_update_keeps_the_1000_member_cap(srv, api):
    chat = srv.seed_chat("big", "u0000", [f"u{i:04d}" for i in range(990)])
    v1_error(api.v1(UPDATE, {"chatid": chat, "add_useridlist": [f"n{i}" for i in range(11)]}), 400, "parameter.invalid")
    assert len(srv.chat(chat)["useridlist"]) == 990
    api.v1_json(UPDATE, {"chatid": chat, "add_useridlist": [f"n{i}" for i in range(10)]})
    assert len(srv.chat(chat)["useridlist"]) == 1000


@pytest.mark.parametrize("chatid", ["chat00", "nonsense", None, ""])
def test_update_of_an_unknown_or_missing_chatid_is_parameter_invalid(api, chatid):
    body = {} if chatid is None else {"chatid": chatid}
    v1_error(api.v1(UPDATE, {**body, "name": "x"}), 400, "parameter.invalid")


# ---- convertToOpenConversationId -------------------------------------------------------------------------


def test_convert_answers_the_id_v1_create_returned(api):
    created = api.create()
    assert api.v1_json(convert_path(created["chatid"])) == {"openConversationId": created["openConversationId"]}
    assert api.v1_json(convert_path(created["chatid"])) == {"openConversationId": created["openConversationId"]}


def test_convert_answers_the_id_legacy_create_returned(api):
    created = api.post("/chat/create", {"name": "legacy", "owner": "alice", "useridlist": ["alice"]}).json()
    assert created["errcode"] == 0
    assert api.v1_json(convert_path(created["chatid"]))["openConversationId"] == created["openConversationId"]


def test_seeded_chats_have_a_stable_id_too_and_it_is_not_in_chat_info(srv, api, chat):
    ocid = srv.open_conversation_id(chat)
    assert ocid and ocid.startswith("cid")
    assert api.v1_json(convert_path(chat)) == {"openConversationId": ocid}
    info = api.get("/chat/get", chatid=chat).json()["chat_info"]
    assert "openConversationId" not in info and ocid not in json.dumps(info)


def test_a_dissolved_chat_still_converts(srv, api, chat):
    srv.set_chat(chat, status=2)
    assert api.v1_json(convert_path(chat)) == {"openConversationId": srv.open_conversation_id(chat)}


@pytest.mark.parametrize("chatid", ["chat00", "bogus"])
def test_convert_of_an_unknown_chat_is_invalideChatId(api, chatid):
    v1_error(api.v1(convert_path(chatid)), 400, "invalideChatId")


# ---- the robot --------------------------------------------------------------------------------------


def test_a_robot_message_is_sent_and_inspectable(srv, api, chat):
    ocid = srv.open_conversation_id(chat)
    reply = api.send(ocid, "你好")
    assert reply.status_code == 200 and set(reply.json()) == {"processQueryKey"}
    markdown = json.dumps({"title": "t", "text": "**x**"})
    assert (
        api.v1(
            SEND, {"robotCode": "r", "openConversationId": ocid, "msgKey": "sampleMarkdown", "msgParam": markdown}
        ).status_code
        == 200
    )
    messages = srv.robot_messages()
    assert [(m["chatid"], m["openConversationId"], m["robotCode"], m["msgKey"], m["params"]) for m in messages] == [
        (chat, ocid, "robot-1", "sampleText", {"content": "你好"}),
        (chat, ocid, "r", "sampleMarkdown", {"title": "t", "text": "**x**"}),
    ]
    assert messages[0]["processQueryKey"] == reply.json()["processQueryKey"]
    assert api.admin("robot-messages").json()["messages"] == messages


def test_a_robot_not_in_the_chat_is_robotCode_empty(srv, api, chat):
    srv.set_robot(chat, False)
    assert not srv.robot_in(chat)
    body = v1_error(api.send(srv.open_conversation_id(chat)), 400, "invalidParameter.robotCode.empty")
    assert "请检查机器人是否在群内" in body["message"]
    assert api.admin("robot", {"chatid": chat, "present": True}).json() == {"ok": True}
    assert api.send(srv.open_conversation_id(chat)).status_code == 200


def test_robot_in_new_chats_false_leaves_the_robot_out():
    with server_with(robot_in_new_chats=False) as server:
        client = Api(server)
        created = client.create()
        seeded = server.seed_chat("s", "alice", ["alice"])
        for ocid in (created["openConversationId"], server.open_conversation_id(seeded)):
            v1_error(client.send(ocid), 400, "invalidParameter.robotCode.empty")
        server.robot_in_new_chats = True
        assert client.send(client.create()["openConversationId"]).status_code == 200
        client.close()


def test_the_admin_robot_route_refuses_unknown_chats_and_bad_bodies(srv, api, chat):
    assert api.admin("robot", {"chatid": "chat00", "present": True}).status_code == 404
    assert api.admin("robot", {"chatid": chat, "present": 1}).status_code == 400
    assert api.admin("robot", {"chatid": chat}).status_code == 400
    with pytest.raises(KeyError):
        srv.set_robot("chat00", True)


def test_another_apps_robot_code_is_robotCode_auth():
    with server_with(robot_code="dingrobot") as server:
        client = Api(server)
        ocid = client.create()["openConversationId"]
        v1_error(client.send(ocid, robot="someone-else"), 400, "invalidParameter.robotCode.auth")
        assert client.send(ocid, robot="dingrobot").status_code == 200
        assert client.admin("config").json()["config"]["robot_code"] == "dingrobot"
        client.close()


def test_a_missing_robot_code_is_robotCode_empty(srv, api, chat):
    v1_error(api.send(srv.open_conversation_id(chat), robot=""), 400, "invalidParameter.robotCode.empty")


@pytest.mark.parametrize("ocid", ["cidUnknown==", "", None])
def test_an_unknown_open_conversation_id_is_invalid_openConversationId(api, ocid):
    v1_error(api.send(ocid), 400, "invalid.openConversationId")


def test_a_dissolved_chat_is_group_disbanded(srv, api, chat):
    srv.set_chat(chat, status=2)
    v1_error(api.send(srv.open_conversation_id(chat)), 400, "group.disbanded")


def test_msg_param_is_at_most_15000_bytes_of_utf8(srv, api, chat):
    ocid = srv.open_conversation_id(chat)
    overhead = len(json.dumps({"content": ""}))
    exact = json.dumps({"content": "a" * (15_000 - overhead)})
    assert len(exact.encode()) == 15_000
    assert (
        api.v1(
            SEND, {"robotCode": "r", "openConversationId": ocid, "msgKey": "sampleText", "msgParam": exact}
        ).status_code
        == 200
    )
    wide = json.dumps({"content": "中" * 5_000}, ensure_ascii=False)  # 5,000 characters, 15,000+ bytes
    assert len(wide) < 15_000 < len(wide.encode())
    v1_error(
        api.v1(SEND, {"robotCode": "r", "openConversationId": ocid, "msgKey": "sampleText", "msgParam": wide}),
        400,
        "parameter.invalid",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"msgParam": {"content": "an object, not a JSON string"}},
        {"msgParam": "not json"},
        {"msgParam": json.dumps(["content"])},
        {"msgParam": json.dumps({"text": "no content"})},
        {"msgParam": json.dumps({"content": ""})},
        {"msgKey": "sampleMarkdown"},  # needs title and text
        {"msgKey": "sampleUnknown"},
        {"msgKey": None},
    ],
)
def test_bad_messages_are_parameter_invalid(srv, api, chat, change):
    v1_error(api.send(srv.open_conversation_id(chat), **change), 400, "parameter.invalid")
    assert srv.robot_messages() == []


# ---- new-app mode --------------------------------------------------------------------------------


@pytest.fixture
def new_app() -> Iterator[tuple[EmulatorServer, Api]]:
    server = EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, org=Org.from_data(ORG), new_app=True).start()
    client = Api(server)
    yield server, client
    client.close()
    server.stop()


def test_new_app_mode_closes_the_legacy_writes_with_60011(new_app):
    server, client = new_app
    chat = server.seed_chat("c", "alice", ["alice", "bob"])
    answers = [
        client.post("/chat/create", {"name": "n", "owner": "alice", "useridlist": ["alice"]}),
        client.post("/chat/update", {"chatid": chat, "name": "n"}),
        client.post("/chat/send", {"chatid": chat, "msgtype": "text", "text": {"content": "x"}}),
        client.get("/chat/getReadList", messageId="m", cursor=0, size=10),
    ]
    for reply in answers:
        assert reply.status_code == 200 and reply.json() == {"errcode": 60011, "errmsg": "没有调用该接口的权限"}
    assert server.chat(chat)["name"] == "c" and len(server.chats()) == 1
    assert server.meter()["metered"] == 0


def test_new_app_mode_keeps_chat_get_the_directory_and_the_v1_writes(new_app):
    server, client = new_app
    created = client.create()
    assert client.v1_json(UPDATE, {"chatid": created["chatid"], "name": "v1 名字"}) == {"success": True}
    info = client.get("/chat/get", chatid=created["chatid"]).json()
    assert info["errcode"] == 0 and info["chat_info"]["name"] == "v1 名字"
    assert client.post("/topapi/user/listid", {"dept_id": 100}).json()["errcode"] == 0
    assert (
        client.http.get(client.base + "/gettoken", params={"appkey": APP_KEY, "appsecret": APP_SECRET}).json()[
            "errcode"
        ]
        == 0
    )


def test_new_app_mode_checks_the_token_first_and_spends_no_quota(new_app):
    server, client = new_app
    server.faults.monthly_quota = 1
    assert client.post("/chat/update", {"chatid": "chat00"}, token="bad").json()["errcode"] == 40014
    assert client.post("/chat/update", {"chatid": "chat00"}).json()["errcode"] == 60011
    assert server.meter()["quota_left"] == 1


def test_new_app_mode_is_visible_and_settable_over_the_admin_route(srv, api, chat):
    assert api.admin("config").json() == {"config": {"new_app": False, "robot_code": None, "robot_in_new_chats": True}}
    assert api.admin("config", {"new_app": True}).status_code == 200
    assert api.post("/chat/update", {"chatid": chat}).json()["errcode"] == 60011
    assert api.admin("config", {"new_app": "yes"}).status_code == 400
    assert api.admin("config", {"bogus": 1}).status_code == 400
    srv.reset()
    assert srv.new_app is False and srv.config()["new_app"] is False


# ---- the meter -----------------------------------------------------------------------------------


def test_the_meter_counts_processed_metered_calls_of_both_generations(srv, api, chat):
    legacy = api.legacy_token()
    api.get("/chat/get", token=legacy, chatid=chat)  # success
    api.post("/chat/update", {"chatid": chat, "name": ""}, token=legacy)  # 40035: processed
    api.get("/chat/get", token=legacy, chatid="chat00")  # 34013: processed
    api.v1(convert_path(chat))  # success
    api.v1(UPDATE, {"chatid": "chat00"})  # parameter.invalid: processed
    api.v1(convert_path("chat00"))  # invalideChatId: processed
    srv.set_robot(chat, False)
    api.send(srv.open_conversation_id(chat))  # robot not in the chat: processed
    assert srv.meter() == {"metered": 7, "exempt": 2, "quota_left": None}
    metered = {c.endpoint: c.metered for c in srv.calls if c.endpoint in ("/gettoken", V1_TOKEN)}
    assert metered == {"/gettoken": False, V1_TOKEN: False}
    assert sum(c.metered for c in srv.calls) == 7 and len(srv.calls) == 9


def test_refusals_are_not_counted(srv, api, chat):
    srv.faults.qps_limit = 1
    api.v1(convert_path(chat))  # counted (1)
    api.v1(convert_path(chat))  # throttled
    srv.faults.qps_limit = 0
    api.v1(convert_path(chat), token=None)  # 401
    api.v1(convert_path(chat), token="bad")  # InvalidAuthentication
    api.get("/chat/get", token="bad", chatid=chat)  # 40014
    api.http.get(api.base + UPDATE, headers={TOKEN_HEADER: api.token})  # wrong method
    api.http.post(api.base + "/chat/get", params={"access_token": api.token, "chatid": chat})  # 43001
    srv.faults.update({"busy_every": 1})
    api.v1(convert_path(chat))
    api.get("/chat/get", chatid=chat)
    srv.faults.update({"busy_every": 0, "http500_every": 1})
    api.v1(convert_path(chat))
    srv.faults.update({"http500_every": 0, "ip_ban_every": 1})
    api.v1(convert_path(chat))
    srv.faults.update({"ip_ban_every": 0, "no_permission": [CONVERT]})
    api.v1(convert_path(chat))
    srv.faults.update({"no_permission": [], "fail_chatids": {chat: "500:system.error"}})
    api.v1(convert_path(chat))
    srv.faults.update({"fail_chatids": {chat: "429:system.busy"}})
    api.v1(convert_path(chat))
    srv.faults.update({"fail_chatids": {chat: -1}})
    api.get("/chat/get", chatid=chat)
    srv.faults.update({"fail_chatids": {}, "monthly_quota": 0})
    api.v1(convert_path(chat))
    api.get("/chat/get", chatid=chat)
    assert srv.meter() == {"metered": 1, "exempt": 1, "quota_left": 0}
    assert sum(c.metered for c in srv.calls) == 1


def test_injected_request_level_errors_are_counted(srv, api, chat):
    srv.faults.fail_chatids = {chat: 34013}
    api.v1(convert_path(chat))
    api.get("/chat/get", chatid=chat)
    assert srv.meter()["metered"] == 2


def test_the_quota_runs_out_in_both_generations_and_refusals_do_not_spend_it():
    with server_with(monthly_quota=3) as server:
        client = Api(server)
        chat = server.seed_chat("c", "alice", ["alice"])
        server.faults.qps_limit = 1
        client.v1(convert_path(chat))  # counted: 2 left
        v1_error(client.v1(convert_path(chat)), 403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi")
        server.faults.qps_limit = 0
        client.v1(convert_path(chat), token=None)  # 401: nothing spent
        assert server.meter()["quota_left"] == 2
        client.v1(UPDATE, {"chatid": "chat00"})  # a bad parameter is processed: 1 left
        assert client.get("/chat/get", chatid=chat).json()["errcode"] == 0  # 0 left
        v1_error(client.v1(convert_path(chat)), 403, "Forbidden.AccessDenied.ApiCountLimitForOrg")
        reply = client.get("/chat/get", chatid=chat).json()
        assert reply["errcode"] == 90020
        assert client.v1_token_response().status_code == 200  # exempt
        assert client.admin("meter").json() == {"meter": {"metered": 3, "exempt": 2, "quota_left": 0}}
        server.reset()
        assert server.meter() == {"metered": 0, "exempt": 0, "quota_left": 3}
        assert server.faults.monthly_quota == 3
        client.close()


def test_the_contact_api_is_exempt():
    with EmulatorServer(org=Org.from_data(ORG), monthly_quota=0) as server:
        client = Api(server)
        for _ in range(3):
            assert client.post("/topapi/user/listid", {"dept_id": 100}).json()["errcode"] == 0
        assert client.post("/topapi/user/listid", {"dept_id": 999}).json()["errcode"] == 60003  # processed, exempt
        assert server.meter() == {"metered": 0, "exempt": 5, "quota_left": 0}
        client.close()


def test_the_quota_is_never_overspent_by_concurrent_calls():
    with server_with(monthly_quota=10) as server:
        chat = server.seed_chat("c", "alice", ["alice"])
        token = Api(server).token
        answers: list[int] = []

        def worker() -> None:
            with requests.Session() as http:
                for _ in range(5):
                    answers.append(
                        http.post(server.url + convert_path(chat), headers={TOKEN_HEADER: token}).status_code
                    )

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers).count(200) == 10 and answers.count(403) == 20
        assert server.meter() == {"metered": 10, "exempt": 1, "quota_left": 0}


# ---- persistence ----------------------------------------------------------------------------------


def test_open_conversation_ids_robots_and_messages_survive_a_restart(tmp_path):
    path = tmp_path / "emulator.json"
    with server_with(data_path=str(path)) as first:
        client = Api(first)
        v1_chat = client.create()
        legacy_chat = client.post("/chat/create", {"name": "l", "owner": "alice", "useridlist": ["alice"]}).json()
        seeded = first.seed_chat("s", "alice", ["alice"])
        first.set_robot(seeded, False)
        client.send(v1_chat["openConversationId"], "kept")
        ids = {cid: first.open_conversation_id(cid) for cid in (v1_chat["chatid"], legacy_chat["chatid"], seeded)}
        client.close()
    assert ids[v1_chat["chatid"]] == v1_chat["openConversationId"]
    assert ids[legacy_chat["chatid"]] == legacy_chat["openConversationId"]
    with server_with(data_path=str(path)) as second:
        client = Api(second)
        for chatid, ocid in ids.items():
            assert client.v1_json(convert_path(chatid)) == {"openConversationId": ocid}
        assert not second.robot_in(seeded) and second.robot_in(v1_chat["chatid"])
        assert [m["params"] for m in second.robot_messages()] == [{"content": "kept"}]
        client.close()


def test_an_older_data_file_gets_ids_that_stay_stable(tmp_path):
    path = tmp_path / "emulator.json"
    info = {"chatid": "chat0a", "name": "old", "owner": "alice", "useridlist": ["alice"], "status": 1}
    path.write_text(
        json.dumps({"format": "dtchat-emulator", "version": 1, "chats": {"chat0a": info}}), encoding="utf-8"
    )
    with server_with(data_path=str(path)) as first:
        ocid = first.open_conversation_id("chat0a")
        assert ocid and first.robot_in("chat0a")
    with server_with(data_path=str(path)) as second:
        assert second.open_conversation_id("chat0a") == ocid
        client = Api(second)
        assert client.v1_json(convert_path("chat0a")) == {"openConversationId": ocid}
        client.close()


@pytest.mark.parametrize(
    "extra",
    [
        {"open_conversation_ids": {"chat0b": "cidX=="}},  # an unknown chat
        {"open_conversation_ids": {"chat0a": 7}},
        {"robots": {"chat0a": "yes"}},
        {"robot_messages": [{"chatid": "chat0a"}]},
    ],
)
def test_a_corrupt_v1_section_of_the_data_file_is_refused(tmp_path, extra):
    path = tmp_path / "emulator.json"
    info = {"chatid": "chat0a", "name": "old", "owner": "alice", "useridlist": ["alice"]}
    path.write_text(
        json.dumps({"format": "dtchat-emulator", "version": 1, "chats": {"chat0a": info}, **extra}), encoding="utf-8"
    )
    with pytest.raises(EmulatorSetupError, match="emulator.json"):
        EmulatorServer(data_path=str(path))
