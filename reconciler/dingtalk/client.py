"""The DingTalk HTTP client: the only code in dtchat that talks to DingTalk.

It owns the access token, client-side rate limiting, retries with backoff,
the errcode -> exception mapping and keeping secrets out of logs and errors.
It sends exactly what the caller gives (batching is the applier's job).
"""
from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from .. import rules
from .errors import (
    GETTOKEN,
    AmbiguousCreateError,
    AuthError,
    DingTalkError,
    ThrottledError,
    TransportError,
    error_from_payload,
    is_retryable,
    is_token_error,
)
from .ratelimit import TokenBucket
from .redact import install_log_filter, redact, register_secret

log = logging.getLogger("reconciler.dingtalk")

CHAT_GET = "/chat/get"
CHAT_CREATE = "/chat/create"
CHAT_UPDATE = "/chat/update"
CHAT_SEND = "/chat/send"
CHAT_READ_LIST = "/chat/getReadList"

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
    wait: Optional[float] = None


_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")


def _describe_network(base: str, exc: requests.exceptions.RequestException) -> str:
    """A short, secret-free reason: "cannot connect to https://host: Connection refused"."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"timed out connecting to {base}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer from {base} in time (read timeout)"
    text = redact(str(exc))
    if "Failed to resolve" in text or "Name or service not known" in text:
        return f"cannot connect to {base}: host name not found"
    reason = text.rsplit(": ", 1)[-1].strip(" \"')(")
    reason = _ERRNO_PREFIX.sub("", reason) or type(exc).__name__
    if isinstance(exc, requests.exceptions.ConnectionError) and _never_sent(exc):
        return f"cannot connect to {base}: {reason}"
    return f"connection to {base} failed: {reason}"


def _never_sent(exc: BaseException) -> bool:
    """True when the connection was never established, so the server never saw the request."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, NewConnectionError):
            return True
        linked = (getattr(err, "reason", None), err.__cause__, err.__context__, *err.args)
        stack.extend(x for x in linked if isinstance(x, BaseException))
    return False


def _wait_hint(payload: Any, text: str) -> Optional[float]:
    """The ``wait`` seconds of an IP-ban answer (JSON or HTML), if it carries one."""
    if isinstance(payload, dict):
        wait = payload.get("wait")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0:
            return float(wait)
        return None
    match = _HTML_WAIT.search(text)
    return float(match.group(1)) if match else None


