"""The emulator's HTTP face: DingTalk's endpoints (legacy and v1.0 on one port), the fault layer, the admin routes.

A request goes through, in order: the per-IP rule, latency, the "every Nth"
gateway faults, the HTTP method check, then the gates every API family
shares: the token, a missing permission (``Faults.no_permission``), new-app
mode (``new_app``: legacy writes closed), the per-endpoint rate limit and the
monthly quota (metered calls only); then ``fail_chatids`` / ``fail_lookups``,
and finally the store or the org. Each family words its refusals its own way
(``legacy.ChatDialect``, ``legacy.TopapiDialect``, ``v1.V1Dialect``). Then the
meter settles the call (``meter.py``), the call is logged, ``on_request`` and
``before_reply`` run, and the answer is written. Choices where
dingtalk-api.md is silent:

* An unknown path answers HTTP 404 ``{"errcode": 404, ...}`` (logged as a
  call); an unknown ``/v1.0/`` path 404 ``InvalidAction.NotFound``.
* The wrong HTTP method answers 43001 "需要GET请求" / 43002 "需要POST请求"
  (DingTalk's global return codes for exactly that).
* A POST body that is not a UTF-8 JSON object answers 40035 "invalid json"
  on the chat API, 400002 on the contact API, 400 ``parameter.invalid`` on v1.0.
* ``/gettoken`` with a missing, empty or wrong appkey/appsecret answers 40089;
  ``/v1.0/oauth2/accessToken`` 400 ``invalidClientIdOrSecret``.
* ``/topapi`` answers always carry ``request_id``; a missing, unknown or
  expired token there is ``{"errcode": 88, "sub_code": "40014", ...}``.
  Without an org the contact API answers 88 / 60011 (no permission), whose
  ``sub_msg`` says that no org is loaded.
* A dropped create (``Faults.drop_after_create``) is logged with HTTP status 0.
* ``Call.params`` never holds ``access_token``, ``appsecret`` (query) and
  ``appSecret`` (v1.0 body) are logged as ``"<redacted>"``, and the v1.0 token
  header is never logged: the call log is printed by tests and served by
  ``GET calls``.
* The Stream gateway (``stream.py``): ``POST /v1.0/gateway/connections/open``
  passes the per-IP rule, latency and the every-Nth faults like any v1.0
  call (no token, no rate limit, never metered), then
  ``Faults.stream_open_failures``, the body (400 ``parameter.invalid``), the
  credentials (400 ``invalidClientIdOrSecret``, as the v1.0 token call) and
  the WebSocket server (500 ``system.error`` naming ``pip install
  'dingtalk-chat-reconciler[watch]'`` when ``websockets`` is missing). Chat changes (API
  updates, ``change_by_hand``) and org edits made through this class push
  the events of ``events.py``; ``set_chat``, ``seed_chat`` and edits made
  on ``srv.org`` directly push nothing.
"""

from __future__ import annotations

import errno
import json
import math
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import legacy, v1
from .directory import HANDLERS
from .errors import EmulatorSetupError, ListenError
from .events import API_OPERATOR, chat_events, org_events
from .faults import TOKEN_ENDPOINT, FaultInjector, Faults, v1_failure
from .limits import (
    CLOSED_TO_NEW_APPS,
    GATEWAY_OPEN_ENDPOINT,
    PERMISSION_POINTS,
    SETTING_FIELDS,
    STREAM_ACK_TIMEOUT_SECONDS,
    TOKEN_TTL_SECONDS,
)
from .meter import Meter, is_metered
from .org import Org, OrgError
from .store import ApiError, ChatStore, TokenBook
from .stream import GatewayUnavailable, StreamGateway, check_subscriptions
from .wire import Dialect, Reply, Request, as_processed, ban_reply, json_reply, parse_json, v1_error

ADMIN_PREFIX = "/__emulator__/"
#: How often the accept loop looks for stop(): the bound on how long stop() takes.
_POLL_SECONDS = 0.02

#: Body keys worth showing in a one-line request summary.
_SUMMARY_KEYS = ("chatid", "name", "dept_id", "role_id", "mobile", "openConversationId", "msgKey")
#: Body keys whose values never reach the call log.
_SECRET_KEYS = frozenset({"appSecret", "clientSecret"})


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
    #: The call was counted by the monthly meter (a metered endpoint, and the API processed it).
    metered: bool = False
    #: The ``code`` of a v1.0 error answer, else None.
    code: str | None = None

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
        elif self.code is not None:
            outcome = f"HTTP {self.status} {self.code}"
        elif self.endpoint.startswith(v1.PREFIX):
            outcome = f"HTTP {self.status}"
        else:
            outcome = f"HTTP {self.status}, no errcode"
        return f"#{self.seq} {self.method} {self.endpoint}{args} → {outcome} ({self.elapsed_ms:.1f} ms)"


