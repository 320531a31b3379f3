"""Directory selectors resolved over real HTTP against the emulator's org: what each selector means,
that every call is made once per run, and that a failed or empty answer never becomes a member list."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.backends import AuthError, TransportError
from reconciler.config import load_config
from reconciler.directory import DirectoryResult, Lookup, expand_chats, lookup_selectors, resolve_directory
from reconciler.emulator import EmulatorServer, Org
from reconciler.model import DesiredChat, MemberSource, Selector
from reconciler.rules import MEMBER_CAP

from helpers import (
    APP_KEY,
    APP_SECRET,
    BY_MOBILE,
    DEPT_GET,
    DIRECTORY,
    LISTID,
    LISTSUBID,
    ROLE_LIST,
    SIMPLELIST,
    write_config,
)
from wire import Wire

BIG = [f"big{i:04d}" for i in range(MEMBER_CAP)]

#: 1 公司 ─ 100 研发部 ─ 110 后端组 ─ 111 存储
#:                   └ 120 前端组            (carol is in 110 and 120)
#:        ─ 200 销售部, 300 空部门 (nobody), 400 大部门 (1,000 people)
ORG: dict[str, Any] = {
    "departments": [
        {"id": 1, "name": "公司"},
        {"id": 100, "name": "研发部", "parent": 1},
        {"id": 110, "name": "后端组", "parent": 100},
        {"id": 111, "name": "存储", "parent": 110},
        {"id": 120, "name": "前端组", "parent": 100},
        {"id": 200, "name": "销售部", "parent": 1},
        {"id": 300, "name": "空部门", "parent": 1},
        {"id": 400, "name": "大部门", "parent": 1},
    ],
    "users": [
        {"userid": "ceo", "mobile": "13800000009", "departments": [1]},
        {"userid": "alice", "mobile": "13800000000", "departments": [100]},
        {"userid": "bob", "mobile": "13800000001", "departments": [110]},
        {"userid": "carol", "departments": [110, 120]},
        {"userid": "dan", "departments": [111]},
        {"userid": "erin", "departments": [120]},
        {"userid": "sam", "departments": [200]},
        {"userid": "sue", "departments": [200]},
        *({"userid": u, "departments": [400]} for u in BIG),
    ],
    "roles": [
        {"id": 3001, "name": "值班", "holders": ["bob", "carol"]},
        {"id": 3002, "name": "全员", "group": "职务", "holders": BIG[:250]},
        {"id": 3003, "name": "空", "holders": []},
    ],
}

ENG = {"alice", "bob", "carol", "dan", "erin"}


@pytest.fixture
def emulator():
    """Overrides conftest's: the same emulator, serving ORG (so ``make_client``/``client`` bind to it)."""
    server = EmulatorServer(host="127.0.0.1", port=0, app_key=APP_KEY, app_secret=APP_SECRET, org=Org.from_data(ORG))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def requests_to(emulator: EmulatorServer, endpoint: str) -> Counter:
    """How often each distinct request body was sent to ``endpoint``."""
    return Counter(tuple(sorted((c.body or {}).items())) for c in emulator.calls_to(endpoint))


def dept_calls(emulator: EmulatorServer, endpoint: str) -> Counter:
    return Counter((c.body or {}).get("dept_id") for c in emulator.calls_to(endpoint))


def chat(
    key: str,
    owner: str,
    members: Sequence[str] = (),
    selectors: Sequence[Selector] = (),
    exclude: Sequence[str] = (),
    exclude_selectors: Sequence[Selector] = (),
) -> DesiredChat:
    """A DesiredChat as the config loader makes it (selectors sorted, excluded ids already out)."""
    return DesiredChat(
        key=key,
        name=key,
        owner=owner,
        members=tuple(sorted({owner, *members} - set(exclude))),
        selectors=tuple(sorted(set(selectors), key=Selector.sort_key)),
        exclude=tuple(sorted(exclude)),
        exclude_selectors=tuple(sorted(set(exclude_selectors), key=Selector.sort_key)),
    )


def by_key(result: DirectoryResult) -> dict[str, DesiredChat]:
    return {c.key: c for c in result.chats}


# ---------------------------------------------------------------------------------- departments


