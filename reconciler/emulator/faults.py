"""Fault injection for the emulator: the failures a real DingTalk client must survive.

``Faults`` is the knob board tests turn (plain attributes, mutable at any time);
``FaultInjector`` keeps the bookkeeping behind it (request counters, rate
windows) so the knobs stay simple values.

Choices where the brief leaves room:

* The "every Nth" faults (``ip_ban_every``, ``http500_every``, ``busy_every``)
  share one counter of eligible requests, restarted whenever any of those four
  knobs changes, so "every 3rd" means the 3rd, 6th, ... request *after the
  knob was set*. When several hit the same request, IP ban wins over HTTP 500,
  which wins over "busy".
* ``monthly_quota`` is the metered calls left this month (-1 = unlimited).
  The meter (``meter.py``) spends it: a metered call (``/chat/*`` and the
  ``/v1.0/`` chat, im and robot calls) costs one only when the API processed
  it (a success or a request-level error); token, permission, rate, quota and
  gateway refusals cost nothing. At 0 the call is refused: 90020 on the
  legacy API, 403 ``Forbidden.AccessDenied.ApiCountLimitForOrg`` on v1.0.
* ``drop_after_create`` only drops *successful* creates (the point is a chat
  that exists although the client never heard so), legacy or v1.0.
* ``fail_chatids`` maps a chatid to an int errcode (legacy answers it as is;
  v1.0 answers 400 ``invalideChatId`` for 34001/34013/40016 and 400
  ``parameter.invalid`` for any other) or to ``"HTTP:code"``, e.g.
  ``"500:system.error"``, answered verbatim on v1.0 and as the nearest legacy
  errcode on the legacy API (``LEGACY_FOR_V1_CODE`` in ``wire.py``, else 40035). A
  robot send names its chat by ``openConversationId``; the emulator maps it.
* ``no_permission`` is a set of endpoint paths whose permission the app
  lacks: 60011 on the legacy API, 88 / ``sub_code`` 60011 on ``/topapi``, 403
  ``Forbidden.AccessDenied.AccessTokenPermissionDenied`` on v1.0 (the
  convert call by its template path). The token calls ignore it.
* ``endpoint_latency_ms`` replaces ``latency_ms`` for the endpoints it names
  (so one endpoint can be made slow enough to time a client out).
* ``fail_lookups`` fails directory requests: key ``"dept:100"`` (listid,
  listsubid and department/get of department 100), ``"role:3001"``
  (simplelist), ``"mobile:13800000001"`` (getbymobile) or an endpoint path
  (every call to it); value an errcode (``60003``) or ``"88:SUB"`` for an
  errcode-88 answer with that ``sub_code`` (``"88:60011"`` = no permission).
  It acts after the token and rate checks, like ``fail_chatids``.
* ``string_errcode`` makes every ``/topapi`` answer print ``errcode`` as a
  string (``"0"``), as some real DingTalk answers do.
* The per-IP rule of dingtalk-api.md is on by default: more than
  ``ip_limit_calls`` requests (all endpoints, ``/gettoken`` included) within
  ``ip_limit_window`` seconds ban the caller for ``ip_ban_seconds``; every
  request during the ban answers the ban body with ``wait`` = seconds left.
  The emulator sees every caller as one egress IP (it serves loopback).
* The Stream gateway's knobs (``stream.py``, docs/emulator.md "The Stream
  gateway"): ``stream_ack_timeout`` (seconds a delivery waits for its ack
  before the message is redelivered; the reference's 3 s),
  ``stream_retry_delay`` (seconds before a message whose ack failed — a code
  other than 200, or ``"status": "LATER"`` — is redelivered),
  ``stream_max_deliveries`` (0 = redeliver until acked; N = give up after N
  deliveries), ``stream_drop_acks`` (the next N acks are lost on the way:
  recorded, ignored), ``stream_open_failures`` / ``stream_open_error`` (the
  next N ``connections/open`` calls answer that ``"HTTP:code"``, default
  ``"500:system.error"``), ``events_for_api_changes`` (chat changes made
  through the API push events too; the reference says events fire for chats
  created through the server API).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .limits import IP_BAN_SECONDS, IP_LIMIT_CALLS, IP_LIMIT_WINDOW, STREAM_ACK_TIMEOUT_SECONDS

#: The legacy token endpoint.
TOKEN_ENDPOINT = "/gettoken"
#: The v1.0 token endpoint.
V1_TOKEN_ENDPOINT = "/v1.0/oauth2/accessToken"
#: The endpoints no "every Nth" fault, rate limit, permission fault or quota ever applies to.
TOKEN_ENDPOINTS = frozenset({TOKEN_ENDPOINT, V1_TOKEN_ENDPOINT})

IP_BAN = "ip_ban"
HTTP500 = "http500"
BUSY = "busy"


@dataclass
class Faults:
    """What to break, all off by default. See the module docstring for the fine print."""

    latency_ms: float = 0
    qps_limit: float = 0
    busy_every: int = 0
    http500_every: int = 0
    ip_ban_every: int = 0
    ban_wait: int = 1
    ip_ban_html: bool = False
    fault_endpoints: frozenset[str] | set[str] = field(default_factory=frozenset)
    token_uses: int = 0
    fail_chatids: dict[str, int | str] = field(default_factory=dict)
    drop_after_create: int = 0
    monthly_quota: int = -1
    #: The real per-egress-IP limit (on by default): 10,000 calls in 20 s, then a 5-minute ban.
    ip_limit_calls: int = IP_LIMIT_CALLS
    ip_limit_window: float = IP_LIMIT_WINDOW
    ip_ban_seconds: float = IP_BAN_SECONDS
    endpoint_latency_ms: dict[str, float] = field(default_factory=dict)
    fail_lookups: dict[str, int | str] = field(default_factory=dict)
    string_errcode: bool = False
    #: Endpoint paths this app has no permission for (see the module docstring).
    no_permission: frozenset[str] | set[str] = field(default_factory=frozenset)
    #: The Stream gateway (see the module docstring).
    stream_ack_timeout: float = STREAM_ACK_TIMEOUT_SECONDS
    stream_retry_delay: float = 1.0
    stream_max_deliveries: int = 0
    stream_drop_acks: int = 0
    stream_open_failures: int = 0
    stream_open_error: str = "500:system.error"
    events_for_api_changes: bool = True

    def latency_for(self, endpoint: str) -> float:
        """Milliseconds to wait before answering ``endpoint``."""
        return self.endpoint_latency_ms.get(endpoint, self.latency_ms)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set the named fields (the admin route's ``POST faults``); unknown names or bad types raise ValueError."""
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}; known: {', '.join(known)}")
        converted = {name: _convert(name, value, getattr(self, name)) for name, value in values.items()}
        for name, value in converted.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view (sets become sorted lists)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["fault_endpoints"] = sorted(self.fault_endpoints)
        out["no_permission"] = sorted(self.no_permission)
        out["fail_chatids"] = dict(self.fail_chatids)
        out["endpoint_latency_ms"] = dict(self.endpoint_latency_ms)
        out["fail_lookups"] = dict(self.fail_lookups)
        return out