@dataclass(frozen=True)
class _Route:
    method: str
    #: Who words this endpoint's refusals.
    dialect: Dialect
    #: "gettoken", "chat", "directory", "v1_token", "v1" or "stream_open": which runner answers.
    kind: str


_CHAT, _TOPAPI, _V1 = legacy.ChatDialect(), legacy.TopapiDialect(), v1.V1Dialect()

_ROUTES: Mapping[str, _Route] = {
    TOKEN_ENDPOINT: _Route("GET", _CHAT, "gettoken"),
    **{endpoint: _Route(method, _CHAT, "chat") for endpoint, (method, _) in legacy.CHAT_ROUTES.items()},
    **{endpoint: _Route("POST", _TOPAPI, "directory") for endpoint in HANDLERS},
    v1.TOKEN: _Route("POST", _V1, "v1_token"),
    **{endpoint: _Route("POST", _V1, "v1") for endpoint in v1.HANDLERS},
    GATEWAY_OPEN_ENDPOINT: _Route("POST", _V1, "stream_open"),
}

#: WebSocket close codes an endpoint may send (RFC 6455 7.4: not 1004-1006 or 1015; 3000-4999 are free).
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})


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


class EmulatorServer:
    """DingTalk's chat, contact and v1.0 APIs on 127.0.0.1, faithful to dingtalk-api.md, with faults on demand.

    ``users`` (a fixed set of user ids) and ``org`` (a directory, see
    ``load_org``) both restrict which user ids chats accept (60121 otherwise);
    give one or neither. ``qps_limit``, ``latency_ms`` and ``monthly_quota``
    are the starting values of those faults, restored by ``reset()``.
    ``new_app`` plays an app created after the legacy chat writes were closed
    to new apps (they answer 60011). ``robot_code`` is this app's robot (None:
    any non-empty code); ``robot_in_new_chats`` whether that robot is in a
    chat created or seeded from now on. ``on_request`` sees every
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
        *,
        new_app: bool = False,
        robot_code: str | None = None,
        robot_in_new_chats: bool = True,
        monthly_quota: int = -1,
        stream_ack_timeout: float = STREAM_ACK_TIMEOUT_SECONDS,
        events_for_api_changes: bool = True,
    ) -> None:
        if users is not None and org is not None:
            raise EmulatorSetupError("give users or org, not both: an org's users are the known users")
        #: The fixed directory of user ids (``users``), or None; what user/get answers without an org.
        self._users = None if users is None else frozenset(users)
        self._fault_defaults: dict[str, Any] = {
            "qps_limit": qps_limit,
            "latency_ms": latency_ms,
            "monthly_quota": monthly_quota,
            "stream_ack_timeout": stream_ack_timeout,
            "events_for_api_changes": events_for_api_changes,
        }
        self._config_defaults: dict[str, Any] = {
            "new_app": new_app,
            "robot_code": robot_code,
            "robot_in_new_chats": robot_in_new_chats,
        }
        #: Legacy chat writes answer 60011 (an app created after they were closed to new apps).
        self.new_app = new_app
        #: This app's robot code (None: any non-empty robotCode is this app's robot).
        self.robot_code = robot_code
        self.faults = Faults()
        self.faults.update(self._fault_defaults)
        self._address = (host, port)
        self._app_key = app_key
        self._app_secret = app_secret
        self._initial_org = org.copy() if org is not None else None
        self._org = org
        self._store = ChatStore(
            users=self._users,
            data_path=data_path,
            unknown_users=self._unknown_users if users is None else None,
            robot_in_new_chats=robot_in_new_chats,
        )
        self._tokens = TokenBook(token_ttl)
        self._injector = FaultInjector()
        self._meter = Meter()
        self._log_lock = threading.Lock()
        self._calls: list[Call] = []
        self._counters: dict[str, int] = {}
        self._arrivals = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.on_request = on_request
        self.before_reply: Callable[[Call], None] | None = None
        self._store.on_update = self._api_chat_update
        self._org_edit_lock = threading.Lock()
        self._stream_fault_lock = threading.Lock()
        app_id = uuid.uuid5(uuid.NAMESPACE_URL, f"dtchat-emulator:{app_key or 'app'}")
        self._stream = StreamGateway(host, lambda: self.faults, self._meter.count_push, str(app_id))

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
            self._stream.stop()
            httpd.close_all()
            if self._httpd is httpd:
                self._httpd = None

    def stop(self) -> None:
        """Stop serving (from any thread), drop open keep-alive connections and close the socket.

        The Stream gateway's WebSocket server stops too (its connections are closed with 1001).
        """
        self._stream.stop()
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
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

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
        """Forget chats, messages, tokens, calls, counters, the meter and the Stream gateway's tickets, messages
        and acks (open Stream connections stay open); restore faults, config and org as constructed."""
        self._stream.reset()
        self._store.clear()
        self._tokens.clear()
        self._injector.reset()
        self._meter.reset()
        self.faults = Faults()
        self.faults.update(self._fault_defaults)
        self.set_config(**self._config_defaults)
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
        """Every token issued so far answers 42001 (88/40014 on /topapi, 400 InvalidAuthentication on v1.0)."""
        self._tokens.expire_all()

    def meter(self) -> dict[str, Any]:
        """``{"metered": N, "exempt": M, "quota_left": Q or None}``: counted metered calls, processed exempt calls.

        Once the Stream gateway is in use (a ticket issued or an event delivered since the last reset) it also
        has ``"pushes"`` (events on the monthly push quota: chat events, first deliveries only) and
        ``"pushes_exempt"`` (directory events).
        """
        return self._meter.snapshot(self.faults, pushes=self._stream.used)

    # ---- the Stream gateway: events ----------------------------------------------------------

    def push_event(self, event_type: str, data: Mapping[str, Any], *, event_id: str | None = None) -> str:
        """Push any event (``data`` becomes the frame's JSON string); returns its eventId.

        ValueError: an empty event type, ``data`` not a JSON object, or an ``event_id`` already pushed.
        """
        if not isinstance(event_type, str) or not event_type:
            raise ValueError("event_type must be a non-empty string")
        if not isinstance(data, Mapping):
            raise ValueError("data must be a JSON object")
        if event_id is not None and (not isinstance(event_id, str) or not event_id):
            raise ValueError("event_id must be a non-empty string")
        try:
            json.dumps(dict(data))
        except (TypeError, ValueError):
            raise ValueError("data must be JSON-serialisable") from None
        return self._stream.publish(event_type, data, event_id)

    def redeliver(self, event_id: str) -> None:
        """Push an event again with the same eventId and a new messageId (a duplicate if it was acked)."""
        self._stream.redeliver(event_id)

    def close_stream_connections(self, code: int = 1000, reason: str = "", *, abort: bool = False) -> int:
        """Close every Stream connection with this close code (``abort``: drop TCP, no close frame).

        Returns how many were closed; they are gone from ``stream_connections()`` on return. 1000/1001
        make the official Python SDK reconnect at once, other codes after 10 s.
        """
        if type(code) is not int or code not in _SENDABLE_CLOSE_CODES:
            raise ValueError(f"{code!r} is not a close code an endpoint may send (1000-1003, 1007-1014, 3000-4999)")
        return self._stream.close(code, reason, abort=abort)

    def stream_disconnect(self, reason: str = "emulator: please reconnect", grace: float = 5.0) -> int:
        """Send SYSTEM ``disconnect`` to every connection; those still open after ``grace`` s are closed (1000)."""
        if not isinstance(grace, (int, float)) or isinstance(grace, bool) or not 0 <= grace < math.inf:
            raise ValueError("grace must be a number of seconds >= 0")
        return self._stream.disconnect(str(reason), float(grace))

    def stream_ping(self) -> list[str]:
        """Send SYSTEM ``ping`` (``{"opaque": UUID}``) to every connection; returns the messageIds sent."""
        return self._stream.send_system("ping", {"opaque": str(uuid.uuid4())})

    def stream_messages(self) -> list[dict[str, Any]]:
        """Every event pushed since the last reset/clear, in order: ``event_id, event_type, data, born_time,
        exempt, state, acked, deliveries, message_ids, outcomes``."""
        return self._stream.messages()

    def stream_message(self, event_id: str) -> dict[str, Any] | None:
        """One event as in ``stream_messages()``, or None."""
        return self._stream.message(event_id)

    def stream_acks(self) -> list[dict[str, Any]]:
        """Every frame a client sent, in order: ``message_id, event_id, kind (event|system|unknown), code,
        message, data, status, ok, lost, connection, time``."""
        return self._stream.acks()

    def stream_connections(self) -> int:
        """How many Stream clients are connected now."""
        return self._stream.connections()

    def stream_stats(self) -> dict[str, Any]:
        """``running, connections, opened`` (tickets issued), ``accepted, refused`` (WebSocket connections),
        ``messages, queued, unacked``."""
        return self._stream.stats()

    def wait_stream_connections(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` Stream clients are connected; False on timeout."""
        return self._stream.wait_connections(count, timeout)

    def wait_stream_acked(self, event_id: str, timeout: float = 5.0) -> bool:
        """Wait until the event has been acked with 200; False on timeout."""
        return self._stream.wait_acked(event_id, timeout)

    def clear_stream(self) -> None:
        """Forget the gateway's messages (delivered or waiting) and acks; connections stay."""
        self._stream.clear()

    def change_by_hand(
        self,
        chatid: str,
        *,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        name: str | None = None,
        owner: str | None = None,
        quit: str | None = None,
        disband: bool = False,
        settings: Mapping[str, int] | None = None,
        operator: str = "someone",
    ) -> list[str]:
        """A person changes the chat in the DingTalk client: no API rules; pushes the chat events; returns their ids.

        ``quit``: that member leaves by themselves (``chat_quit``, its ``operator``); ``disband``: status 2
        (``chat_disband``); ``settings`` (the six setting fields, 0/1) push nothing. KeyError: no such chat;
        ValueError: a malformed argument.
        """
        adds, removes = _user_ids("add", add), _user_ids("remove", remove)
        for label, value in (("name", name), ("owner", owner), ("quit", quit)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{label} must be a non-empty string")
        if not isinstance(operator, str) or not operator:
            raise ValueError("operator must be a non-empty user id")
        if not isinstance(disband, bool):
            raise ValueError("disband must be true or false")
        new_settings = _settings(settings)

        def change(info: dict[str, Any]) -> None:
            gone = set(removes) | ({quit} if quit else set())
            kept = [m for m in info["useridlist"] if m not in gone]
            kept_set = set(kept)
            info["useridlist"] = kept + [a for a in adds if a not in kept_set]
            if name is not None:
                info["name"] = name
            if owner is not None:
                info["owner"] = owner
            if disband:
                info["status"] = 2
            info.update(new_settings)

        before, after, ocid = self._store.modify(chatid, change)
        return self._publish(chat_events(before, after, ocid, operator, quit=quit))

    def _api_chat_update(self, before: dict[str, Any], after: dict[str, Any], ocid: str) -> None:
        """The store's ``on_update``: an API update's events (``Faults.events_for_api_changes``)."""
        if self.faults.events_for_api_changes:
            self._publish(chat_events(before, after, ocid, API_OPERATOR))

    def _publish(self, events: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
        return [self._stream.publish(event_type, data) for event_type, data in events]

    # ---- v1.0: openConversationId, the app robot, the app's configuration --------------------

    def open_conversation_id(self, chatid: str) -> str | None:
        """The chat's stable ``openConversationId`` (what convert answers; not metered, not logged), or None."""
        return self._store.open_conversation_id(chatid)

    def set_robot(self, chatid: str, present: bool) -> None:
        """Put this app's robot in a chat or take it out, as a person in DingTalk would (KeyError: no such chat)."""
        self._store.set_robot(chatid, present)

    def robot_in(self, chatid: str) -> bool:
        """Is this app's robot in the chat?"""
        return self._store.robot_in(chatid)

    def robot_messages(self) -> list[dict[str, Any]]:
        """Robot messages sent so far: ``chatid, openConversationId, robotCode, msgKey, params, processQueryKey``."""
        return self._store.robot_messages()

    @property
    def robot_in_new_chats(self) -> bool:
        """Whether this app's robot is in a chat created or seeded from now on."""
        return self._store.robot_in_new_chats

    @robot_in_new_chats.setter
    def robot_in_new_chats(self, value: bool) -> None:
        self._store.robot_in_new_chats = bool(value)

    def config(self) -> dict[str, Any]:
        """The app's configuration that tests may change: ``new_app``, ``robot_code``, ``robot_in_new_chats``."""
        return {"new_app": self.new_app, "robot_code": self.robot_code, "robot_in_new_chats": self.robot_in_new_chats}

    def set_config(self, **values: Any) -> None:
        """Change ``new_app`` / ``robot_code`` / ``robot_in_new_chats``; ValueError on an unknown name or bad value."""
        unknown = sorted(set(values) - set(self._config_defaults))
        if unknown:
            raise ValueError(
                f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(self._config_defaults)}"
            )
        for name in ("new_app", "robot_in_new_chats"):
            if name in values and not isinstance(values[name], bool):
                raise ValueError(f"{name} must be true or false")
        code = values.get("robot_code")
        if code is not None and (not isinstance(code, str) or not code):
            raise ValueError("robot_code must be a non-empty string or null")
        for name, value in values.items():
            setattr(self, name, value)

    # ---- the org directory ------------------------------------------------

    @property
    def org(self) -> Org | None:
        """The live org (edits through it take effect at once), or None."""
        return self._org

    def set_org(self, org: Org | None) -> None:
        """Serve another org from now on (None: the contact API answers 88/60011, chats accept any id).

        Replacing one org by another pushes the directory events of the difference; loading or dropping an org
        pushes none.
        """
        with self._org_edit_lock:
            old, self._org = self._org, org
            events = [] if old is None or org is None else org_events(old.to_data(), org.to_data())
        self._publish(events)

    def _live_org(self) -> Org:
        if self._org is None:
            raise LookupError("the emulator has no org; construct it with org=load_org(path)")
        return self._org

    def _edit_org(self, edit: Callable[[Org], None]) -> list[str]:
        """Apply one edit to the live org and push the directory events it causes; returns their eventIds."""
        with self._org_edit_lock:
            org = self._live_org()
            before = org.to_data()
            edit(org)
            events = org_events(before, org.to_data())
        return self._publish(events)

    def move_user(self, userid: str, departments: Iterable[int]) -> None:
        """Put a user in exactly these departments (KeyError: no such user; OrgError: bad department).

        Pushes ``user_modify_org`` (``diffInfo`` ``deptIdList``) when they changed.
        """
        self._edit_org(lambda org: org.move_user(userid, departments))

    def remove_user(self, userid: str) -> None:
        """The user leaves the company: gone from departments, roles, mobile lookup; 60121 for chats.

        Pushes ``user_leave_org``.
        """
        self._edit_org(lambda org: org.remove_user(userid))

    def add_user(
        self,
        userid: str,
        departments: Iterable[int],
        name: str | None = None,
        mobile: str | None = None,
        active: bool = True,
    ) -> None:
        """A new hire appears in the directory (pushes ``user_add_org``)."""
        self._edit_org(lambda org: org.add_user(userid, departments, name=name, mobile=mobile, active=active))

    def set_active(self, userid: str, active: bool) -> None:
        """Joined (True) or invited-but-not-joined (False); becoming active pushes ``user_active_org``."""
        self._edit_org(lambda org: org.set_active(userid, active))

    def set_role_holders(self, role_id: int, holders: Iterable[str]) -> None:
        """Replace who holds a role (pushes ``label_user_change``, action ``add`` / ``remove``)."""
        self._edit_org(lambda org: org.set_role_holders(role_id, holders))

    def _unknown_users(self, userids: Iterable[str]) -> list[str]:
        org = self._org
        return [] if org is None else org.unknown_users(userids)

    # ---- request handling -------------------------------------------------

    def handle_api(
        self, method: str, path: str, query: dict[str, str], raw: bytes, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """Answer one API request, meter it, log it, and run the request hooks (``headers``: lower-case names)."""
        started = time.perf_counter()
        endpoint, path_params = v1.endpoint_of(path) if path.startswith(v1.PREFIX) else (path, {})
        with self._log_lock:
            self._counters[endpoint] = self._counters.get(endpoint, 0) + 1
            self._arrivals += 1
            seq = self._arrivals
        body = parse_json(raw) if method == "POST" else None
        req = Request(method, endpoint, query, headers or {}, body, self.faults, path_params)
        reply = self._answer(req)
        counted = self._meter.settle(endpoint, reply.processed, req.faults, req.reserved)
        params = {k: ("<redacted>" if k == "appsecret" else v) for k, v in query.items() if k != "access_token"}
        call = Call(
            seq=seq,
            method=method,
            endpoint=endpoint,
            params={**params, **path_params},
            body=_loggable(body),
            status=0 if reply.drop else reply.status,
            errcode=reply.errcode,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
            sub_code=reply.sub_code,
            metered=counted,
            code=reply.code,
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
                return reply.dropped()
        return reply

    def _answer(self, req: Request) -> Reply:
        """Route, then the gateway (IP rule, latency, every-Nth faults), the method, the gates, the runner."""
        route = _ROUTES.get(req.endpoint)
        if route is None:
            if req.endpoint.startswith(v1.PREFIX):
                return v1.not_found(req)
            return json_reply({"errcode": 404, "errmsg": f"no such endpoint: {req.endpoint}"}, status=404)
        faults = req.faults
        banned = self._injector.ip_ban(faults)
        if banned is not None:
            return ban_reply(math.ceil(banned), faults.ip_ban_html)
        latency = faults.latency_for(req.endpoint)
        if latency > 0:
            time.sleep(latency / 1000.0)
        fault = self._injector.gateway_fault(faults, req.endpoint)
        if fault is not None:
            return route.dialect.gateway_fault(fault, req)
        if req.method != route.method:
            return route.dialect.wrong_method(route.method, req)
        if route.kind == "gettoken":
            return legacy.gettoken(self._tokens, req, self._credentials_ok)
        if route.kind == "v1_token":
            return v1.issue_token(self._tokens, req, self._credentials_ok)
        if route.kind == "stream_open":
            return self._stream_open(req)
        refused = self._gates(route.dialect, req)
        if refused is not None:
            return refused
        take_drop = lambda: self._injector.take_drop(faults)  # noqa: E731
        if route.kind == "chat":
            return legacy.run_chat(self._store, req, take_drop)
        if route.kind == "directory":
            return legacy.run_directory(self._org, req, self._users)
        return v1.run(self._store, req, self.robot_code, take_drop)

    def _gates(self, dialect: Dialect, req: Request) -> Reply | None:
        """The refusals every API family shares, in order: token, permission, new-app mode, rate, quota."""
        faults = req.faults
        token = dialect.token(req)
        try:
            self._tokens.check(token, faults.token_uses)
        except ApiError as err:
            return dialect.token_error(err, token is None, req)
        if req.endpoint in faults.no_permission:
            return dialect.no_permission(PERMISSION_POINTS.get(req.endpoint, "qyapi_chat_manage"), req)
        if self.new_app and req.endpoint in CLOSED_TO_NEW_APPS:
            return dialect.closed_to_new_apps(req)
        if self._injector.over_rate(faults, req.endpoint):
            return dialect.rate_limited(req)
        if is_metered(req.endpoint):
            req.reserved = self._meter.reserve(faults)
            if req.reserved is False:
                return dialect.quota_used_up(req)
        return None

    def _stream_open(self, req: Request) -> Reply:
        """``POST /v1.0/gateway/connections/open``: a ticket for the WebSocket endpoint (see ``stream.py``)."""
        with self._stream_fault_lock:
            failing = req.faults.stream_open_failures > 0
            if failing:
                req.faults.stream_open_failures -= 1
        if failing:
            status, code = v1_failure(req.faults.stream_open_error)
            return v1_error(status, code, "injected failure of connections/open (Faults.stream_open_failures)")
        body = req.body
        if not isinstance(body, dict):
            return as_processed(v1_error(400, "parameter.invalid", "the body must be a JSON object"))
        key, secret = body.get("clientId"), body.get("clientSecret")
        if not isinstance(key, str) or not isinstance(secret, str) or not self._credentials_ok(key, secret):
            return as_processed(v1_error(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret"))
        subscriptions = check_subscriptions(body.get("subscriptions"))
        if subscriptions is None:
            message = "subscriptions must be a list of {type: EVENT|CALLBACK|SYSTEM, topic}"
            return as_processed(v1_error(400, "parameter.invalid", message))
        try:
            port = self._stream.ensure_started()
        except GatewayUnavailable as exc:
            return v1_error(500, "system.error", str(exc))
        except OSError as exc:
            return v1_error(500, "system.error", f"the Stream gateway cannot listen: {exc}")
        ticket = self._stream.issue_ticket(subscriptions, key)
        endpoint = f"ws://{self._ws_host(req)}:{port}/connect"
        return as_processed(json_reply({"endpoint": endpoint, "ticket": ticket}))

    def _ws_host(self, req: Request) -> str:
        """The host for the WebSocket endpoint: the bound address, or the Host header's when bound to all."""
        host = str(self._address[0])
        if host in ("", "0.0.0.0", "::"):
            asked = req.headers.get("host", "")
            host = urlsplit("//" + asked).hostname or "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    def _credentials_ok(self, key: str, secret: str) -> bool:
        return legacy.credentials_match(key, secret, self._app_key, self._app_secret)

    def handle_admin(self, method: str, name: str, raw: bytes) -> Reply:
        """The ``/__emulator__/`` routes: inspection and control for people and out-of-process benches."""
        if (method, name) == ("GET", "calls"):
            return json_reply({"calls": [asdict(c) for c in self.calls]})
        if (method, name) == ("GET", "counters"):
            return json_reply({"counters": self.counters()})
        if (method, name) == ("GET", "chats"):
            return json_reply({"chats": self._store.chats()})
        if (method, name) == ("GET", "faults"):
            return json_reply({"faults": self.faults.to_json()})
        if (method, name) == ("GET", "org"):
            return json_reply({"org": None if self._org is None else self._org.to_data()})
        if (method, name) == ("GET", "meter"):
            return json_reply({"meter": self.meter()})
        if (method, name) == ("GET", "config"):
            return json_reply({"config": self.config()})
        if (method, name) == ("GET", "robot-messages"):
            return json_reply({"messages": self.robot_messages()})
        if (method, name) == ("POST", "config"):
            return self._admin_config(parse_json(raw))
        if (method, name) == ("POST", "robot"):
            return self._admin_robot(parse_json(raw))
        if (method, name) == ("POST", "reset"):
            self.reset()
            return json_reply({"ok": True})
        if (method, name) == ("POST", "expire-tokens"):
            self.expire_tokens()
            return json_reply({"ok": True})
        if (method, name) == ("POST", "faults"):
            values = parse_json(raw)
            if not isinstance(values, dict):
                return json_reply({"ok": False, "error": "expected a JSON object of fault fields"}, status=400)
            try:
                self.faults.update(values)
            except ValueError as exc:
                return json_reply({"ok": False, "error": str(exc)}, status=400)
            return json_reply({"ok": True, "faults": self.faults.to_json()})
        if method == "POST" and (name == "org" or name in _ORG_EDITS):
            return self._admin_org(name, parse_json(raw))
        if name == "hand" or name == "stream" or name.startswith("stream/"):
            return self._admin_stream(method, name, parse_json(raw) if raw else {})
        return json_reply({"ok": False, "error": f"no admin route {method} {ADMIN_PREFIX}{name}"}, status=404)

    def _admin_stream(self, method: str, name: str, values: Any) -> Reply:
        """``POST hand`` and the ``stream`` routes (see docs/emulator.md, "The Stream gateway")."""
        if (method, name) == ("GET", "stream"):
            return json_reply({"stream": self.stream_stats()})
        if (method, name) == ("GET", "stream/messages"):
            return json_reply({"messages": self.stream_messages()})
        if (method, name) == ("GET", "stream/acks"):
            return json_reply({"acks": self.stream_acks()})
        if method != "POST" or name not in _STREAM_ROUTES:
            return json_reply({"ok": False, "error": f"no admin route {method} {ADMIN_PREFIX}{name}"}, status=404)
        required, optional = _STREAM_ROUTES[name]
        if (
            not isinstance(values, dict)
            or any(k not in values for k in required)
            or set(values) - {*required, *optional}
        ):
            fields = ", ".join([*required, *(f"{k}?" for k in optional)])
            return json_reply({"ok": False, "error": f"{name}: expected a JSON object {{{fields}}}"}, status=400)
        try:
            if name == "hand":
                chatid = values.pop("chatid")
                if not isinstance(chatid, str):
                    raise ValueError("chatid must be a string")
                return json_reply({"ok": True, "events": self.change_by_hand(chatid, **values)})
            if name == "stream/push":
                return json_reply({"ok": True, "event_id": self.push_event(**values)})
            if name == "stream/redeliver":
                self.redeliver(str(values["event_id"]))
                return json_reply({"ok": True})
            if name == "stream/close":
                return json_reply({"ok": True, "closed": self.close_stream_connections(**values)})
            if name == "stream/disconnect":
                return json_reply({"ok": True, "sent": self.stream_disconnect(**values)})
            if name == "stream/ping":
                return json_reply({"ok": True, "message_ids": self.stream_ping()})
            self.clear_stream()
            return json_reply({"ok": True})
        except KeyError as exc:
            return json_reply({"ok": False, "error": f"no such chat or event: {exc.args[0]}"}, status=404)
        except (TypeError, ValueError) as exc:
            return json_reply({"ok": False, "error": str(exc)}, status=400)

    def _admin_config(self, values: Any) -> Reply:
        """``POST config {new_app?, robot_code?, robot_in_new_chats?}``."""
        if not isinstance(values, dict):
            return json_reply({"ok": False, "error": "expected a JSON object of config fields"}, status=400)
        try:
            self.set_config(**values)
        except ValueError as exc:
            return json_reply({"ok": False, "error": str(exc)}, status=400)
        return json_reply({"ok": True, "config": self.config()})

    def _admin_robot(self, values: Any) -> Reply:
        """``POST robot {chatid, present}``: 404 for an unknown chat."""
        if (
            not isinstance(values, dict)
            or set(values) != {"chatid", "present"}
            or not isinstance(values["present"], bool)
        ):
            return json_reply({"ok": False, "error": "expected {chatid, present: true|false}"}, status=400)
        try:
            self.set_robot(str(values["chatid"]), values["present"])
        except KeyError:
            return json_reply({"ok": False, "error": f"no such chat: {values['chatid']}"}, status=404)
        return json_reply({"ok": True})

    def _admin_org(self, name: str, values: Any) -> Reply:
        """``POST org`` (replace the whole org) and ``POST org/<edit>`` (one change to the live org)."""
        if not isinstance(values, dict):
            return json_reply({"ok": False, "error": "expected a JSON object"}, status=400)
        try:
            if name == "org":
                self.set_org(Org.from_data(values))
                return json_reply({"ok": True})
            method, required, optional = _ORG_EDITS[name]
            missing = [k for k in required if k not in values]
            unknown = sorted(set(values) - set(required) - set(optional))
            if missing or unknown:
                raise OrgError(
                    f"{name}: needs {', '.join(required)}" + (f"; may have {', '.join(optional)}" if optional else "")
                )
            getattr(self, method)(**values)
        except LookupError as exc:  # KeyError: no such user/role; LookupError: no org
            text = f"no such user or role: {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
            return json_reply({"ok": False, "error": text}, status=404)
        except (OrgError, TypeError, ValueError) as exc:
            return json_reply({"ok": False, "error": str(exc)}, status=400)
        return json_reply({"ok": True})


#: POST admin route -> (required fields, optional fields) of the Stream gateway's controls.
_STREAM_ROUTES: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hand": (("chatid",), ("add", "remove", "name", "owner", "quit", "disband", "settings", "operator")),
    "stream/push": (("event_type", "data"), ("event_id",)),
    "stream/redeliver": (("event_id",), ()),
    "stream/close": ((), ("code", "reason", "abort")),
    "stream/disconnect": ((), ("reason", "grace")),
    "stream/ping": ((), ()),
    "stream/clear": ((), ()),
}


def _user_ids(label: str, value: Any) -> list[str]:
    """A list of user ids (deduplicated, in order) from an iterable that is not a string."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{label} must be a list of user ids")
    ids = list(value)
    if not all(isinstance(u, str) and u for u in ids):
        raise ValueError(f"{label} must be a list of user ids")
    return list(dict.fromkeys(ids))


def _settings(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("settings must map setting fields to 0 or 1")
    unknown = sorted(set(value) - set(SETTING_FIELDS))
    if unknown:
        raise ValueError(f"unknown setting field(s): {', '.join(unknown)}; known: {', '.join(SETTING_FIELDS)}")
    if not all(type(v) is int and v in (0, 1) for v in value.values()):
        raise ValueError("settings must map setting fields to 0 or 1")
    return dict(value)


#: admin route -> (EmulatorServer method, required fields, optional fields); the fields are its arguments.
_ORG_EDITS: Mapping[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "org/move-user": ("move_user", ("userid", "departments"), ()),
    "org/remove-user": ("remove_user", ("userid",), ()),
    "org/add-user": ("add_user", ("userid", "departments"), ("name", "mobile", "active")),
    "org/set-active": ("set_active", ("userid", "active"), ()),
    "org/role-holders": ("set_role_holders", ("role_id", "holders"), ()),
}


def _loggable(body: Any) -> dict | None:
    """The body as the call log keeps it: a dict with secrets redacted, or None."""
    if not isinstance(body, dict):
        return None
    return {k: ("<redacted>" if k in _SECRET_KEYS else v) for k, v in body.items()}


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
            self._send(json_reply({"errcode": 40035, "errmsg": "bad Content-Length"}, status=400))
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        emulator = self.server.emulator
        if parts.path.startswith(ADMIN_PREFIX):
            reply = emulator.handle_admin(method, parts.path[len(ADMIN_PREFIX) :], raw)
        else:
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = emulator.handle_api(method, parts.path, query, raw, headers)
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
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)
