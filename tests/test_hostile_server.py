"""A hostile or broken server cannot make dtchat write the wrong thing, hang, or grow without bound (issue 21).

Every test talks to a real HTTP server on 127.0.0.1 (:class:`helpers.FakeDingTalk`), which answers as DingTalk does
except where a test makes it hostile: an answer naming another chat, wrongly typed fields, a body dribbled a byte a
second, 2 GB streamed lazily, a million members. Each must be one error line for that chat, with zero writes to any
chat (the server records every request it got). ``plan`` and ``apply`` run as the real CLI: in-process where the
output and the server's log are what matter, as a subprocess where its time and its peak memory are.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.backends.endpoints import CHAT_GET, DEPT_USER_IDS, GROUP_CREATE
from reconciler.backends.errors import (
    AmbiguousCreateError,
    DeadlineError,
    OversizedAnswerError,
    is_fatal,
)
from reconciler.backends.transport import (
    ANSWER_CAP,
    DEFAULT_DEADLINE,
    LIST_ANSWER_CAP,
    Transport,
    deadline_from_env,
)

from helpers import (
    APP_KEY,
    APP_SECRET,
    CREATE,
    DEPT_GET,
    LISTID,
    ROLE_LIST,
    SIMPLELIST,
    FakeDingTalk,
    HostileRequest,
    dribble,
    dtchat,
    http_answer,
)

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
GiB = 1024 * MiB

#: Two chats bound in the state: ``ops`` needs carol added, ``eng`` is in sync (so a good run writes exactly once).
YAML = """version: 1
chats:
  ops: {name: Ops, owner: alice, members: [alice, bob, carol]}
  eng: {name: Eng, owner: alice, members: [alice, bob]}
  team: {name: Team, owner: alice, members: [{dept: 100}]}
"""
LIVE = {
    "chat1": {"chatid": "chat1", "name": "Ops", "owner": "alice", "useridlist": ["alice", "bob"], "status": 1},
    "chat2": {"chatid": "chat2", "name": "Eng", "owner": "alice", "useridlist": ["alice", "bob"], "searchable": 0},
    "chat3": {"chatid": "chat3", "name": "Team", "owner": "alice", "useridlist": ["alice", "bob"]},
}
DEPARTMENTS = {100: ["alice", "bob"]}
BOUND = {"ops": "chat1", "eng": "chat2", "team": "chat3"}
SECRETS = (APP_SECRET, FakeDingTalk.LEGACY_TOKEN, FakeDingTalk.V1_TOKEN)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "chats.yaml").write_text(YAML, encoding="utf-8")
    state = {"format": "dtchat-state", "version": 1, "chats": {k: {"chatid": v} for k, v in BOUND.items()}}
    (tmp_path / "dtchat.state.json").write_text(json.dumps(state), encoding="utf-8")
    return tmp_path


def bound(repo: Path) -> dict[str, str | None]:
    chats = json.loads((repo / "dtchat.state.json").read_text(encoding="utf-8"))["chats"]
    return {key: entry.get("chatid") for key, entry in chats.items()}


def chat1_answers(answer) -> object:
    """A ``hostile`` hook: ``answer(request)`` for ``/chat/get`` of chat1; everything else answers normally."""

    def hostile(req: HostileRequest):
        if req.path == "/chat/get" and req.query.get("chatid") == "chat1":
            return answer(req)
        return None

    return hostile


def ops_info(**changes) -> dict:
    return {"errcode": 0, "errmsg": "ok", "chat_info": {**LIVE["chat1"], **changes}}


def assert_one_error_line(output: str, *needles: str) -> str:
    """Exactly one output line holds chat1's error, it holds ``needles``, nothing else went wrong, no secret."""
    lines = [line for line in output.splitlines() if "chat chat1" in line]
    assert len(lines) == 1, output[:3000]
    line = lines[0]
    for needle in needles:
        assert needle in line, line
    assert len(line) < 400, line
    assert "Traceback" not in output and len(output) < 4000, output[:3000]
    for secret in SECRETS:
        assert secret not in output
    # the other chats are read and planned as usual: the error is that chat's alone
    assert "error ops" in output and "error eng" not in output and "error team" not in output, output
    return line


