"""``dtchat watch`` end to end: the real CLI in a subprocess, DingTalk's official Stream SDK, the emulator's gateway.

Each test converges its chats with ``dtchat apply`` (so the state binds them), starts ``python -m reconciler
watch`` as a real process against an in-process emulator (HTTP API and Stream gateway), changes DingTalk
through the emulator's admin routes ("by hand in the DingTalk client", org edits, gateway faults) and reads
what ``watch`` prints, line by line, as it arrives. Every wait is bounded; the process is killed in a
finally. The issue's "within 2 s" is measured from the admin call to the line's arrival; every other wait
is generous, so a loaded 2-core CI machine does not make the tests flaky.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip("websockets.sync.server")
pytest.importorskip("dingtalk_stream")

from reconciler.config import load_config  # noqa: E402
from reconciler.emulator import SANDBOX_ORG, EmulatorServer, load_org  # noqa: E402
from reconciler.plan import desired_digest  # noqa: E402
from reconciler.state import locked  # noqa: E402

from helpers import APP_KEY, APP_SECRET, dtchat, write_config  # noqa: E402

#: The issue's promise: an alert (or an enforced fix) within this many seconds of the change.
WITHIN = 2.0
#: Everything else: generous, these are deadlines for a bug, not expectations.
SLACK = 30.0
#: The writes of both API generations (dingtalk-api.md): none of them may be called by an alerting watch.
WRITES = ("/v1.0/im/group/create", "/v1.0/im/group/update", "/chat/create", "/chat/update")
CHAT_GET = "/chat/get"
#: Not passed on to watch (compared lower-case): proxies, and hosts that would point it elsewhere.
_ENV_DROPPED = ("http_proxy", "https_proxy", "all_proxy", "dingtalk_openapi_endpoint", "dingtalk_api_base")

LATENCIES: dict[str, float] = {}


# ---- the emulator and the chats ----------------------------------------------------------------


@pytest.fixture
def srv(monkeypatch) -> Iterator[EmulatorServer]:
    """An emulator with the sandbox org; the Stream tickets it issues are remembered (never to be printed)."""
    server = EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, org=load_org(SANDBOX_ORG))
    tickets: list[str] = []
    issue = server._stream.issue_ticket

    def remember(*args: Any) -> str:
        tickets.append(issue(*args))
        return tickets[-1]

    monkeypatch.setattr(server._stream, "issue_ticket", remember)
    server.tickets = tickets  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def admin(server: EmulatorServer, route: str, body: Mapping[str, Any]) -> Any:
    """``POST /__emulator__/ROUTE`` over HTTP (no proxy), asserting it worked."""
    with requests.Session() as http:
        http.trust_env = False
        answer = http.post(f"{server.url}/__emulator__/{route}", json=dict(body), timeout=SLACK)
    assert answer.status_code == 200, answer.text
    return answer.json()


def by_hand(server: EmulatorServer, chatid: str, **change: Any) -> list[str]:
    """A person changes the chat in the DingTalk client (``POST hand``); the ids of the events it pushed."""
    return admin(server, "hand", {"chatid": chatid, **change})["events"]


def converge(server: EmulatorServer, folder: Path, chats: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Write the YAML, ``dtchat apply --auto-approve`` it (v1.0), and return the chatids the state now binds."""
    write_config(folder, chats)
    result = dtchat(server, "apply", str(folder), "--auto-approve", api="v1")
    assert result.exit_code == 0, result.output
    return {key: entry["chatid"] for key, entry in read_state(folder)["chats"].items()}


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "dtchat.state.json").read_text(encoding="utf-8"))


def members(server: EmulatorServer, chatid: str) -> list[str]:
    chat = server.chat(chatid)
    assert chat is not None
    return list(chat["useridlist"])


def writes(server: EmulatorServer) -> int:
    counters = server.counters()
    return sum(counters.get(endpoint, 0) for endpoint in WRITES)


def reads(server: EmulatorServer) -> int:
    return server.counters().get(CHAT_GET, 0)


