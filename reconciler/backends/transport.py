"""The HTTP transport under both API generations: the only code in dtchat that talks to DingTalk.

It owns the access tokens, client-side rate limiting (per endpoint, adaptive,
plus the per-IP ceiling), retries with backoff, the meter of quota-counted
calls, and keeping secrets out of logs and errors. It sends exactly what the
backend gives it (:meth:`Transport.call`), so ``--dry-run`` prints exactly what
is sent.

Two hosts, two dialects (``endpoints.OAPI`` / ``endpoints.OPENAPI``): the
legacy host answers HTTP 200 with an ``errcode`` and takes the token in the
query; the v1.0 host answers an HTTP status with ``{code, message}`` and takes
the token in the ``x-acs-dingtalk-access-token`` header. The v1.0 token is used
for both hosts under ``--api v1`` (a new app's only token); ``--api legacy``
uses ``/gettoken``'s for the legacy host.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError, NewConnectionError

from .. import rules
from .endpoints import BASE_FLAG, DEPT_USER_IDS, GETTOKEN, OAPI, OPENAPI, V1_TOKEN, Endpoint
from .errors import (
    AmbiguousCreateError,
    AmbiguousOutcomeError,
    AuthError,
    DeadlineError,
    DingTalkError,
    IpBanError,
    OversizedAnswerError,
    ReadTimeoutError,
    Refusal,
    TransportError,
    classify_oapi,
    classify_v1,
    errcode_of,
)
from .ratelimit import IP_BURST, IP_LIMIT_CALLS, IP_LIMIT_WINDOW, AdaptiveRate, TokenBucket
from .redact import install_log_filter, redact, register_secret, strip_userinfo

log = logging.getLogger("reconciler.dingtalk")

#: The token kinds: ``/gettoken``'s (legacy apps) and ``/v1.0/oauth2/accessToken``'s.
LEGACY_TOKEN = "legacy"
V1_TOKEN_KIND = "v1"
TOKEN_HEADER = "x-acs-dingtalk-access-token"
#: Token lifetime announced by the token calls (used when an answer does not say).
TOKEN_TTL_SECONDS = 7200
#: Connection refused / connect timeout: retried at most this many attempts in all. A server that is
#: restarting comes back within a second or two, and such a request provably never arrived (safe even
#: for a create); a wrong --api-base refuses forever and must not cost the full retry budget.
CONNECT_ATTEMPTS = 3
#: Every HTTP request's whole time, in seconds: connecting, sending, the status line, the headers and the body
#: (design §9). The connect and read timeouts restart on every byte, so without it a server dribbling its
#: answer a byte at a time would hold a run, and the state lock, forever. DingTalk answers in 50-500 ms;
#: env DTCHAT_HTTP_DEADLINE changes it (read by ``reconciler.connect``, see :func:`deadline_from_env`).
DEFAULT_DEADLINE = 60.0
ENV_DEADLINE = "DTCHAT_HTTP_DEADLINE"
#: The largest answer read, in bytes (decoded), for every call but the one below: a /chat/get of a full chat
#: (1,000 members) is ~30 KB, ~70 KB with 64-character ids; a directory page or an error page is smaller. A
#: larger answer is refused unread past the cap, so a hostile or broken server cannot grow the process.
ANSWER_CAP = 4 * 1024 * 1024
#: ``/topapi/user/listid`` answers a department's direct members in one unpaged answer: 16 MiB holds
#: ~250,000 ids of 64 characters (~600,000 of DingTalk's usual 20-odd), more than any one department.
LIST_ANSWER_CAP = 16 * 1024 * 1024
#: Bytes asked of the socket at a time while streaming an answer.
_CHUNK = 64 * 1024

_HTML_WAIT = re.compile(r"\bwait\b\W{0,3}(\d+(?:\.\d+)?)", re.IGNORECASE)
_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class _Failure:
    """One attempt that got no usable answer."""

    #: Raised when the retry budget is used up.
    error: DingTalkError
    #: The request may have reached the server (matters for non-idempotent create).
    ambiguous: bool
    #: The server's ``wait`` hint in seconds (IP ban), if any.
    wait: float | None = None
    #: False for answers another attempt cannot change (a redirect, a 404, an unknown host).
    retry: bool = True
    #: At most this many attempts in all for this kind of failure (None: the client's max_attempts).
    attempts: int | None = None
    #: An IP-ban answer: the whole client pauses for ``wait``.
    ban: bool = False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything linked to it (urllib3 wraps the socket error several levels deep)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        linked = (getattr(err, "reason", None), err.__cause__, err.__context__, *err.args)
        stack.extend(x for x in linked if isinstance(x, BaseException))


def _never_sent(exc: BaseException) -> bool:
    """True when the connection was never established, so the server never saw the request."""
    return any(isinstance(err, NewConnectionError) for err in _chain(exc))


def _certificate_refused(exc: BaseException) -> bool:
    """True when the TLS handshake failed on the server's certificate (before any request byte was sent)."""
    return any(
        isinstance(err, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err) for err in _chain(exc)
    )