def lookup_failure(value: int | str) -> tuple[int, str | None]:
    """A ``fail_lookups`` value as (errcode, sub_code or None)."""
    if isinstance(value, int):
        return value, None
    code, _, sub = value.partition(":")
    return int(code), sub


def _convert(name: str, value: Any, current: Any) -> Any:
    """Coerce a JSON value to the type of the field it sets, refusing anything ambiguous."""
    if name in ("fault_endpoints", "no_permission"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of endpoint paths")
        return frozenset(value)
    if name == "fail_chatids":
        if not isinstance(value, dict) or not all(_is_chat_failure(v) for v in value.values()):
            raise ValueError('fail_chatids must map chatid -> errcode (int) or "HTTP:code" (e.g. "500:system.error")')
        return dict(value)
    if name == "endpoint_latency_ms":
        if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value.values()
        ):
            raise ValueError("endpoint_latency_ms must map endpoint path -> milliseconds (a number >= 0)")
        return dict(value)
    if name == "fail_lookups":
        if not isinstance(value, dict) or not all(_is_failure(v) for v in value.values()):
            raise ValueError(
                'fail_lookups must map "dept:ID" / "role:ID" / "mobile:N" / endpoint -> errcode (int) or "88:SUB_CODE"'
            )
        return dict(value)
    if name == "stream_open_error":
        if not isinstance(value, str) or not V1_FAILURE_RE.fullmatch(value):
            raise ValueError('stream_open_error must be "HTTP:code", e.g. "500:system.error"')
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    wanted = (int, float) if name in _FLOAT_FIELDS else int
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise ValueError(f"{name} must be {'a number' if name in _FLOAT_FIELDS else 'an integer'}")
    if name in _NON_NEGATIVE_FIELDS and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0")
    return value


