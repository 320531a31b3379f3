"""The emulator's HTTP face: DingTalk's endpoints, the fault layer and the admin routes.

A request goes through, in order: the per-IP rule, latency, the "every Nth"
gateway faults, the HTTP method check, the token, the per-endpoint rate
limit, the monthly quota (chat calls only), ``fail_chatids`` /
``fail_lookups``, and finally the store or the org. Then the call is logged,
``on_request`` and ``before_reply`` run, and the answer is written. Choices
where dingtalk-api.md is silent:

* An unknown path answers HTTP 404 ``{"errcode": 404, ...}`` (logged as a call).
* The wrong HTTP method answers 43001 "需要GET请求" / 43002 "需要POST请求"
  (DingTalk's global return codes for exactly that).
* A POST body that is not a UTF-8 JSON object answers 40035 "invalid json"
  on the chat API and 400002 on the contact API.
* ``/gettoken`` with a missing, empty or wrong appkey/appsecret answers 40089.
* ``/topapi`` answers always carry ``request_id``; a missing, unknown or
  expired token there is ``{"errcode": 88, "sub_code": "40014", ...}``.
  Without an org the contact API answers 88 / 60011 (no permission), whose
  ``sub_msg`` says that no org is loaded.
* A dropped create (``Faults.drop_after_create``) is logged with HTTP status 0.
* ``Call.params`` never holds ``access_token``, and ``appsecret`` is logged as
  ``"<redacted>"``: the call log is printed by tests and served by ``GET calls``.
"""

from __future__ import annotations

import errno
import hmac
import json
import math
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .directory import ERRMSGS, HANDLERS, bad_token, lookup_keys, permission_denied
from .errors import EmulatorSetupError, ListenError
from .faults import BUSY, HTTP500, IP_BAN, TOKEN_ENDPOINT, FaultInjector, Faults, lookup_failure
from .limits import TOKEN_TTL_SECONDS
from .org import Org, OrgError
from .store import ApiError, ChatStore, TokenBook

ADMIN_PREFIX = "/__emulator__/"
#: How often the accept loop looks for stop(): the bound on how long stop() takes.
_POLL_SECONDS = 0.02

_Payload = Mapping[str, Any]

#: Body keys worth showing in a one-line request summary.
_SUMMARY_KEYS = ("chatid", "name", "dept_id", "role_id", "mobile")


@dataclass(frozen=True)
class Call:
    """One API request as the emulator saw it (never the access token or the app secret)."""

    seq: int
    method: str
    endpoint: str
    #: Query parameters, without ``access_token``.
    params: dict
    #: The parsed JSON body, or None (GET, or not JSON).
    body: dict | None
    status: int
    errcode: int | None
    elapsed_ms: float
    #: The ``sub_code`` of an errcode-88 answer (``/topapi``), else None.
    sub_code: str | None = None

    def describe(self) -> str:
        """One line for a request log (``dtchat emulator -v``): what was asked and how it was answered."""
        shown = dict(self.params)
        if self.body:
            shown.update({k: self.body[k] for k in _SUMMARY_KEYS if k in self.body})
            for key in ("useridlist", "add_useridlist", "del_useridlist"):
                if isinstance(self.body.get(key), list):
                    shown[key] = f"[{len(self.body[key])} ids]"
        args = "".join(f" {k}={v}" for k, v in shown.items())
        if self.status == 0:
            outcome = "dropped, no answer"
        elif self.errcode is not None:
            outcome = f"errcode {self.errcode}" + (f" sub_code {self.sub_code}" if self.sub_code else "")
        else:
            outcome = f"HTTP {self.status}, no errcode"
        return f"#{self.seq} {self.method} {self.endpoint}{args} → {outcome} ({self.elapsed_ms:.1f} ms)"


@dataclass(frozen=True)
class _Route:
    method: str
    #: The store call that answers it; None for /gettoken and the directory, answered by the server.
    handler: Callable[[ChatStore, _Payload], dict] | None
    #: A contact-API (``/topapi``) endpoint: answered from the org, never metered.
    directory: bool = False


