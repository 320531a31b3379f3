"""Remote state (issue 22): ``--state s3://BUCKET/KEY`` against a real S3-compatible HTTP server, moto's, started
here on 127.0.0.1; DingTalk is the project's emulator.

Shown: every state write is conditional (two concurrent applies: one wins, the other stops with zero writes to
DingTalk), the lock (refused with who holds it, waited for, taken over once expired, unlocked, renewed, lost),
a SIGKILL at every write of an apply on one runner followed by an apply from another folder that finds the
pending create or the recorded chatid (zero duplicate chats), push/pull, and that no output ever holds a
credential or a presigned URL (every CLI run below is checked).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from reconciler import remote_state
from reconciler.remote_state import S3Store
from reconciler.state import RemoteStatePath, StateError, StateFile, locate_state, locked, parse_duration

from helpers import APP_KEY, APP_SECRET, dtchat, write_config

ROOT = Path(__file__).resolve().parent.parent
ACCESS_KEY = "AKIADTCHATTEST000001"
SECRET_KEY = "dtchat-test-s3-secret-key-DO-NOT-LEAK-0123456789"
#: What must never be printed: the credentials, and any part of a presigned URL.
NEVER_PRINTED = (SECRET_KEY, ACCESS_KEY, APP_SECRET, "X-Amz-Signature", "X-Amz-Credential", "AWSAccessKeyId")
WRITES = ("/chat/create", "/chat/update", "/v1.0/im/group/create", "/v1.0/im/group/update")
STATE_KEY = "dtchat/dtchat.state.json"


# -- the store ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in this process, on a free loopback port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class Bucket:
    """A fresh bucket of the test server, and the AWS environment that reaches it (set for this test)."""

    def __init__(self, endpoint: str, name: str) -> None:
        self.name = name
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=name)

    def url(self, key: str = STATE_KEY) -> str:
        return f"s3://{self.name}/{key}"

    def get(self, key: str) -> Any:
        try:
            return json.loads(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchKey":
                return None
            raise

    def state(self, key: str = STATE_KEY) -> dict:
        return self.get(key)

    def lock(self, key: str = STATE_KEY) -> dict | None:
        return self.get(key + ".lock")

    def put_state(self, chats: Mapping[str, Any], key: str = STATE_KEY) -> None:
        body = {"format": "dtchat-state", "version": 1, "chats": dict(chats)}
        self.client.put_object(Bucket=self.name, Key=key, Body=json.dumps(body).encode())

    def put_lock(self, *, ttl: float, lock_id: str = "0badc0ffee0badc0ffee", key: str = STATE_KEY) -> str:
        """The lock a runner on another machine left (it died, or it is still running)."""
        body = {
            "format": "dtchat-state-lock",
            "id": lock_id,
            "who": "ghost@ci-runner-7",
            "pid": 4242,
            "where": "GitLab CI job https://gitlab.example.com/ops/chats/-/jobs/99",
            "since": "2026-01-01T00:00:00+00:00",
            "until": "2026-01-01T00:02:00+00:00",
            "ttl_seconds": ttl,
        }
        self.client.put_object(Bucket=self.name, Key=key + ".lock", Body=json.dumps(body).encode())
        return lock_id


@pytest.fixture
def s3(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket; the standard AWS environment (and only it) says where and who, for in-process runs and
    for the subprocesses below alike. No AWS config file of the machine is read."""
    for name in [n for n in os.environ if n.startswith("AWS_")] + ["DTCHAT_STATE", "DTCHAT_LOCK_TIMEOUT"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(remote_state.ENV_LOCK_TTL, raising=False)
    for name in ("GITHUB_RUN_ID", "CI_JOB_ID", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return Bucket(s3_endpoint, f"dtchat-{uuid.uuid4().hex[:12]}")


# -- running dtchat -------------------------------------------------------------------------------------


def assert_clean(text: str) -> None:
    for secret in NEVER_PRINTED:
        assert secret not in text, f"{secret!r} was printed:\n{text}"


def cli(emulator, *args: str, env: Mapping[str, str] | None = None):
    """dtchat in this process (v1 API, the emulator); its stdout and stderr are checked for credentials."""
    result = dtchat(emulator, *args, env=env, api="v1")
    assert_clean(result.stdout + result.stderr)
    return result


def _command(emulator) -> list[str]:
    bases = ["--api", "v1", "--api-base", emulator.url, "--openapi-base", emulator.url, "--max-qps", "1000"]
    return [sys.executable, "-m", "reconciler", *bases]


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "DINGTALK_APP_KEY": APP_KEY,
        "DINGTALK_APP_SECRET": APP_SECRET,
        "NO_COLOR": "1",
        "PYTHONPATH": str(ROOT),
        **(extra or {}),
    }


def run(emulator, cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """A real ``python -m reconciler`` in ``cwd`` (a runner's own folder), checked for credentials."""
    done = subprocess.run(
        [*_command(emulator), *args], cwd=cwd, env=_env(env), capture_output=True, text=True, timeout=120
    )
    assert_clean(done.stdout + done.stderr)
    return done


def writes(emulator) -> int:
    return sum(len(emulator.calls_to(e)) for e in WRITES)


def chats_named(emulator, name: str) -> list[str]:
    return [cid for cid, info in emulator.chats().items() if info["name"] == name]


def lock_id_in(text: str) -> str:
    match = re.search(r"lock id ([0-9a-f]+)", text)
    assert match, text
    return match.group(1)


@contextlib.contextmanager
def held(url: str) -> Iterator[S3Store]:
    """This test process holds the state's lock (as a run on another runner would)."""
    store = S3Store(RemoteStatePath.parse(url))
    with store.locked(0):
        yield store


CHATS = {
    "alpha": {"name": "Alpha", "owner": "a0", "members": ["a1", "a2"]},
    "beta": {"name": "Beta", "owner": "b0", "members": ["b1"]},
}


# -- the test server, and the seam --------------------------------------------------------------------


def test_the_test_server_enforces_if_match_and_if_none_match(s3):
    """moto (>= 5.1.5) in server mode must refuse a stale ETag, or every test below proves nothing."""
    c, b = s3.client, s3.name
    first = c.put_object(Bucket=b, Key="probe", Body=b"1", IfNoneMatch="*")["ETag"]
    c.put_object(Bucket=b, Key="probe", Body=b"2", IfMatch=first)
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": first}):
        with pytest.raises(ClientError) as caught:
            c.put_object(Bucket=b, Key="probe", Body=b"3", **condition)
        assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert c.get_object(Bucket=b, Key="probe")["Body"].read() == b"2"


def test_an_s3_url_is_a_remote_location_and_hints_carry_it(tmp_path):
    url = "s3://team-bucket/dtchat/dtchat.state.json"
    given = locate_state(url, first_path=str(tmp_path), env={})
    assert given.remote and str(given.path) == url and given.flag == f" --state {url}"
    from_env = locate_state(None, first_path=str(tmp_path), env={"DTCHAT_STATE": url})
    assert from_env.remote and from_env.flag == ""  # import/forget/mv find it through the same variable
    sandbox = locate_state(None, env={"DTCHAT_STATE": url}, sandbox_path=tmp_path / "s.json")
    assert not sandbox.remote  # the sandbox's ids never enter a real state
    for bad in ("s3://team-bucket", "s3://team-bucket/", "s3://team-bucket/dir/", "s3:///key"):
        with pytest.raises(StateError, match="s3://"):
            locate_state(bad, env={})
    local = locate_state(str(tmp_path / "dtchat.state.json"), env={})
    assert not local.remote and local.path == tmp_path / "dtchat.state.json"


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0), ("45", 45), ("30s", 30), ("10m", 600), ("1h", 3600), ("1m30s", 90)]
)
def test_lock_timeout_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_bad_lock_timeout_is_one_line(emulator, tmp_path):
    for bad in ("5x", "7h", "-1s"):
        result = cli(emulator, "--lock-timeout", bad, "plan", str(tmp_path))
        assert result.exit_code == 1 and "--lock-timeout" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_every_state_write_is_conditional_on_the_version_this_run_read(s3):
    where = RemoteStatePath.parse(s3.url())
    first, second = StateFile(where), StateFile(where)  # both read: no state yet
    first.begin_create("alpha")  # If-None-Match: * creates it
    with pytest.raises(StateError, match="another writer changed the state"):
        second.begin_create("beta")  # If-None-Match: * again: refused, nothing overwritten
    assert set(s3.state()["chats"]) == {"alpha"}
    assert second.get("beta") is None  # its memory copy stays what the store holds for it
    first.record("alpha", "chat-alpha", created=True)  # If-Match the version it wrote itself
    third = StateFile(where)
    third.begin_create("gamma")
    with pytest.raises(StateError, match="another writer changed the state"):
        first.begin_create("delta")  # stale: the version it knows is no longer the store's
    with pytest.raises(StateError, match="another writer changed the state"):
        first.check_current()
    chats = s3.state()["chats"]
    assert chats["alpha"]["chatid"] == "chat-alpha" and chats["gamma"]["pending_create"] is True
    assert "delta" not in chats and "beta" not in chats
    third.check_current()  # the last writer is current


