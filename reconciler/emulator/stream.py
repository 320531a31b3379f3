"""The emulator's Stream gateway: DingTalk's event pushes over a WebSocket, as the official Stream SDK speaks them.

The protocol is the one dingtalk-api.md ("Events (Stream mode)") takes from
the source of the official Python SDK (``dingtalk-stream``):

1. ``POST /v1.0/gateway/connections/open`` (on the emulator's HTTP port, see
   ``server.py``) ``{clientId, clientSecret, subscriptions, ua, localIp}`` →
   ``{"endpoint": "ws://HOST:PORT/connect", "ticket": T}``.
2. A WebSocket to ``endpoint?ticket=T``. The gateway sends JSON text frames
   ``{"specVersion": "1.0", "type": "EVENT" | "SYSTEM", "headers": {...},
   "data": "<JSON string>"}``; the client answers each with an ack text frame
   ``{"code", "headers": {"messageId", "contentType"}, "message", "data"}``.

The WebSocket server (``websockets.sync.server``) starts on its own port the
first time a connection is opened, so the rest of the emulator works
without ``websockets`` installed. Choices where the reference is silent:

* A ticket is a UUID (nothing in it needs URL-encoding, so clients that do
  not encode it work too), valid for one WebSocket connection, with no
  expiry. A missing, unknown or used ticket, or a path other than
  ``/connect``: the handshake succeeds and the socket is closed at once with
  1008 (policy violation), reason ``invalid ticket``.
* Every header value is a string (the Go SDK reads headers as a string map):
  ``time`` and ``eventBornTime`` are milliseconds since the epoch as strings.
* An event goes to one connected client subscribed to it (``{"type":
  "EVENT", "topic": "*"}`` or the event type as topic), round-robin. Events
  pushed while no such client is connected wait, in order, and go out when
  one connects. They are kept until ``reset()`` or ``clear()``.
* **Redelivery.** Each delivery has a fresh ``messageId``; the ``eventId``
  stays. A delivery that gets no ack within ``Faults.stream_ack_timeout``
  seconds (3 s, the reference) is redelivered at once; an ack with a
  ``code`` other than 200, or whose ``data`` is a JSON object with
  ``"status": "LATER"`` (the Java and Go SDKs' "retry later"), is
  redelivered after ``Faults.stream_retry_delay`` seconds. When a connection
  closes, its unacked deliveries are redelivered at once (to another client,
  or to the next one that connects). An ack of 200 for *any* delivery of an
  event settles the event: nothing is redelivered after it, but copies
  already sent stay sent (the client sees duplicates, as with DingTalk).
  ``Faults.stream_max_deliveries`` (0 = no limit) gives a message up after
  that many deliveries (state ``dropped``). ``Faults.stream_drop_acks``
  loses the next N acks (recorded with ``lost``, otherwise ignored).
* ``redeliver(event_id)`` pushes one more copy (a new messageId) whatever the
  event's state: a duplicate when it was already acked.
* SYSTEM frames: ``ping`` (``data`` ``{"opaque": UUID}``; the SDKs echo the
  data in their ack) and ``disconnect`` (``data`` ``{"reason": ...}``; the
  SDK closes the socket and connects again; the gateway closes any
  connection still open ``grace`` seconds later, with 1000). Their acks are
  recorded (kind ``system``), never redelivered.
* ``close(code)`` closes every connection with that close code; 1000/1001
  make the official Python SDK reconnect at once, any other code makes it
  wait 10 s first. ``abort=True`` drops the TCP connection with no close
  frame (a lost network: the client sees 1006).
* ``reset()`` forgets tickets, messages and acks but keeps open connections;
  ``stop()`` closes them (1001) and stops the WebSocket server.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .events import CORP_ID, now_ms
from .faults import Faults
from .limits import push_exempt

CONNECT_PATH = "/connect"
SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
#: The WebSocket close code for a refused ticket.
POLICY_VIOLATION = 1008
INSTALL_HINT = "pip install 'dingtalk-chat-reconciler[watch]' (the dtchat[watch] extra)"
#: How long a close() waits for the client's half of the closing handshake.
CLOSE_TIMEOUT = 2.0
#: The ack's ``data`` status that means "failed, push it again" (Java/Go SDKs).
LATER = "LATER"

_log = logging.getLogger("reconciler.emulator.stream")


class GatewayUnavailable(RuntimeError):
    """The WebSocket server cannot run (``websockets`` is not installed)."""


@dataclass
class _Delivery:
    message_id: str
    connection: str
    sent_ms: int
    #: pending | ok | failed | timeout | closed | superseded | duplicate
    outcome: str = "pending"


@dataclass
class _Message:
    event_id: str
    event_type: str
    data: dict[str, Any]
    born_ms: int
    exempt: bool
    #: queued | in_flight | retrying | idle | dropped
    state: str = "queued"
    acked: bool = False
    deliveries: list[_Delivery] = field(default_factory=list)
    #: monotonic time: the ack deadline (in_flight) or when to push again (retrying).
    due: float | None = None
    #: ``redeliver()`` asked for the queued copy: it goes out even if the event is acked meanwhile.
    forced: bool = False

    def view(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "data": json.loads(json.dumps(self.data)),
            "born_time": self.born_ms,
            "exempt": self.exempt,
            "state": self.state,
            "acked": self.acked,
            "deliveries": len(self.deliveries),
            "message_ids": [d.message_id for d in self.deliveries],
            "outcomes": [d.outcome for d in self.deliveries],
        }


class _Conn:
    """One accepted WebSocket connection and what it subscribed to."""

    def __init__(self, cid: str, ws: Any, subscriptions: list[dict[str, str]], client_id: str) -> None:
        self.id = cid
        self.ws = ws
        self.subscriptions = subscriptions
        self.client_id = client_id
        self.send_lock = threading.Lock()
        #: messageIds of SYSTEM disconnect frames sent to it.
        self.told_to_leave = False

    def wants(self, event_type: str) -> bool:
        return any(s["type"] == "EVENT" and s["topic"] in ("*", event_type) for s in self.subscriptions)

    def send(self, frame: Mapping[str, Any]) -> bool:
        try:
            with self.send_lock:
                self.ws.send(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))
            return True
        except Exception:  # closed or closing: its handler requeues what it had in flight
            return False


def check_subscriptions(value: Any) -> list[dict[str, str]] | None:
    """The ``subscriptions`` of a connections/open body, or None when malformed."""
    if not isinstance(value, list):
        return None
    out = []
    for sub in value:
        if (
            not isinstance(sub, dict)
            or sub.get("type") not in ("EVENT", "CALLBACK", "SYSTEM")
            or not isinstance(sub.get("topic"), str)
            or not sub["topic"]
        ):
            return None
        out.append({"type": sub["type"], "topic": sub["topic"]})
    return out


class StreamGateway:
    """Tickets, connections, messages and acks under one condition variable; a dispatcher thread pushes."""

    def __init__(
        self,
        host: str,
        faults: Callable[[], Faults],
        on_first_delivery: Callable[[bool], None],
        unified_app_id: str,
    ) -> None:
        self._host = host
        self._faults = faults
        self._on_first_delivery = on_first_delivery
        self._app_id = unified_app_id
        self._cond = threading.Condition()
        self._tickets: dict[str, tuple[list[dict[str, str]], str]] = {}
        self._conns: dict[str, _Conn] = {}
        #: WebSocket connections past ``process_request`` whose handler has not yet taken or refused them
        #: (the client may already see itself connected): ``close()`` waits for them.
        self._handshaking: dict[int, Any] = {}
        self._messages: dict[str, _Message] = {}
        self._by_message_id: dict[str, str] = {}
        self._system: dict[str, str] = {}
        self._queue: deque[str] = deque()
        #: in_flight or retrying messages (the ones with a ``due``).
        self._active: set[str] = set()
        self._acks: list[dict[str, Any]] = []
        self._rr = 0
        self._stats = {"opened": 0, "accepted": 0, "refused": 0}
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None
        self._stopping = False
        self._start_lock = threading.Lock()
        #: The gateway was used since the last reset (a ticket issued or an event delivered).
        self.used = False

    # ---- the WebSocket server ---------------------------------------------------------------

    def ensure_started(self) -> int:
        """Start the WebSocket server and the dispatcher if they are not running; returns the port."""
        with self._start_lock:
            if self._server is None:
                try:
                    from websockets.sync.server import serve
                except ImportError:
                    raise GatewayUnavailable(
                        f"the emulator's Stream gateway needs the websockets package: {INSTALL_HINT}"
                    ) from None
                server = serve(
                    self._handle,
                    self._host,
                    0,
                    close_timeout=CLOSE_TIMEOUT,
                    logger=_log,
                    process_request=self._on_handshake,
                )
                with self._cond:
                    self._stopping = False
                self._server = server
                self._server_thread = threading.Thread(
                    target=server.serve_forever, name="dtchat-emulator-stream", daemon=True
                )
                self._server_thread.start()
                self._dispatcher = threading.Thread(
                    target=self._dispatch_loop, name="dtchat-emulator-stream-push", daemon=True
                )
                self._dispatcher.start()
            return int(self._server.socket.getsockname()[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Close every connection (1001), stop the server and the dispatcher."""
        with self._start_lock:
            server, self._server = self._server, None
            if server is None:
                return
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            server.shutdown()
            for thread in (self._server_thread, self._dispatcher):
                if thread is not None:
                    thread.join(timeout=5)
            self._server_thread = self._dispatcher = None
            with self._cond:
                self._conns.clear()
                self._handshaking.clear()

    # ---- connections/open -------------------------------------------------------------------

    def issue_ticket(self, subscriptions: list[dict[str, str]], client_id: str) -> str:
        ticket = str(uuid.uuid4())
        with self._cond:
            self._tickets[ticket] = (subscriptions, client_id)
            self._stats["opened"] += 1
            self.used = True
        return ticket

    def _on_handshake(self, ws: Any, request: Any) -> None:
        """``process_request``: a handshake is under way (its handler registers or refuses it)."""
        with self._cond:
            self._handshaking[id(ws)] = ws
        return None

    def _handle(self, ws: Any) -> None:
        """One WebSocket connection (a websockets handler thread): check the ticket, then read acks."""
        parts = urlsplit(ws.request.path)
        ticket = (parse_qs(parts.query).get("ticket") or [""])[0]
        with self._cond:
            self._handshaking.pop(id(ws), None)
            entry = self._tickets.pop(ticket, None) if parts.path == CONNECT_PATH else None
            if entry is None:
                self._stats["refused"] += 1
            else:
                conn = _Conn(uuid.uuid4().hex, ws, *entry)
                self._conns[conn.id] = conn
                self._stats["accepted"] += 1
            self._cond.notify_all()
        if entry is None:
            ws.close(POLICY_VIOLATION, "invalid ticket")
            return
        try:
            for raw in ws:
                self._on_frame(conn, raw)
        except Exception:  # ConnectionClosedError and friends: the client went away
            pass
        finally:
            with self._cond:
                self._conns.pop(conn.id, None)
                self._requeue_from(conn.id, time.monotonic())
                self._cond.notify_all()

    def _on_frame(self, conn: _Conn, raw: str | bytes) -> None:
        """An ack (or anything else the client sent)."""
        try:
            frame = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            frame = None
        headers = frame.get("headers") if isinstance(frame, dict) else None
        message_id = headers.get("messageId") if isinstance(headers, dict) else None
        code = frame.get("code") if isinstance(frame, dict) else None
        data = frame.get("data") if isinstance(frame, dict) else None
        status = _status_of(data)
        ok = type(code) is int and code == 200 and status != LATER
        with self._cond:
            event_id = self._by_message_id.get(message_id) if isinstance(message_id, str) else None
            kind = "event" if event_id else ("system" if message_id in self._system else "unknown")
            faults = self._faults()
            lost = False
            if faults.stream_drop_acks > 0:
                faults.stream_drop_acks -= 1
                lost = True
            self._acks.append(
                {
                    "message_id": message_id,
                    "event_id": event_id,
                    "kind": kind,
                    "code": code,
                    "message": frame.get("message") if isinstance(frame, dict) else None,
                    "data": data,
                    "status": status,
                    "ok": ok,
                    "lost": lost,
                    "connection": conn.id,
                    "time": now_ms(),
                }
            )
            if not lost and event_id is not None:
                self._settle(self._messages[event_id], str(message_id), ok, time.monotonic(), faults)
            self._cond.notify_all()

    def _settle(self, msg: _Message, message_id: str, ok: bool, now: float, faults: Faults) -> None:
        """An ack for one delivery of ``msg`` (lock held)."""
        delivery = next(d for d in msg.deliveries if d.message_id == message_id)
        current = msg.deliveries[-1] is delivery and msg.state == "in_flight"
        if delivery.outcome in ("pending", "timeout", "closed", "superseded", "duplicate"):
            delivery.outcome = "ok" if ok else "failed"
        if ok:
            msg.acked = True
            if msg.state in ("in_flight", "retrying") or (msg.state == "queued" and not msg.forced):
                msg.state, msg.due = "idle", None  # a queued copy left in the queue is skipped
                self._active.discard(msg.event_id)
        elif current and not msg.acked:
            if self._given_up(msg, faults):
                return
            msg.state, msg.due = "retrying", now + faults.stream_retry_delay

    # ---- pushing ----------------------------------------------------------------------------

    def publish(self, event_type: str, data: Mapping[str, Any], event_id: str | None = None) -> str:
        """Queue an event for delivery; returns its eventId (ValueError: that eventId was already pushed)."""
        eid = event_id or uuid.uuid4().hex
        msg = _Message(eid, event_type, json.loads(json.dumps(dict(data))), now_ms(), push_exempt(event_type))
        with self._cond:
            if eid in self._messages:
                raise ValueError(f"event {eid} was already pushed; redeliver() pushes it again")
            self._messages[eid] = msg
            self._queue.append(eid)
            self._cond.notify_all()
        return eid

    def redeliver(self, event_id: str) -> None:
        """Push one more copy of an event (a new messageId), whatever its state (KeyError: unknown)."""
        with self._cond:
            msg = self._messages[event_id]
            if msg.state == "queued":
                msg.forced = True
                return
            if msg.state == "in_flight" and msg.deliveries:
                msg.deliveries[-1].outcome = "superseded"
            msg.state, msg.due, msg.forced = "queued", None, True
            self._active.discard(event_id)
            self._queue.append(event_id)
            self._cond.notify_all()

    def _given_up(self, msg: _Message, faults: Faults) -> bool:
        """Drop ``msg`` when it has had its ``stream_max_deliveries`` (lock held)."""
        limit = faults.stream_max_deliveries
        if limit > 0 and len(msg.deliveries) >= limit:
            msg.state, msg.due = "dropped", None
            self._active.discard(msg.event_id)
            return True
        return False

    def _requeue(self, msg: _Message, outcome: str, faults: Faults) -> None:
        """The current delivery failed (no ack, closed connection): push again at once (lock held)."""
        if msg.deliveries and msg.deliveries[-1].outcome == "pending":
            msg.deliveries[-1].outcome = outcome
        if self._given_up(msg, faults):
            return
        msg.state, msg.due = "queued", None
        self._active.discard(msg.event_id)
        self._queue.append(msg.event_id)

    def _requeue_from(self, connection: str, now: float) -> None:
        faults = self._faults()
        for eid in sorted(self._active, key=lambda e: self._messages[e].deliveries[-1].sent_ms):
            msg = self._messages[eid]
            if msg.state == "in_flight" and msg.deliveries[-1].connection == connection:
                self._requeue(msg, "closed", faults)

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                faults = self._faults()
                for eid in list(self._active):
                    msg = self._messages[eid]
                    if msg.due is not None and now >= msg.due:
                        self._requeue(msg, "timeout" if msg.state == "in_flight" else "failed", faults)
                sends = self._pick(now, faults)
                if not sends:
                    dues = [m.due for m in (self._messages[e] for e in self._active) if m.due is not None]
                    self._cond.wait(timeout=max(0.0, min(dues) - now) if dues else None)
                    continue
            for conn, frame in sends:
                conn.send(frame)

    def _pick(self, now: float, faults: Faults) -> list[tuple[_Conn, dict[str, Any]]]:
        """Take queued messages that a connected client wants, record their deliveries (lock held)."""
        sends: list[tuple[_Conn, dict[str, Any]]] = []
        waiting: deque[str] = deque()
        conns = list(self._conns.values())
        while self._queue:
            eid = self._queue.popleft()
            msg = self._messages.get(eid)
            if msg is None or msg.state != "queued":
                continue
            wanting = [c for c in conns if c.wants(msg.event_type) and not c.told_to_leave]
            if not wanting:
                waiting.append(eid)
                continue
            conn = wanting[self._rr % len(wanting)]
            self._rr += 1
            message_id = str(uuid.uuid4())
            first = not msg.deliveries
            duplicate = msg.acked
            msg.forced = False
            msg.deliveries.append(_Delivery(message_id, conn.id, now_ms(), "duplicate" if duplicate else "pending"))
            self._by_message_id[message_id] = eid
            if duplicate:
                msg.state = "idle"
            else:
                msg.state, msg.due = "in_flight", now + faults.stream_ack_timeout
                self._active.add(eid)
            if first:
                self.used = True
                self._on_first_delivery(msg.exempt)
            sends.append((conn, self._event_frame(msg, message_id)))
        self._queue = waiting
        return sends

    def _event_frame(self, msg: _Message, message_id: str) -> dict[str, Any]:
        headers = {
            "messageId": message_id,
            "topic": "*",
            "contentType": CONTENT_TYPE,
            "time": str(now_ms()),
            "eventId": msg.event_id,
            "eventType": msg.event_type,
            "eventBornTime": str(msg.born_ms),
            "eventCorpId": CORP_ID,
            "eventUnifiedAppId": self._app_id,
        }
        data = json.dumps(msg.data, ensure_ascii=False, separators=(",", ":"))
        return {"specVersion": SPEC_VERSION, "type": "EVENT", "headers": headers, "data": data}

    # ---- SYSTEM frames, closing -------------------------------------------------------------

    def send_system(self, topic: str, data: Mapping[str, Any]) -> list[str]:
        """A SYSTEM frame to every connection (a handshake under way included); returns the messageIds sent."""
        with self._cond:
            self._wait_handshakes(time.monotonic() + CLOSE_TIMEOUT)
            conns = list(self._conns.values())
            frames = []
            for conn in conns:
                message_id = str(uuid.uuid4())
                self._system[message_id] = topic
                if topic == "disconnect":
                    conn.told_to_leave = True
                headers = {"messageId": message_id, "topic": topic, "contentType": CONTENT_TYPE, "time": str(now_ms())}
                body = json.dumps(dict(data), ensure_ascii=False, separators=(",", ":"))
                frames.append(
                    (
                        conn,
                        message_id,
                        {"specVersion": SPEC_VERSION, "type": "SYSTEM", "headers": headers, "data": body},
                    )
                )
        return [message_id for conn, message_id, frame in frames if conn.send(frame)]

    def disconnect(self, reason: str, grace: float) -> int:
        """SYSTEM ``disconnect`` to every connection; close those still open after ``grace`` seconds."""
        with self._cond:
            self._wait_handshakes(time.monotonic() + CLOSE_TIMEOUT)
            ids = set(self._conns)
        sent = self.send_system("disconnect", {"reason": reason})
        if grace >= 0:
            timer = threading.Timer(grace, self.close, kwargs={"only": ids})
            timer.daemon = True
            timer.start()
        return len(sent)

    def close(
        self, code: int = 1000, reason: str = "", *, abort: bool = False, only: Iterable[str] | None = None
    ) -> int:
        """Close every connection (or those in ``only``) with ``code``; ``abort``: drop TCP with no close frame.

        "Every" includes a client whose handshake has completed while its handler has not yet taken it.
        """
        with self._cond:
            if only is None:
                self._wait_handshakes(time.monotonic() + CLOSE_TIMEOUT)
            conns = [c for c in self._conns.values() if only is None or c.id in set(only)]
        threads = []
        for conn in conns:
            target = _abort if abort else _closer(code, reason)
            thread = threading.Thread(target=target, args=(conn.ws,), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout=CLOSE_TIMEOUT + 1)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        with self._cond:  # wait for the handlers to notice, so stream_connections() is exact on return
            while any(c.id in self._conns for c in conns) and time.monotonic() < deadline:
                self._cond.wait(timeout=0.05)
        return len(conns)

    def _wait_handshakes(self, deadline: float) -> None:
        """Until no handshake is in progress (lock held): each handler takes or refuses its connection."""
        if not self._handshaking:
            return
        from websockets.protocol import State

        while time.monotonic() < deadline:
            for key, ws in list(self._handshaking.items()):
                if ws.state is State.CLOSED:  # the handshake failed: no handler will run
                    del self._handshaking[key]
            if not self._handshaking:
                return
            self._cond.wait(timeout=0.02)

    # ---- inspection -------------------------------------------------------------------------

    def connections(self) -> int:
        with self._cond:
            return len(self._conns)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            queued = sum(1 for m in self._messages.values() if m.state == "queued")
            return {
                "running": self._server is not None,
                "connections": len(self._conns),
                **self._stats,
                "messages": len(self._messages),
                "queued": queued,
                "unacked": sum(1 for m in self._messages.values() if not m.acked and m.state != "dropped"),
            }

    def messages(self) -> list[dict[str, Any]]:
        with self._cond:
            return [m.view() for m in self._messages.values()]

    def message(self, event_id: str) -> dict[str, Any] | None:
        with self._cond:
            msg = self._messages.get(event_id)
            return None if msg is None else msg.view()

    def acks(self) -> list[dict[str, Any]]:
        with self._cond:
            return [dict(a) for a in self._acks]

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (called with the lock held) is true; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout)

    def wait_connections(self, count: int, timeout: float) -> bool:
        return self.wait(lambda: len(self._conns) >= count, timeout)

    def wait_acked(self, event_id: str, timeout: float) -> bool:
        return self.wait(lambda: event_id in self._messages and self._messages[event_id].acked, timeout)

    def clear(self) -> None:
        """Forget messages and acks (connections and tickets stay)."""
        with self._cond:
            self._messages.clear()
            self._by_message_id.clear()
            self._system.clear()
            self._queue.clear()
            self._active.clear()
            self._acks.clear()
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget tickets, messages, acks and counts; open connections stay open."""
        self.clear()
        with self._cond:
            self._tickets.clear()
            self._stats = {"opened": 0, "accepted": 0, "refused": 0}
            self.used = False


def _status_of(data: Any) -> str | None:
    """The ``status`` an ack's ``data`` (a JSON string) carries, if any (``SUCCESS`` / ``LATER``)."""
    if not isinstance(data, str):
        return None
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    status = parsed.get("status") if isinstance(parsed, dict) else None
    return status if isinstance(status, str) else None


def _closer(code: int, reason: str) -> Callable[[Any], None]:
    def close(ws: Any) -> None:
        try:
            ws.close(code, reason)
        except Exception:
            pass

    return close


def _abort(ws: Any) -> None:
    """Drop the TCP connection without a close frame (the client sees 1006)."""
    try:
        ws.socket.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
