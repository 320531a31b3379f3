"""The client's org-directory calls (/topapi/...), over real HTTP against the emulator's org.

Answers the emulator never gives (overlapping role pages, a page loop that
never ends, errcode 88 with a stringly typed errcode and no errmsg) come
from the scripted ``CannedServer`` of test_client_faults.
"""

from __future__ import annotations

import pytest
from test_client_faults import canned  # noqa: F401  (fixture)

from reconciler.backends import (
    AuthError,
    DingTalkError,
    InvalidParameterError,
    InvalidUserError,
    NotFoundError,
    ThrottledError,
    is_fatal,
)
from reconciler.backends.contacts import normalize_mobile
from reconciler.emulator import EmulatorServer, Org

from helpers import APP_KEY, APP_SECRET, BY_MOBILE, DEPT_GET, LISTID, LISTSUBID, ROLE_LIST, SIMPLELIST
from wire import Wire

#: 250 holders of role 3001 (3 pages of 100), 230 role groups (2 pages of 200), a small tree.
ORG = {
    "departments": [
        {"id": 1, "name": "公司"},
        {"id": 100, "name": "研发部", "parent": 1},
        {"id": 110, "name": "后端组", "parent": 100},
        {"id": 120, "name": "前端组", "parent": 100},
    ],
    "users": [
        {"userid": "alice", "mobile": "13800000001", "departments": [100]},
        {"userid": "bob", "mobile": "13800000002", "departments": [110, 100]},
        {"userid": "carol", "departments": [110]},
        {"userid": "dave", "mobile": "13800000004", "departments": [120], "active": False},
        *({"userid": f"u{i:03d}", "departments": [120]} for i in range(250)),
    ],
    "roles": [
        {"id": 3001, "name": "值班", "holders": [f"u{i:03d}" for i in range(250)]},
        {"id": 3002, "name": "主管", "group": "管理", "holders": ["alice"]},
        *({"id": 4000 + i, "name": f"r{i}", "group": f"g{i}"} for i in range(230)),
    ],
}


@pytest.fixture
def org_emulator():
    server = EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, org=Org.from_data(ORG)).start()
    yield server
    server.stop()


@pytest.fixture
def dclient(org_emulator):
    c = Wire(APP_KEY, APP_SECRET, api_base=org_emulator.url, max_qps=1000, backoff_base=0.01, backoff_cap=0.05)
    yield c
    c.close()


# ------------------------------------------------------------------ the calls


def test_department_members_and_sub_departments(dclient, org_emulator):
    assert dclient.list_department_user_ids(110) == ["bob", "carol"]
    assert dclient.list_department_user_ids(100) == ["alice", "bob"]
    assert dclient.list_sub_department_ids(1) == [100]
    assert dclient.list_sub_department_ids(100) == [110, 120]
    assert dclient.list_sub_department_ids(110) == []
    assert org_emulator.calls_to(LISTID)[0].body == {"dept_id": 110}
    assert org_emulator.calls_to(LISTSUBID)[0].body == {"dept_id": 1}


def test_department_name_sends_the_language_and_returns_the_name(dclient, org_emulator):
    assert dclient.get_department_name(110) == "后端组"
    assert dclient.get_department_name(1) == "公司"  # the root: no parent_id in its answer
    assert org_emulator.calls_to(DEPT_GET)[0].body == {"dept_id": 110, "language": "zh_CN"}


def test_role_holders_are_paged_by_100(dclient, org_emulator):
    assert dclient.list_role_user_ids(3001) == [f"u{i:03d}" for i in range(250)]
    bodies = [c.body for c in org_emulator.calls_to(SIMPLELIST)]
    assert bodies == [{"role_id": 3001, "offset": o, "size": 100} for o in (0, 100, 200)]