def test_apply_plan_and_the_state_commands_with_a_remote_state(emulator, s3, tmp_path):
    folder = tmp_path / "repo" / "chats"
    write_config(folder, CHATS, init=False)
    url = s3.url()
    missing = cli(emulator, "plan", str(folder), "--state", url)
    assert missing.exit_code == 1
    assert f"dtchat init {folder} --state {url}" in missing.stderr and "commit" not in missing.stderr
    created = cli(emulator, "init", str(folder), "--state", url)
    assert created.exit_code == 0, created.stderr
    assert f"Wrote an empty state to {url};" in created.stdout and "commit" not in created.stdout
    assert s3.state() == {"format": "dtchat-state", "version": 1, "chats": {}}
    again = cli(emulator, "init", str(folder), "--state", url)
    assert again.exit_code == 1 and "already there" in again.stderr
    applied = cli(emulator, "-v", "apply", str(folder), "--state", url, "--auto-approve")
    assert applied.exit_code == 0, applied.stderr
    chats = s3.state()["chats"]
    for key, chat in CHATS.items():
        assert [chats[key]["chatid"]] == chats_named(emulator, chat["name"])
    assert s3.lock() is None  # released at the end of the run
    assert sorted(p.name for p in folder.iterdir()) == ["chats.yaml"]  # nothing local: no state, no lock file
    plan = cli(emulator, "plan", str(folder), "--state", url, "--detailed-exitcode")
    assert plan.exit_code == 0 and "No changes" in plan.stdout
    through_env = cli(emulator, "plan", str(folder), "--detailed-exitcode", env={"DTCHAT_STATE": url})
    assert through_env.exit_code == 0, through_env.stderr
    listed = cli(emulator, "state", "list", "--state", url)
    assert listed.exit_code == 0 and url in listed.stdout and chats["alpha"]["chatid"] in listed.stdout
    shown = cli(emulator, "state", "show", "beta", env={"DTCHAT_STATE": url})
    assert json.loads(shown.stdout)["chats"]["beta"]["chatid"] == chats["beta"]["chatid"]
    # a saved plan records the URL, and applies with it
    write_config(folder, {**CHATS, "beta": {**CHATS["beta"], "name": "Beta renamed"}}, init=False)
    saved = tmp_path / "plan.json"
    planned = cli(emulator, "plan", str(folder), "--state", url, "--out", str(saved))
    assert planned.exit_code == 0 and json.loads(saved.read_text())["state_file"] == url
    applied = cli(emulator, "apply", "--plan", str(saved))
    assert applied.exit_code == 0, applied.stderr
    assert emulator.chat(chats["beta"]["chatid"])["name"] == "Beta renamed"
    forgot = cli(emulator, "forget", "alpha", "--state", url)
    assert forgot.exit_code == 0 and "alpha" not in s3.state()["chats"]