_ROUTES: Mapping[str, _Route] = {
    TOKEN_ENDPOINT: _Route("GET", None),
    "/chat/create": _Route("POST", ChatStore.create),
    "/chat/update": _Route("POST", ChatStore.update),
    "/chat/get": _Route("GET", ChatStore.get),
    "/chat/send": _Route("POST", ChatStore.send),
    "/chat/getReadList": _Route("GET", ChatStore.read_list),
    **{endpoint: _Route("POST", None, directory=True) for endpoint in HANDLERS},
}

_HTML_500 = (
    b"<html><head><title>500 Internal Server Error</title></head><body><h1>500 Internal Server Error</h1></body></html>"
)
_HTML_BAN = (
    "<html><head><title>访问被拒绝</title></head><body><h1>Access denied</h1><p>wait {wait} seconds</p></body></html>"
)


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json;charset=utf-8"
    errcode: int | None = None
    #: Close the connection without answering at all.
    drop: bool = False
    sub_code: str | None = None


def _json(obj: Any, status: int = 200) -> _Reply:
    errcode = obj.get("errcode") if isinstance(obj, dict) else None
    sub_code = obj.get("sub_code") if isinstance(obj, dict) else None
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _Reply(status, body, errcode=int(errcode) if errcode is not None else None, sub_code=sub_code)


def _api_error(errcode: int, errmsg: str) -> _Reply:
    return _json({"errcode": errcode, "errmsg": errmsg})


