"""Test helpers: the test app's credentials, YAML configs, the real CLI and raw HTTP against the emulator.

Test files import from here (``from helpers import ...``); ``conftest.py`` holds only fixtures.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import requests
import yaml
from click.testing import CliRunner, Result

from reconciler.cli import cli

#: The credentials the ``emulator`` fixture requires (and ``dtchat()`` passes).
APP_KEY = "test-app-key"
APP_SECRET = "test-app-secret-DO-NOT-LEAK"


def write_config(
    folder: Path,
    chats: Mapping[str, Mapping[str, Any]],
    *,
    name: str = "chats.yaml",
    groups: Mapping[str, Sequence[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    init: bool = True,
) -> Path:
    """The YAML file, and (``init``) the empty state file `dtchat init` writes beside it, as a repo has it."""
    doc: dict[str, Any] = {"version": 1}
    if defaults:
        doc["defaults"] = {"settings": dict(defaults)}
    if groups:
        doc["groups"] = {k: list(v) for k, v in groups.items()}
    doc["chats"] = {k: dict(v) for k, v in chats.items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    state = folder / "dtchat.state.json"
    if init and not state.exists():
        state.write_text(EMPTY_STATE, encoding="utf-8")
    return path


#: What `dtchat init` writes.
EMPTY_STATE = '{\n  "format": "dtchat-state",\n  "version": 1,\n  "chats": {}\n}\n'


def dtchat(
    emulator,
    *args: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    api: str = "legacy",
) -> Result:
    """Run ``dtchat --api API --api-base <emulator> --openapi-base <emulator> ARGS`` in-process with the test
    app's credentials (both hosts are the one emulator)."""
    full_env = {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "NO_COLOR": "1"}
    full_env.update(env or {})
    runner = CliRunner()
    base = ["--api", api, "--api-base", emulator.url, "--openapi-base", emulator.url, "--max-qps", "1000"]
    return runner.invoke(cli, [*base, *args], input=input, env=full_env, catch_exceptions=False)


def state_of(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v["chatid"] for k, v in data["chats"].items()}


def users(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


class RawApi:
    """Raw ``requests`` against one emulator, no DingTalkClient in between, with a token fetched up front.

    ``get``/``post``/``gettoken``/``admin`` return the whole ``requests.Response`` so faults (HTTP 500,
    HTML pages, bans) stay visible; ``get_json``/``post_json`` are the shorthand for the usual JSON answer.
    ``appkey``/``appsecret`` default to any non-empty pair, which an emulator without credentials accepts.
    """

    def __init__(self, server: Any, appkey: str = "k", appsecret: str = "s") -> None:
        self.base = server.url
        self.appkey, self.appsecret = appkey, appsecret
        self.http = requests.Session()
        self.token: str = self.new_token()

    def gettoken(self, appkey: str | None = None, appsecret: str | None = None) -> requests.Response:
        params = {
            "appkey": self.appkey if appkey is None else appkey,
            "appsecret": self.appsecret if appsecret is None else appsecret,
        }
        return self.http.get(self.base + "/gettoken", params=params)

    def new_token(self) -> str:
        """Fetch a fresh token, use it from now on, and return it."""
        self.token = self.gettoken().json()["access_token"]
        return self.token

    def get(self, endpoint: str, **params: Any) -> requests.Response:
        """GET with this token unless ``access_token`` is given."""
        params.setdefault("access_token", self.token)
        return self.http.get(self.base + endpoint, params=params)

    def post(self, endpoint: str, body: Any, token: str | None = None, **kw: Any) -> requests.Response:
        """POST ``body`` as JSON with this token (or ``token``); ``kw`` goes to requests (e.g. ``timeout``)."""
        return self.http.post(self.base + endpoint, params={"access_token": token or self.token}, json=body, **kw)

    def get_json(self, endpoint: str, **params: Any) -> Any:
        return self.get(endpoint, **params).json()

    def post_json(self, endpoint: str, body: Any, token: str | None = None, **kw: Any) -> Any:
        return self.post(endpoint, body, token, **kw).json()

    @staticmethod
    def errcode(response: requests.Response) -> Any:
        return response.json().get("errcode")

    def create(
        self, name: str = "工程值班", owner: str = "alice", members: list[str] | None = None, **extra: Any
    ) -> str:
        """Create a chat over the API (asserting it worked) and return its chatid."""
        reply = self.post_json(
            "/chat/create", {"name": name, "owner": owner, "useridlist": members or ["alice", "bob"], **extra}
        )
        assert reply["errcode"] == 0, reply
        return reply["chatid"]

    def admin(self, name: str, body: Any = None, **kw: Any) -> requests.Response:
        """``/__emulator__/NAME``: GET without a body, POST with one."""
        if body is None:
            return self.http.get(self.base + "/__emulator__/" + name, **kw)
        return self.http.post(self.base + "/__emulator__/" + name, json=body, **kw)

    def stored_chats(self) -> dict[str, Any]:
        return self.admin("chats").json()["chats"]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RawApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Each generation's write paths, as dingtalk-api.md spells them (tests state them; they never import the code's).