def wait_for(condition: Callable[[], Any], timeout: float = SLACK, what: str = "the condition") -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def settled(server: EmulatorServer) -> None:
    """Every event pushed so far acknowledged: handled, including the ones watch's own writes cause."""
    wait_for(lambda: (s := server.stream_stats())["unacked"] == 0 and s["queued"] == 0, what="every event acked")


def acked(server: EmulatorServer, event_id: str) -> bool:
    assert server.wait_stream_acked(event_id, timeout=SLACK), f"event {event_id} never acked: {server.stream_stats()}"
    return True


# ---- dtchat watch in a subprocess --------------------------------------------------------------


class Watch:
    """``python -m reconciler ... watch FOLDER ARGS`` with stdout and stderr read line by line, timestamped."""

    def __init__(
        self,
        server: EmulatorServer,
        folder: Path,
        *args: str,
        verbose: bool = False,
        python: list[str] | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k.lower() not in _ENV_DROPPED and not k.startswith("DTCHAT_")}
        env.update(
            DINGTALK_APP_KEY=APP_KEY,
            DINGTALK_APP_SECRET=APP_SECRET,
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            NO_COLOR="1",
            PYTHONUNBUFFERED="1",
        )
        base = ["--api", "v1", "--openapi-base", server.url, "--api-base", server.url, "--max-qps", "1000"]
        argv = [*(python or [sys.executable, "-m", "reconciler"]), *(["-v"] if verbose else []), *base]
        self.server = server
        self.proc = subprocess.Popen(
            [*argv, "watch", str(folder), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=folder.parent,
            text=True,
            encoding="utf-8",
        )
        self._cond = threading.Condition()
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._open = 2
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    def _read(self, stream: Any, lines: list[tuple[float, str]]) -> None:
        for line in stream:
            with self._cond:
                lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._open -= 1
            self._cond.notify_all()

    # -- waiting --

    def mark(self) -> tuple[int, int]:
        """Where stdout and stderr are now: later waits look only at lines after this."""
        with self._cond:
            return len(self.out), len(self.err)

    def _wait(
        self, lines: list[tuple[float, str]], start: int, match: Callable[[str], bool], timeout: float, what: str
    ) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, line in lines[start:]:
                    if match(line):
                        return at, line
                left = deadline - time.monotonic()
                if left <= 0 or (self._open == 0 and self.proc.poll() is not None):
                    raise AssertionError(f"{what}: no such line within {timeout} s\n{self.transcript()}")
                self._cond.wait(min(left, 0.5))

    def line(self, match: Callable[[str], bool], *, after: int = 0, timeout: float = SLACK, what: str = "stdout"):
        """The first stdout line after ``after`` that ``match``es, and when it arrived (monotonic)."""
        return self._wait(self.out, after, match, timeout, what)

    def alert(self, match: Callable[[dict[str, Any]], bool], *, after: int = 0, timeout: float = SLACK):
        """The first ``--format json`` object after ``after`` that ``match``es, and when it arrived."""
        at, line = self._wait(self.out, after, lambda s: match(json.loads(s)), timeout, "a JSON alert")
        return at, json.loads(line)

    def log(self, match: Callable[[str], bool], *, after: int = 0, timeout: float = SLACK, what: str = "stderr"):
        return self._wait(self.err, after, match, timeout, what)

    def ready(self) -> Watch:
        """Wait until it watches: its banner is out and the gateway has its connection."""
        self.log(lambda s: s.startswith("Watching "), what="the banner")
        assert self.server.wait_stream_connections(1, timeout=SLACK), self.transcript()
        return self

    def stdout(self, after: int = 0) -> list[str]:
        with self._cond:
            return [line for _, line in self.out[after:]]

    def stderr(self, after: int = 0) -> list[str]:
        with self._cond:
            return [line for _, line in self.err[after:]]

    def transcript(self) -> str:
        """What it printed, for a failure message (secrets masked: the fixture fails the test on them)."""
        text = "--- stdout\n" + "\n".join(self.stdout()) + "\n--- stderr\n" + "\n".join(self.stderr())
        for secret in secrets(self.server):
            text = text.replace(secret, "***")
        return text

    # -- ending --

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = SLACK) -> int:
        """The exit code, once both pipes are drained."""
        code = self.proc.wait(timeout=timeout)
        with self._cond:
            assert self._cond.wait_for(lambda: self._open == 0, timeout=timeout), "pipes still open"
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=SLACK)