def _parse_json(raw: bytes) -> Any:
    """The decoded body, or None when it is not JSON (the caller decides what that means)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _listen_problem(exc: OSError) -> str:
    """Why binding failed, in words that say what to do."""
    if isinstance(exc, socket.gaierror):
        return "unknown host; use --host 127.0.0.1"
    if exc.errno == errno.EADDRINUSE:
        return "the port is already in use; pick another with --port"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges); pick another with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address is not on this machine; use --host 127.0.0.1"
    return exc.strerror or str(exc)


def _sub_error(errcode: int, sub_code: str, endpoint: str) -> dict[str, Any]:
    """An errcode-88-style answer body for an injected ``"88:SUB"`` lookup failure."""
    if sub_code == "60011":
        return permission_denied(endpoint)
    if sub_code == "40014":
        return bad_token()
    sub_msg = "injected failure"
    return {
        "errcode": errcode,
        "errmsg": f"ding talk error[subcode={sub_code},submsg={sub_msg}]",
        "sub_code": sub_code,
        "sub_msg": sub_msg,
    }


class EmulatorServer:
    """DingTalk's chat and contact APIs on 127.0.0.1, faithful to dingtalk-api.md, with faults on demand.

    ``users`` (a fixed set of user ids) and ``org`` (a directory, see
    ``load_org``) both restrict which user ids chats accept (60121 otherwise);
    give one or neither. ``qps_limit`` and ``latency_ms`` are the starting
    values of those faults, restored by ``reset()``. ``on_request`` sees every
    API call once it is answered (for a request log); ``before_reply``, an
    attribute tests may set at any time, runs after the store has committed a
    request and before its answer is written: a crash test kills its client
    there. If ``before_reply`` raises, the connection is closed unanswered.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Iterable[str] | None = None,
        data_path: str | None = None,
        app_key: str | None = None,
        app_secret: str | None = None,
        token_ttl: float = TOKEN_TTL_SECONDS,
        org: Org | None = None,
        qps_limit: float = 0,
        latency_ms: float = 0,
        on_request: Callable[[Call], None] | None = None,
    ) -> None:
        if users is not None and org is not None:
            raise EmulatorSetupError("give users or org, not both: an org's users are the known users")
        self._fault_defaults = {"qps_limit": qps_limit, "latency_ms": latency_ms}
        self.faults = Faults()
        self.faults.update(self._fault_defaults)
        self._address = (host, port)
        self._app_key = app_key
        self._app_secret = app_secret
        self._initial_org = org.copy() if org is not None else None
        self._org = org
        self._store = ChatStore(
            users=users, data_path=data_path, unknown_users=self._unknown_users if users is None else None
        )
        self._tokens = TokenBook(token_ttl)
        self._injector = FaultInjector()
        self._log_lock = threading.Lock()
        self._calls: list[Call] = []
        self._counters: dict[str, int] = {}
        self._arrivals = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.on_request = on_request
        self.before_reply: Callable[[Call], None] | None = None

    # ---- lifecycle -------------------------------------------------------

    def _bind(self) -> _HTTPServer:
        if self._httpd is None:
            try:
                self._httpd = _HTTPServer(self._address, _Handler, self)
            except OSError as exc:
                host, port = self._address
                error = ListenError(f"cannot listen on {host}:{port}: {_listen_problem(exc)}")
                error.errno = exc.errno
                raise error from None
        return self._httpd

    def start(self) -> EmulatorServer:
        """Bind and serve in a daemon thread (ListenError when the address is unusable)."""
        httpd = self._bind()
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(_POLL_SECONDS,), name="dtchat-emulator", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind and serve in this thread until Ctrl-C."""
        httpd = self._bind()
        try:
            httpd.serve_forever(_POLL_SECONDS)
        except KeyboardInterrupt:
            pass
        finally:
            httpd.close_all()
            if self._httpd is httpd:
                self._httpd = None

    def stop(self) -> None:
        """Stop serving (from any thread), drop open keep-alive connections and close the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()  # also fine before the accept loop starts: it then exits at once
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        httpd.close_all()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` (only once bound)."""
        if self._httpd is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ---- inspection and control -----------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every API request so far, in arrival order (they are logged as they finish)."""
        with self._log_lock:
            return sorted(self._calls, key=lambda c: c.seq)

    def calls_to(self, endpoint: str) -> list[Call]:
        return [c for c in self.calls if c.endpoint == endpoint]

    def counters(self) -> dict[str, int]:
        with self._log_lock:
            return dict(self._counters)

    def reset(self) -> None:
        """Forget chats, messages, tokens, calls and counters; restore the faults and the org as constructed."""
        self._store.clear()
        self._tokens.clear()
        self._injector.reset()
        self.faults = Faults()
        self.faults.update(self._fault_defaults)
        self._org = self._initial_org.copy() if self._initial_org is not None else None
        with self._log_lock:
            self._calls.clear()
            self._counters.clear()
            self._arrivals = 0

    def seed_chat(
        self, name: str, owner: str, members: Iterable[str], chatid: str | None = None, **api_settings: int
    ) -> str:
        """Insert a chat directly (no API rules, not logged); returns its chatid."""
        return self._store.seed(name, owner, members, chatid, api_settings)

    def chat(self, chatid: str) -> dict | None:
        """The stored ``chat_info`` (a copy), as ``/chat/get`` would return it."""
        return self._store.chat(chatid)

    def chats(self) -> dict[str, dict]:
        """Copies of every stored chat, by chatid."""
        return self._store.chats()

    def set_chat(self, chatid: str, /, **fields: Any) -> None:
        """Change a stored chat as a person in DingTalk would (no rules, not logged)."""
        self._store.set_chat(chatid, fields)

    def expire_tokens(self) -> None:
        """Every token issued so far answers 42001 (88/40014 on /topapi) from now on."""
        self._tokens.expire_all()

    # ---- the org directory ------------------------------------------------

    @property
    def org(self) -> Org | None:
        """The live org (edits through it take effect at once), or None."""
        return self._org

    def set_org(self, org: Org | None) -> None:
        """Serve another org from now on (None: the contact API answers 88/60011, chats accept any id)."""
        self._org = org

    def _live_org(self) -> Org:
        if self._org is None:
            raise LookupError("the emulator has no org; construct it with org=load_org(path)")
        return self._org

    def move_user(self, userid: str, departments: Iterable[int]) -> None:
        """Put a user in exactly these departments (KeyError: no such user; OrgError: bad department)."""
        self._live_org().move_user(userid, departments)

    def remove_user(self, userid: str) -> None:
        """The user leaves the company: gone from departments, roles, mobile lookup; 60121 for chats."""
        self._live_org().remove_user(userid)

    def add_user(
        self,
        userid: str,
        departments: Iterable[int],
        name: str | None = None,
        mobile: str | None = None,
        active: bool = True,
    ) -> None:
        """A new hire appears in the directory."""
        self._live_org().add_user(userid, departments, name=name, mobile=mobile, active=active)

    def set_role_holders(self, role_id: int, holders: Iterable[str]) -> None:
        """Replace who holds a role."""
        self._live_org().set_role_holders(role_id, holders)

    def _unknown_users(self, userids: Iterable[str]) -> list[str]:
        org = self._org
        return [] if org is None else org.unknown_users(userids)

    # ---- request handling -------------------------------------------------

    def handle_api(self, method: str, endpoint: str, query: dict[str, str], raw: bytes) -> _Reply:
        """Answer one API request, log it, and run the request hooks."""
        started = time.perf_counter()
        with self._log_lock:
            self._counters[endpoint] = self._counters.get(endpoint, 0) + 1
            self._arrivals += 1
            seq = self._arrivals
        body = _parse_json(raw) if method == "POST" else None
        reply = self._answer(method, endpoint, query, body)
        params = {k: ("<redacted>" if k == "appsecret" else v) for k, v in query.items() if k != "access_token"}
        call = Call(
            seq=seq,
            method=method,
            endpoint=endpoint,
            params=params,
            body=body if isinstance(body, dict) else None,
            status=0 if reply.drop else reply.status,
            errcode=reply.errcode,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
            sub_code=reply.sub_code,
        )
        with self._log_lock:
            self._calls.append(call)
        on_request = self.on_request
        if on_request is not None:
            try:
                on_request(call)
            except Exception:  # a broken log printer must not break the API
                pass
        hook = self.before_reply
        if hook is not None:
            try:
                hook(call)
            except Exception:
                return _Reply(0, b"", errcode=reply.errcode, drop=True)
        return reply

    def _answer(self, method: str, endpoint: str, query: dict[str, str], body: Any) -> _Reply:
        route = _ROUTES.get(endpoint)
        if route is None:
            return _json({"errcode": 404, "errmsg": f"no such endpoint: {endpoint}"}, status=404)
        faults = self.faults
        banned = self._injector.ip_ban(faults)
        if banned is not None:
            return _ban_reply(math.ceil(banned), faults.ip_ban_html)
        latency = faults.latency_for(endpoint)
        if latency > 0:
            time.sleep(latency / 1000.0)
        fault = self._injector.gateway_fault(faults, endpoint)
        if fault is not None:
            return _fault_reply(fault, faults)
        if route.directory:
            return self._answer_directory(method, endpoint, query, body, faults)
        try:
            if method != route.method:
                raise ApiError(43001, "需要GET请求") if route.method == "GET" else ApiError(43002, "需要POST请求")
            if route.handler is None:
                return _json({"errcode": 0, "errmsg": "ok", **self._issue_token(query)})
            self._tokens.check(query.get("access_token"), faults.token_uses)
            if self._injector.over_rate(faults, endpoint):
                raise ApiError(90018, "接口调用超过限制: this app exceeded its per-API frequency limit")
            if not self._injector.take_quota(faults):
                raise ApiError(90020, "当月API调用量已用完: the org's monthly API quota is used up")
            if route.method == "POST" and not isinstance(body, dict):
                raise ApiError(40035, "invalid json")
            payload = body if route.method == "POST" else query
            failing = faults.fail_chatids.get(str(payload.get("chatid") or query.get("chatid") or ""))
            if failing is not None:
                raise ApiError(failing, "injected failure for this chatid")
            result = route.handler(self._store, payload)
        except ApiError as err:
            return _api_error(err.errcode, err.errmsg)
        if endpoint == "/chat/create" and self._injector.take_drop(faults):
            return _Reply(0, b"", errcode=0, drop=True)
        return _json({"errcode": 0, "errmsg": "ok", **result})

    def _answer_directory(
        self, method: str, endpoint: str, query: Mapping[str, str], body: Any, faults: Faults
    ) -> _Reply:
        """A contact-API request: like a chat call, minus the quota, in /topapi's answer format."""
        handler, with_errmsg = HANDLERS[endpoint]
        try:
            if method != "POST":
                raise ApiError(43002, "需要POST请求")
            try:
                self._tokens.check(query.get("access_token"), faults.token_uses)
            except ApiError:
                return self._topapi(bad_token(), faults)
            if self._injector.over_rate(faults, endpoint):
                raise ApiError(90018, "接口调用超过限制: this app exceeded its per-API frequency limit")
            if not isinstance(body, dict):
                raise ApiError(400002, ERRMSGS[400002])
            for key in lookup_keys(endpoint, body):
                failing = faults.fail_lookups.get(key)
                if failing is not None:
                    code, sub_code = lookup_failure(failing)
                    if sub_code is not None:
                        return self._topapi(_sub_error(code, sub_code, endpoint), faults)
                    raise ApiError(code, ERRMSGS.get(code, f"injected failure for {key}"))
            org = self._org
            if org is None:
                return self._topapi(
                    permission_denied(endpoint, "emulator: no org loaded; start it with an org file"), faults
                )
            result = handler(org, body)
        except ApiError as err:
            return self._topapi({"errcode": err.errcode, "errmsg": err.errmsg}, faults)
        answer = {"errcode": 0, "errmsg": "ok", **result} if with_errmsg else {"errcode": 0, **result}
        return self._topapi(answer, faults)

    @staticmethod
    def _topapi(answer: dict[str, Any], faults: Faults) -> _Reply:
        """Add ``request_id``; print errcode as a string when ``faults.string_errcode`` asks for it."""
        answer = {**answer, "request_id": secrets.token_hex(7)[:13]}
        reply = _json(answer)
        if faults.string_errcode:
            answer["errcode"] = str(answer["errcode"])
            reply = _Reply(
                reply.status,
                json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                errcode=reply.errcode,
                sub_code=reply.sub_code,
            )
        return reply

    def _issue_token(self, query: Mapping[str, str]) -> dict[str, Any]:
        key, secret = query.get("appkey", ""), query.get("appsecret", "")
        if not key or not secret:
            raise ApiError(40089, "invalid appkey or appsecret")
        if self._app_key is not None and not hmac.compare_digest(key.encode(), self._app_key.encode()):
            raise ApiError(40089, "invalid appkey or appsecret")
        if self._app_secret is not None and not hmac.compare_digest(secret.encode(), self._app_secret.encode()):
            raise ApiError(40089, "invalid appkey or appsecret")
        return self._tokens.issue()

    def handle_admin(self, method: str, name: str, raw: bytes) -> _Reply:
        """The ``/__emulator__/`` routes: inspection and control for people and out-of-process benches."""
        if (method, name) == ("GET", "calls"):
            return _json({"calls": [asdict(c) for c in self.calls]})
        if (method, name) == ("GET", "counters"):
            return _json({"counters": self.counters()})
        if (method, name) == ("GET", "chats"):
            return _json({"chats": self._store.chats()})
        if (method, name) == ("GET", "faults"):
            return _json({"faults": self.faults.to_json()})
        if (method, name) == ("GET", "org"):
            return _json({"org": None if self._org is None else self._org.to_data()})
        if (method, name) == ("POST", "reset"):
            self.reset()
            return _json({"ok": True})
        if (method, name) == ("POST", "expire-tokens"):
            self.expire_tokens()
            return _json({"ok": True})
        if (method, name) == ("POST", "faults"):
            values = _parse_json(raw)
            if not isinstance(values, dict):
                return _json({"ok": False, "error": "expected a JSON object of fault fields"}, status=400)
            try:
                self.faults.update(values)
            except ValueError as exc:
                return _json({"ok": False, "error": str(exc)}, status=400)
            return _json({"ok": True, "faults": self.faults.to_json()})
        if method == "POST" and (name == "org" or name in _ORG_EDITS):
            return self._admin_org(name, _parse_json(raw))
        return _json({"ok": False, "error": f"no admin route {method} {ADMIN_PREFIX}{name}"}, status=404)

    def _admin_org(self, name: str, values: Any) -> _Reply:
        """``POST org`` (replace the whole org) and ``POST org/<edit>`` (one change to the live org)."""
        if not isinstance(values, dict):
            return _json({"ok": False, "error": "expected a JSON object"}, status=400)
        try:
            if name == "org":
                self.set_org(Org.from_data(values))
                return _json({"ok": True})
            method, required, optional = _ORG_EDITS[name]
            missing = [k for k in required if k not in values]
            unknown = sorted(set(values) - set(required) - set(optional))
            if missing or unknown:
                raise OrgError(
                    f"{name}: needs {', '.join(required)}" + (f"; may have {', '.join(optional)}" if optional else "")
                )
            getattr(self._live_org(), method)(**values)
        except LookupError as exc:  # KeyError: no such user/role; LookupError: no org
            text = f"no such user or role: {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
            return _json({"ok": False, "error": text}, status=404)
        except (OrgError, TypeError, ValueError) as exc:
            return _json({"ok": False, "error": str(exc)}, status=400)
        return _json({"ok": True})


#: admin route -> (Org method, required fields, optional fields); the fields are the method's arguments.
_ORG_EDITS: Mapping[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "org/move-user": ("move_user", ("userid", "departments"), ()),
    "org/remove-user": ("remove_user", ("userid",), ()),
    "org/add-user": ("add_user", ("userid", "departments"), ("name", "mobile", "active")),
    "org/set-active": ("set_active", ("userid", "active"), ()),
    "org/role-holders": ("set_role_holders", ("role_id", "holders"), ()),
}


def _ban_reply(wait: int, html: bool) -> _Reply:
    """The gateway's IP-ban answer: HTTP 200 with no errcode, as a JSON body or an HTML page."""
    if html:
        return _Reply(200, _HTML_BAN.format(wait=wait).encode("utf-8"), "text/html;charset=utf-8")
    return _json(
        {
            "status": 1111,
            "wait": wait,
            "punish": "deny",
            "message": "Too many requests from your IP; access denied for a while",
        }
    )


def _fault_reply(kind: str, faults: Faults) -> _Reply:
    if kind == IP_BAN:
        return _ban_reply(faults.ban_wait, faults.ip_ban_html)
    if kind == HTTP500:
        return _Reply(500, _HTML_500, "text/html;charset=utf-8")
    assert kind == BUSY
    return _api_error(-1, "系统繁忙")


class _HTTPServer(ThreadingHTTPServer):
    """Threads per connection, a deep accept queue, and a record of open connections so stop() can end them."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out, stopped) is routine here, not a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ValueError, OSError)):
            return
        super().handle_error(request, client_address)

    def close_all(self) -> None:
        """Close the listening socket and end every open connection."""
        self.server_close()
        with self._open_lock:
            open_now = list(self._open)
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """Thin: read the request, hand it to the emulator, write the reply in one buffered send."""

    protocol_version = "HTTP/1.1"
    server_version = "dtchat-emulator"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = -1
    #: Idle keep-alive connections are closed after this many seconds.
    timeout = 120
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the call log is the record, and URLs carry the access token."""

    def _dispatch(self, method: str) -> None:
        raw = self._read_body()
        if raw is None:
            self._send(_json({"errcode": 40035, "errmsg": "bad Content-Length"}, status=400))
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        emulator = self.server.emulator
        if parts.path.startswith(ADMIN_PREFIX):
            reply = emulator.handle_admin(method, parts.path[len(ADMIN_PREFIX) :], raw)
        else:
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            reply = emulator.handle_api(method, parts.path, query, raw)
        if reply.drop:
            self.close_connection = True
            return
        self._send(reply)

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None when the length is unusable."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)