CREATE = {"legacy": "/chat/create", "v1": "/v1.0/im/group/create"}
UPDATE = {"legacy": "/chat/update", "v1": "/v1.0/im/group/update"}
ROBOT_SEND = "/v1.0/robot/groupMessages/send"
CONVERT = "/v1.0/im/chat/{chatId}/convertToOpenConversationId"
#: The six chat settings as both generations' wire names them (legacy: top-level; v1.0: in managementOptions).
SETTINGS = (
    "chatBannedType",
    "searchable",
    "validationType",
    "mentionAllAuthority",
    "managementType",
    "showHistoryType",
)

#: The contact API's paths, as dingtalk-api.md spells them (tests state them; they never import the code's).
LISTID = "/topapi/user/listid"
LISTSUBID = "/topapi/v2/department/listsubid"
DEPT_GET = "/topapi/v2/department/get"
SIMPLELIST = "/topapi/role/simplelist"
ROLE_LIST = "/topapi/role/list"
BY_MOBILE = "/topapi/v2/user/getbymobile"
DIRECTORY = (LISTID, LISTSUBID, DEPT_GET, SIMPLELIST, ROLE_LIST, BY_MOBILE)


class LocalServer:
    """A real HTTP server on 127.0.0.1 for answers the emulator cannot stage (redirects, garbage, drops).

    ``reply(handler)`` returns (status, headers, body bytes), or None to close the connection unanswered;
    every request line is recorded in ``lines``.
    """

    def __init__(self, reply: Callable[[BaseHTTPRequestHandler], tuple[int, dict, bytes] | None]) -> None:
        self.lines: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.lines.append(self.requestline)
                answer = reply(self)
                if answer is None:
                    self.close_connection = True
                    return
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- a fake DingTalk for hostile answers: dribbled, endless, wrongly typed ------------------------------------


class HostileRequest:
    """One request a :class:`FakeDingTalk` got: method, path (no query), query, JSON body (or None), arrival."""

    def __init__(self, method: str, path: str, query: Mapping[str, str], body: Any) -> None:
        self.method, self.path, self.query, self.body = method, path, dict(query), body
        #: ``time.monotonic()`` when it arrived.
        self.at = time.monotonic()

    def __repr__(self) -> str:
        return f"{self.method} {self.path} {self.query or ''} {self.body or ''}".strip()


#: Every path that changes a chat, both generations (a test of "zero writes" counts these).
WRITE_PATHS = (*CREATE.values(), *UPDATE.values(), "/topapi/chat/subadmin/update", ROBOT_SEND)
#: The user/get lookup (``/topapi/v2/user/get``): every id exists.
USER_GET = "/topapi/v2/user/get"