@pytest.fixture
def watch(srv: EmulatorServer) -> Iterator[Callable[..., Watch]]:
    """Start ``dtchat watch``; each is killed at the end, and nothing it printed may hold a secret."""
    started: list[Watch] = []

    def start(folder: Path, *args: str, ready: bool = True, **kw: Any) -> Watch:
        w = Watch(srv, folder, *args, **kw)
        started.append(w)
        return w.ready() if ready else w

    try:
        yield start
    finally:
        for w in started:
            w.kill()
        for w in started:
            text = "\n".join(w.stdout() + w.stderr())
            assert not any(s in text for s in secrets(srv)), "a secret (app secret, token or ticket) was printed"


def secrets(server: EmulatorServer) -> list[str]:
    """The app secret, every access token the emulator issued and every Stream ticket: never to be printed."""
    return [APP_SECRET, *server.tickets, *server._tokens._tokens]  # type: ignore[attr-defined]


def latency(name: str, since: float, at: float) -> float:
    LATENCIES[name] = at - since
    print(f"latency {name}: {1000 * (at - since):.0f} ms")
    return at - since


# ---- the chats ---------------------------------------------------------------------------------

SRE = {"name": "SRE", "owner": "zhangwei", "members": ["lina", "wangfang"]}
GUESTS = {"name": "Guests welcome", "owner": "weibin", "members": ["yejun"], "members_policy": "additive"}


# ---- must show: a member added by hand ----------------------------------------------------------


def test_a_member_added_by_hand_is_an_alert_within_2s_naming_chat_and_member_and_nothing_is_written(
    srv, watch, tmp_path
):
    folder = tmp_path / "chats"
    ids = converge(srv, folder, {"sre": SRE})
    w = watch(folder)
    before_writes, before_meter = writes(srv), srv.meter()["metered"]

    since = time.monotonic()
    (event_id,) = by_hand(srv, ids["sre"], add=["mallory"], operator="lina")
    at, line = w.line(lambda s: "mallory" in s, what="the alert")

    assert latency("alert", since, at) <= WITHIN, line
    assert line == f"drift sre ({ids['sre']}): + mallory (added in DingTalk)"
    assert acked(srv, event_id)  # acknowledged once handled
    assert writes(srv) == before_writes  # alerts only: nothing written to DingTalk
    assert members(srv, ids["sre"]) == ["zhangwei", "lina", "wangfang", "mallory"]
    assert srv.meter()["metered"] - before_meter == 1  # the one read of that one chat


# ---- must show: --enforce ------------------------------------------------------------------------


def test_enforce_removes_the_member_within_2s_and_records_the_chats_digest(srv, watch, tmp_path):
    folder = tmp_path / "chats"
    ids = converge(srv, folder, {"sre": SRE})
    applied = read_state(folder)["chats"]["sre"]["digest"]
    # The YAML changed since the last apply (a merged edit not yet applied): watch converges the chat to it.
    write_config(folder, {"sre": {**SRE, "members": ["lina", "wangfang", "yejun"]}})
    wanted = desired_digest(next(c for c in load_config([str(folder)]).chats if c.key == "sre"))
    assert wanted != applied
    w = watch(folder, "--enforce", "--format", "json")

    since = time.monotonic()
    by_hand(srv, ids["sre"], add=["mallory"])
    at, alert = w.alert(lambda a: a["key"] == "sre" and a["kind"] != "in_sync")

    assert latency("enforce", since, at) <= WITHIN, alert
    assert alert["kind"] == "enforced" and alert["enforced"] is True and alert["problem"] is None
    assert alert["chatid"] == ids["sre"] and alert["cause"] == "added in DingTalk"
    assert (alert["members_unexpected"], alert["members_missing"]) == (["mallory"], ["yejun"])
    assert members(srv, ids["sre"]) == ["zhangwei", "lina", "wangfang", "yejun"]  # done before the line
    assert alert["metered"] >= 2  # the read and the one update
    entry = read_state(folder)["chats"]["sre"]
    assert entry["digest"] == wanted and entry["chatid"] == ids["sre"]  # recorded under the lock
    settled(srv)  # the update's own event: read again, found in sync
    with locked(folder / "dtchat.state.json"):  # and the lock is not held while watch waits
        pass