def test_the_fixture_writes_when_the_answer_is_good(repo):
    """The control: with DingTalk's documented answer, apply adds carol to ops with one write."""
    with FakeDingTalk(LIVE, departments=DEPARTMENTS) as server:
        result = dtchat(server, "apply", str(repo), "--auto-approve", api="v1")
        assert result.exit_code == 0, result.output
        assert [(w.path, w.body) for w in server.writes()] == [
            ("/v1.0/im/group/update", {"chatid": "chat1", "add_useridlist": ["carol"]})
        ]


# -- answers that are not the documented shape: one error for that chat, no write ------------------------------

WRONG_ANSWERS = {
    # an answer about another chat (here: one dtchat also manages) redirects nothing and rebinds nothing
    "names another chat": (ops_info(chatid="chat2"), "names another chat ('chat2')"),
    "members as one string": (ops_info(useridlist="alice,bob,carol"), "useridlist is str"),
    "members not ids": (ops_info(useridlist=[1, None, True, {"userid": "x"}]), "something other than user ids"),
    "members as a dict": (ops_info(useridlist={"alice": 1, "bob": 1}), "useridlist is dict"),
    "members missing": (ops_info(useridlist=None), "useridlist is NoneType"),
    "owner null": (ops_info(owner=None), "no owner"),
    "owner a number": (ops_info(owner=7), "no owner"),
    "name a number": (ops_info(name=7), "name is int"),
    "setting as text": (ops_info(searchable="1"), "searchable is '1'"),
    "setting as a bool": (ops_info(chatBannedType=True), "chatBannedType is True"),
    "setting out of range": (ops_info(showHistoryType=2), "showHistoryType is 2"),
    "status as text": (ops_info(status="2"), "status is str"),
    "1,001 members": (ops_info(useridlist=[f"u{i:04d}" for i in range(1001)]), "useridlist holds 1,001 ids"),
    "no chat_info object": ({"errcode": 0, "chat_info": "chat1"}, "no chat_info object"),
}


@pytest.mark.parametrize("case", list(WRONG_ANSWERS))
def test_a_wrong_answer_is_one_error_for_that_chat_and_no_write(repo, case):
    body, why = WRONG_ANSWERS[case]
    with FakeDingTalk(LIVE, departments=DEPARTMENTS, hostile=chat1_answers(lambda req: http_answer(body))) as server:
        for command in (["plan", str(repo)], ["apply", str(repo), "--auto-approve"]):
            result = dtchat(server, *command, api="v1")
            assert result.exit_code == 1, result.output
            line = assert_one_error_line(result.output, "cannot read chat chat1", why)
            assert line.rstrip().endswith("nothing trusted from it"), line
        assert server.writes() == []
    assert bound(repo) == BOUND  # ops still means chat1: never rebound to the chat the answer named


def test_an_answer_naming_another_chat_is_refused_through_the_legacy_api_too(repo):
    hostile = chat1_answers(lambda req: http_answer(ops_info(chatid="chat2")))
    with FakeDingTalk(LIVE, departments=DEPARTMENTS, hostile=hostile) as server:
        result = dtchat(server, "apply", str(repo), "--auto-approve", api="legacy")
        assert result.exit_code == 1, result.output
        assert_one_error_line(result.output, "names another chat")
        assert server.writes() == [] and server.calls("/gettoken")  # the legacy token: the legacy path ran
    assert bound(repo) == BOUND


def test_a_million_members_is_one_short_error_and_is_never_printed(repo):
    members = [f"u{i:07d}" for i in range(10**6)]
    body = json.dumps(ops_info(useridlist=members)).encode()  # ~12 MB: past the cap, refused unread
    assert len(body) > ANSWER_CAP
    with FakeDingTalk(LIVE, departments=DEPARTMENTS, hostile=chat1_answers(lambda req: http_answer(body))) as server:
        for command in (["plan", str(repo)], ["apply", str(repo), "--auto-approve"]):
            result = dtchat(server, *command, api="v1")
            assert result.exit_code == 1, result.output
            assert_one_error_line(result.output, "cannot read chat chat1", "larger than 4 MiB; not read")
            assert "u0000001" not in result.output
        assert server.writes() == []
    assert bound(repo) == BOUND


# -- the directory's answers: checked as strictly ---------------------------------------------------------------