class DingTalkClient:
    """A thread-safe client for DingTalk's legacy chat API."""

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
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        register_secret(app_secret)
        install_log_filter()
        self._app_key = app_key
        self._app_secret = app_secret
        self._base = api_base.rstrip("/")
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._token_refresh_margin = token_refresh_margin
        self._bucket = TokenBucket(rate=max_qps * (1 - rules.RATE_HEADROOM), capacity=1)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._token_lock = threading.Lock()
        self._token: Optional[str] = None
        self._token_refresh_at = 0.0
        self._ever_had_token = False
        self._stats_lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._retries = 0
        self._token_refreshes = 0

    def __repr__(self) -> str:
        return f"DingTalkClient(app_key={self._app_key!r}, api_base={self._base!r})"

    # ----------------------------------------------------------------- API calls

    def get_chat(self, chatid: str) -> dict:
        """Read one chat; returns the raw ``chat_info`` dict."""
        payload = self._call("GET", CHAT_GET, params={"chatid": chatid})
        return self._require(payload, CHAT_GET, "chat_info", dict)

    def create_chat(
        self, name: str, owner: str, userids: Sequence[str], settings: Optional[Mapping[str, int]] = None
    ) -> str:
        """Create a chat (not idempotent: an unknown outcome raises AmbiguousCreateError)."""
        body: dict[str, Any] = {"name": name, "owner": owner, "useridlist": list(userids)}
        body.update(self._settings(settings))
        payload = self._call("POST", CHAT_CREATE, body=body, userids=body["useridlist"])
        return self._require(payload, CHAT_CREATE, "chatid", str)

    def update_chat(
        self,
        chatid: str,
        *,
        name: Optional[str] = None,
        owner: Optional[str] = None,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        settings: Optional[Mapping[str, int]] = None,
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
        userids = [*([owner] if owner is not None else []), *add, *remove]
        self._call("POST", CHAT_UPDATE, body=body, userids=userids)

    def send_message(self, chatid: str, message: Mapping[str, Any]) -> str:
        """Send a message object (``{"msgtype": ..., ...}``) to a chat; returns its messageId."""
        payload = self._call("POST", CHAT_SEND, body={**message, "chatid": chatid})
        return self._require(payload, CHAT_SEND, "messageId", str)

    def send_text(self, chatid: str, content: str) -> str:
        """Send a plain text message; returns its messageId."""
        return self.send_message(chatid, {"msgtype": "text", "text": {"content": content}})

    def get_read_list(
        self, message_id: str, cursor: int = 0, size: int = rules.READ_LIST_PAGE_MAX
    ) -> tuple[list[str], Optional[int]]:
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
        cursor: Optional[int] = 0
        while cursor is not None:
            ids, next_cursor = self.get_read_list(message_id, cursor)
            yield from ids
            if next_cursor is not None and next_cursor <= cursor:
                raise DingTalkError(CHAT_READ_LIST, f"malformed response: cursor did not advance ({next_cursor})")
            cursor = next_cursor

    # --------------------------------------------------------------- lifecycle

    @property
    def stats(self) -> dict:
        """A snapshot: HTTP requests per endpoint, retries, token re-fetches."""
        with self._stats_lock:
            return {"calls": dict(self._calls), "retries": self._retries, "token_refreshes": self._token_refreshes}

    def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        self._session.close()

    def __enter__(self) -> "DingTalkClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _settings(settings: Optional[Mapping[str, int]]) -> dict[str, int]:
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

    # ------------------------------------------------------------------- token

    def _current_token(self) -> str:
        """The cached token, fetched under the lock so concurrent callers share one fetch."""
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
        if type(expires_in) not in (int, float) or expires_in <= 0:
            expires_in = rules.TOKEN_TTL_SECONDS
        margin = min(self._token_refresh_margin, expires_in / 10)
        self._token = token
        self._token_refresh_at = time.monotonic() + expires_in - margin
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
        params: Optional[Mapping[str, Any]] = None,
        body: Optional[Mapping[str, Any]] = None,
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
            if is_token_error(errcode) and not refreshed:
                refreshed = True
                self._invalidate_token(token)
                continue
            raise error_from_payload(endpoint, payload, userids, token_refreshed=refreshed)

    def _retrying(
        self, method: str, endpoint: str, params: Mapping[str, Any], body: Optional[Mapping[str, Any]]
    ) -> dict:
        """Repeat transient failures with backoff; returns the first definite errcode answer."""
        deadline = time.monotonic() + self._max_retry_seconds
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(method, endpoint, params, body)
            if isinstance(outcome, dict):
                if not is_retryable(outcome["errcode"]):
                    return outcome
                failure = _Failure(error_from_payload(endpoint, outcome), ambiguous=False)
            else:
                failure = outcome
                if endpoint == CHAT_CREATE and failure.ambiguous:
                    raise AmbiguousCreateError(
                        endpoint,
                        f"outcome unknown ({failure.error.errmsg})",
                        detail="the chat may have been created: do not create it again blindly; "
                        "check DingTalk and record an existing chat with `dtchat import KEY CHATID`",
                    )
            remaining = deadline - time.monotonic()
            if failure.wait is not None and failure.wait > remaining:
                raise ThrottledError(
                    endpoint,
                    f"DingTalk banned this IP for {failure.wait:g} s, longer than the {max(remaining, 0):.0f} s "
                    "retry budget left; try again later",
                )
            if attempt >= self._max_attempts:
                raise failure.error
            window = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
            delay = max(random.uniform(0, window), failure.wait or 0.0)
            if delay > remaining:
                raise failure.error
            log.warning("%s %s: %s; retry %d in %.2f s", method, endpoint, failure.error, attempt, delay)
            with self._stats_lock:
                self._retries += 1
            time.sleep(delay)

    def _attempt(
        self, method: str, endpoint: str, params: Mapping[str, Any], body: Optional[Mapping[str, Any]]
    ) -> Union[dict, _Failure]:
        """One rate-limited HTTP request: a payload with an int errcode, or a transient failure."""
        self._bucket.acquire()
        with self._stats_lock:
            self._calls[endpoint] += 1
        chatid = params.get("chatid") or (body or {}).get("chatid")
        where = f"{method} {endpoint}" + (f" chatid={chatid}" if chatid else "")
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        started = time.monotonic()
        try:
            response = self._session.request(
                method,
                self._base + endpoint,
                params=params,
                data=data,
                headers=_JSON_HEADERS if data is not None else None,
                timeout=self._timeout,
            )
        except requests.exceptions.RequestException as exc:
            outcome = self._network_failure(endpoint, exc)
            log.debug("%s -> %s (%d ms)", where, type(exc).__name__, (time.monotonic() - started) * 1000)
            return outcome
        elapsed_ms = (time.monotonic() - started) * 1000
        try:
            payload = json.loads(response.content)
        except ValueError:
            payload = None
        errcode = payload.get("errcode") if isinstance(payload, dict) else None
        if response.status_code < 500 and type(errcode) is int:
            log.debug("%s -> errcode %d (%d ms)", where, errcode, elapsed_ms)
            return payload
        log.debug("%s -> HTTP %d, no errcode (%d ms)", where, response.status_code, elapsed_ms)
        if response.status_code >= 500:
            return _Failure(TransportError(endpoint, f"HTTP {response.status_code}"), ambiguous=True)
        wait = _wait_hint(payload, response.text)
        if wait is not None or (isinstance(payload, dict) and "punish" in payload):
            hint = f"; wait {wait:g} s" if wait is not None else ""
            error: DingTalkError = ThrottledError(endpoint, f"rate limited: DingTalk answered with an IP-ban page{hint}")
            return _Failure(error, ambiguous=True, wait=wait)
        error = TransportError(endpoint, f"unexpected answer (HTTP {response.status_code}, not a DingTalk JSON reply)")
        return _Failure(error, ambiguous=True)

    def _network_failure(self, endpoint: str, exc: requests.exceptions.RequestException) -> _Failure:
        """Classify a requests exception; its text (which holds the URL) is redacted and never chained."""
        text = _describe_network(self._base, exc)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Failure(TransportError(endpoint, text), ambiguous=False)
        if isinstance(exc, requests.exceptions.ConnectionError):
            return _Failure(TransportError(endpoint, text), ambiguous=not _never_sent(exc))
        if isinstance(exc, (requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError,
                            requests.exceptions.ContentDecodingError)):
            return _Failure(TransportError(endpoint, text), ambiguous=True)
        raise TransportError(endpoint, text) from None