def _host_not_found(exc: BaseException) -> bool:
    return any(isinstance(err, (NameResolutionError, socket.gaierror)) for err in _chain(exc))


def _reason(exc: BaseException) -> str:
    """A short lower-case reason from the innermost cause, never a half-quoted repr."""
    errors = list(_chain(exc))
    if any(isinstance(e, (NameResolutionError, socket.gaierror)) for e in errors):
        return "host name not found"
    for err in errors:
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({err.verify_message or 'verify failed'})"
    for kind, text in (  # most specific first: RemoteDisconnected is a ConnectionResetError
        (http.client.RemoteDisconnected, "the server closed the connection without answering"),
        (http.client.IncompleteRead, "the answer was cut off"),
        (ConnectionRefusedError, "connection refused"),
        (ConnectionResetError, "connection reset by peer"),
        (ConnectionAbortedError, "connection aborted"),
        (BrokenPipeError, "connection closed while sending"),
        (ssl.SSLError, "TLS handshake failed"),
        (socket.timeout, "timed out"),
    ):
        if any(isinstance(e, kind) for e in errors):
            return text
    for err in errors:
        if isinstance(err, OSError) and err.strerror:
            return str(err.strerror).lower()
    for err in errors:  # e.g. OSError("Tunnel connection failed: 407 Proxy Authentication Required")
        if type(err) is OSError and len(err.args) == 1 and isinstance(err.args[0], str):
            return redact(err.args[0])[:200]
    return type(exc).__name__


def _wait_hint(payload: Any, text: str) -> float | None:
    """The ``wait`` seconds of an IP-ban answer (JSON or HTML), if it carries one."""
    if isinstance(payload, dict):
        wait = payload.get("wait")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 0 <= wait < float("inf"):
            return float(wait)
        return None
    match = _HTML_WAIT.search(text)
    return float(match.group(1)) if match else None


def _is_ban(payload: Any, wait: float | None) -> bool:
    if wait is not None:
        return True
    return isinstance(payload, dict) and ("punish" in payload or payload.get("status") == 1111)


def deadline_from_env(env: Mapping[str, str]) -> float:
    """``$DTCHAT_HTTP_DEADLINE`` in seconds (DEFAULT_DEADLINE when unset); ValueError with a one-line reason."""
    raw = (env.get(ENV_DEADLINE) or "").strip()
    if not raw:
        return DEFAULT_DEADLINE
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 3600:  # NaN and infinity too
        raise ValueError(
            f"{ENV_DEADLINE}={raw[:40]!r}: must be the seconds one HTTP request may take in all, "
            f"more than 0 and at most 3600 (default {DEFAULT_DEADLINE:g})"
        )
    return seconds


def _size_text(size: int) -> str:
    return f"{size / 1024 / 1024:g} MiB" if size >= 1024 * 1024 else f"{size:,} bytes"