DIRECTORY_WRONG = {
    "listid as one string": (LISTID, {"result": {"userid_list": "alice,bob"}}, "userid_list is not a list of user ids"),
    "listid not ids": (LISTID, {"result": {"userid_list": ["alice", 7, None]}}, "userid_list is not a list of user"),
    "department name not text": (DEPT_GET, {"result": {"dept_id": 100, "name": ["x"]}}, "name is not text"),
    "another department": (DEPT_GET, {"result": {"dept_id": 200, "name": "x"}}, "describes another department"),
}


@pytest.mark.parametrize("case", list(DIRECTORY_WRONG))
def test_a_wrong_directory_answer_is_an_error_for_the_chats_built_on_it(repo, case):
    path, body, why = DIRECTORY_WRONG[case]

    def hostile(req):
        return http_answer({"errcode": 0, "errmsg": "ok", **body}) if req.path == path else None

    with FakeDingTalk(LIVE, departments=DEPARTMENTS, hostile=hostile) as server:
        result = dtchat(server, "plan", str(repo), api="v1")
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if "{dept: 100}" in line]
        assert len(lines) == 1 and why in lines[0] and "malformed response" in lines[0], result.output
        assert "error team" in result.output and "error ops" not in result.output
        result = dtchat(server, "apply", str(repo), "--auto-approve", api="v1")
        assert result.exit_code == 1 and "error team" in result.output, result.output
        # ops (not built on the directory) is still applied; team, built on the bad answer, is not written
        assert [w.body.get("chatid") for w in server.writes()] == ["chat1"]


def _role_repo(repo: Path) -> Path:
    (repo / "chats.yaml").write_text(
        "version: 1\nchats:\n  leads: {name: Leads, owner: alice, members: [{role: 3001}]}\n", encoding="utf-8"
    )
    state = {"format": "dtchat-state", "version": 1, "chats": {"leads": {"chatid": "chat1"}}}
    (repo / "dtchat.state.json").write_text(json.dumps(state), encoding="utf-8")
    return repo


def _role_answers(has_more: object, role_name: object):
    roles = {
        "errcode": 0,
        "result": {"hasMore": False, "list": [{"name": "g", "roles": [{"id": 3001, "name": role_name}]}]},
    }
    page = {"errcode": 0, "result": {"hasMore": has_more, "list": [{"userid": "alice"}, {"userid": "bob"}]}}

    def hostile(req):
        return http_answer(page if req.path == SIMPLELIST else roles) if req.path in (SIMPLELIST, ROLE_LIST) else None

    return hostile


def test_paging_that_is_not_true_or_false_is_refused_not_read_as_the_last_page(repo):
    with FakeDingTalk(LIVE, hostile=_role_answers("true", "leads")) as server:
        result = dtchat(server, "apply", str(_role_repo(repo)), "--auto-approve", api="v1")
        assert result.exit_code == 1, result.output
        assert "hasMore is not true or false" in result.output and "error leads" in result.output
        assert server.writes() == []


def test_a_role_name_that_is_not_text_is_never_shown(repo):
    """The role list only names roles: refused, the plan says "role 3001" instead of printing what came."""
    with FakeDingTalk(LIVE, hostile=_role_answers(False, {"x": "INJECTED"})) as server:
        result = dtchat(server, "plan", str(_role_repo(repo)), "-v", api="v1")
        assert result.exit_code == 0, result.output
        assert "{role: 3001} (role 3001) gives 2 users" in result.output and "INJECTED" not in result.output


# -- no whole answer within the deadline: a dribbling or stalled server -----------------------------------------


def _token_free(text: str) -> str:
    for secret in SECRETS:
        assert secret not in text
    return text