# -- two writers ----------------------------------------------------------------------------------------


def test_two_concurrent_applies_one_wins_and_the_other_stops_with_zero_writes(emulator, s3, tmp_path):
    """Runner A locks, reads the state and is stalled on its first DingTalk read; runner B is refused (who holds
    the lock), an operator unlocks A's lock, B applies (one create, one update). A then resumes with what it
    read before: it stops with one line and sends nothing, and the chat B created exists once."""
    upd = emulator.seed_chat("Old name", "u0", ["u0", "u1"])
    chats = {
        "upd": {"name": "Renamed", "owner": "u0", "members": ["u1"]},
        "fresh": {"name": "Fresh", "owner": "f0", "members": ["f1"]},
    }
    url = s3.url()
    s3.put_state({"upd": {"chatid": upd}})
    runner_a, runner_b = tmp_path / "runner-a", tmp_path / "runner-b"
    for runner in (runner_a, runner_b):
        write_config(runner / "chats", chats, init=False)
    stalled, resume = threading.Event(), threading.Event()

    def stall_first_read(call) -> None:
        if call.endpoint == "/chat/get" and not stalled.is_set():
            stalled.set()
            resume.wait(timeout=45)

    emulator.before_reply = stall_first_read
    apply = ("apply", "chats", "--state", url, "--auto-approve", "--parallelism", "1")
    runner = subprocess.Popen(
        [*_command(emulator), *apply],
        cwd=runner_a,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert stalled.wait(timeout=60), "runner A never read the chat"
        refused = run(emulator, runner_b, *apply)
        assert refused.returncode == 1 and "is locked by" in refused.stderr, refused.stderr
        assert f"pid {runner.pid}" in refused.stderr and writes(emulator) == 0
        lock_id = lock_id_in(refused.stderr)
        assert f"`dtchat state unlock {lock_id} --state {url}`" in refused.stderr
        unlocked = run(emulator, runner_b, "state", "unlock", lock_id, "--state", url)
        assert unlocked.returncode == 0 and "Removed the lock" in unlocked.stdout, unlocked.stderr
        won = run(emulator, runner_b, *apply)
        assert won.returncode == 0, won.stdout + won.stderr
        written = writes(emulator)
        assert written >= 2  # B's create and update
    finally:
        resume.set()
        out, err = runner.communicate(timeout=120)
        emulator.before_reply = None
    assert_clean(out + err)
    assert runner.returncode == 1, out + err
    assert "no longer holds the lock" in err or "another writer changed the state" in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line, at once
    assert writes(emulator) == written, "the runner that lost sent writes to DingTalk"
    assert len(chats_named(emulator, "Fresh")) == 1
    state = s3.state()["chats"]
    assert state["fresh"]["chatid"] == chats_named(emulator, "Fresh")[0] and state["upd"]["chatid"] == upd
    final = run(emulator, runner_a, "plan", "chats", "--state", url, "--detailed-exitcode")
    assert final.returncode == 0 and "No changes" in final.stdout, final.stdout + final.stderr


# -- the lock -------------------------------------------------------------------------------------------


def _initialised(emulator, s3, tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "chats"
    write_config(folder, CHATS, init=False)
    s3.put_state({})
    return folder, s3.url()


def test_a_second_runner_is_refused_with_who_holds_the_lock_and_sends_nothing(emulator, s3, tmp_path, monkeypatch):
    folder, url = _initialised(emulator, s3, tmp_path)
    monkeypatch.setenv("GITHUB_RUN_ID", "4242")
    monkeypatch.setenv("GITHUB_REPOSITORY", "ops/chats")
    monkeypatch.setenv("GITHUB_JOB", "apply")
    with held(url):
        refused = cli(emulator, "apply", str(folder), "--state", url, "--auto-approve")
        lock = s3.lock()
    assert refused.exit_code == 1
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()}" in line
    assert "GitHub Actions https://github.com/ops/chats/actions/runs/4242 job apply" in line
    assert f"lock id {lock['id']}" in line and "--lock-timeout" in line
    assert writes(emulator) == 0 and s3.state()["chats"] == {}
    assert s3.lock() is None  # the holder released it
    for command in (("import", "alpha", "chat1"), ("forget", "alpha"), ("mv", "alpha", "omega")):
        with held(url):
            result = cli(emulator, *command, "--state", url)
        assert result.exit_code == 1 and "is locked by" in result.stderr, (command, result.stderr)


def test_lock_timeout_waits_for_the_lock_and_gives_up_when_it_runs_out(emulator, s3, tmp_path):
    folder, url = _initialised(emulator, s3, tmp_path)

    def hold(seconds: float, taken: threading.Event) -> None:
        with held(url):
            taken.set()
            time.sleep(seconds)

    taken = threading.Event()
    holder = threading.Thread(target=hold, args=(4.0, taken))
    holder.start()
    assert taken.wait(10)
    started = time.monotonic()
    short = cli(emulator, "--lock-timeout", "1s", "apply", str(folder), "--state", url, "--auto-approve")
    assert short.exit_code == 1 and "(waited 1 s)" in short.stderr and "waiting up to 1 s" in short.stderr
    assert 1.0 <= time.monotonic() - started < 3.5
    waited = cli(emulator, "apply", str(folder), "--state", url, "--auto-approve", env={"DTCHAT_LOCK_TIMEOUT": "30s"})
    assert waited.exit_code == 0, waited.stderr
    assert time.monotonic() - started >= 3.5  # it waited for the holder, then applied
    holder.join(10)
    assert len(chats_named(emulator, "Alpha")) == 1 and s3.lock() is None


def test_an_expired_lock_is_taken_over_and_a_live_one_is_not(emulator, s3, tmp_path):
    folder, url = _initialised(emulator, s3, tmp_path)
    s3.put_lock(ttl=3600)
    live = cli(emulator, "apply", str(folder), "--state", url, "--auto-approve")
    assert live.exit_code == 1 and writes(emulator) == 0
    assert "ghost@ci-runner-7 (pid 4242, GitLab CI job https://gitlab.example.com/ops/chats/-/jobs/99)" in live.stderr
    s3.put_lock(ttl=1)  # a runner that died a moment ago: its lock lives one second unless renewed
    time.sleep(2.2)
    taken = cli(emulator, "apply", str(folder), "--state", url, "--auto-approve")
    assert taken.exit_code == 0, taken.stderr
    assert "took over the expired lock of ghost@ci-runner-7" in taken.stderr
    assert len(chats_named(emulator, "Alpha")) == 1 and s3.lock() is None


def test_state_unlock_removes_a_stale_lock_by_its_id_only(emulator, s3, tmp_path):
    folder, url = _initialised(emulator, s3, tmp_path)
    lock_id = s3.put_lock(ttl=3600)
    refused = cli(emulator, "apply", str(folder), "--state", url, "--auto-approve")
    assert lock_id_in(refused.stderr) == lock_id
    wrong = cli(emulator, "state", "unlock", "feedfacefeedface", "--state", url)
    assert wrong.exit_code == 1 and "nothing was removed" in wrong.stderr and s3.lock()["id"] == lock_id
    removed = cli(emulator, "state", "unlock", lock_id, env={"DTCHAT_STATE": url})
    assert removed.exit_code == 0, removed.stderr
    assert (
        f"Removed the lock {lock_id} of ghost@ci-runner-7" in removed.stdout
        and "if that run is alive" in removed.stdout
    )
    assert s3.lock() is None
    none = cli(emulator, "state", "unlock", lock_id, "--state", url)
    assert none.exit_code == 1 and "there is no lock" in none.stderr
    local = cli(emulator, "state", "unlock", lock_id, "--state", str(tmp_path / "dtchat.state.json"))
    assert local.exit_code == 1 and "no lock is ever left behind" in local.stderr
    applied = cli(emulator, "apply", str(folder), "--state", url, "--auto-approve")
    assert applied.exit_code == 0, applied.stderr


def test_the_lock_is_renewed_while_the_run_lasts_and_a_lost_lock_stops_its_writes(s3, monkeypatch):
    monkeypatch.setenv(remote_state.ENV_LOCK_TTL, "3")  # renewed every 0.75 s: room for a loaded CI machine
    s3.put_state({})
    where = RemoteStatePath.parse(s3.url())
    with locked(where) as state:
        time.sleep(7)  # more than two lifetimes: renewed meanwhile, so nobody may take it over
        with pytest.raises(StateError, match="is locked by"), locked(where):
            pass
        state.begin_create("alpha")
        s3.client.delete_object(Bucket=s3.name, Key=STATE_KEY + ".lock")  # someone unlocks a live run
        with pytest.raises(StateError, match="no longer holds the lock"):
            state.check_current()
        with pytest.raises(StateError, match="no longer holds the lock"):
            state.begin_create("beta")
        other = s3.put_lock(ttl=3600, lock_id="0000111122223333")  # and another run takes it
    assert s3.lock()["id"] == other  # leaving the block removed no lock but its own
    assert set(s3.state()["chats"]) == {"alpha"}


def test_the_renewal_thread_notices_a_takeover(s3, monkeypatch):
    monkeypatch.setenv(remote_state.ENV_LOCK_TTL, "1")
    s3.put_state({})
    where = RemoteStatePath.parse(s3.url())
    with locked(where) as state:
        s3.put_lock(ttl=3600, lock_id="0000111122223333")  # overwritten: its If-Match renewal must fail
        time.sleep(1.5)
        with pytest.raises(StateError, match="held by ghost@ci-runner-7"):
            state.begin_create("alpha")  # no check_current: the renewal thread found out by itself
    assert s3.state()["chats"] == {}


# -- crashes: SIGKILL at every write ----------------------------------------------------------------------

SWEEP = {
    "alpha": {"name": "Alpha", "owner": "a0", "members": ["a1", "a2"]},
    "beta": {"name": "Beta", "owner": "b0", "members": ["b1"]},
    "gamma": {"name": "Gamma", "owner": "g0", "members": ["g1", "g2"]},
    "upd": {"name": "Updated", "owner": "u0", "members": ["u1"]},
}


def _settle_pending(emulator, cwd: Path, output: str, url: str) -> bool:
    """Follow the plan's hint for each pending key: import the chat if it exists, else forget the key."""
    lines = [line for line in output.splitlines() if "dtchat import" in line and "CHATID" in line]
    for line in lines:
        imp = line.split("run `", 1)[1].split("`", 1)[0]
        fgt = line.split("otherwise run `", 1)[1].split("`", 1)[0]
        assert f"--state {url}" in imp and f"--state {url}" in fgt
        key = shlex.split(imp)[2]
        existing = chats_named(emulator, SWEEP[key]["name"])
        assert len(existing) <= 1
        command = imp.replace("CHATID", existing[0]) if existing else fgt
        done = run(emulator, cwd, *shlex.split(command)[1:])
        assert done.returncode == 0, done.stdout + done.stderr
    return bool(lines)


def test_sigkill_at_every_write_then_another_runner_finds_the_pending_create_or_the_chatid(emulator, s3, tmp_path):
    total = None
    kill_at = 0
    while total is None or kill_at < total:
        kill_at += 1
        emulator.reset()
        upd = emulator.seed_chat("Before", "u0", ["u0", "u1"])
        key = f"sweep{kill_at}/dtchat.state.json"
        url = s3.url(key)
        s3.put_state({"upd": {"chatid": upd}}, key)
        first, second = tmp_path / f"kill{kill_at}" / "runner-1", tmp_path / f"kill{kill_at}" / "runner-2"
        for folder in (first, second):
            write_config(folder / "chats", SWEEP, init=False)
        if total is None:
            dry = run(emulator, first, "apply", "chats", "--state", url, "--dry-run")
            assert dry.returncode == 0, dry.stderr
            total = int(dry.stdout.rsplit(" API call", 1)[0].rsplit("\n", 1)[1])
            assert total == 4  # three creates and one update
        seen = {"n": 0}
        box: dict = {}

        def killer(call, n=kill_at, seen=seen, box=box) -> None:
            if call.endpoint in WRITES:
                seen["n"] += 1
                if seen["n"] == n and "proc" in box:
                    os.kill(box["proc"].pid, signal.SIGKILL)  # committed, the answer never delivered

        emulator.before_reply = killer
        # runner 1 finds the state through DTCHAT_STATE, as a CI job would; its lock lives 2 s unless renewed
        env = _env({"DTCHAT_STATE": url, remote_state.ENV_LOCK_TTL: "2"})
        proc = subprocess.Popen(
            [*_command(emulator), "apply", "chats", "--auto-approve", "--parallelism", "1"],
            cwd=first,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        box["proc"] = proc
        out, err = proc.communicate(timeout=120)
        emulator.before_reply = None
        assert_clean(out + err)
        assert proc.returncode == -signal.SIGKILL, f"kill at write {kill_at}: the apply was not killed"
        assert sorted(p.name for p in (first / "chats").iterdir()) == ["chats.yaml"]  # nothing lived on the runner
        recorded = s3.state(key)["chats"]
        pending = [k for k, b in recorded.items() if b.get("pending_create")]
        for k in ("alpha", "beta", "gamma"):  # each chat created so far is recorded, or is the one pending
            made = chats_named(emulator, SWEEP[k]["name"])
            assert len(made) <= 1
            if made:
                assert k in pending or recorded[k]["chatid"] == made[0], (kill_at, k, recorded)
        assert len(pending) == (1 if kill_at < total else 0), (kill_at, recorded)
        assert s3.lock(key) is not None  # the dead runner's lock is still there

        apply = ("apply", "chats", "--state", url, "--auto-approve")
        if kill_at % 2:  # wait for the dead runner's lock to expire, and take it over
            outcome = run(emulator, second, *apply, "--lock-timeout", "30s")
            assert "took over the expired lock" in outcome.stderr, outcome.stderr
        else:  # an operator reads who holds it, and removes it
            refused = run(emulator, second, *apply)
            assert refused.returncode == 1 and f"pid {proc.pid}" in refused.stderr, refused.stderr
            unlocked = run(emulator, second, "state", "unlock", lock_id_in(refused.stderr), "--state", url)
            assert unlocked.returncode == 0, unlocked.stderr
            outcome = run(emulator, second, *apply)
        for _attempt in range(4):
            if outcome.returncode == 0:
                break
            output = outcome.stdout + outcome.stderr
            assert _settle_pending(emulator, second, output, url), output
            outcome = run(emulator, second, *apply)
        else:
            pytest.fail(f"kill at write {kill_at}: did not converge")
        state = s3.state(key)["chats"]
        for k, chat in SWEEP.items():
            made = chats_named(emulator, chat["name"])
            assert len(made) == 1, f"kill at write {kill_at}: {k} created {len(made)} times"
            assert state[k]["chatid"] == made[0]
        final = run(emulator, second, "plan", "chats", "--state", url, "--detailed-exitcode")
        assert final.returncode == 0 and "No changes" in final.stdout, (kill_at, final.stdout, final.stderr)
        assert s3.lock(key) is None


# -- moving a state, and the store's failures --------------------------------------------------------------


def test_push_and_pull_move_a_state_file_to_and_from_the_store(emulator, s3, tmp_path):
    folder = tmp_path / "chats"
    write_config(folder, CHATS)  # a local state file, as a repository has it today
    local = folder / "dtchat.state.json"
    assert cli(emulator, "apply", str(folder), "--auto-approve").exit_code == 0
    url = s3.url()
    pushed = cli(emulator, "state", "push", url, "--state", str(local))
    assert pushed.exit_code == 0 and "Pushed 2 chats" in pushed.stdout, pushed.stderr
    assert s3.state() == json.loads(local.read_text())
    plan = cli(emulator, "plan", str(folder), "--state", url, "--detailed-exitcode")
    assert plan.exit_code == 0 and "No changes" in plan.stdout  # the pushed state is the one plan now reads
    again = cli(emulator, "state", "push", url, "--state", str(local))
    assert again.exit_code == 1 and "already there (2 chats)" in again.stderr and "--force" in again.stderr
    with held(url):
        locked_out = cli(emulator, "state", "push", url, "--state", str(local), "--force")
    assert locked_out.exit_code == 1 and "is locked by" in locked_out.stderr
    forced = cli(emulator, "state", "push", url, "--state", str(local), "--force")
    assert forced.exit_code == 0, forced.stderr
    pulled_file = tmp_path / "elsewhere" / "dtchat.state.json"
    pulled_file.parent.mkdir()
    pulled = cli(emulator, "state", "pull", url, "--state", str(pulled_file))
    assert pulled.exit_code == 0 and "Pulled 2 chats" in pulled.stdout, pulled.stderr
    assert json.loads(pulled_file.read_text()) == s3.state()
    twice = cli(emulator, "state", "pull", url, "--state", str(pulled_file))
    assert twice.exit_code == 1 and "already there" in twice.stderr
    nothing = cli(emulator, "state", "pull", s3.url("no/such.json"), "--state", str(tmp_path / "x.json"))
    assert nothing.exit_code == 1 and "no state file there" in nothing.stderr
    not_s3 = cli(emulator, "state", "push", str(tmp_path / "x.json"), "--state", str(local))
    assert not_s3.exit_code == 1 and "s3://BUCKET/KEY" in not_s3.stderr
    assert s3.lock() is None


def test_without_boto3_one_line_says_how_to_install_the_extra(emulator, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    monkeypatch.setattr(remote_state, "_clients", {})
    write_config(tmp_path / "chats", CHATS, init=False)
    result = cli(emulator, "plan", str(tmp_path / "chats"), "--state", "s3://team-bucket/dtchat.state.json")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'dingtalk-chat-reconciler[s3]'" in lines[0], result.stderr


def test_a_store_that_ignores_conditional_writes_is_refused_before_any_write(emulator, s3, tmp_path, monkeypatch):
    folder, url = _initialised(emulator, s3, tmp_path)
    client = remote_state._client()
    real = client.put_object

    def ignoring(**kwargs: Any) -> Any:  # a store that accepts the headers and does not check them
        kwargs.pop("IfMatch", None)
        kwargs.pop("IfNoneMatch", None)
        return real(**kwargs)

    monkeypatch.setattr(client, "put_object", ignoring)
    monkeypatch.setattr(remote_state, "_enforcing", set())
    result = cli(emulator, "apply", str(folder), "--state", url, "--auto-approve")
    assert result.exit_code == 1 and "ignored If-None-Match" in result.stderr, result.stderr
    assert writes(emulator) == 0 and s3.lock() is None and s3.state()["chats"] == {}


def test_store_errors_are_one_line_and_name_no_credential(emulator, s3, tmp_path, monkeypatch):
    folder = tmp_path / "chats"
    write_config(folder, CHATS, init=False)
    no_bucket = cli(emulator, "init", str(folder), "--state", "s3://no-such-bucket-dtchat/dtchat.state.json")
    assert (
        no_bucket.exit_code == 1
        and "NoSuchBucket" in no_bucket.stderr
        and "dtchat never creates one" in no_bucket.stderr
    )
    assert len(no_bucket.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    unreachable = cli(emulator, "plan", str(folder), "--state", s3.url())
    assert unreachable.exit_code == 1 and "AWS_ENDPOINT_URL" in unreachable.stderr, unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60


def test_a_state_changed_by_another_writer_mid_apply_stops_the_run_with_exit_1(emulator, s3, tmp_path):
    """After a conflicting write (a hand edit, a forced unlock and another run), the run sends nothing more:
    the chat whose digest could not be recorded fails, no other chat starts, exit 1."""
    folder = tmp_path / "chats"
    chats = {f"c{i}": {"name": f"C{i}", "owner": "alice", "members": ["bob"]} for i in range(6)}
    write_config(folder, chats, init=False)
    url = s3.url()
    assert cli(emulator, "init", str(folder), "--state", url).exit_code == 0
    assert cli(emulator, "apply", str(folder), "--state", url, "--auto-approve").exit_code == 0
    write_config(folder, {k: {**c, "members": ["bob", "dave"]} for k, c in chats.items()}, init=False)
    edited = []

    def someone_writes_the_state(call):
        if call.endpoint.endswith("/update") and not edited:  # after the first chat's update, before its digest
            edited.append(True)
            s3.put_state({**s3.state()["chats"], "hand-edit": {"chatid": None}})

    emulator.before_reply = someone_writes_the_state
    before = writes(emulator)
    result = cli(emulator, "apply", str(folder), "--state", url, "--auto-approve", "--parallelism", "1")
    assert result.exit_code == 1
    assert "another writer changed the state" in result.stderr
    assert writes(emulator) - before == 1  # the update in flight; nothing after it
    assert "Not started: 5 chats" in result.stderr


@pytest.mark.parametrize("how", ["unlock", "release"])
def test_a_lock_taken_over_after_it_was_read_is_never_removed(s3, monkeypatch, how):
    """Removing a lock is conditional on the lock object read (If-Match its ETag): a run that took the lock over
    in between keeps it, whether a `state unlock` or a finishing run's release was about to remove it."""
    s3.put_state({})
    url = s3.url()
    taker = "0000111122223333"
    real_read = S3Store._read_lock

    def read_then_taken_over(self):
        holder = real_read(self)
        s3.put_lock(ttl=3600, lock_id=taker)  # another run takes the lock, right after this read
        return holder

    if how == "unlock":
        stale = s3.put_lock(ttl=3600)
        monkeypatch.setattr(S3Store, "_read_lock", read_then_taken_over)
        with pytest.raises(StateError, match="the lock changed since it was read"):
            S3Store(RemoteStatePath.parse(url)).unlock(stale)
    else:
        with held(url):
            monkeypatch.setattr(S3Store, "_read_lock", read_then_taken_over)
    assert s3.lock()["id"] == taker