def http_answer(
    body: Any = b"",
    *,
    status: int = 200,
    framing: str = "length",
    length: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Iterator[bytes]:
    """A raw HTTP/1.1 answer, produced lazily: ``body`` is bytes, an object (sent as JSON) or an iterable of byte
    chunks (a generator may sleep between them, or be endless). ``framing``: ``"length"`` (Content-Length:
    ``length``, default the body's size, so bytes or JSON only), ``"chunked"``, or ``"close"`` (the body ends
    where the connection does)."""
    if not isinstance(body, (bytes, Iterable)) or isinstance(body, (str, dict, list)):
        body = json.dumps(body, ensure_ascii=False).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    if framing == "length":
        head += f"Content-Length: {len(body) if length is None else length}\r\n"  # type: ignore[arg-type]
    elif framing == "chunked":
        head += "Transfer-Encoding: chunked\r\n"
    else:
        head += "Connection: close\r\n"
    yield (head + "\r\n").encode()
    chunks = [body] if isinstance(body, bytes) else body
    for chunk in chunks:
        if chunk:
            yield b"%x\r\n%s\r\n" % (len(chunk), chunk) if framing == "chunked" else chunk
    if framing == "chunked":
        yield b"0\r\n\r\n"


def dribble(data: bytes, every: float = 1.0) -> Iterator[bytes]:
    """``data`` one byte at a time, ``every`` seconds apart: what no per-read timeout ever trips on."""
    for i in range(len(data)):
        if i:
            time.sleep(every)
        yield data[i : i + 1]


class FakeDingTalk:
    """A real HTTP server on 127.0.0.1 speaking just enough DingTalk for ``plan`` and ``apply`` (both token calls,
    ``/chat/get`` of the chats in ``chats``, the writes of both generations, the directory calls over
    ``departments``, user/get), unless ``hostile(request)`` returns a raw answer (see :func:`http_answer`,
    :func:`dribble`): then that is written to the socket chunk by chunk, as slowly or as long as it says, and the
    connection closed. ``requests`` records every request; ``sent`` counts the bytes of hostile answers the client
    took before it hung up.
    """

    LEGACY_TOKEN = "legacy-token-SECRET-must-not-print"
    V1_TOKEN = "v1-token-SECRET-must-not-print"

    def __init__(
        self,
        chats: Mapping[str, Mapping[str, Any]] = (),  # type: ignore[assignment]
        *,
        departments: Mapping[int, Sequence[str]] = (),  # type: ignore[assignment]
        hostile: Callable[[HostileRequest], Iterable[bytes] | None] | None = None,
    ) -> None:
        self.chats = {chatid: dict(info) for chatid, info in dict(chats).items()}
        self.departments = {dept: list(ids) for dept, ids in dict(departments).items()}
        self.hostile = hostile
        self.requests: list[HostileRequest] = []
        self.sent = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                request = HostileRequest(self.command, path, dict(parse_qsl(query)), body)
                with outer._lock:
                    outer.requests.append(request)
                answer = outer.hostile(request) if outer.hostile else None
                if answer is None:
                    status, reply = outer._answer(request)
                    answer = http_answer(reply, status=status)
                else:
                    self.close_connection = True
                try:
                    for piece in answer:
                        self.wfile.write(piece)
                        if self.close_connection:
                            with outer._lock:
                                outer.sent += len(piece)
                except OSError:  # the client hung up: what it was meant to do
                    self.close_connection = True

            do_GET = do_POST = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def writes(self) -> list[HostileRequest]:
        """The requests that would have changed a chat."""
        with self._lock:
            return [r for r in self.requests if r.path in WRITE_PATHS]

    def calls(self, path: str) -> list[HostileRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _answer(self, req: HostileRequest) -> tuple[int, Any]:
        ok: dict[str, Any] = {"errcode": 0, "errmsg": "ok"}
        body = req.body if isinstance(req.body, dict) else {}
        if req.path == "/gettoken":
            return 200, {**ok, "access_token": self.LEGACY_TOKEN, "expires_in": 7200}
        if req.path == "/v1.0/oauth2/accessToken":
            return 200, {"accessToken": self.V1_TOKEN, "expireIn": 7200}
        if req.path == "/chat/get":
            info = self.chats.get(req.query.get("chatid", ""))
            return (200, {**ok, "chat_info": info}) if info else (200, {"errcode": 34013, "errmsg": "not found"})
        if req.path in CREATE.values():
            created = {"chatid": "chat-created-1", "openConversationId": "cid-created-1"}
            return 200, {**ok, **created} if req.path == CREATE["legacy"] else {**created, "conversationTag": 2}
        if req.path == UPDATE["legacy"]:
            return 200, ok
        if req.path == UPDATE["v1"]:
            return 200, {"success": True}
        if req.path == USER_GET:
            return 200, {**ok, "result": {"userid": body.get("userid"), "name": "x", "active": True}}
        if req.path == LISTID:
            return 200, {**ok, "result": {"userid_list": self.departments.get(body.get("dept_id"), [])}}
        if req.path == LISTSUBID:
            return 200, {**ok, "result": {"dept_id_list": []}}
        if req.path == DEPT_GET:
            return 200, {**ok, "result": {"dept_id": body.get("dept_id"), "name": f"dept {body.get('dept_id')}"}}
        return 404, {"code": "NotFound", "message": req.path}

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeDingTalk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