def dribbled_chat1(where: str, every: float = 1.0):
    """chat1's answer a byte a second: from its status line, or (headers sent) its body; or nothing at all."""
    answer = json.dumps(ops_info()).encode()

    def reply(req):
        if where == "headers":
            return dribble(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Slow: " + b"y" * 500, every)
        if where == "stalled":
            return stall(10)
        return http_answer(dribble(answer, every), framing="close" if where == "body" else "chunked")

    return chat1_answers(reply)


def stall(seconds: float) -> Iterator[bytes]:
    """Nothing for ``seconds``, then one byte: a server that took the request and went quiet."""
    time.sleep(seconds)
    yield b"H"


@dataclass
class Ran:
    exit_code: int
    output: str
    ended: float
    peak_rss_mb: float


#: Runs ``python -m reconciler ARGS`` and, at its exit, writes its peak RSS (VmHWM, KiB) to the file named first.
#: Not ``ru_maxrss`` (``wait4``, RUSAGE_CHILDREN): Linux carries the parent's peak into a child over fork and exec,
#: so a child of a 300 MB pytest reports 300 MB; VmHWM is the high-water mark of the child's own memory.
_PEAK_RSS_RUNNER = """
import atexit, re, runpy, sys
report = sys.argv.pop(1)
def peak():
    status = open("/proc/self/status").read()
    open(report, "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
atexit.register(peak)
sys.argv[0] = "dtchat"
runpy.run_module("reconciler", run_name="__main__", alter_sys=True)
"""


def run_cli(server: FakeDingTalk, *args: str, deadline: str = "1", timeout: float = 120) -> Ran:
    """The real CLI in its own process, as ``python -m reconciler``: its exit code, output, end and peak RSS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "DTCHAT_"))}
    env.update(DINGTALK_APP_KEY=APP_KEY, DINGTALK_APP_SECRET=APP_SECRET, NO_COLOR="1", DTCHAT_HTTP_DEADLINE=deadline)
    base = ["--api", "v1", "--api-base", server.url, "--openapi-base", server.url, "--max-qps", "1000"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "peak"
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _PEAK_RSS_RUNNER, str(report), *base, *args],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"dtchat {' '.join(args)} still running after {timeout} s")
        ended = time.monotonic()
        peak_kib = int(report.read_text())
    return Ran(proc.returncode, _token_free(proc.stdout + proc.stderr), ended, peak_kib / 1024)


def assert_lock_free(repo: Path) -> None:
    """Nobody holds the state lock: this process takes it at once (flock locks per open file, so a lock the run
    in this very process failed to release would refuse it too)."""
    fd = os.open(repo / "dtchat.state.json.lock", os.O_RDWR | os.O_CREAT, 0o644)  # plan takes no lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if held
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@pytest.mark.parametrize("command", ["plan", "apply"])
@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_dribbling_server_ends_the_run_within_its_deadline(repo, command, where):
    """A byte a second (150 s for the whole answer) never trips a per-read timeout; the 1 s deadline ends it."""
    extra = ["--auto-approve"] if command == "apply" else []
    with FakeDingTalk(LIVE, departments=DEPARTMENTS, hostile=dribbled_chat1(where)) as server:
        ran = run_cli(server, command, str(repo), *extra)
        (asked,) = [r for r in server.calls("/chat/get") if r.query["chatid"] == "chat1"]
        assert ran.exit_code == 1, ran.output
        assert ran.ended - asked.at < 1 + 3, ran.output  # the deadline, plus writing the state and exiting
        assert_one_error_line(ran.output, "cannot read chat chat1", "no complete answer", "within 1 s")
        assert "DTCHAT_HTTP_DEADLINE" in ran.output
        assert server.writes() == []
    assert_lock_free(repo)
    assert bound(repo) == BOUND


@pytest.mark.parametrize("where", ["headers", "body", "chunked body", "stalled"])
def test_a_dribbled_apply_in_process_releases_the_state_lock(repo, where):
    with FakeDingTalk(LIVE, departments=DEPARTMENTS, hostile=dribbled_chat1(where)) as server:
        started = time.monotonic()
        result = dtchat(server, "apply", str(repo), "--auto-approve", api="v1", env={"DTCHAT_HTTP_DEADLINE": "0.5"})
        assert time.monotonic() - started < 0.5 + 3
        assert result.exit_code == 1, result.output
        assert_one_error_line(result.output, "no complete answer", "within 0.5 s")
        assert server.writes() == []
    assert_lock_free(repo)


@pytest.mark.parametrize("api", ["v1", "legacy"])
@pytest.mark.parametrize("answer", ["dribbled", "2 GB"])
def test_a_create_without_a_whole_answer_is_an_unknown_outcome_never_sent_again(tmp_path, api, answer):
    (tmp_path / "chats.yaml").write_text(
        "version: 1\nchats:\n  new: {name: New, owner: alice, members: [alice, bob]}\n", encoding="utf-8"
    )
    (tmp_path / "dtchat.state.json").write_text('{"format": "dtchat-state", "version": 1, "chats": {}}')
    body = json.dumps({"errcode": 0, "chatid": "chat-new", "openConversationId": "cid-new"}).encode()

    def hostile(req):
        if req.path != CREATE[api]:
            return None
        if answer == "dribbled":
            return http_answer(dribble(body, 1.0), framing="close")
        return http_answer(endless(2 * GiB), framing="close")

    why = "no complete answer" if answer == "dribbled" else "larger than 4 MiB"
    with FakeDingTalk({}, hostile=hostile) as server:
        for run in range(2):  # the second apply must not create it again either
            result = dtchat(
                server, "apply", str(tmp_path), "--auto-approve", api=api, env={"DTCHAT_HTTP_DEADLINE": "1"}
            )
            assert result.exit_code == 1, result.output
            assert "Traceback" not in result.output and not any(s in result.output for s in SECRETS)
            if run == 0:
                (line,) = [line for line in result.output.splitlines() if "outcome unknown" in line]
                assert why in line and "do not create it again blindly" in line, line
            else:
                assert "may have succeeded" in result.output, result.output
        assert len(server.calls(CREATE[api])) == 1
    state = json.loads((tmp_path / "dtchat.state.json").read_text())
    assert state["chats"]["new"]["pending_create"] is True and state["chats"]["new"]["chatid"] is None


# -- no answer past the cap: 2 GB, streamed lazily, in bounded memory --------------------------------------------


def endless(total: int, chunk: int = MiB) -> Iterator[bytes]:
    """``total`` bytes of a JSON answer that never closes its member list, produced a chunk at a time."""
    head = b'{"errcode": 0, "chat_info": {"chatid": "chat1", "useridlist": ['
    yield head
    block = b'"u0000000", ' * (chunk // 12)
    sent = len(head)
    while sent < total:
        piece = block[: total - sent]
        sent += len(piece)
        yield piece


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_2_gb_answer_is_refused_in_bounded_memory(repo, framing):
    """Announced (Content-Length: 2 GB) it is refused unread; chunked or up to the close, the client stops at the
    cap. Either way the run's peak RSS stays far below 2 GB (< 200 MB) and the server never got to send it."""
    hostile = chat1_answers(lambda req: http_answer(endless(2 * GiB), framing=framing, length=2 * GiB))
    with FakeDingTalk(LIVE, departments=DEPARTMENTS, hostile=hostile) as server:
        ran = run_cli(server, "apply", str(repo), "--auto-approve", deadline="30")
        assert ran.exit_code == 1, ran.output
        assert_one_error_line(ran.output, "cannot read chat chat1", "larger than 4 MiB; not read")
        assert ran.peak_rss_mb < 200, f"peak RSS {ran.peak_rss_mb:.0f} MB"
        assert server.sent < 256 * MiB  # what the sockets' buffers took, not 2 GB
        assert server.writes() == []
    print(f"2 GB answer ({framing}): peak RSS of the run {ran.peak_rss_mb:.0f} MB")


def test_a_2_gb_department_is_refused_at_the_directory_cap_in_bounded_memory(repo):
    def hostile(req):
        if req.path != LISTID:
            return None
        return http_answer(_list_body(b'{"errcode": 0, "result": {"userid_list": ['), framing="close")

    with FakeDingTalk(LIVE, departments=DEPARTMENTS, hostile=hostile) as server:
        ran = run_cli(server, "apply", str(repo), "--auto-approve", deadline="30")
        assert ran.exit_code == 1, ran.output
        assert "larger than 16 MiB; not read" in ran.output and "error team" in ran.output, ran.output
        assert ran.peak_rss_mb < 200, f"peak RSS {ran.peak_rss_mb:.0f} MB"
        assert [w.body.get("chatid") for w in server.writes()] == ["chat1"]  # only ops; team is not touched
    print(f"2 GB department: peak RSS of the run {ran.peak_rss_mb:.0f} MB")


def _list_body(head: bytes) -> Iterator[bytes]:
    yield head
    block = b'"u0000000", ' * (MiB // 12)
    for _ in range(2 * GiB // len(block)):
        yield block


# -- the transport itself ----------------------------------------------------------------------------------------


def transport(server: FakeDingTalk, **kwargs) -> Transport:
    return Transport(APP_KEY, APP_SECRET, api_base=server.url, openapi_base=server.url, max_qps=0, **kwargs)


@pytest.mark.parametrize("where", ["headers", "body", "chunked body", "stalled"])
def test_the_deadline_bounds_the_whole_request_and_is_not_retried(where):
    with FakeDingTalk(LIVE, hostile=dribbled_chat1(where, every=0.2)) as server:
        with transport(server, deadline=0.5) as t:
            started = time.monotonic()
            with pytest.raises(DeadlineError) as caught:
                t.call(CHAT_GET, params={"chatid": "chat1"})
            assert 0.5 <= time.monotonic() - started < 0.5 + 1
            assert not is_fatal(caught.value)  # one slow answer: that chat's error, not the run's
            assert str(caught.value) == (
                f"/chat/get failed: no complete answer from {server.url} within 0.5 s "
                "(the deadline for one request; DTCHAT_HTTP_DEADLINE sets it)"
            )
            assert len(server.calls("/chat/get")) == 1  # not sent again
            # the connection it cut is gone, not back in the pool: the next call is answered as usual
            assert t.call(CHAT_GET, params={"chatid": "chat2"})["chat_info"]["chatid"] == "chat2"


def test_a_create_past_its_deadline_is_an_unknown_outcome_sent_once():
    body = json.dumps({"chatid": "chat-new", "openConversationId": "cid-new"}).encode()

    def hostile(req):
        return http_answer(dribble(body, 0.2), framing="close") if req.path == GROUP_CREATE.path else None

    with FakeDingTalk({}, hostile=hostile) as server, transport(server, deadline=0.5) as t:
        with pytest.raises(AmbiguousCreateError, match="outcome unknown .no complete answer"):
            t.call(GROUP_CREATE, body={"name": "n", "owner": "alice", "useridlist": ["alice"]})
        assert len(server.calls(GROUP_CREATE.path)) == 1


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_an_answer_past_the_cap_is_refused_and_the_next_call_works(framing):
    hostile = chat1_answers(lambda req: http_answer(endless(64 * MiB), framing=framing, length=64 * MiB))
    with FakeDingTalk(LIVE, hostile=hostile) as server, transport(server) as t:
        with pytest.raises(OversizedAnswerError) as caught:
            t.call(CHAT_GET, params={"chatid": "chat1"})
        assert str(caught.value) == f"/chat/get failed: the answer from {server.url} is larger than 4 MiB; not read"
        assert not is_fatal(caught.value) and len(server.calls("/chat/get")) == 1
        assert t.call(CHAT_GET, params={"chatid": "chat2"})["chat_info"]["chatid"] == "chat2"


def test_a_big_department_fits_the_directory_cap_but_not_a_chat_read():
    """listid answers a department's direct members unpaged: 300,000 ids (~6 MB) are legal there, not in /chat/get."""
    ids = [f"user{i:016d}" for i in range(300_000)]
    size = len(json.dumps({"errcode": 0, "result": {"userid_list": ids}}))
    assert ANSWER_CAP < size < LIST_ANSWER_CAP
    with FakeDingTalk(LIVE, departments={100: ids}) as server, transport(server) as t:
        assert t.call(DEPT_USER_IDS, body={"dept_id": 100})["result"]["userid_list"] == ids
    big = chat1_answers(lambda req: http_answer(ops_info(useridlist=ids)))
    with FakeDingTalk(LIVE, hostile=big) as server, transport(server) as t:
        with pytest.raises(OversizedAnswerError):
            t.call(CHAT_GET, params={"chatid": "chat1"})


def test_the_deadline_comes_from_the_environment():
    assert (
        DEFAULT_DEADLINE == 60
        and deadline_from_env({}) == 60
        and deadline_from_env({"DTCHAT_HTTP_DEADLINE": " "}) == 60
    )
    assert deadline_from_env({"DTCHAT_HTTP_DEADLINE": "2.5"}) == 2.5
    for bad in ("0", "-1", "nan", "inf", "1e9", "abc", "5s"):
        with pytest.raises(ValueError, match="DTCHAT_HTTP_DEADLINE"):
            deadline_from_env({"DTCHAT_HTTP_DEADLINE": bad})
    with pytest.raises(ValueError):
        Transport(APP_KEY, APP_SECRET, deadline=0)


def test_a_bad_deadline_setting_is_one_line_before_any_call(repo):
    with FakeDingTalk(LIVE) as server:
        result = dtchat(server, "plan", str(repo), api="v1", env={"DTCHAT_HTTP_DEADLINE": "forever"})
        assert result.exit_code != 0 and "DTCHAT_HTTP_DEADLINE='forever'" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and server.requests == []


def test_transports_stop_their_watchdog_when_closed():
    before = {t for t in threading.enumerate() if t.name == "dtchat-http-deadline"}
    with FakeDingTalk(LIVE) as server:
        with transport(server, deadline=5) as t:
            t.call(CHAT_GET, params={"chatid": "chat2"})
            assert any(th.name == "dtchat-http-deadline" for th in threading.enumerate())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        alive = {t for t in threading.enumerate() if t.name == "dtchat-http-deadline"} - before
        if not alive:
            break
        time.sleep(0.01)
    assert not alive


# -- a create's answer: its ids are checked before they are recorded ----------------------------------------------


def _new_chat_repo(folder: Path) -> Path:
    (folder / "chats.yaml").write_text(
        "version: 1\nchats:\n  new: {name: New, owner: alice, members: [alice, bob]}\n", encoding="utf-8"
    )
    (folder / "dtchat.state.json").write_text('{"format": "dtchat-state", "version": 1, "chats": {}}')
    return folder


@pytest.mark.parametrize("chatid", [123, "", None, ["chat1"], "chat 1", "chat1\nchat2", "c" * 300])
def test_a_create_answer_without_a_usable_chatid_is_an_unknown_outcome(tmp_path, chatid):
    repo = _new_chat_repo(tmp_path)

    def hostile(req):
        return http_answer({"chatid": chatid, "openConversationId": "cid1"}) if req.path == GROUP_CREATE.path else None

    with FakeDingTalk({}, hostile=hostile) as server:
        result = dtchat(server, "apply", str(repo), "--auto-approve", api="v1")
        assert result.exit_code == 1, result.output
        (line,) = [line for line in result.output.splitlines() if "no usable chatid" in line]
        assert "dtchat import" in line and "chat2" not in result.output
        assert len(server.calls(GROUP_CREATE.path)) == 1
    entry = json.loads((repo / "dtchat.state.json").read_text())["chats"]["new"]
    assert entry["pending_create"] is True and entry["chatid"] is None  # never recorded as the chat's id


@pytest.mark.parametrize("ocid", [7, {"id": "cid1"}, "", "cid 1", "c" * 300])
def test_a_create_answer_with_a_bad_open_conversation_id_records_the_chatid_alone(tmp_path, ocid):
    repo = _new_chat_repo(tmp_path)

    def hostile(req):
        return (
            http_answer({"chatid": "chat-new", "openConversationId": ocid}) if req.path == GROUP_CREATE.path else None
        )

    with FakeDingTalk({}, hostile=hostile) as server:
        result = dtchat(server, "apply", str(repo), "--auto-approve", api="v1")
        assert result.exit_code == 0, result.output
    entry = json.loads((repo / "dtchat.state.json").read_text())["chats"]["new"]
    assert entry["chatid"] == "chat-new" and "open_conversation_id" not in entry


@pytest.mark.parametrize("where", ["headers", "body"])
def test_the_deadline_holds_over_tls(tmp_path, monkeypatch, where):
    """The watchdog cuts a TLS connection as it cuts a plain one (under the TLS layer, which it leaves alone)."""
    import socket
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    token = json.dumps({"accessToken": "tls-token", "expireIn": 7200}).encode()

    def serve(raw: socket.socket) -> None:
        try:
            conn = context.wrap_socket(raw, server_side=True)
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                while length and len(body) < int(length.group(1)):
                    body += conn.recv(65536)
                if b"accessToken" in head.split(b"\r\n", 1)[0]:
                    for piece in http_answer(token):
                        conn.sendall(piece)
                    continue
                answer = dribbled_chat1(where, every=0.2)(HostileRequest("GET", "/chat/get", {"chatid": "chat1"}, None))
                for piece in answer:
                    conn.sendall(piece)
                return
        except OSError:
            return

    def accept() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(raw,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with Transport(APP_KEY, APP_SECRET, api_base=url, openapi_base=url, max_qps=0, deadline=0.5) as t:
            t.authenticate()
            started = time.monotonic()
            with pytest.raises(DeadlineError, match="within 0.5 s"):
                t.call(CHAT_GET, params={"chatid": "chat1"})
            assert time.monotonic() - started < 0.5 + 1
    finally:
        listener.close()