def test_direct_and_recursive_departments_on_a_three_level_tree(emulator, client):
    direct, deep, backend = Selector("dept", 100), Selector("dept", 100, True), Selector("dept", 110, True)
    lookups = lookup_selectors(client.directory, [deep, direct, backend, direct])
    assert list(lookups) == [direct, deep, backend]  # distinct, sorted
    assert lookups[direct] == Lookup(direct, frozenset({"alice"}), "研发部")
    assert lookups[deep] == Lookup(deep, frozenset(ENG), "研发部")  # carol (in 110 and 120) once
    assert lookups[backend] == Lookup(backend, frozenset({"bob", "carol", "dan"}), "后端组")
    # every department read once though three selectors reach 110 and 111
    assert dept_calls(emulator, LISTID) == Counter({100: 1, 110: 1, 111: 1, 120: 1})
    assert dept_calls(emulator, LISTSUBID) == Counter({100: 1, 110: 1, 111: 1, 120: 1})
    assert dept_calls(emulator, DEPT_GET) == Counter({100: 1, 110: 1})


def test_a_recursive_walk_and_a_direct_selector_share_listid(emulator, client):
    lookups = lookup_selectors(
        client.directory, [Selector("dept", 1, True), Selector("dept", 100), Selector("dept", 200)]
    )
    everyone = {"ceo", "sam", "sue", *ENG, *BIG}
    assert lookups[Selector("dept", 1, True)].users == everyone
    assert lookups[Selector("dept", 1, True)].label == "公司"
    assert lookups[Selector("dept", 200)].users == {"sam", "sue"}
    assert set(dept_calls(emulator, LISTID).values()) == {1} and len(dept_calls(emulator, LISTID)) == 8
    assert set(dept_calls(emulator, LISTSUBID).values()) == {1} and len(dept_calls(emulator, LISTSUBID)) == 8


def test_a_department_reached_twice_is_read_once_and_its_users_counted_once(emulator, client):
    emulator.move_user("erin", [110, 111, 120])  # one user, three departments of one subtree
    lookups = lookup_selectors(client.directory, [Selector("dept", 100, True)])
    assert lookups[Selector("dept", 100, True)].users == ENG
    assert max(dept_calls(emulator, LISTID).values()) == 1


# ---------------------------------------------------------------------------------- roles and mobiles


def test_role_holders_are_read_across_pages_and_named_from_one_role_list(emulator, client):
    lookups = lookup_selectors(client.directory, [Selector("role", 3002), Selector("role", 3001)])
    assert lookups[Selector("role", 3002)] == Lookup(Selector("role", 3002), frozenset(BIG[:250]), "全员")
    assert lookups[Selector("role", 3001)] == Lookup(Selector("role", 3001), frozenset({"bob", "carol"}), "值班")
    pages = [c.body for c in emulator.calls_to(SIMPLELIST) if c.body["role_id"] == 3002]
    assert [p["offset"] for p in pages] == [0, 100, 200]
    assert len(emulator.calls_to(ROLE_LIST)) == 1


def test_the_role_list_is_not_read_without_a_role_selector(emulator, client):
    lookup_selectors(client.directory, [Selector("dept", 200), Selector("mobile", "13800000000")])
    assert emulator.calls_to(ROLE_LIST) == [] and emulator.calls_to(SIMPLELIST) == []


def test_a_failed_role_list_only_costs_the_name(emulator, client):
    emulator.faults.fail_lookups = {ROLE_LIST: 40068}
    lookups = lookup_selectors(client.directory, [Selector("role", 3001)])
    assert lookups[Selector("role", 3001)] == Lookup(Selector("role", 3001), frozenset({"bob", "carol"}), "role 3001")


def test_mobiles_are_normalised_and_each_number_asked_once(emulator, client):
    spelled, plain = Selector("mobile", "+86 138-0000-0000"), Selector("mobile", "13800000000")
    lookups = lookup_selectors(client.directory, [spelled, plain])
    assert lookups[spelled] == Lookup(spelled, frozenset({"alice"}), "13800000000")
    assert lookups[plain].users == {"alice"}
    assert [c.body for c in emulator.calls_to(BY_MOBILE)] == [{"mobile": "13800000000"}]


def test_a_malformed_mobile_is_an_error_without_a_call(emulator, client):
    bad = Selector("mobile", "138-abc")
    lookup = lookup_selectors(client.directory, [bad])[bad]
    assert lookup.users is None and lookup.error.startswith('{mobile: "138-abc"}: ')
    assert emulator.calls_to(BY_MOBILE) == []


# ---------------------------------------------------------------------------------- expansion