def test_role_list_is_paged_by_200_and_flattened(dclient, org_emulator):
    roles = dclient.list_roles()
    assert roles[3001] == "值班" and roles[3002] == "主管" and roles[4229] == "r229"
    assert len(roles) == 232
    assert [c.body for c in org_emulator.calls_to(ROLE_LIST)] == [
        {"offset": 0, "size": 200},
        {"offset": 200, "size": 200},
    ]


def test_user_by_mobile(dclient, org_emulator):
    assert dclient.get_user_id_by_mobile("13800000002") == "bob"
    assert org_emulator.calls_to(BY_MOBILE)[0].body == {"mobile": "13800000002"}
    with pytest.raises(NotFoundError) as info:
        dclient.get_user_id_by_mobile("13800000004")  # invited, not joined: not found
    assert info.value.errcode == 60121


def test_errcode_as_a_string_is_read_as_a_number(dclient, org_emulator):
    org_emulator.faults.string_errcode = True
    assert dclient.list_department_user_ids(110) == ["bob", "carol"]
    with pytest.raises(NotFoundError) as info:
        dclient.list_department_user_ids(999)
    assert info.value.errcode == 60003


def test_string_errcode_and_missing_errmsg_from_a_scripted_server(canned):  # noqa: F811
    client = canned((200, {"errcode": "60003", "request_id": "r1"}))
    with pytest.raises(NotFoundError) as info:
        client.list_sub_department_ids(5)
    assert info.value.errcode == 60003 and info.value.errmsg == ""
    assert str(info.value) == f"{LISTSUBID} failed: errcode 60003"


def test_directory_calls_share_the_client_stats(dclient):
    dclient.list_department_user_ids(110)
    dclient.list_role_user_ids(3002)
    dclient.get_user_id_by_mobile("13800000001")
    assert dclient.stats["calls"] == {"/gettoken": 1, LISTID: 1, SIMPLELIST: 1, BY_MOBILE: 1}


def test_ids_are_checked_before_any_call(dclient, org_emulator):
    for bad in ("100", True, 1.0):
        with pytest.raises(ValueError):
            dclient.list_department_user_ids(bad)
        with pytest.raises(ValueError):
            dclient.list_role_user_ids(bad)
    assert org_emulator.calls == []


# ----------------------------------------------------------------- paging edge cases


def test_role_pages_are_deduplicated_keeping_order(canned):  # noqa: F811
    page1 = {"errcode": 0, "result": {"hasMore": True, "list": [{"userid": "a"}, {"userid": "b"}]}}
    page2 = {"errcode": 0, "result": {"hasMore": False, "list": [{"userid": "b"}, {"userid": "c"}]}}
    client = canned((200, page1), (200, page2))
    assert client.list_role_user_ids(7) == ["a", "b", "c"]


def test_has_more_with_an_empty_page_is_malformed_not_a_hang(canned):  # noqa: F811
    client = canned((200, {"errcode": 0, "result": {"hasMore": True, "list": []}}))
    with pytest.raises(DingTalkError, match="malformed response"):
        client.list_role_user_ids(7)
    assert len(canned.server.paths) == 1


@pytest.mark.parametrize(
    "call, answer",
    [
        (lambda c: c.list_department_user_ids(1), {"errcode": 0}),
        (lambda c: c.list_department_user_ids(1), {"errcode": 0, "result": {"userid_list": [1, 2]}}),
        (lambda c: c.list_sub_department_ids(1), {"errcode": 0, "result": {"dept_id_list": ["2"]}}),
        (lambda c: c.get_user_id_by_mobile("1"), {"errcode": 0, "result": {}}),
        (lambda c: c.list_roles(), {"errcode": 0, "result": {"list": [{"roles": [{"id": "x"}]}]}}),
    ],
)
def test_malformed_directory_answers(canned, call, answer):  # noqa: F811
    with pytest.raises(DingTalkError, match="malformed response"):
        call(canned((200, answer)))


def test_missing_sub_department_list_is_empty(canned):  # noqa: F811
    assert canned((200, {"errcode": 0, "result": {}})).list_sub_department_ids(9) == []


# ------------------------------------------------------------------ tokens and errors