def test_enforce_leaves_an_additive_chat_alone(srv, watch, tmp_path):
    folder = tmp_path / "chats"
    ids = converge(srv, folder, {"guests": GUESTS})
    w = watch(folder, "--enforce", "--format", "json")
    before = writes(srv)

    (event_id,) = by_hand(srv, ids["guests"], add=["mallory"])
    _, alert = w.alert(lambda a: a["key"] == "guests")

    assert alert["kind"] == "in_sync" and alert["enforced"] is False and alert["members_unexpected"] == []
    assert acked(srv, event_id)
    assert "mallory" in members(srv, ids["guests"]) and writes(srv) == before


# ---- must show: a leaver -------------------------------------------------------------------------


def test_a_leaver_leaves_every_directory_built_chat_and_no_chat_that_lists_them(srv, watch, tmp_path):
    """chenjie (后端组 110, under 研发部 100) leaves the company.

    Two chats are built from the directory: both lose chenjie. A chat that names chenjie in its YAML keeps
    them, exact policy or not: the YAML is the word, and it still says chenjie belongs (docs/watch.md).
    """
    folder = tmp_path / "chats"
    ids = converge(
        srv,
        folder,
        {
            "backend": {"name": "Backend", "owner": "liuyang", "members": [{"dept": 110}]},
            "rnd": {"name": "研发部", "owner": "gaofeng", "members": [{"dept": 100, "recursive": True}]},
            "lunch": {"name": "Lunch", "owner": "liuyang", "members": ["chenjie", "yangxue"]},
        },
    )
    assert all("chenjie" in members(srv, chatid) for chatid in ids.values())
    w = watch(folder, "--enforce", "--format", "json")
    mark, _ = w.mark()
    before, seq = srv.counters(), max(c.seq for c in srv.calls)

    since = time.monotonic()
    admin(srv, "org/remove-user", {"userid": "chenjie"})
    arrivals = {}
    for key in ("backend", "rnd"):
        at, alert = w.alert(lambda a, key=key: a["key"] == key, after=mark)
        assert alert["kind"] == "enforced" and alert["members_unexpected"] == ["chenjie"], alert
        assert alert["cause"] == "the directory changed"
        arrivals[key] = at
    latency("leaver", since, max(arrivals.values()))

    assert "chenjie" not in members(srv, ids["backend"]) and "chenjie" not in members(srv, ids["rnd"])
    assert "chenjie" in members(srv, ids["lunch"])
    updated = [c.body or {} for c in srv.calls_to("/v1.0/im/group/update") if c.seq > seq]
    assert len(updated) == 2 and all(
        ids["lunch"] not in (b.get("chatid"), b.get("openConversationId")) for b in updated
    )
    assert srv.counters().get(CHAT_GET, 0) - before.get(CHAT_GET, 0) >= 2
    assert not any(json.loads(s)["key"] == "lunch" for s in w.stdout(mark))


# ---- must show: redelivery, bursts ---------------------------------------------------------------


def test_a_redelivered_event_is_handled_once(srv, watch, tmp_path):
    folder = tmp_path / "chats"
    ids = converge(srv, folder, {"sre": SRE, "guests": GUESTS})
    w = watch(folder, "--format", "json", verbose=True)

    (event_id,) = by_hand(srv, ids["sre"], add=["mallory"])
    w.alert(lambda a: a["key"] == "sre")
    assert acked(srv, event_id)
    out, err = w.mark()
    before = reads(srv)

    admin(srv, "stream/redeliver", {"event_id": event_id})
    message = wait_for(
        lambda: (m := srv.stream_message(event_id)) and m["deliveries"] == 2 and m["outcomes"][1] == "ok" and m,
        what="the redelivered copy acknowledged",
    )
    assert message["message_ids"][0] != message["message_ids"][1]  # a second delivery of the same event
    w.log(lambda s: event_id in s and "handled once" in s, after=err, what="the duplicate noted")
    # Anything that copy printed was written before its ack: an alert on another chat, awaited, proves the
    # reader is past that point.
    by_hand(srv, ids["guests"], add=["mallory"])
    w.alert(lambda a: a["key"] == "guests", after=out)
    assert [json.loads(s)["key"] for s in w.stdout(out)] == ["guests"]  # no second alert for sre
    assert reads(srv) - before == 1  # only guests was read


