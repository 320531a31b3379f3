"""The DingTalk HTTP client: the only code in dtchat that talks to DingTalk.

It owns the access token, client-side rate limiting (per endpoint, adaptive,
plus the per-IP ceiling), retries with backoff, the errcode -> exception
mapping and keeping secrets out of logs and errors. It sends exactly what the
caller gives (batching is the applier's job): :meth:`DingTalkClient.write` is
the one way a write leaves, so ``--dry-run`` can print exactly what is sent.
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
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError, NewConnectionError

from .. import rules
from .errors import (
    GETTOKEN,
    THROTTLE_ERRCODES,
    AmbiguousCreateError,
    AuthError,
    DingTalkError,
    IpBanError,
    ReadTimeoutError,
    TransportError,
    errcode_of,
    error_from_payload,
    is_retryable,
    is_token_error,
)
from .ratelimit import IP_BURST, IP_LIMIT_CALLS, IP_LIMIT_WINDOW, AdaptiveRate, TokenBucket
from .redact import install_log_filter, redact, register_secret, strip_userinfo

log = logging.getLogger("reconciler.dingtalk")

CHAT_GET = "/chat/get"
CHAT_CREATE = "/chat/create"
CHAT_UPDATE = "/chat/update"
CHAT_SEND = "/chat/send"
CHAT_READ_LIST = "/chat/getReadList"
#: The endpoints :meth:`DingTalkClient.write` accepts.
WRITE_ENDPOINTS = (CHAT_CREATE, CHAT_UPDATE, CHAT_SEND)

DEPT_USER_IDS = "/topapi/user/listid"
DEPT_SUB_IDS = "/topapi/v2/department/listsubid"
DEPT_GET = "/topapi/v2/department/get"
ROLE_USERS = "/topapi/role/simplelist"
ROLE_LIST = "/topapi/role/list"
USER_BY_MOBILE = "/topapi/v2/user/getbymobile"

#: Page sizes: the API's maximum for role members, the documented size for the role list.
ROLE_USERS_PAGE = 100
ROLE_LIST_PAGE = 200
#: A paged answer that never ends is a broken server, not a big org: stop after this many pages.
MAX_PAGES = 10_000
#: Connection refused / connect timeout: retried at most this many attempts in all. A server that is
#: restarting comes back within a second or two, and such a request provably never arrived (safe even
#: for a create); a wrong --api-base refuses forever and must not cost the full retry budget.
CONNECT_ATTEMPTS = 3
#: The body keys that hold user ids, named in InvalidUserError.
USERID_KEYS = ("owner", "useridlist", "add_useridlist", "del_useridlist")

_HTML_WAIT = re.compile(r"\bwait\b\W{0,3}(\d+(?:\.\d+)?)", re.IGNORECASE)
_JSON_HEADERS = {"Content-Type": "application/json"}
_MOBILE_JUNK = re.compile(r"[\s\-()]+")
_MAINLAND = re.compile(r"1[0-9]{10}")
MOBILE_MAX = 15


def normalize_mobile(text: str) -> str:
    """A mobile number as ``getbymobile`` wants it: ``"+86 138-0000-0000"`` -> ``"13800000000"``.

    Spaces, dashes and parentheses go; ``+86`` / ``0086`` before an 11-digit
    mainland number goes. Anything else that is not 1..15 ASCII digits raises
    ValueError (the number itself is not echoed: it is personal data).
    """
    number = _MOBILE_JUNK.sub("", str(text))
    for prefix in ("+86", "0086"):
        if number.startswith(prefix) and _MAINLAND.fullmatch(number[len(prefix) :]):
            number = number[len(prefix) :]
            break
    if not number:
        raise ValueError("empty mobile number")
    if not (number.isascii() and number.isdigit()):
        raise ValueError("a mobile number may only hold digits, spaces, dashes, parentheses and a leading +86")
    if len(number) > MOBILE_MAX:
        raise ValueError(f"a mobile number has at most {MOBILE_MAX} digits")
    return number


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
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err):
            return True
        linked = (getattr(err, "reason", None), err.__cause__, err.__context__, *err.args)
        stack.extend(x for x in linked if isinstance(x, BaseException))
    return False


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


def _userids(body: Mapping[str, Any]) -> list[str]:
    """The user ids a write body names, owner first, each once (for InvalidUserError)."""
    ids: list[str] = []
    for key in USERID_KEYS:
        value = body.get(key)
        if isinstance(value, str):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(str(uid) for uid in value)
    return _dedupe(ids)


class DingTalkClient:
    """A thread-safe client for DingTalk's legacy chat API and its org directory."""

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        *,
        api_base: str = "https://oapi.dingtalk.com",
        max_qps: float = rules.DEFAULT_QPS,
        timeout: tuple[float, float] = (5.0, 30.0),
        max_attempts: int = 5,
        max_retry_seconds: float = 60.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        token_refresh_margin: float = 300.0,
        pool_size: int = 32,
        ip_limit: tuple[int, float] | None = (IP_LIMIT_CALLS, IP_LIMIT_WINDOW),
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        register_secret(app_secret)
        install_log_filter()
        self._app_key = app_key
        self._app_secret = app_secret
        self._base = api_base.rstrip("/")
        self._shown_base = strip_userinfo(self._base)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._token_refresh_margin = token_refresh_margin
        self._max_rate = max_qps * (1 - rules.RATE_HEADROOM) if max_qps > 0 else 0.0
        self._limiters: dict[str, AdaptiveRate] = {}
        self._limiters_lock = threading.Lock()
        self._templates: dict[tuple[str, str], requests.PreparedRequest] = {}
        if ip_limit is not None:
            calls, window = ip_limit
            burst = min(IP_BURST, max(1, calls // 10))
            self._ip_bucket: TokenBucket | None = TokenBucket(
                (calls - burst) / window * (1 - rules.RATE_HEADROOM), capacity=burst
            )
        else:
            self._ip_bucket = None
        self._session = self._make_session(pool_size)
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._ever_had_token = False
        self._banned_until = 0.0
        self._stats_lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._retries = 0
        self._token_refreshes = 0
        self._rate_cuts = 0

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
        proxies = requests.utils.get_environ_proxies(self._base)
        scheme = urlsplit(self._base).scheme.lower()
        proxy = proxies.get(scheme) or proxies.get("all")
        if proxy:
            session.proxies = {scheme: proxy}
            for secret in (urlsplit(proxy).password, urlsplit(self._base).password):
                if secret:
                    register_secret(secret)
        self._proxy = strip_userinfo(proxy) if proxy else None
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            session.verify = ca_bundle
        self._adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        session.mount("https://", self._adapter)
        session.mount("http://", self._adapter)
        return session

    def __repr__(self) -> str:
        return f"DingTalkClient(app_key={self._app_key!r}, api_base={self._shown_base!r})"

    # ------------------------------------------------------------------ chats

    def authenticate(self) -> None:
        """Fetch (or reuse) the access token now, so bad credentials or a wrong base fail up front.

        Raises AuthError (credentials refused) or TransportError (unreachable, not DingTalk).
        """
        self._current_token()

    def get_chat(self, chatid: str) -> dict:
        """Read one chat; returns the raw ``chat_info`` dict."""
        payload = self._call("GET", CHAT_GET, params={"chatid": chatid})
        return self._require(payload, CHAT_GET, "chat_info", dict)

    def write(self, endpoint: str, body: Mapping[str, Any]) -> dict:
        """POST ``body`` exactly as given to a write endpoint; returns the success payload.

        The one path every write takes, so what ``--dry-run`` prints is what is
        sent. A create whose outcome is unknown is never retried
        (AmbiguousCreateError); InvalidUserError names the body's user ids.
        """
        if endpoint not in WRITE_ENDPOINTS:
            raise ValueError(f"not a write endpoint: {endpoint!r} (expected one of {', '.join(WRITE_ENDPOINTS)})")
        payload = self._call("POST", endpoint, body=body, userids=_userids(body))
        if endpoint == CHAT_CREATE:
            chatid = payload.get("chatid")
            if not isinstance(chatid, str) or not chatid:
                raise AmbiguousCreateError(
                    endpoint,
                    "malformed response: the chat was created but no chatid came back",
                    detail="check DingTalk and record the chat with `dtchat import KEY CHATID`",
                )
        elif endpoint == CHAT_SEND:
            self._require(payload, endpoint, "messageId", str)
        return payload

    def create_chat(
        self, name: str, owner: str, userids: Sequence[str], settings: Mapping[str, int] | None = None
    ) -> str:
        """Create a chat (not idempotent: an unknown outcome raises AmbiguousCreateError)."""
        body: dict[str, Any] = {"name": name, "owner": owner, "useridlist": list(userids)}
        body.update(self._settings(settings))
        return self.write(CHAT_CREATE, body)["chatid"]

    def update_chat(
        self,
        chatid: str,
        *,
        name: str | None = None,
        owner: str | None = None,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        settings: Mapping[str, int] | None = None,
    ) -> None:
        """Change a chat, sending only the given fields (a setting sent as 0 resets it)."""
        body: dict[str, Any] = {"chatid": chatid}
        if name is not None:
            body["name"] = name
        if owner is not None:
            body["owner"] = owner
        if add:
            body["add_useridlist"] = list(add)
        if remove:
            body["del_useridlist"] = list(remove)
        body.update(self._settings(settings))
        self.write(CHAT_UPDATE, body)

    def send_message(self, chatid: str, message: Mapping[str, Any]) -> str:
        """Send a message object (``{"msgtype": ..., ...}``) to a chat; returns its messageId."""
        return self.write(CHAT_SEND, {**message, "chatid": chatid})["messageId"]

    def send_text(self, chatid: str, content: str) -> str:
        """Send a plain text message; returns its messageId."""
        return self.send_message(chatid, {"msgtype": "text", "text": {"content": content}})

    def get_read_list(
        self, message_id: str, cursor: int = 0, size: int = rules.READ_LIST_PAGE_MAX
    ) -> tuple[list[str], int | None]:
        """One page of who read a message: (user ids, next cursor or None on the last page)."""
        if not 1 <= size <= rules.READ_LIST_PAGE_MAX:
            raise ValueError(f"size must be 1..{rules.READ_LIST_PAGE_MAX}")
        params = {"messageId": message_id, "cursor": cursor, "size": size}
        payload = self._call("GET", CHAT_READ_LIST, params=params)
        ids = payload.get("readUserIdList", [])
        next_cursor = payload.get("next_cursor")
        if not isinstance(ids, list) or not (next_cursor is None or type(next_cursor) is int):
            raise DingTalkError(CHAT_READ_LIST, "malformed response: bad readUserIdList or next_cursor")
        return [str(u) for u in ids], next_cursor

    def iter_read_list(self, message_id: str) -> Iterator[str]:
        """Every user id that read the message, following cursors."""
        cursor: int | None = 0
        while cursor is not None:
            ids, next_cursor = self.get_read_list(message_id, cursor)
            yield from ids
            if next_cursor is not None and next_cursor <= cursor:
                raise DingTalkError(CHAT_READ_LIST, f"malformed response: cursor did not advance ({next_cursor})")
            cursor = next_cursor

    # -------------------------------------------------------------- directory

    def list_department_user_ids(self, dept_id: int) -> list[str]:
        """User ids of the department's direct members (sub-departments are the caller's walk)."""
        result = self._topapi(DEPT_USER_IDS, {"dept_id": self._int_id(dept_id, "dept_id")})
        return _dedupe(self._str_list(result, DEPT_USER_IDS, "userid_list"))

    def list_sub_department_ids(self, dept_id: int) -> list[int]:
        """Ids of the department's direct sub-departments (a leaf answers [])."""
        result = self._topapi(DEPT_SUB_IDS, {"dept_id": self._int_id(dept_id, "dept_id")})
        ids = result.get("dept_id_list")
        if ids is None:
            return []
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise DingTalkError(DEPT_SUB_IDS, "malformed response: dept_id_list is not a list of numbers")
        return _dedupe(ids)

    def get_department(self, dept_id: int) -> dict:
        """One department (``dept_id``, ``name``, ``parent_id``, ...), for names in plans."""
        return self._topapi(DEPT_GET, {"dept_id": self._int_id(dept_id, "dept_id"), "language": "zh_CN"})

    def list_role_user_ids(self, role_id: int) -> list[str]:
        """User ids of everyone holding the role, across pages, each once in the order given."""
        role_id = self._int_id(role_id, "role_id")
        users: list[str] = []
        for page in self._pages(ROLE_USERS, {"role_id": role_id}, ROLE_USERS_PAGE):
            for item in page:
                uid = item.get("userid") if isinstance(item, dict) else None
                if not isinstance(uid, str) or not uid:
                    raise DingTalkError(ROLE_USERS, "malformed response: a list entry without a userid")
                users.append(uid)
        return _dedupe(users)

    def list_roles(self) -> dict[int, str]:
        """Every role id and its name (roles come grouped; the groups are flattened)."""
        roles: dict[int, str] = {}
        for page in self._pages(ROLE_LIST, {}, ROLE_LIST_PAGE):
            for group in page:
                members = group.get("roles", []) if isinstance(group, dict) else None
                if not isinstance(members, list):
                    raise DingTalkError(ROLE_LIST, "malformed response: a role group without a roles list")
                for role in members:
                    rid = role.get("id") if isinstance(role, dict) else None
                    if type(rid) is not int:
                        raise DingTalkError(ROLE_LIST, "malformed response: a role without a numeric id")
                    roles[rid] = str(role.get("name") or "")
        return roles

    def get_user_id_by_mobile(self, mobile: str) -> str:
        """The userid of the active employee with this mobile (normalise it first: :func:`normalize_mobile`)."""
        result = self._topapi(USER_BY_MOBILE, {"mobile": mobile})
        userid = result.get("userid")
        if not isinstance(userid, str) or not userid:
            raise DingTalkError(USER_BY_MOBILE, "malformed response: no userid in a successful answer")
        return userid

    # --------------------------------------------------------------- lifecycle

    @property
    def stats(self) -> dict:
        """A snapshot: HTTP requests per endpoint, retries, token re-fetches, rate cuts."""
        with self._stats_lock:
            return {
                "calls": dict(self._calls),
                "retries": self._retries,
                "token_refreshes": self._token_refreshes,
                "rate_cuts": self._rate_cuts,
            }

    def rate(self, endpoint: str) -> float:
        """The calls/s this client paces ``endpoint`` at now (0 = unlimited)."""
        return self._limiter(endpoint).rate

    def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        self._session.close()

    def __enter__(self) -> DingTalkClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _settings(settings: Mapping[str, int] | None) -> dict[str, int]:
        """Only known API setting fields may be sent: a typo would be silently ignored by the server."""
        unknown = sorted(set(settings or {}) - set(rules.SETTING_FIELDS))
        if unknown:
            raise ValueError(f"unknown setting field(s): {', '.join(unknown)}")
        return dict(settings or {})

    @staticmethod
    def _require(payload: Mapping[str, Any], endpoint: str, key: str, kind: type) -> Any:
        value = payload.get(key)
        if not isinstance(value, kind) or not value:
            raise DingTalkError(endpoint, f"malformed response: no {kind.__name__} {key!r} in a successful answer")
        return value

    @staticmethod
    def _int_id(value: Any, name: str) -> int:
        """Ids go out as JSON numbers; a bool or text here is a caller bug, caught before any call."""
        if type(value) is not int:
            raise ValueError(f"{name} must be an int, not {type(value).__name__}")
        return value

    @staticmethod
    def _str_list(result: Mapping[str, Any], endpoint: str, key: str) -> list[str]:
        """A list of user ids that must be there: an answer without it is malformed, never "nobody"."""
        ids = result.get(key)
        if not isinstance(ids, list) or not all(isinstance(u, str) and u for u in ids):
            raise DingTalkError(endpoint, f"malformed response: {key} is not a list of user ids")
        return ids

    def _topapi(self, endpoint: str, body: Mapping[str, Any]) -> dict:
        """One directory call; returns its ``result`` object."""
        result = self._call("POST", endpoint, body=body).get("result")
        if not isinstance(result, dict):
            raise DingTalkError(endpoint, "malformed response: no result object in a successful answer")
        return result

    def _pages(self, endpoint: str, body: Mapping[str, Any], size: int) -> Iterator[list]:
        """``result.list`` of each page while ``result.hasMore``, with ``offset += size``."""
        offset = 0
        for _ in range(MAX_PAGES):
            result = self._topapi(endpoint, {**body, "offset": offset, "size": size})
            items = result.get("list")
            if not isinstance(items, list):  # missing too: a lost page must not read as fewer people
                raise DingTalkError(endpoint, "malformed response: result.list is missing or not a list")
            yield items
            if result.get("hasMore") is not True:
                return
            if not items:
                raise DingTalkError(endpoint, "malformed response: hasMore with an empty page")
            offset += size
        raise DingTalkError(endpoint, f"malformed response: still hasMore after {MAX_PAGES} pages")

    def _limiter(self, endpoint: str) -> AdaptiveRate:
        limiter = self._limiters.get(endpoint)
        if limiter is None:
            with self._limiters_lock:
                limiter = self._limiters.setdefault(endpoint, AdaptiveRate(self._max_rate))
        return limiter

    # ------------------------------------------------------------------- token

    def _current_token(self) -> str:
        """The cached token, fetched under the lock so concurrent callers share one fetch."""
        token = self._token
        if token is not None and time.monotonic() < self._token_refresh_at:
            return token
        with self._token_lock:
            if self._token is None or time.monotonic() >= self._token_refresh_at:
                self._fetch_token()
            assert self._token is not None
            return self._token

    def _invalidate_token(self, used: str) -> None:
        """Drop ``used`` unless another thread has already replaced it."""
        with self._token_lock:
            if self._token == used:
                self._token = None

    def _fetch_token(self) -> None:
        params = {"appkey": self._app_key, "appsecret": self._app_secret}
        payload = self._retrying("GET", GETTOKEN, params, None)
        if payload["errcode"] != 0:
            raise error_from_payload(GETTOKEN, payload)
        token = payload.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(GETTOKEN, "malformed response: no access_token")
        register_secret(token)
        expires_in = payload.get("expires_in")
        if type(expires_in) not in (int, float) or not 0 < expires_in < float("inf"):
            expires_in = rules.TOKEN_TTL_SECONDS
        margin = min(self._token_refresh_margin, expires_in / 10)
        self._token_refresh_at = time.monotonic() + expires_in - margin
        self._token = token
        if self._ever_had_token:
            with self._stats_lock:
                self._token_refreshes += 1
        self._ever_had_token = True

    # ---------------------------------------------------------------- requests

    def _call(
        self,
        method: str,
        endpoint: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        userids: Sequence[str] = (),
    ) -> dict:
        """An authenticated call; a rejected token is replaced and the call retried once."""
        refreshed = False
        while True:
            token = self._current_token()
            payload = self._retrying(method, endpoint, {**(params or {}), "access_token": token}, body)
            errcode = payload["errcode"]
            if errcode == 0:
                return payload
            if not refreshed and is_token_error(errcode, payload.get("sub_code")):
                refreshed = True
                code = f"{errcode}/{payload.get('sub_code')}" if errcode == 88 else str(errcode)
                log.warning("%s: access token rejected (errcode %s); retry with a new token", endpoint, code)
                self._invalidate_token(token)
                continue
            raise error_from_payload(endpoint, payload, userids, token_refreshed=refreshed)

    def _retrying(self, method: str, endpoint: str, params: Mapping[str, Any], body: Mapping[str, Any] | None) -> dict:
        """Repeat transient failures with backoff; returns the first definite errcode answer."""
        deadline: float | None = None
        attempt = 0
        while True:
            attempt += 1
            if self._banned_until:
                deadline = self._wait_out_ban(endpoint, deadline)
            outcome = self._attempt(method, endpoint, params, body)
            if isinstance(outcome, dict):
                if not is_retryable(outcome["errcode"]):
                    return outcome
                failure = _Failure(error_from_payload(endpoint, outcome), ambiguous=False)
            else:
                failure = outcome
                if endpoint == CHAT_CREATE and failure.ambiguous:  # before anything else: never a second create
                    raise AmbiguousCreateError(
                        endpoint,
                        f"outcome unknown ({failure.error.errmsg})",
                        detail="the chat may have been created: do not create it again blindly; "
                        "check DingTalk and record an existing chat with `dtchat import KEY CHATID`",
                    )
                if not failure.retry:
                    raise failure.error
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._max_retry_seconds
            remaining = deadline - now
            if failure.ban and failure.wait is not None:
                with self._stats_lock:  # every call of this client waits it out (or gives up at once)
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

    def _wait_out_ban(self, endpoint: str, deadline: float | None) -> float | None:
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
    def _ban_error(endpoint: str, wait: float, remaining: float) -> IpBanError:
        return IpBanError(
            endpoint,
            f"DingTalk banned this IP for {wait:.0f} s, longer than the {max(remaining, 0):.0f} s "
            "retry budget left; try again later",
        )

    def _attempt(
        self, method: str, endpoint: str, params: Mapping[str, Any], body: Mapping[str, Any] | None
    ) -> dict | _Failure:
        """One rate-limited HTTP request: a payload with an int errcode, or a failure."""
        limiter = self._limiters.get(endpoint) or self._limiter(endpoint)
        ticket = limiter.acquire()
        if self._ip_bucket is not None:
            self._ip_bucket.acquire()
        with self._stats_lock:
            self._calls[endpoint] += 1
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        started = time.monotonic()
        try:
            response = self._adapter.send(
                self._prepare(method, endpoint, params, data),
                stream=False,
                timeout=self._timeout,
                verify=self._session.verify,
                cert=None,
                proxies=self._session.proxies,
            )
            content = response.content
        except (requests.exceptions.RequestException, ValueError) as exc:
            outcome = self._network_failure(endpoint, exc)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s -> %s (%d ms)", method, endpoint, type(exc).__name__, (time.monotonic() - started) * 1000
                )
            return outcome
        try:
            payload = json.loads(content)
        except ValueError:
            payload = None
        status = response.status_code
        errcode = errcode_of(payload.get("errcode")) if isinstance(payload, dict) else None
        if log.isEnabledFor(logging.DEBUG):
            chatid = params.get("chatid") or (body or {}).get("chatid")
            log.debug(
                "%s %s%s -> HTTP %d, errcode %s (%d ms)",
                method,
                endpoint,
                f" chatid={chatid}" if chatid else "",
                status,
                errcode,
                (time.monotonic() - started) * 1000,
            )
        if errcode is not None and (200 <= status < 300 or 400 <= status < 500):
            assert isinstance(payload, dict)
            payload["errcode"] = errcode
            if errcode in THROTTLE_ERRCODES:
                cut = limiter.throttled(ticket)
                if cut is not None:
                    with self._stats_lock:
                        self._rate_cuts += 1
                    log.warning(
                        "%s: DingTalk is throttling (errcode %d); pacing this API at %.1f calls/s",
                        endpoint,
                        errcode,
                        cut,
                    )
            else:
                limiter.succeeded()
            return payload
        return self._odd_answer(endpoint, response, payload)

    def _prepare(
        self, method: str, endpoint: str, params: Mapping[str, Any], data: bytes | None
    ) -> requests.PreparedRequest:
        """This endpoint's request, prepared once by requests, with this call's query and body.

        ``Session.request`` re-prepares everything (URL parsing and IDNA,
        merging headers, cookies, hooks, URL auth) and ``Session.send`` merges
        the environment, persists cookies and resolves redirects, on every
        call: together most of the client's CPU per call. For one base URL and
        a fixed set of endpoints only the query string and the body change.
        The query is encoded as requests encodes ``params`` (``urlencode``).
        """
        template = self._templates.get((method, endpoint))
        if template is None:
            headers = _JSON_HEADERS if method == "POST" else None
            template = self._session.prepare_request(requests.Request(method, self._base + endpoint, headers=headers))
            self._templates[(method, endpoint)] = template
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = f"{template.url}?{urlencode(params)}" if params else template.url
        prepared.headers = template.headers.copy()
        prepared.hooks = template.hooks
        prepared._cookies = template._cookies  # read by redirect handling only, which never runs
        if data is not None:
            prepared.body = data
            prepared.headers["Content-Length"] = str(len(data))
        return prepared

    def _odd_answer(self, endpoint: str, response: requests.Response, payload: Any) -> _Failure:
        """An answer without an errcode: a redirect, an IP ban, a server error or not DingTalk at all."""
        status = response.status_code
        where = f"{self._shown_base}{endpoint}"
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            target = strip_userinfo(location.split("?", 1)[0].split("#", 1)[0])[:200]
            text = f"DingTalk answered with a redirect (HTTP {status}{f' to {target}' if target else ''}); "
            text += "redirects are never followed (they would carry credentials elsewhere): check --api-base"
            return _Failure(TransportError(endpoint, text), ambiguous=False, retry=False)
        if status >= 500:
            return _Failure(TransportError(endpoint, f"HTTP {status} from {where}"), ambiguous=True)
        text = response.content[:65536].decode("utf-8", "replace") if payload is None else ""
        wait = _wait_hint(payload, text)
        if _is_ban(payload, wait):
            hint = f"; wait {wait:g} s" if wait is not None else ""
            error = IpBanError(endpoint, f"rate limited: DingTalk answered with an IP-ban page{hint}")
            return _Failure(error, ambiguous=False, wait=wait, ban=True)  # a definite refusal: creates too
        if status in (408, 429):
            return _Failure(TransportError(endpoint, f"HTTP {status} from {where}"), ambiguous=False)
        if 400 <= status < 500:
            text = f"HTTP {status} from {where}: not the DingTalk API; check --api-base"
            return _Failure(TransportError(endpoint, text), ambiguous=False, retry=False)
        text = f"unexpected answer (HTTP {status}, not a DingTalk JSON reply)"
        return _Failure(TransportError(endpoint, text), ambiguous=True)

    def _network_failure(self, endpoint: str, exc: Exception) -> _Failure:
        """Classify a requests exception into a clean one-line error; its text (with the URL) is never used."""
        base = self._shown_base
        if isinstance(exc, requests.exceptions.ProxyError):
            error = TransportError(endpoint, f"cannot connect through the proxy {self._proxy}: {_reason(exc)}")
            return _Failure(error, ambiguous=False, attempts=CONNECT_ATTEMPTS)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Failure(
                TransportError(endpoint, f"timed out connecting to {base}"), ambiguous=False, attempts=CONNECT_ATTEMPTS
            )
        if isinstance(exc, requests.exceptions.Timeout):
            return _Failure(ReadTimeoutError(endpoint, f"no answer from {base} in time (read timeout)"), ambiguous=True)
        if isinstance(exc, requests.exceptions.SSLError):
            error = TransportError(endpoint, f"cannot connect to {base}: {_reason(exc)}")
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
                error = TransportError(endpoint, f"cannot connect to {base}: host name not found; check --api-base")
                return _Failure(error, ambiguous=False, retry=False)
            if _never_sent(exc):
                error = TransportError(endpoint, f"cannot connect to {base}: {_reason(exc)}")
                return _Failure(error, ambiguous=False, attempts=CONNECT_ATTEMPTS)
            return _Failure(TransportError(endpoint, f"connection to {base} failed: {_reason(exc)}"), ambiguous=True)
        reason = redact(str(exc)).replace(self._base, base)[:200]
        return _Failure(TransportError(endpoint, f"cannot call {base}: {reason}"), ambiguous=False, retry=False)


def _dedupe(items: Iterable[Any]) -> list:
    """Each item once, first occurrence kept (a user may be listed in several places)."""
    return list(dict.fromkeys(items))