def test_exclude_by_id_by_group_and_by_department(emulator, client, tmp_path: Path):
    path = write_config(
        tmp_path,
        {
            "eng": {
                "name": "研发",
                "owner": "alice",
                "members": [{"dept": 100, "recursive": True}, "sam"],
                "exclude": ["bob", "@frontend", {"dept": 111}],
            },
        },
        groups={"frontend": ["erin"]},
    )
    config = load_config([path])
    result = resolve_directory(client.directory, config.chats)
    assert dict(result.errors) == {}
    eng = by_key(result)["eng"]
    assert eng.members == ("alice", "carol", "sam") and not eng.needs_directory
    assert eng.selectors == () == eng.exclude_selectors
    assert result.sources["eng"] == (
        MemberSource(Selector("dept", 100, True), "研发部", 5),
        MemberSource(Selector("dept", 111), "存储", 1, excluded=True),
    )


def test_excluding_the_owner_through_a_selector_is_an_error_for_that_chat_only(emulator, client):
    chats = [
        chat("bad", "bob", selectors=[Selector("dept", 100, True)], exclude_selectors=[Selector("dept", 110)]),
        chat("good", "alice", selectors=[Selector("dept", 100, True)], exclude_selectors=[Selector("dept", 110)]),
    ]
    result = resolve_directory(client.directory, chats)
    assert dict(result.errors) == {"bad": "the owner bob cannot be excluded; {dept: 110} contains them"}
    assert by_key(result)["bad"] == chats[0]
    assert by_key(result)["good"].members == ("alice", "dan", "erin")


def test_the_member_cap_is_checked_after_resolution(emulator, client):
    chats = [
        chat("over", "ceo", selectors=[Selector("dept", 400)]),
        chat("full", BIG[0], selectors=[Selector("dept", 400)]),
        chat("trimmed", "ceo", selectors=[Selector("dept", 400)], exclude=[BIG[1]]),
    ]
    result = resolve_directory(client.directory, chats)
    assert list(result.errors) == ["over"]
    assert "1,001 members" in result.errors["over"] and f"{MEMBER_CAP:,}" in result.errors["over"]
    assert len(by_key(result)["full"].members) == MEMBER_CAP == len(by_key(result)["trimmed"].members)


def test_chats_keep_their_order_and_chats_without_selectors_pass_through(emulator, client):
    plain = chat("plain", "alice", members=["x"])
    chats = [
        chat("z", "sam", selectors=[Selector("dept", 200)]),
        plain,
        chat("a", "bob", selectors=[Selector("role", 3001)]),
    ]
    result = resolve_directory(client.directory, chats)
    assert [c.key for c in result.chats] == ["z", "plain", "a"]
    assert result.chats[1] is plain and "plain" not in result.sources
    assert by_key(result)["a"].members == ("bob", "carol")


# ---------------------------------------------------------------------------------- failures


FAILURES = [
    pytest.param(
        {},
        Selector("dept", 999, True),
        "{dept: 999, recursive: true}: department 999 not found (errcode 60003)",
        id="60003",
    ),
    pytest.param(
        {"dept:111": 60003},
        Selector("dept", 100, True),
        "{dept: 100, recursive: true}: department 111 not found (errcode 60003)",
        id="60003-mid-walk",
    ),
    pytest.param({}, Selector("role", 9999), "{role: 9999}: role 9999 not found (errcode 33011)", id="33011"),
    pytest.param(
        {},
        Selector("mobile", "13900000000"),
        '{mobile: "13900000000"}: no active user has mobile 13900000000 (errcode 60121',
        id="60121",
    ),
    pytest.param(
        {"role:3001": "88:60011"}, Selector("role", 3001), "{role: 3001}: cannot read role 3001: ", id="88/60011"
    ),
    pytest.param(
        {"dept:110": "88:60011"}, Selector("dept", 110), "{dept: 110}: cannot read department 110: ", id="88/60011-dept"
    ),
]


@pytest.mark.parametrize("faults, selector, message", FAILURES)
def test_a_failed_lookup_makes_only_the_chats_using_it_errors(emulator, client, faults, selector, message):
    emulator.faults.fail_lookups = faults
    shared = Selector("dept", 200)
    chats = [
        chat("bad", "sam", selectors=[selector, shared]),
        chat("good", "sam", selectors=[shared]),
        chat("bad-exclude", "sam", selectors=[shared], exclude_selectors=[selector]),
    ]
    result = resolve_directory(client.directory, chats)
    assert set(result.errors) == {"bad", "bad-exclude"}
    assert result.errors["bad"].startswith(message) and result.errors["bad-exclude"].startswith(message)
    assert by_key(result)["bad"] == chats[0] and by_key(result)["bad"].needs_directory
    assert by_key(result)["good"].members == ("sam", "sue")
    assert result.lookups[selector].users is None and result.lookups[selector].error.startswith(message)
    assert "bad" not in result.sources