def test_topapi_token_error_88_40014_refreshes_the_token_once(dclient, org_emulator):
    dclient.list_department_user_ids(110)
    org_emulator.expire_tokens()
    assert dclient.list_department_user_ids(110) == ["bob", "carol"]
    calls = org_emulator.calls_to(LISTID)
    assert [c.errcode for c in calls] == [0, 88, 0]
    assert org_emulator.counters()["/gettoken"] == 2
    assert dclient.stats["token_refreshes"] == 1


def test_persistent_88_40014_is_an_auth_error_after_one_refresh(dclient, org_emulator):
    org_emulator.faults.fail_lookups = {LISTSUBID: "88:40014"}
    with pytest.raises(AuthError, match="after a refresh") as info:
        dclient.list_sub_department_ids(1)
    assert info.value.errcode == 88 and info.value.sub_code == "40014"
    assert len(org_emulator.calls_to(LISTSUBID)) == 2


DIRECTORY_ERRORS = {
    60003: NotFoundError,
    40009: NotFoundError,
    33011: NotFoundError,
    60121: InvalidUserError,
    40104: InvalidParameterError,
    400002: InvalidParameterError,
    40068: InvalidParameterError,
    40069: InvalidParameterError,
    43007: AuthError,
    50002: AuthError,
    50004: AuthError,
    "88:60011": AuthError,
    "88:43007": AuthError,
    "88:50002": AuthError,
    "88:50004": AuthError,
}


def test_directory_errcodes_are_classified_and_not_retried(dclient, org_emulator):
    for n, (failure, cls) in enumerate(DIRECTORY_ERRORS.items(), start=1):
        org_emulator.faults.fail_lookups = {LISTID: failure}
        with pytest.raises(DingTalkError) as info:
            dclient.list_department_user_ids(100)
        assert type(info.value) is cls, failure
        assert not is_fatal(info.value), failure  # one API or one lookup, not the whole run
        assert "\n" not in str(info.value)
        assert len(org_emulator.calls_to(LISTID)) == n, failure
    assert dclient.stats["retries"] == 0


def test_no_permission_on_a_directory_api_says_so(dclient, org_emulator):
    org_emulator.faults.fail_lookups = {SIMPLELIST: "88:60011"}
    with pytest.raises(AuthError, match="lacks the permission .qyapi_get_department_member.") as info:
        dclient.list_role_user_ids(3001)
    assert info.value.sub_code == "60011"


def test_busy_directory_answers_are_retried(dclient, org_emulator):
    org_emulator.faults.fault_endpoints = {DEPT_GET}
    org_emulator.faults.busy_every = 2
    dclient.get_department_name(1)
    dclient.get_department_name(100)
    assert [c.errcode for c in org_emulator.calls_to(DEPT_GET)] == [0, -1, 0]
    org_emulator.faults.busy_every = 1
    with pytest.raises(ThrottledError):
        dclient.get_department_name(1)


# ------------------------------------------------------------------ mobiles


@pytest.mark.parametrize(
    "text, number",
    [
        ("13800000000", "13800000000"),
        ("+86 138-0000-0000", "13800000000"),
        ("0086 (138) 0000 0000", "13800000000"),
        ("+8613800000000", "13800000000"),
        (" 138 0000 0000 ", "13800000000"),
        ("010-12345678", "01012345678"),
        ("8613800000000", "8613800000000"),  # no + or 00: not a country prefix we may drop
        ("123456789012345", "123456789012345"),
    ],
)
def test_normalize_mobile(text, number):
    assert normalize_mobile(text) == number


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "+44 20 7946 0958",
        "138.0000.0000",
        "1380000000a",
        "１３８００００００００",
        "1234567890123456",
        "+86 138",
    ],
)
def test_normalize_mobile_refuses_what_is_not_a_number(text):
    with pytest.raises(ValueError) as info:
        normalize_mobile(text)
    assert text.strip() == "" or text not in str(info.value)  # personal data is not echoed