def test_a_burst_of_50_events_on_one_chat_costs_at_most_two_reads(srv, watch, tmp_path):
    folder = tmp_path / "chats"
    ids = converge(srv, folder, {"sre": SRE})
    w = watch(folder, "--format", "json")
    before = reads(srv)
    out, _ = w.mark()

    newcomers = [f"guest{i:02d}" for i in range(50)]
    events = [srv.change_by_hand(ids["sre"], add=[who])[0] for who in newcomers]
    for event_id in events:  # every one acknowledged: every one handled
        assert acked(srv, event_id)

    assert 1 <= reads(srv) - before <= 2
    w.alert(lambda a: a["members_unexpected"] == newcomers, after=out)  # the last read saw them all
    assert 1 <= len(w.stdout(out)) <= 2


# ---- must show: signals --------------------------------------------------------------------------


def test_sighup_keeps_the_old_config_when_the_new_one_is_invalid_and_takes_a_valid_one(srv, watch, tmp_path):
    folder = tmp_path / "chats"
    ids = converge(srv, folder, {"sre": SRE})
    w = watch(folder, "--format", "json")
    good = (folder / "chats.yaml").read_text(encoding="utf-8")

    (folder / "chats.yaml").write_text(good.replace("owner: zhangwei", "owner: [zhangwei"), encoding="utf-8")
    _, err = w.mark()
    w.signal(signal.SIGHUP)
    w.log(lambda s: "reload" in s, after=err, what="the refusal")
    (at_out, at_err) = w.mark()
    by_hand(srv, ids["sre"], add=["mallory"])
    _, alert = w.alert(lambda a: a["key"] == "sre", after=at_out)
    assert alert["kind"] == "drift" and alert["members_unexpected"] == ["mallory"]  # the old config, still
    refusal = w.stderr(err)
    assert len(refusal) == 1, refusal  # one line, and nothing else on stderr since
    assert "refused" in refusal[0] and "keeping the previous one" in refusal[0] and "chats.yaml" in refusal[0]

    write_config(folder, {"sre": {**SRE, "members": ["lina", "wangfang", "mallory", "yejun"]}})
    w.signal(signal.SIGHUP)
    w.log(lambda s: "reloaded" in s, after=at_err, what="the reload")
    out, _ = w.mark()
    by_hand(srv, ids["sre"], add=["yejun"])
    _, alert = w.alert(lambda a: a["key"] == "sre", after=out)
    assert alert["kind"] == "in_sync" and alert["members_unexpected"] == []  # the new config lists both


def test_sigterm_finishes_the_chat_in_progress_and_exits_0_with_the_state_consistent(srv, watch, tmp_path):
    folder = tmp_path / "chats"
    ids = converge(srv, folder, {"sre": SRE, "guests": GUESTS})
    write_config(folder, {"sre": {**SRE, "members": ["lina", "wangfang", "yejun"]}, "guests": GUESTS})
    w = watch(folder, "--enforce")
    srv.faults.latency_ms = 400  # slow answers: the SIGTERM lands while the chat is being converged
    before = reads(srv)

    by_hand(srv, ids["sre"], add=["mallory"])
    wait_for(lambda: reads(srv) > before, what="watch reading the chat")
    w.signal(signal.SIGTERM)
    code = w.wait()

    assert code == 0, w.transcript()
    assert members(srv, ids["sre"]) == ["zhangwei", "lina", "wangfang", "yejun"]  # the chat in progress finished
    assert any(line.startswith("enforced sre") for line in w.stdout()), w.transcript()
    assert w.stderr()[-1].startswith("Stopped: "), w.transcript()
    state = read_state(folder)  # valid JSON, every chat still bound, digests as the YAML wants
    config = {c.key: c for c in load_config([str(folder)]).chats}
    assert {k: e["chatid"] for k, e in state["chats"].items()} == ids
    assert {k: e["digest"] for k, e in state["chats"].items()} == {k: desired_digest(c) for k, c in config.items()}
    with locked(folder / "dtchat.state.json"):  # the lock is free
        pass
    srv.faults.latency_ms = 0
    plan = dtchat(srv, "plan", str(folder), "--detailed-exitcode", api="v1")
    assert plan.exit_code == 0, plan.output  # DingTalk and the state agree with the YAML