def test_a_timed_out_lookup_is_an_error_for_its_chats_not_the_run(emulator, make_client):
    emulator.faults.endpoint_latency_ms = {BY_MOBILE: 1000}
    client = make_client(timeout=(5.0, 0.2), max_attempts=2)
    chats = [
        chat("slow", "sam", selectors=[Selector("mobile", "13800000000")]),
        chat("fast", "sam", selectors=[Selector("dept", 200)]),
    ]
    result = resolve_directory(client.directory, chats)
    assert list(result.errors) == ["slow"]
    assert result.errors["slow"].startswith('{mobile: "13800000000"}: cannot read mobile 13800000000: ')
    assert "timeout" in result.errors["slow"]
    assert by_key(result)["fast"].members == ("sam", "sue")


@pytest.mark.parametrize(
    "selector, message",
    [
        (
            Selector("dept", 300),
            "{dept: 300}: the department has no members; refusing to plan members from an empty directory answer",
        ),
        (
            Selector("dept", 300, True),
            "{dept: 300, recursive: true}: the department and the departments below it "
            "have no members; refusing to plan members from an empty directory answer",
        ),
        (
            Selector("role", 3003),
            "{role: 3003}: nobody holds the role; refusing to plan members from an empty directory answer",
        ),
    ],
)
def test_an_empty_answer_is_an_error_not_remove_everyone(emulator, client, selector, message):
    chats = [chat("c", "alice", members=["bob"], selectors=[selector])]
    result = resolve_directory(client.directory, chats)
    assert dict(result.errors) == {"c": message}
    assert result.chats == tuple(chats)
    assert result.lookups[selector].users == frozenset() and result.lookups[selector].error == message


def test_a_rejected_topapi_token_is_refreshed_once(emulator, client):
    assert lookup_selectors(client.directory, [Selector("dept", 100)])[Selector("dept", 100)].users == {"alice"}
    emulator.expire_tokens()
    lookups = lookup_selectors(client.directory, [Selector("dept", 200)])
    assert lookups[Selector("dept", 200)].users == {"sam", "sue"}
    assert len(emulator.calls_to("/gettoken")) == 2
    rejected = [c for c in emulator.calls if c.errcode == 88]
    assert 1 <= len(rejected) <= 2  # the listid and department/get in flight when the token died
    assert all(c.endpoint in (LISTID, DEPT_GET) for c in rejected)


def test_bad_credentials_stop_the_run(emulator):
    with (
        Wire(APP_KEY, "wrong-secret-123", api_base=emulator.url, max_qps=0, backoff_base=0.01, backoff_cap=0.05) as bad,
        pytest.raises(AuthError),
    ):
        resolve_directory(bad.directory, [chat("c", "alice", selectors=[Selector("dept", 100)])])


def test_an_unreachable_api_stops_the_run(make_client):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(api_base=f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError):
        lookup_selectors(client.directory, [Selector("dept", 100, True), Selector("role", 3001)])


# ---------------------------------------------------------------------------------- once per run


def test_fifty_chats_sharing_ten_selectors_make_each_call_exactly_once(emulator, client):
    pool = [
        Selector("dept", 1, True),
        Selector("dept", 100),
        Selector("dept", 100, True),
        Selector("dept", 110),
        Selector("dept", 200),
        Selector("role", 3001),
        Selector("role", 3002),
        Selector("mobile", "13800000000"),
        Selector("mobile", "+86 138 0000 0001"),
        Selector("dept", 120, True),
    ]
    chats = [
        chat(
            f"c{i:02d}",
            "alice",
            selectors=[pool[i % 10], pool[(i * 3 + 1) % 10]],
            exclude_selectors=[pool[8]] if i % 7 == 0 else (),
        )
        for i in range(50)
    ]
    result = resolve_directory(client.directory, chats, parallelism=4)
    # {dept: 1, recursive: true} holds everyone, more than a chat may: only the chats using it are errors
    assert set(result.errors) == {c.key for c in chats if pool[0] in c.selectors}
    assert all("more than the 1,000" in e for e in result.errors.values())
    for endpoint in DIRECTORY:
        sent = requests_to(emulator, endpoint)
        assert sent and set(sent.values()) == {1}, (endpoint, sent)
    assert len(emulator.calls_to(LISTID)) == 8 and len(emulator.calls_to(LISTSUBID)) == 8
    assert len(emulator.calls_to(DEPT_GET)) == 5  # 1, 100, 110, 120, 200: none for departments found by walking
    assert len(emulator.calls_to(SIMPLELIST)) == 1 + 3 and len(emulator.calls_to(ROLE_LIST)) == 1
    assert len(emulator.calls_to(BY_MOBILE)) == 2
    assert by_key(result)["c07"].members == ("alice", "carol", "dan", "erin")  # mobile 0000 + 100 rec - mobile 0001