class _Watch:
    """One request's deadline, and the pooled connection it holds (for the watchdog to cut)."""

    __slots__ = ("deadline", "conn", "sock", "expired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conn: Any = None
        #: The socket the answer's body is read from, once the headers are in: http.client hands it from the
        #: connection to the response when the answer ends at the connection's close (no length, not chunked).
        self.sock: Any = None
        self.expired = False


class _Watchdog:
    """Ends every request that outlives its deadline, wherever it is stuck (the status line, a header, the body).

    A per-socket timeout restarts on each byte, so a server dribbling a byte a
    second never trips it, and a read blocked in ``recv`` cannot check a clock.
    One daemon thread per transport shuts the late request's socket down, which
    wakes the blocked read at once; the request then fails as past its deadline
    (``expired``), never as a short answer. The connection pools tell it which
    connection each request holds (:meth:`hook`); a connection handed back to
    the pool is forgotten first, under the lock, so it never cuts another
    request's connection. Every request waits the same time, so registration
    order is deadline order: the oldest live request is the next to expire.
    """

    #: How often a late request that has no socket yet (still connecting) is looked at again.
    POLL = 0.05

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._cond = threading.Condition(threading.Lock())
        self._live: OrderedDict[int, _Watch] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    def start(self) -> _Watch:
        """Watch the calling thread's next request, from now on."""
        with self._cond:  # the clock read under the lock: registration order stays deadline order
            watch = _Watch(time.monotonic() + self.seconds)
            self._live[id(watch)] = watch
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dtchat-http-deadline", daemon=True)
                self._thread.start()
            # no notify: the thread never sleeps longer than ``seconds``, so it wakes before this deadline
        self._local.watch = watch
        return watch

    def finish(self, watch: _Watch) -> None:
        self._local.watch = None
        with self._cond:
            self._live.pop(id(watch), None)
            watch.conn = watch.sock = None

    def close(self) -> None:
        with self._cond:
            self._thread = None
            self._cond.notify()

    def hook(self, pool: Any) -> Any:
        """Make ``pool`` (a urllib3 connection pool) tell the watch of the calling thread which connection it holds."""
        if getattr(pool, "_dtchat_watchdog", None) is self:
            return pool
        with self._cond:
            if getattr(pool, "_dtchat_watchdog", None) is self:
                return pool
            # the pool's class and a weak reference: a bound method stored on the pool would be a cycle that keeps
            # it (urllib3 closes a dropped pool's connections when it is collected) alive until a GC pass
            cls, ref = type(pool), weakref.ref(pool)
            local, cond = self._local, self._cond

            def _get_conn(*args: Any, **kwargs: Any) -> Any:
                conn = cls._get_conn(ref(), *args, **kwargs)
                watch = getattr(local, "watch", None)
                if watch is not None:
                    watch.conn = conn
                return conn

            def _put_conn(conn: Any) -> None:
                watch = getattr(local, "watch", None)
                if conn is not None and watch is not None and watch.conn is conn:
                    with cond:  # forgotten before another request can take it from the pool
                        watch.conn = watch.sock = None
                cls._put_conn(ref(), conn)

            pool._get_conn, pool._put_conn = _get_conn, _put_conn
            pool._dtchat_watchdog = self
        return pool

    def _run(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while self._thread is me:
                now, wait, cut = time.monotonic(), self.seconds, []
                for key, watch in self._live.items():  # oldest first: stop at the first one still in time
                    left = watch.deadline - now
                    if left > 0:
                        wait = min(wait, left)
                        break
                    watch.expired = True
                    if self._cut(watch.sock or getattr(watch.conn, "sock", None)):
                        cut.append(key)
                    else:  # not connected yet (the connect timeout bounds that): look again shortly
                        wait = min(wait, self.POLL)
                for key in cut:
                    del self._live[key]
                self._cond.wait(wait)

    @staticmethod
    def _cut(sock: Any) -> bool:
        """Shut the socket down (both ways), waking a read blocked on it; False without one."""
        if sock is None:
            return False
        try:
            if isinstance(sock, socket.socket):  # the plain socket's shutdown: SSLSocket's would drop its TLS object
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            else:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # closed meanwhile, or not a socket we know: either way nothing left to wake
            pass
        return True


def _body_socket(response: requests.Response) -> Any:
    """The socket an answer's body comes from (``http.client``'s file over it), or None."""
    reader = getattr(getattr(response.raw, "_fp", None), "fp", None)  # urllib3's response -> http.client's
    return getattr(getattr(reader, "raw", None), "_sock", None)  # BufferedReader -> SocketIO -> socket


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter, with every connection pool it hands out hooked to the watchdog."""

    def __init__(self, watchdog: _Watchdog, **kwargs: Any) -> None:
        self._watchdog = watchdog
        super().__init__(**kwargs)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        return self._watchdog.hook(super().get_connection_with_tls_context(*args, **kwargs))

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:  # what requests < 2.32 calls instead
        return self._watchdog.hook(super().get_connection(*args, **kwargs))


@dataclass(frozen=True)
class Meter:
    """Calls the organisation's monthly quota counts (design §11), and the exempt ones, as answered so far."""

    metered: int = 0
    exempt: int = 0

    def __sub__(self, other: Meter) -> Meter:
        return Meter(self.metered - other.metered, self.exempt - other.exempt)

    def to_json(self) -> dict[str, int]:
        return {"metered": self.metered, "exempt": self.exempt}


class _Token:
    """One kind of access token: cached, fetched under a lock so concurrent callers share one fetch."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: str | None = None
        self.refresh_at = 0.0
        self.fetched = 0


class Transport:
    """A thread-safe HTTP transport for DingTalk's two hosts (legacy oapi and v1.0 openapi)."""

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        *,
        api_base: str = "https://oapi.dingtalk.com",
        openapi_base: str = "https://api.dingtalk.com",
        oapi_token: str = V1_TOKEN_KIND,
        max_qps: float = rules.DEFAULT_QPS,
        timeout: tuple[float, float] = (5.0, 30.0),
        max_attempts: int = 5,
        max_retry_seconds: float = 60.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        token_refresh_margin: float = 300.0,
        pool_size: int = 32,
        ip_limit: tuple[int, float] | None = (IP_LIMIT_CALLS, IP_LIMIT_WINDOW),
        deadline: float = DEFAULT_DEADLINE,
        answer_cap: int = ANSWER_CAP,
    ) -> None:
        """``timeout`` is (connect, read) per socket operation; ``deadline`` bounds each request's whole time
        (DEFAULT_DEADLINE); ``answer_cap`` is the largest answer read (ANSWER_CAP; ``/topapi/user/listid`` may
        send up to LIST_ANSWER_CAP)."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < deadline < float("inf"):
            raise ValueError("deadline must be a positive number of seconds")
        if answer_cap < 1:
            raise ValueError("answer_cap must be at least 1 byte")
        if oapi_token not in (LEGACY_TOKEN, V1_TOKEN_KIND):
            raise ValueError(f"oapi_token must be {LEGACY_TOKEN!r} or {V1_TOKEN_KIND!r}")
        register_secret(app_secret)
        install_log_filter()
        self._app_key = app_key
        self._app_secret = app_secret
        self._bases = {OAPI: api_base.rstrip("/"), OPENAPI: openapi_base.rstrip("/")}
        self._shown = {host: strip_userinfo(base) for host, base in self._bases.items()}
        self._oapi_token = oapi_token
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._token_refresh_margin = token_refresh_margin
        self._max_rate = max_qps * (1 - rules.RATE_HEADROOM) if max_qps > 0 else 0.0
        self._limiters: dict[str, AdaptiveRate] = {}
        self._limiters_lock = threading.Lock()
        self._templates: dict[tuple[str, str, str], requests.PreparedRequest] = {}
        self._deadline = deadline
        self._caps = {DEPT_USER_IDS.path: max(answer_cap, LIST_ANSWER_CAP)}
        self._answer_cap = answer_cap
        self._watchdog = _Watchdog(deadline)
        if ip_limit is not None:
            calls, window = ip_limit
            burst = min(IP_BURST, max(1, calls // 10))
            self._ip_bucket: TokenBucket | None = TokenBucket(
                (calls - burst) / window * (1 - rules.RATE_HEADROOM), capacity=burst
            )
        else:
            self._ip_bucket = None
        self._session = self._make_session(pool_size)
        self._tokens = {LEGACY_TOKEN: _Token(), V1_TOKEN_KIND: _Token()}
        self._banned_until = 0.0
        self._stats_lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._retries = 0
        self._token_refreshes = 0
        self._rate_cuts = 0
        self._meter = Meter()

    def _make_session(self, pool_size: int) -> requests.Session:
        """A session that reads proxy and CA settings from the environment once, here.

        With ``trust_env`` on, requests re-reads the environment (proxies,
        NO_PROXY, CA bundle, ~/.netrc) on every call, which cost more CPU than
        the rest of a call together; the settings cannot change within a run.
        Requests go straight through the session's adapter (:meth:`_attempt`),
        which never follows a redirect: one would carry the app secret or the
        token to whatever host the Location names.
        """
        session = requests.Session()
        session.trust_env = False
        # answers uncompressed: the cap counts what is held in memory, and no small body inflates in one read
        session.headers["Accept-Encoding"] = "identity"
        self._proxies: dict[str, dict[str, str]] = {}
        self._proxy_shown: dict[str, str | None] = {}
        for host, base in self._bases.items():
            proxies = requests.utils.get_environ_proxies(base)
            scheme = urlsplit(base).scheme.lower()
            proxy = proxies.get(scheme) or proxies.get("all")
            self._proxies[host] = {scheme: proxy} if proxy else {}
            self._proxy_shown[host] = strip_userinfo(proxy) if proxy else None
            for secret in (urlsplit(proxy).password if proxy else None, urlsplit(base).password):
                if secret:
                    register_secret(secret)
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            session.verify = ca_bundle
        self._verify: bool | str = ca_bundle or True
        self._adapter = _WatchedAdapter(
            self._watchdog, pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0
        )
        session.mount("https://", self._adapter)
        session.mount("http://", self._adapter)
        return session

    def __repr__(self) -> str:
        return f"Transport(app_key={self._app_key!r}, api_base={self._shown[OAPI]!r}, openapi_base={self._shown[OPENAPI]!r})"

    # ------------------------------------------------------------------ calls

    def authenticate(self) -> None:
        """Fetch (or reuse) the access token the chat reads use, so bad credentials or a wrong base fail up front.

        Raises AuthError (credentials refused) or TransportError (unreachable, not DingTalk).
        """
        self._current_token(self._token_kind(OAPI))

    def call(
        self,
        endpoint: Endpoint,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        chatid: str | None = None,
        userids: Sequence[str] = (),
    ) -> dict:
        """One authenticated call; returns its success answer. A rejected token is replaced and the call
        retried once; transient failures are retried with backoff; a call that must not be repeated is never
        sent twice when its outcome is unknown (AmbiguousCreateError / AmbiguousOutcomeError).

        ``chatid`` fills the path of an endpoint that holds one; ``userids`` are named in InvalidUserError.
        """
        kind = self._token_kind(endpoint.host)
        refreshed = False
        while True:
            token = self._current_token(kind)
            outcome = self._retrying(endpoint, params, body, chatid, userids, token)
            if isinstance(outcome, dict):
                return outcome
            if outcome.token and not refreshed:
                refreshed = True
                log.warning("%s: access token rejected (%s); retry with a new token", endpoint, outcome.error.code_text)
                self._invalidate_token(kind, token)
                continue
            error = outcome.error
            if outcome.token:
                raise AuthError(
                    endpoint.path,
                    error.errmsg,
                    error.errcode,
                    code=error.code,
                    status=error.status,
                    sub_code=error.sub_code,
                    detail="the access token was rejected again after a refresh",
                )
            raise error

    # --------------------------------------------------------------- lifecycle

    @property
    def stats(self) -> dict:
        """A snapshot: HTTP requests per endpoint, retries, token re-fetches, rate cuts, the meter."""
        with self._stats_lock:
            return {
                "calls": dict(self._calls),
                "retries": self._retries,
                "token_refreshes": self._token_refreshes,
                "rate_cuts": self._rate_cuts,
                "metered": self._meter.metered,
                "exempt": self._meter.exempt,
            }

    @property
    def meter(self) -> Meter:
        """Calls answered so far that the monthly quota counts, and exempt ones (design §11)."""
        with self._stats_lock:
            return self._meter

    def rate(self, endpoint: Endpoint | str) -> float:
        """The calls/s this transport paces ``endpoint`` at now (0 = unlimited)."""
        return self._limiter(str(endpoint)).rate

    def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        self._session.close()
        self._watchdog.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------- token

    def _token_kind(self, host: str) -> str:
        """The v1.0 host always takes the v1.0 token; the legacy host takes the one ``--api`` chose."""
        return V1_TOKEN_KIND if host == OPENAPI else self._oapi_token

    def _current_token(self, kind: str) -> str:
        slot = self._tokens[kind]
        token = slot.value
        if token is not None and time.monotonic() < slot.refresh_at:
            return token
        with slot.lock:
            if slot.value is None or time.monotonic() >= slot.refresh_at:
                self._fetch_token(kind, slot)
            assert slot.value is not None
            return slot.value

    def _invalidate_token(self, kind: str, used: str) -> None:
        """Drop ``used`` unless another thread has already replaced it."""
        slot = self._tokens[kind]
        with slot.lock:
            if slot.value == used:
                slot.value = None

    def _fetch_token(self, kind: str, slot: _Token) -> None:
        if kind == LEGACY_TOKEN:
            endpoint = GETTOKEN
            params: Mapping[str, Any] | None = {"appkey": self._app_key, "appsecret": self._app_secret}
            body = None
            outcome = self._retrying(endpoint, params, body, None, (), None)
            key, ttl_key = "access_token", "expires_in"
        else:
            endpoint = V1_TOKEN
            body = {"appKey": self._app_key, "appSecret": self._app_secret}
            outcome = self._retrying(endpoint, None, body, None, (), None)
            key, ttl_key = "accessToken", "expireIn"
        if not isinstance(outcome, dict):
            raise outcome.error
        token = outcome.get(key)
        if not isinstance(token, str) or not token:
            raise AuthError(endpoint.path, f"malformed response: no {key}")
        register_secret(token)
        announced = outcome.get(ttl_key)
        expires_in = float(TOKEN_TTL_SECONDS)
        if isinstance(announced, (int, float)) and not isinstance(announced, bool) and 0 < announced < float("inf"):
            expires_in = float(announced)
        margin = min(self._token_refresh_margin, expires_in / 10)
        slot.refresh_at = time.monotonic() + expires_in - margin
        slot.value = token
        if slot.fetched:
            with self._stats_lock:
                self._token_refreshes += 1
        slot.fetched += 1

    # ---------------------------------------------------------------- requests

    def _retrying(
        self,
        endpoint: Endpoint,
        params: Mapping[str, Any] | None,
        body: Mapping[str, Any] | None,
        chatid: str | None,
        userids: Sequence[str],
        token: str | None,
    ) -> dict | Refusal:
        """Repeat transient failures with backoff; returns the success answer or the first definite refusal."""
        deadline: float | None = None
        attempt = 0
        while True:
            attempt += 1
            if self._banned_until:
                deadline = self._wait_out_ban(endpoint, deadline)
            outcome = self._attempt(endpoint, params, body, chatid, userids, token)
            if isinstance(outcome, dict):
                return outcome
            if isinstance(outcome, Refusal):
                if outcome.ambiguous and endpoint.repeat_unsafe:  # a v1.0 system.error: it may have been done
                    raise self._ambiguous(endpoint, outcome.error.code_text or outcome.error.errmsg)
                if not outcome.retry:
                    return outcome
                failure = _Failure(outcome.error, ambiguous=False, wait=outcome.wait)
            else:
                failure = outcome
                if endpoint.repeat_unsafe and failure.ambiguous:  # before anything else: never a second create
                    raise self._ambiguous(endpoint, failure.error.errmsg)
                if not failure.retry:
                    raise failure.error
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._max_retry_seconds
            remaining = deadline - now
            if failure.ban and failure.wait is not None:
                with self._stats_lock:  # every call of this transport waits it out (or gives up at once)
                    self._banned_until = max(self._banned_until, now + failure.wait)
                if failure.wait > remaining:
                    raise self._ban_error(endpoint, failure.wait, remaining)
            if attempt >= min(self._max_attempts, failure.attempts or self._max_attempts):
                raise failure.error
            window = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
            delay = max(random.uniform(0, window), failure.wait or 0.0)
            if delay > remaining:
                raise failure.error
            reason = str(failure.error).removeprefix(f"{endpoint} failed: ")
            log.warning("%s: %s; retry %d in %.2f s", endpoint, reason, attempt, delay)
            with self._stats_lock:
                self._retries += 1
            time.sleep(delay)

    @staticmethod
    def _ambiguous(endpoint: Endpoint, why: str) -> AmbiguousOutcomeError:
        if endpoint.creates:
            return AmbiguousCreateError(
                endpoint.path,
                f"outcome unknown ({why})",
                detail="the chat may have been created: do not create it again blindly; "
                "check DingTalk and record an existing chat with `dtchat import KEY CHATID`",
            )
        return AmbiguousOutcomeError(endpoint.path, f"outcome unknown ({why})", detail="not sent again")

    def _wait_out_ban(self, endpoint: Endpoint, deadline: float | None) -> float | None:
        """Another call was told this IP is banned: wait it out before sending (never hammer a ban)."""
        now = time.monotonic()
        left = self._banned_until - now
        if left <= 0:
            return deadline
        if deadline is None:
            deadline = now + self._max_retry_seconds
        if left > deadline - now:
            raise self._ban_error(endpoint, left, deadline - now)
        if left >= 0.01:  # not the tail of this call's own wait
            log.warning("%s: this IP is banned by DingTalk; waiting %.2f s before sending", endpoint, left)
        time.sleep(left)
        return deadline

    @staticmethod
    def _ban_error(endpoint: Endpoint, wait: float, remaining: float) -> IpBanError:
        return IpBanError(
            endpoint.path,
            f"DingTalk banned this IP for {wait:.0f} s, longer than the {max(remaining, 0):.0f} s "
            "retry budget left; try again later",
        )

    def _attempt(
        self,
        endpoint: Endpoint,
        params: Mapping[str, Any] | None,
        body: Mapping[str, Any] | None,
        chatid: str | None,
        userids: Sequence[str],
        token: str | None,
    ) -> dict | Refusal | _Failure:
        """One rate-limited HTTP request: a success answer, a classified refusal, or a failure."""
        name = endpoint.path
        limiter = self._limiters.get(name) or self._limiter(name)
        ticket = limiter.acquire()
        if self._ip_bucket is not None:
            self._ip_bucket.acquire()
        with self._stats_lock:
            self._calls[name] += 1
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        query = dict(params or {})
        headers: dict[str, str] = {}
        if token is not None:
            if endpoint.host == OPENAPI:
                headers[TOKEN_HEADER] = token
            else:
                query["access_token"] = token
        started = time.monotonic()
        watch = self._watchdog.start()
        response: requests.Response | None = None
        try:
            response = self._adapter.send(
                self._prepare(endpoint, chatid, query, headers, data),
                stream=True,  # read by _read_answer: within the deadline and the cap
                timeout=self._timeout,
                verify=self._verify,
                cert=None,
                proxies=self._proxies[endpoint.host],
            )
            watch.sock = _body_socket(response)
            content = self._read_answer(endpoint, response, watch)
        except (requests.exceptions.RequestException, ValueError) as exc:
            if response is not None:
                response.close()
            # a request the watchdog cut fails however the cut surfaced (a reset, a short answer, ...)
            outcome = self._past_deadline(endpoint) if watch.expired else self._network_failure(endpoint, exc)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s -> %s (%d ms)",
                    endpoint.method,
                    name,
                    type(exc).__name__,
                    (time.monotonic() - started) * 1000,
                )
            return outcome
        finally:
            self._watchdog.finish(watch)
        if isinstance(content, _Failure):
            log.debug("%s %s -> %s", endpoint.method, name, content.error.errmsg)
            return content
        try:
            payload = json.loads(content)
        except ValueError:
            payload = None
        status = response.status_code
        if endpoint.host == OPENAPI:
            result = self._openapi_answer(endpoint, response, payload, userids)
        else:
            result = self._oapi_answer(endpoint, response, payload, userids)
        if log.isEnabledFor(logging.DEBUG):
            shown = chatid or query.get("chatid") or (body or {}).get("chatid")
            verdict = "ok" if isinstance(result, dict) else getattr(result.error, "code_text", "") or "no answer"
            log.debug(
                "%s %s%s -> HTTP %d, %s (%d ms)",
                endpoint.method,
                name,
                f" chatid={shown}" if shown else "",
                status,
                verdict,
                (time.monotonic() - started) * 1000,
            )
        if isinstance(result, _Failure):
            return result
        if isinstance(result, Refusal) and result.throttle:
            cut = limiter.throttled(ticket)
            if cut is not None:
                with self._stats_lock:
                    self._rate_cuts += 1
                log.warning(
                    "%s: DingTalk is throttling (%s); pacing this API at %.1f calls/s",
                    endpoint,
                    result.error.code_text,
                    cut,
                )
        else:
            limiter.succeeded()
        if isinstance(result, dict) or result.counted:
            with self._stats_lock:
                if endpoint.metered:
                    self._meter = Meter(self._meter.metered + 1, self._meter.exempt)
                else:
                    self._meter = Meter(self._meter.metered, self._meter.exempt + 1)
        return result

    def _read_answer(self, endpoint: Endpoint, response: requests.Response, watch: _Watch) -> bytes | _Failure:
        """The whole body, streamed; a failure (the rest unread, the connection closed) once it passes the
        request's deadline or this endpoint's answer cap."""
        cap = self._caps.get(endpoint.path, self._answer_cap)
        length = response.headers.get("Content-Length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > cap:
            response.close()  # announced: refused before a byte of it is read
            return self._too_large(endpoint, cap)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(_CHUNK):
            size += len(chunk)
            if size > cap:
                response.close()
                return self._too_large(endpoint, cap)
            if watch.expired or time.monotonic() > watch.deadline:
                response.close()
                return self._past_deadline(endpoint)
            chunks.append(chunk)
        if watch.expired:  # the watchdog cut the connection: an answer that ended there is not the whole answer
            response.close()
            return self._past_deadline(endpoint)
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        response._content = content  # what ``response.content`` is from here on (_odd_answer quotes it)
        return content

    def _past_deadline(self, endpoint: Endpoint) -> _Failure:
        """No whole answer within the request's deadline: like a read timeout, the request may have been carried
        out (a create's outcome is unknown); not sent again, one slow answer must not cost several deadlines."""
        text = (
            f"no complete answer from {self._shown[endpoint.host]} within {self._deadline:g} s "
            f"(the deadline for one request; {ENV_DEADLINE} sets it)"
        )
        return _Failure(DeadlineError(endpoint.path, text), ambiguous=True, retry=False)

    def _too_large(self, endpoint: Endpoint, cap: int) -> _Failure:
        """An answer past the cap: refused unread (it would only come again), and a create's outcome is unknown."""
        text = f"the answer from {self._shown[endpoint.host]} is larger than {_size_text(cap)}; not read"
        return _Failure(OversizedAnswerError(endpoint.path, text), ambiguous=True, retry=False)

    def _oapi_answer(
        self, endpoint: Endpoint, response: requests.Response, payload: Any, userids: Sequence[str]
    ) -> dict | Refusal | _Failure:
        """The legacy dialect: HTTP 200 (or 4xx) with an ``errcode``; anything else is an odd answer."""
        status = response.status_code
        errcode = errcode_of(payload.get("errcode")) if isinstance(payload, dict) else None
        if errcode is None or not (200 <= status < 300 or 400 <= status < 500):
            return self._odd_answer(endpoint, response, payload)
        assert isinstance(payload, dict)
        payload["errcode"] = errcode
        refusal = classify_oapi(endpoint, payload, userids)
        return payload if refusal is None else refusal

    def _openapi_answer(
        self, endpoint: Endpoint, response: requests.Response, payload: Any, userids: Sequence[str]
    ) -> dict | Refusal | _Failure:
        """The v1.0 dialect: 2xx with the result object, or an error status with ``{code, message}``."""
        status = response.status_code
        is_dict = isinstance(payload, dict)
        if is_dict and _is_ban(payload, _wait_hint(payload, "")):
            return self._odd_answer(endpoint, response, payload)
        if 200 <= status < 300 and is_dict:
            return payload
        if status >= 400 and is_dict and ("code" in payload or status == 401):
            return classify_v1(endpoint, status, payload, userids)
        if status == 401:
            return classify_v1(endpoint, status, {}, userids)
        return self._odd_answer(endpoint, response, payload)

    def _prepare(
        self,
        endpoint: Endpoint,
        chatid: str | None,
        params: Mapping[str, Any],
        headers: Mapping[str, str],
        data: bytes | None,
    ) -> requests.PreparedRequest:
        """This endpoint's request, prepared once by requests, with this call's path, query, headers and body.

        ``Session.request`` re-prepares everything (URL parsing and IDNA,
        merging headers, cookies, hooks, URL auth) and ``Session.send`` merges
        the environment, persists cookies and resolves redirects, on every
        call: together most of the transport's CPU per call. For one base URL
        and a fixed set of endpoints only the path's chatid, the query string,
        the token header and the body change. The query is encoded as requests
        encodes ``params`` (``urlencode``).
        """
        key = (endpoint.method, endpoint.host, endpoint.path)
        template = self._templates.get(key)
        if template is None:
            base_headers = _JSON_HEADERS if endpoint.method == "POST" else None
            url = self._bases[endpoint.host] + endpoint.path
            template = self._session.prepare_request(requests.Request(endpoint.method, url, headers=base_headers))
            self._templates[key] = template
        assert template.url is not None
        # a path that holds the chat's id is built per call (the template's URL only serves the headers)
        url = self._bases[endpoint.host] + endpoint.url_path(chatid) if "{chatid}" in endpoint.path else template.url
        prepared = requests.PreparedRequest()
        prepared.method = endpoint.method
        prepared.url = f"{url}?{urlencode(params)}" if params else url
        prepared.headers = template.headers.copy()
        prepared.headers.update(headers)
        prepared.hooks = template.hooks
        prepared._cookies = template._cookies  # type: ignore[attr-defined]  # read by redirect handling only, which never runs
        if data is not None:
            prepared.body = data
            prepared.headers["Content-Length"] = str(len(data))
        return prepared

    def _odd_answer(self, endpoint: Endpoint, response: requests.Response, payload: Any) -> _Failure:
        """An answer that is not this host's dialect: a redirect, an IP ban, a server error or not DingTalk."""
        status = response.status_code
        where = f"{self._shown[endpoint.host]}{endpoint.path}"
        flag = BASE_FLAG[endpoint.host]
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            target = strip_userinfo(location.split("?", 1)[0].split("#", 1)[0])[:200]
            text = f"DingTalk answered with a redirect (HTTP {status}{f' to {target}' if target else ''}); "
            text += f"redirects are never followed (they would carry credentials elsewhere): check {flag}"
            return _Failure(TransportError(endpoint.path, text), ambiguous=False, retry=False)
        text = response.content[:65536].decode("utf-8", "replace") if payload is None else ""
        wait = _wait_hint(payload, text)
        if _is_ban(payload, wait):
            hint = f"; wait {wait:g} s" if wait is not None else ""
            error = IpBanError(endpoint.path, f"rate limited: DingTalk answered with an IP-ban page{hint}")
            return _Failure(error, ambiguous=False, wait=wait, ban=True)  # a definite refusal: creates too
        if status >= 500:
            return _Failure(TransportError(endpoint.path, f"HTTP {status} from {where}"), ambiguous=True)
        if status in (408, 429):
            return _Failure(TransportError(endpoint.path, f"HTTP {status} from {where}"), ambiguous=False)
        if 400 <= status < 500:
            text = f"HTTP {status} from {where}: not the DingTalk API; check {flag}"
            return _Failure(TransportError(endpoint.path, text), ambiguous=False, retry=False)
        text = f"unexpected answer (HTTP {status}, not a DingTalk JSON reply)"
        return _Failure(TransportError(endpoint.path, text), ambiguous=True)

    def _network_failure(self, endpoint: Endpoint, exc: Exception) -> _Failure:
        """Classify a requests exception into a clean one-line error; its text (with the URL) is never used."""
        base = self._shown[endpoint.host]
        flag = BASE_FLAG[endpoint.host]
        path = endpoint.path
        if isinstance(exc, requests.exceptions.ProxyError):
            proxy = self._proxy_shown[endpoint.host]
            error = TransportError(path, f"cannot connect through the proxy {proxy}: {_reason(exc)}")
            return _Failure(error, ambiguous=False, attempts=CONNECT_ATTEMPTS)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Failure(
                TransportError(path, f"timed out connecting to {base}"), ambiguous=False, attempts=CONNECT_ATTEMPTS
            )
        if isinstance(exc, requests.exceptions.Timeout):
            return _Failure(ReadTimeoutError(path, f"no answer from {base} in time (read timeout)"), ambiguous=True)
        if isinstance(exc, requests.exceptions.SSLError):
            error = TransportError(path, f"cannot connect to {base}: {_reason(exc)}")
            # A certificate refused in the handshake means nothing was sent; any other TLS failure may come
            # after the request went out, so for a create the outcome is unknown.
            return _Failure(error, ambiguous=not _certificate_refused(exc), retry=False)
        if isinstance(
            exc,
            (
                requests.exceptions.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ),
        ):
            if _host_not_found(exc):
                error = TransportError(path, f"cannot connect to {base}: host name not found; check {flag}")
                return _Failure(error, ambiguous=False, retry=False)
            if _never_sent(exc):
                error = TransportError(path, f"cannot connect to {base}: {_reason(exc)}")
                return _Failure(error, ambiguous=False, attempts=CONNECT_ATTEMPTS)
            return _Failure(TransportError(path, f"connection to {base} failed: {_reason(exc)}"), ambiguous=True)
        reason = redact(str(exc))
        for host, real in self._bases.items():
            reason = reason.replace(real, self._shown[host])
        return _Failure(TransportError(path, f"cannot call {base}: {reason[:200]}"), ambiguous=False, retry=False)

    def _limiter(self, name: str) -> AdaptiveRate:
        limiter = self._limiters.get(name)
        if limiter is None:
            with self._limiters_lock:
                limiter = self._limiters.setdefault(name, AdaptiveRate(self._max_rate))
        return limiter
