"""The emulator's org directory: the contact API of dingtalk-api.md over real HTTP, its faults and edits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from reconciler.emulator import SANDBOX_ORG, EmulatorServer, Faults, Org, OrgError, load_org

from helpers import BY_MOBILE, DEPT_GET, DIRECTORY, LISTID, LISTSUBID, ROLE_LIST, SIMPLELIST, RawApi

ORG: dict[str, Any] = {
    "departments": [
        {"id": 1, "name": "公司"},
        {"id": 100, "name": "研发部", "parent": 1},
        {"id": 110, "name": "后端组", "parent": 100},
        {"id": 120, "name": "前端组", "parent": 100},
        {"id": 200, "name": "销售部", "parent": 1},
    ],
    "users": [
        {"userid": "alice", "name": "Alice", "mobile": "13800000001", "departments": [100, 110]},
        {"userid": "bob", "mobile": "13800000002", "departments": [110]},
        {"userid": "carol", "mobile": "13800000003", "departments": [120]},
        {"userid": "dave", "mobile": "13800000004", "departments": [200], "active": False},
        {"userid": "erin", "departments": [1]},
    ],
    "roles": [
        {"id": 3001, "name": "值班", "group": "默认", "holders": ["alice", "bob"]},
        {"id": 3002, "name": "销售", "group": "业务", "holders": ["dave"]},
        {"id": 3003, "name": "空", "holders": []},
    ],
}


@pytest.fixture
def srv():
    with EmulatorServer(org=Org.from_data(ORG)) as server:
        yield server


@pytest.fixture
def api(srv):
    with RawApi(srv) as client:
        yield client


def result(answer: dict[str, Any]) -> Any:
    assert answer["errcode"] == 0, answer
    return answer["result"]


# ---- the six endpoints -------------------------------------------------------------------------


def test_listid_lists_direct_members_only_in_file_order(api):
    assert result(api.post_json(LISTID, {"dept_id": 110})) == {"userid_list": ["alice", "bob"]}
    assert result(api.post_json(LISTID, {"dept_id": 100})) == {
        "userid_list": ["alice"]
    }  # not bob: he is one level down
    assert result(api.post_json(LISTID, {"dept_id": 1})) == {"userid_list": ["erin"]}
    answer = api.post_json(LISTID, {"dept_id": 120})
    assert answer["errmsg"] == "ok" and answer["request_id"]


def test_listsubid_lists_the_next_level_and_a_leaf_is_empty(api):
    assert result(api.post_json(LISTSUBID, {"dept_id": 1})) == {"dept_id_list": [100, 200]}
    assert result(api.post_json(LISTSUBID, {"dept_id": 100})) == {"dept_id_list": [110, 120]}
    assert result(api.post_json(LISTSUBID, {"dept_id": 110})) == {"dept_id_list": []}


def test_department_get_names_the_parent_except_for_the_root(api):
    root = result(api.post_json(DEPT_GET, {"dept_id": 1, "language": "zh_CN"}))
    assert (root["dept_id"], root["name"]) == (1, "公司") and "parent_id" not in root
    sub = result(api.post_json(DEPT_GET, {"dept_id": 110}))
    assert (sub["dept_id"], sub["name"], sub["parent_id"]) == (110, "后端组", 100)
    assert set(sub) - {"dept_id", "name", "parent_id"}, "real answers carry extra keys; so does the emulator"


@pytest.mark.parametrize("endpoint, invalid", [(LISTID, 400002), (LISTSUBID, 400002), (DEPT_GET, 40009)])
@pytest.mark.parametrize("dept_id", ["110", None, 0, -1, True, 1.5])
def test_department_ids_must_be_positive_integers(api, endpoint, invalid, dept_id):
    body = {} if dept_id is None else {"dept_id": dept_id}
    answer = api.post_json(endpoint, body)
    assert answer["errcode"] == invalid and answer["errmsg"] and answer["request_id"]


@pytest.mark.parametrize("endpoint", [LISTID, LISTSUBID, DEPT_GET])
def test_an_unknown_department_is_60003(api, endpoint):
    assert api.post_json(endpoint, {"dept_id": 999})["errcode"] == 60003


def many_holders_org(n: int) -> Org:
    data = json.loads(json.dumps(ORG))
    data["users"] += [{"userid": f"u{i:02d}", "departments": [200]} for i in range(n)]
    data["roles"].append({"id": 4000, "name": "大角色", "holders": [f"u{i:02d}" for i in range(n)]})
    return Org.from_data(data)


def test_simplelist_pages_with_offset_and_size_and_has_no_errmsg():
    with EmulatorServer(org=many_holders_org(45)) as server, RawApi(server) as api:
        pages, offset = [], 0
        while True:
            answer = api.post_json(SIMPLELIST, {"role_id": 4000, "offset": offset, "size": 20})
            assert answer["errcode"] == 0 and "errmsg" not in answer and answer["request_id"]
            pages.append([u["userid"] for u in answer["result"]["list"]])
            if not answer["result"]["hasMore"]:
                break
            offset += 20
        assert [len(p) for p in pages] == [20, 20, 5]
        assert sum(pages, []) == [f"u{i:02d}" for i in range(45)]
        whole = api.post_json(SIMPLELIST, {"role_id": 4000, "offset": 0, "size": 100})["result"]
        assert len(whole["list"]) == 45 and whole["hasMore"] is False


@pytest.mark.parametrize("paging", [{}, {"size": 100}, {"offset": 40}, {"size": 500}, {"offset": -1}])
def test_simplelist_ignores_offset_and_size_unless_both_are_sent(paging):
    with EmulatorServer(org=many_holders_org(45)) as server, RawApi(server) as api:
        answer = api.post_json(SIMPLELIST, {"role_id": 4000, **paging})
        assert answer["errcode"] == 0
        assert [u["userid"] for u in answer["result"]["list"]] == [f"u{i:02d}" for i in range(20)]
        assert answer["result"]["hasMore"] is True


def test_simplelist_entries_carry_userid_name_and_manage_scopes(api):
    listed = result(api.post_json(SIMPLELIST, {"role_id": 3001, "offset": 0, "size": 100}))
    assert listed == {
        "hasMore": False,
        "list": [
            {"userid": "alice", "name": "Alice", "manageScopes": []},
            {"userid": "bob", "name": "bob", "manageScopes": []},
        ],
    }
    assert result(api.post_json(SIMPLELIST, {"role_id": 3003})) == {"hasMore": False, "list": []}


@pytest.mark.parametrize(
    "body, errcode",
    [
        ({"role_id": 9999}, 33011),
        ({}, 400002),
        ({"role_id": "3001"}, 400002),
        ({"role_id": 3001, "offset": -1, "size": 10}, 40068),
        ({"role_id": 3001, "offset": "0", "size": 10}, 40068),
        ({"role_id": 3001, "offset": 0, "size": 0}, 40069),
        ({"role_id": 3001, "offset": 0, "size": 101}, 40069),
        ({"role_id": 3001, "offset": 0, "size": "20"}, 40069),
    ],
)
def test_simplelist_errors(api, body, errcode):
    answer = api.post_json(SIMPLELIST, body)
    assert answer["errcode"] == errcode and answer["request_id"]


def test_role_list_groups_roles_and_pages_over_groups(api):
    listed = result(api.post_json(ROLE_LIST, {"offset": 0, "size": 200}))
    assert listed == {
        "hasMore": False,
        "list": [
            {"groupId": 1, "name": "默认", "roles": [{"id": 3001, "name": "值班"}, {"id": 3003, "name": "空"}]},
            {"groupId": 2, "name": "业务", "roles": [{"id": 3002, "name": "销售"}]},
        ],
    }
    first = result(api.post_json(ROLE_LIST, {"offset": 0, "size": 1}))
    assert first["hasMore"] is True and [g["groupId"] for g in first["list"]] == [1]
    second = result(api.post_json(ROLE_LIST, {"offset": 1, "size": 1}))
    assert second["hasMore"] is False and [g["groupId"] for g in second["list"]] == [2]
    assert len(result(api.post_json(ROLE_LIST, {}))["list"]) == 2


@pytest.mark.parametrize(
    "body, errcode",
    [
        ({"offset": -1, "size": 10}, 40068),
        ({"offset": 0, "size": 201}, 40069),
        ({"size": 0}, 40069),
    ],
)
def test_role_list_errors(api, body, errcode):
    assert api.post_json(ROLE_LIST, body)["errcode"] == errcode


@pytest.mark.parametrize(
    "mobile, answer",
    [
        ("13800000001", "alice"),
        ("13800000004", 60121),  # dave has not joined (active: false)
        ("13900000000", 60121),  # nobody's
        ("+8613800000001", 40104),  # the client must normalise
        ("138 0000 0001", 40104),
        ("138-0000-0001", 40104),
        ("1" * 16, 40104),
        ("", 40104),
        (13800000001, 400002),
        (None, 400002),
    ],
)
def test_getbymobile_finds_active_users_by_normalised_number(api, mobile, answer):
    body = {} if mobile is None else {"mobile": mobile}
    reply = api.post_json(BY_MOBILE, body)
    if isinstance(answer, str):
        assert result(reply) == {"userid": answer}
    else:
        assert reply["errcode"] == answer and reply["request_id"]


@pytest.mark.parametrize("endpoint", DIRECTORY)
def test_directory_calls_must_be_post_with_a_json_object(srv, api, endpoint):
    token = {"access_token": api.token}
    assert api.http.get(srv.url + endpoint, params=token).json()["errcode"] == 43002
    assert api.http.post(srv.url + endpoint, params=token, data=b"{nope").json()["errcode"] == 400002
    assert api.http.post(srv.url + endpoint, params=token, json=[1]).json()["errcode"] == 400002


# ---- tokens, permission, quirks ----------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "0" * 32])
@pytest.mark.parametrize("endpoint", DIRECTORY)
def test_a_bad_token_on_topapi_is_88_with_sub_code_40014(srv, api, endpoint, token):
    params = {} if token is None else {"access_token": token}
    answer = api.http.post(srv.url + endpoint, params=params, json={"dept_id": 1}).json()
    assert answer["errcode"] == 88 and answer["sub_code"] == "40014"
    assert answer["sub_msg"] == "不合法的access_token" and answer["request_id"]


def test_an_expired_token_on_topapi_is_88_40014_but_on_the_chat_api_42001(srv, api):
    srv.expire_tokens()
    answer = api.post_json(LISTID, {"dept_id": 1})
    assert (answer["errcode"], answer["sub_code"]) == (88, "40014")
    assert api.get_json("/chat/get", chatid="chat00")["errcode"] == 42001
    srv.faults.token_uses = 1
    api.new_token()
    assert api.post_json(LISTID, {"dept_id": 1})["errcode"] == 0
    assert api.post_json(LISTID, {"dept_id": 1})["sub_code"] == "40014"


def test_without_an_org_the_contact_api_says_no_permission():
    with EmulatorServer() as server, RawApi(server) as api:
        answer = api.post_json(LISTID, {"dept_id": 1})
        assert (answer["errcode"], answer["sub_code"]) == (88, "60011")
        assert answer["sub_msg"].startswith("应用尚未开通所需的权限：[") and "no org loaded" in answer["sub_msg"]


def test_string_errcode_prints_every_topapi_errcode_as_a_string(srv, api):
    srv.faults.string_errcode = True
    assert api.post_json(LISTID, {"dept_id": 1})["errcode"] == "0"
    assert api.post_json(LISTID, {"dept_id": 999})["errcode"] == "60003"
    assert api.post_json(LISTID, {"dept_id": 1}, token="bad")["errcode"] == "88"
    chat = api.get_json("/chat/get", chatid="chat00")
    assert chat["errcode"] == 34013  # the chat API is not affected
    logged = srv.calls_to(LISTID)
    assert [(c.errcode, c.sub_code) for c in logged] == [(0, None), (60003, None), (88, "40014")]  # integers
    assert logged[-1].describe().startswith("#4 POST /topapi/user/listid dept_id=1 → errcode 88 sub_code 40014 (")


# ---- faults ----------------------------------------------------------------------------------------


def test_fail_lookups_fails_exactly_the_named_lookup(srv, api):
    srv.faults.fail_lookups = {"dept:110": 60003, "role:3001": 33011, "mobile:13800000002": 60121}
    for endpoint in (LISTID, LISTSUBID, DEPT_GET):
        assert api.post_json(endpoint, {"dept_id": 110})["errcode"] == 60003
        assert api.post_json(endpoint, {"dept_id": 100})["errcode"] == 0
    assert api.post_json(SIMPLELIST, {"role_id": 3001})["errcode"] == 33011
    assert api.post_json(SIMPLELIST, {"role_id": 3002})["errcode"] == 0
    assert api.post_json(BY_MOBILE, {"mobile": "13800000002"})["errcode"] == 60121
    assert result(api.post_json(BY_MOBILE, {"mobile": "13800000001"})) == {"userid": "alice"}


def test_fail_lookups_can_deny_permission_or_fail_a_whole_endpoint(srv, api):
    srv.faults.fail_lookups = {"dept:200": "88:60011", ROLE_LIST: -1}
    answer = api.post_json(LISTID, {"dept_id": 200})
    assert (answer["errcode"], answer["sub_code"]) == (88, "60011")
    assert answer["sub_msg"].startswith("应用尚未开通所需的权限：[") and answer["request_id"]
    assert api.post_json(LISTID, {"dept_id": 1})["errcode"] == 0
    assert api.post_json(ROLE_LIST, {})["errcode"] == -1


def test_fail_lookups_is_set_over_the_admin_route_and_checked(srv, api):
    reply = api.admin("faults", {"fail_lookups": {"dept:110": "88:60011"}, "endpoint_latency_ms": {LISTID: 5}})
    assert reply.status_code == 200 and reply.json()["faults"]["fail_lookups"] == {"dept:110": "88:60011"}
    assert srv.faults.endpoint_latency_ms == {LISTID: 5}
    assert api.post_json(LISTID, {"dept_id": 110})["sub_code"] == "60011"
    for bad in (
        {"fail_lookups": {"dept:1": "60003"}},
        {"fail_lookups": {"dept:1": 1.5}},
        {"fail_lookups": ["dept:1"]},
        {"endpoint_latency_ms": {LISTID: -1}},
        {"endpoint_latency_ms": {LISTID: "5"}},
        {"string_errcode": 1},
    ):
        assert api.admin("faults", bad).status_code == 400, bad


def test_directory_calls_are_rate_limited_per_endpoint(srv, api):
    srv.faults.qps_limit = 2
    codes = [api.post_json(LISTID, {"dept_id": 1})["errcode"] for _ in range(3)]
    assert codes == [0, 0, 90018]
    assert api.post_json(LISTSUBID, {"dept_id": 1})["errcode"] == 0  # its own window


def test_directory_calls_are_not_metered_but_chat_calls_are(srv, api):
    srv.faults.monthly_quota = 1
    assert all(api.post_json(LISTID, {"dept_id": 1})["errcode"] == 0 for _ in range(5))
    assert srv.faults.monthly_quota == 1
    assert api.get_json("/chat/get", chatid="chat00")["errcode"] == 34013
    assert api.get_json("/chat/get", chatid="chat00")["errcode"] == 90020
    assert api.post_json(LISTID, {"dept_id": 1})["errcode"] == 0


def test_gateway_faults_hit_directory_endpoints(srv, api):
    srv.faults.fault_endpoints = {LISTID}
    srv.faults.busy_every = 1
    assert api.post_json(LISTID, {"dept_id": 1})["errcode"] == -1
    assert api.post_json(LISTSUBID, {"dept_id": 1})["errcode"] == 0
    srv.faults.busy_every, srv.faults.http500_every = 0, 1
    response = api.post(LISTID, {"dept_id": 1})
    assert response.status_code == 500
    srv.faults.http500_every, srv.faults.ip_ban_every = 0, 1
    banned = api.post_json(LISTID, {"dept_id": 1})
    assert "errcode" not in banned and banned["status"] == 1111


def test_endpoint_latency_can_time_a_client_out_on_one_endpoint(srv, api):
    srv.faults.endpoint_latency_ms = {LISTID: 400}
    with pytest.raises(requests.ReadTimeout):
        api.post_json(LISTID, {"dept_id": 1}, timeout=(5, 0.05))
    assert Faults(latency_ms=7, endpoint_latency_ms={LISTID: 400}).latency_for(LISTSUBID) == 7
    assert Faults(latency_ms=7, endpoint_latency_ms={LISTID: 0}).latency_for(LISTID) == 0


# ---- the org as the user directory of chats ------------------------------------------------------


def test_with_an_org_chats_accept_only_its_users_naming_the_others(srv, api):
    create = {"name": "x", "owner": "alice", "useridlist": ["alice", "dave", "zed", "yan"]}
    answer = api.post_json("/chat/create", create)
    assert answer["errcode"] == 60121 and "zed" in answer["errmsg"] and "yan" in answer["errmsg"]
    assert "dave" not in answer["errmsg"]  # not joined yet, but a user
    chatid = api.post_json("/chat/create", {**create, "useridlist": ["alice", "bob"]})["chatid"]
    srv.remove_user("bob")
    answer = api.post_json("/chat/update", {"chatid": chatid, "add_useridlist": ["bob", "carol"]})
    assert answer["errcode"] == 60121 and "bob" in answer["errmsg"] and "carol" not in answer["errmsg"]


def test_users_and_org_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        EmulatorServer(users=["alice"], org=Org.from_data(ORG))


# ---- changing the org at run time ------------------------------------------------------------------


def test_python_edits_change_the_answers_at_once(srv, api):
    srv.move_user("bob", [120])
    assert result(api.post_json(LISTID, {"dept_id": 110}))["userid_list"] == ["alice"]
    assert result(api.post_json(LISTID, {"dept_id": 120}))["userid_list"] == ["bob", "carol"]
    srv.remove_user("alice")
    assert result(api.post_json(LISTID, {"dept_id": 110}))["userid_list"] == []
    assert [u["userid"] for u in result(api.post_json(SIMPLELIST, {"role_id": 3001}))["list"]] == ["bob"]
    assert api.post_json(BY_MOBILE, {"mobile": "13800000001"})["errcode"] == 60121
    srv.add_user("frank", [110], name="Frank", mobile="13800000001")
    assert result(api.post_json(BY_MOBILE, {"mobile": "13800000001"})) == {"userid": "frank"}
    srv.set_role_holders(3001, ["frank", "carol"])
    assert [u["userid"] for u in result(api.post_json(SIMPLELIST, {"role_id": 3001}))["list"]] == ["frank", "carol"]
    srv.org.set_active("dave", True)
    assert result(api.post_json(BY_MOBILE, {"mobile": "13800000004"})) == {"userid": "dave"}
    with pytest.raises(KeyError):
        srv.move_user("alice", [110])
    with pytest.raises(OrgError, match="unknown department 999"):
        srv.move_user("bob", [999])
    with pytest.raises(OrgError, match="duplicate userid"):
        srv.add_user("bob", [110])
    with pytest.raises(OrgError, match="unknown holder zed"):
        srv.set_role_holders(3001, ["zed"])
    srv.reset()  # back to the org as constructed (and every token forgotten)
    api.new_token()
    assert result(api.post_json(LISTID, {"dept_id": 110}))["userid_list"] == ["alice", "bob"]
    assert srv.org.user("frank") is None


def test_admin_routes_show_and_edit_the_org(srv, api):
    assert api.admin("org").json()["org"] == Org.from_data(ORG).to_data()
    assert api.admin("org/move-user", {"userid": "bob", "departments": [120]}).json() == {"ok": True}
    assert result(api.post_json(LISTID, {"dept_id": 120}))["userid_list"] == ["bob", "carol"]
    assert api.admin("org/remove-user", {"userid": "carol"}).json()["ok"]
    assert api.admin("org/add-user", {"userid": "gina", "departments": [200], "mobile": "13800000009"}).json()["ok"]
    assert api.admin("org/set-active", {"userid": "gina", "active": False}).json()["ok"]
    assert api.post_json(BY_MOBILE, {"mobile": "13800000009"})["errcode"] == 60121
    assert api.admin("org/role-holders", {"role_id": 3002, "holders": ["gina"]}).json()["ok"]
    assert [u["userid"] for u in result(api.post_json(SIMPLELIST, {"role_id": 3002}))["list"]] == ["gina"]
    shown = api.admin("org").json()["org"]
    assert [u["userid"] for u in shown["users"]] == ["alice", "bob", "dave", "erin", "gina"]
    assert api.admin("org/remove-user", {"userid": "nobody"}).status_code == 404
    assert api.admin("org/role-holders", {"role_id": 1, "holders": []}).status_code == 404
    assert api.admin("org/move-user", {"userid": "bob", "departments": [999]}).status_code == 400
    assert api.admin("org/move-user", {"userid": "bob"}).status_code == 400
    assert api.admin("org/move-user", {"userid": "bob", "departments": [110], "extra": 1}).status_code == 400
    assert api.admin("org/set-active", {"userid": "bob", "active": "yes"}).status_code == 400
    assert api.admin("org/move-user", {"userid": "bob", "departments": 110}).status_code == 400
    assert api.admin("org/move-user", ["bob"]).status_code == 400
    replaced = {"departments": [{"id": 1, "name": "新公司"}], "users": [{"userid": "solo", "departments": [1]}]}
    assert api.admin("org", replaced).json()["ok"]
    assert result(api.post_json(LISTID, {"dept_id": 1}))["userid_list"] == ["solo"]
    bad = api.admin("org", {"departments": [], "users": []})
    assert bad.status_code == 400 and "root" in bad.json()["error"]


def test_admin_org_edits_without_an_org_answer_404():
    with EmulatorServer() as server, requests.Session() as http:
        assert http.get(server.url + "/__emulator__/org").json() == {"org": None}
        reply = http.post(server.url + "/__emulator__/org/remove-user", json={"userid": "a"})
        assert reply.status_code == 404 and "no org" in reply.json()["error"]
        with pytest.raises(LookupError):
            server.move_user("a", [1])


# ---- loading and validating org files ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_load_org_reads_yaml_and_json(tmp_path, suffix):
    path = tmp_path / f"org{suffix}"
    path.write_text(
        json.dumps(ORG, ensure_ascii=False) if suffix == ".json" else yaml.safe_dump(ORG, allow_unicode=True),
        encoding="utf-8",
    )
    org = load_org(path)
    assert org.to_data() == Org.from_data(ORG).to_data()
    assert org.userids == {"alice", "bob", "carol", "dave", "erin"}


def _with(section: str, entry: Any = None, **changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(ORG))
    if entry is not None:
        data[section].append(entry)
    for key, value in changes.items():
        data[key] = value
    return data


@pytest.mark.parametrize(
    "data, words",
    [
        (_with("departments", {"id": 300, "name": "孤儿", "parent": 7}), "unknown parent 7"),
        (
            _with(
                "departments",
                departments=[
                    {"id": 1, "name": "公司"},
                    {"id": 2, "name": "a", "parent": 3},
                    {"id": 3, "name": "b", "parent": 2},
                ],
                users=[],
            ),
            "cycle",
        ),
        (_with("users", {"userid": "zed", "departments": [999]}), "unknown department 999"),
        (_with("departments", {"id": 110, "name": "又一个", "parent": 1}), "department 110: duplicate id"),
        (_with("users", {"userid": "alice", "departments": [1]}), "alice: duplicate userid"),
        (_with("users", {"userid": "zed", "mobile": "13800000001", "departments": [1]}), "already alice's"),
        (_with("roles", {"id": 3001, "name": "又一个"}), "role 3001: duplicate id"),
        (_with("roles", {"id": 3009, "name": "x", "holders": ["zed"]}), "unknown holder zed"),
        (_with("departments", departments=[{"id": 100, "name": "x", "parent": 1}], users=[], roles=[]), "root"),
        (_with("departments", departments=[{"id": 1, "name": "x", "parent": 1}], users=[], roles=[]), "root"),
        (_with("departments", {"id": 300, "name": "无主"}), "no parent"),
        (_with("users", {"userid": 412345678, "departments": [1]}), "quote numeric ids"),
        (_with("users", {"userid": "zed", "mobile": 13800000009, "departments": [1]}), "mobile"),
        (_with("users", {"userid": "zed", "mobile": "+86 138", "departments": [1]}), "mobile"),
        (_with("users", {"userid": "zed", "departments": []}), "at least one department"),
        (_with("users", {"userid": "zed", "departments": [1], "active": "yes"}), "active"),
        (_with("users", {"userid": "zed", "departments": [1], "email": "z@x"}), "unknown field(s) email"),
        (_with("users", {"name": "nobody", "departments": [1]}), "missing userid"),
        (_with("departments", {"id": "300", "name": "x", "parent": 1}), "positive integer"),
        (_with("users", extra=[]), "unknown field(s) extra"),
        (_with("users", users={"alice": {}}), "users: expected a list"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_org_validation_names_the_problem_in_one_line(tmp_path, data, words):
    path = tmp_path / "org.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_org(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message


def test_a_broken_org_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "org.yaml"
    path.write_text("departments: [\n  {id: 1\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_org(path)
    assert str(info.value).startswith(f"{path}: not valid YAML") and "\n" not in str(info.value)


# ---- the sandbox org -----------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "chats"


def _example_user_ids() -> set[str]:
    """Every literal user id in examples/chats (owners, members, groups, excludes); selectors are skipped."""
    found: set[str] = set()

    def take(items: Any) -> None:
        for item in items or []:
            if isinstance(item, str) and not item.startswith("@"):
                found.add(item)

    for path in sorted(EXAMPLES.glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for members in (doc.get("groups") or {}).values():
            take(members)
        for chat in (doc.get("chats") or {}).values():
            take([chat.get("owner")])
            take(chat.get("members"))
            take(chat.get("exclude"))
    return found


def test_the_sandbox_org_holds_every_user_of_the_examples():
    org = load_org(SANDBOX_ORG)
    used = _example_user_ids()
    assert len(used) > 40
    assert used <= org.userids, sorted(used - org.userids)
    assert org.userids - used, "some users only selectors bring in"


def test_the_sandbox_org_is_a_believable_company():
    org = load_org(SANDBOX_ORG)
    data = org.to_data()
    depth = {1: 0}
    for d in data["departments"][1:]:
        depth[d["id"]] = depth[d["parent"]] + 1
    assert max(depth.values()) >= 2  # 公司 → 研发部 → 后端组
    assert {d["name"] for d in data["departments"]} >= {
        "公司",
        "研发部",
        "后端组",
        "前端组",
        "SRE",
        "销售部",
        "销售实习",
    }
    assert any(len(u["departments"]) > 1 for u in data["users"])
    assert all(u.get("mobile") for u in data["users"])
    oncall = next(r for r in data["roles"] if r["name"] == "值班")
    assert oncall["holders"]
    assert any(not u["active"] for u in data["users"])


def test_the_sandbox_org_answers_selectors_over_http():
    with EmulatorServer(org=load_org(SANDBOX_ORG)) as server, RawApi(server) as api:
        assert result(api.post_json(LISTSUBID, {"dept_id": 100}))["dept_id_list"] == [110, 120, 130, 140]
        assert result(api.post_json(LISTID, {"dept_id": 130}))["userid_list"] == ["zhangwei", "lina", "wangfang"]
        holders = result(api.post_json(SIMPLELIST, {"role_id": 3001, "offset": 0, "size": 100}))["list"]
        assert [u["userid"] for u in holders] == ["zhangwei", "lina", "wangfang", "liuyang"]
        assert result(api.post_json(BY_MOBILE, {"mobile": "13800000001"})) == {"userid": "wangqiang"}