def _is_failure(value: Any) -> bool:
    if type(value) is int:
        return True
    return isinstance(value, str) and bool(_SUB_CODE_RE.fullmatch(value))


def _is_chat_failure(value: Any) -> bool:
    if type(value) is int:
        return True
    return isinstance(value, str) and bool(V1_FAILURE_RE.fullmatch(value))


def v1_failure(value: str) -> tuple[int, str]:
    """A ``fail_chatids`` string ``"HTTP:code"`` as (HTTP status, v1.0 code)."""
    status, _, code = value.partition(":")
    return int(status), code


_SUB_CODE_RE = re.compile(r"-?[0-9]+:[0-9]+")
#: ``"HTTP:code"``: a 4xx/5xx status and a v1.0 error code such as ``system.error``.
V1_FAILURE_RE = re.compile(r"[45][0-9]{2}:[A-Za-z][A-Za-z0-9_.]*")
_FLOAT_FIELDS = frozenset(
    {"latency_ms", "qps_limit", "ip_limit_window", "ip_ban_seconds", "stream_ack_timeout", "stream_retry_delay"}
)
_NON_NEGATIVE_FIELDS = frozenset(
    {"stream_ack_timeout", "stream_retry_delay", "stream_max_deliveries", "stream_drop_acks", "stream_open_failures"}
)


class FaultInjector:
    """Counters and windows behind ``Faults``; one lock, so concurrent requests count exactly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._eligible = 0
        self._every_key: tuple | None = None
        self._windows: dict[str, deque[float]] = {}
        self._ip_window: deque[float] = deque()
        self._banned_until = 0.0

    def reset(self) -> None:
        with self._lock:
            self._eligible = 0
            self._every_key = None
            self._windows.clear()
            self._ip_window.clear()
            self._banned_until = 0.0

    def ip_ban(self, faults: Faults) -> float | None:
        """Seconds left of the caller's IP ban (starting one when this request breaks the limit), or None."""
        if faults.ip_limit_calls <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            if now < self._banned_until:
                return self._banned_until - now
            window = self._ip_window
            window.append(now)
            while window and window[0] <= now - faults.ip_limit_window:
                window.popleft()
            if len(window) > faults.ip_limit_calls:
                window.clear()
                self._banned_until = now + faults.ip_ban_seconds
                return faults.ip_ban_seconds
            return None

    def gateway_fault(self, faults: Faults, endpoint: str) -> str | None:
        """Which "every Nth" fault (IP_BAN, HTTP500, BUSY) hits this request, if any."""
        if endpoint in TOKEN_ENDPOINTS or (faults.fault_endpoints and endpoint not in faults.fault_endpoints):
            return None
        key = (faults.ip_ban_every, faults.http500_every, faults.busy_every, frozenset(faults.fault_endpoints))
        with self._lock:
            if key != self._every_key:
                self._every_key, self._eligible = key, 0
            self._eligible += 1
            n = self._eligible
        for kind, every in ((IP_BAN, key[0]), (HTTP500, key[1]), (BUSY, key[2])):
            if every > 0 and n % every == 0:
                return kind
        return None

    def over_rate(self, faults: Faults, endpoint: str) -> bool:
        """True when ``endpoint`` already accepted ``qps_limit`` requests in the last second."""
        limit = faults.qps_limit
        if limit <= 0 or endpoint in TOKEN_ENDPOINTS:
            return False
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(endpoint, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= limit:
                return True
            window.append(now)
            return False

    def take_drop(self, faults: Faults) -> bool:
        """True (and one fewer left) when this successful create must lose its response."""
        with self._lock:
            if faults.drop_after_create <= 0:
                return False
            faults.drop_after_create -= 1
            return True