# ---- must show: the connection drops ------------------------------------------------------------


@pytest.mark.parametrize("abort", [False, True], ids=["closed", "aborted"])
def test_a_dropped_connection_reconnects_in_one_line_and_the_next_event_is_handled(srv, watch, tmp_path, abort):
    folder = tmp_path / "chats"
    ids = converge(srv, folder, {"sre": SRE})
    w = watch(folder, "--format", "json")
    out, err = w.mark()

    assert admin(srv, "stream/close", {"abort": True} if abort else {"code": 1000})["closed"] == 1
    # A normal close: the SDK reconnects at once; a lost network (no close frame): after its 10 s pause.
    w.log(lambda s: "reconnected" in s, after=err, timeout=SLACK + 15, what="the reconnect line")
    assert srv.wait_stream_connections(1, timeout=SLACK)
    assert len(w.stderr(err)) == 1, w.stderr(err)  # one line says so, nothing else

    since = time.monotonic()
    (event_id,) = by_hand(srv, ids["sre"], add=["mallory"])
    at, alert = w.alert(lambda a: a["key"] == "sre", after=out)
    latency("alert after reconnect", since, at)
    assert alert["kind"] == "drift" and alert["members_unexpected"] == ["mallory"]
    assert acked(srv, event_id) and srv.stream_stats()["accepted"] == 2


# ---- must show: without the extra ----------------------------------------------------------------

#: ``python -m reconciler`` in an interpreter where ``import dingtalk_stream`` fails, as when the package is
#: not installed (``sys.modules[name] = None`` is Python's documented way to make an import fail).
NO_SDK = [
    sys.executable,
    "-c",
    "import runpy, sys; sys.modules['dingtalk_stream'] = None; runpy.run_module('reconciler', run_name='__main__')",
]


def test_watch_without_the_extra_says_how_to_install_it_in_one_line_and_exits_1(srv, watch, tmp_path):
    folder = tmp_path / "chats"
    converge(srv, folder, {"sre": SRE})
    before = srv.counters()
    w = watch(folder, ready=False, python=NO_SDK)

    assert w.wait() == 1
    (line,) = w.stderr()
    assert "pip install" in line and "[watch]" in line and "dingtalk-stream" in line
    assert w.stdout() == [] and srv.stream_stats()["opened"] == 0 and srv.counters() == before


# ---- the SDK's own log lines -------------------------------------------------------------------


def test_the_sdks_log_is_one_line_per_problem_and_redacted(caplog):
    """The SDK logs a failed WebSocket connect as ``logger.exception('unknown exception', e)`` (a stray
    argument and a traceback) and a dropped connection as an error; watch says the reconnect itself."""
    from reconciler.backends.redact import register_secret
    from reconciler.backends.stream import sdk_logger

    ticket = "ticket-3f1c9a57-8f1e-4c55-9d53-0d6a1e2b7c44"
    register_secret(ticket)
    sdk = sdk_logger()
    assert sdk_logger() is sdk and len(sdk.filters) == 2  # idempotent
    with caplog.at_level(logging.INFO, logger="reconciler.stream.sdk"):
        try:
            raise OSError(f"cannot connect to ws://gateway/connect?ticket={ticket}")
        except OSError as exc:
            sdk.exception("unknown exception", exc)
        sdk.error("[start] network exception, error=%s", "no close frame received or sent")
    failed, dropped = caplog.records
    assert failed.levelname == "WARNING" and failed.exc_info is None and "\n" not in failed.getMessage()
    assert ticket not in failed.getMessage() and "cannot connect" in failed.getMessage()
    assert dropped.levelname == "INFO"  # shown with -v only: watch's own line says it reconnected