# ---------------------------------------------------------------------------------- expand_chats (pure)

USERS = st.sampled_from([f"u{i}" for i in range(12)])
SELECTORS = [Selector("dept", d) for d in range(1, 5)] + [Selector("role", 7), Selector("mobile", "13800000000")]


@st.composite
def scenario(draw):
    lookups = {}
    for sel in SELECTORS:
        kind = draw(st.sampled_from(["ok", "ok", "ok", "failed", "empty"]))
        users = frozenset(draw(st.sets(USERS, min_size=1, max_size=8)))
        if kind == "ok":
            lookups[sel] = Lookup(sel, users, f"label {sel.value}")
        elif kind == "failed":
            lookups[sel] = Lookup(sel, None, f"label {sel.value}", f"{sel}: it broke")
        else:
            lookups[sel] = Lookup(sel, frozenset(), f"label {sel.value}", f"{sel}: it is empty")
    chats = []
    for i in range(draw(st.integers(1, 6))):
        owner = draw(USERS)
        exclude = sorted(draw(st.sets(USERS, max_size=3)) - {owner})
        chats.append(
            chat(
                f"c{i}",
                owner,
                members=draw(st.sets(USERS, max_size=4)),
                selectors=draw(st.lists(st.sampled_from(SELECTORS), max_size=3)),
                exclude=exclude,
                exclude_selectors=draw(st.lists(st.sampled_from(SELECTORS), max_size=2)),
            )
        )
    return chats, lookups


@settings(max_examples=200, deadline=None)
@given(scenario())
def test_expansion_is_the_documented_set_arithmetic(case):
    chats, lookups = case
    result = expand_chats(chats, lookups)
    assert [c.key for c in result.chats] == [c.key for c in chats]
    for original, out in zip(chats, result.chats):
        if not original.needs_directory:
            assert out is original and original.key not in result.errors and original.key not in result.sources
            continue
        used = {*original.selectors, *original.exclude_selectors}
        if any(lookups[s].error for s in used):
            assert out == original and original.key in result.errors and original.key not in result.sources
            failed = sorted((s for s in used if lookups[s].error), key=Selector.sort_key)
            assert result.errors[original.key] == "; ".join(lookups[s].error for s in failed)
            continue
        excluded = set().union(*(lookups[s].users for s in original.exclude_selectors))
        if original.owner in excluded:
            assert out == original and "cannot be excluded" in result.errors[original.key]
            continue
        want = (
            set(original.members).union(*(lookups[s].users for s in original.selectors))
            - set(original.exclude)
            - excluded
        ) | {original.owner}
        assert original.key not in result.errors
        assert out.members == tuple(sorted(want)) and not out.needs_directory
        assert [m.selector for m in result.sources[original.key]] == sorted(
            [*set(original.selectors), *set(original.exclude_selectors)], key=Selector.sort_key
        )
        assert all(m.count == len(lookups[m.selector].users) for m in result.sources[original.key])


def test_a_selector_missing_from_the_lookups_is_an_error():
    c = chat("c", "alice", selectors=[Selector("dept", 5)])
    assert dict(expand_chats([c], {}).errors) == {"c": "{dept: 5}: was not looked up"}


def test_expansion_without_selectors_needs_no_lookups():
    plain = chat("p", "alice", members=["bob"])
    result = expand_chats([plain], {})
    assert result.chats == (plain,) and not result.errors and not result.sources


def test_a_read_timeout_is_not_fatal_but_unreachable_is():
    """One slow answer fails that call only; a server that cannot be reached stops the run (design §7)."""
    from reconciler.backends import ReadTimeoutError, TransportError, is_fatal

    assert not is_fatal(ReadTimeoutError("/topapi/user/listid", "no answer in time (read timeout)"))
    assert is_fatal(TransportError("/topapi/user/listid", "cannot connect to http://127.0.0.1:1: connection refused"))
