"""A state kept in an S3-compatible object store: ``--state s3://BUCKET/KEY`` (the ``s3`` extra, boto3).

On a CI runner a state file dies with the runner: a job killed mid-apply loses the chat ids it just created
and the write-ahead ``pending_create`` marks that exist for exactly that moment, and two runners never see
each other's local lock. An object in a bucket outlives the runner, so the same rules hold (design §6):

* **Every write is conditional**: ``If-Match`` the ETag this run last read or wrote (``If-None-Match: *`` when
  there was no state yet). A failed condition (412, or 409 ``ConditionalRequestConflict``) means another writer:
  :class:`~reconciler.state.StateError`, which stops an apply at once (fatal); what was written stays written.
  A write-ahead ``pending_create`` is therefore durably in the store before the create is sent.
* **An expiring lock object** ``KEY.lock`` beside the state, created with ``If-None-Match: *``, says who holds
  it (user@host, pid), where (the CI job), since when and until when; a thread renews it (``If-Match`` its own
  ETag) while the run lasts. Another run is refused with who holds it, or waits (``--lock-timeout``); an
  expired lock (its holder died) is taken over, conditional on its ETag; ``dtchat state unlock LOCK_ID``
  removes one at once. Expiry is judged on the store's clock (the lock's Last-Modified against the answer's
  Date), so runners with skewed clocks agree.
* **The store must enforce the conditions.** A store that ignores ``If-Match``/``If-None-Match`` would make all
  of the above silently unsafe, so the first lock taken in a process checks, on the lock object it holds, that
  both are refused when they should be, and refuses to go on otherwise.

The endpoint and the credentials come only from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, the config files): never from YAML or flags,
and no message names them (the secret key is also masked in every output, as DingTalk's secrets are).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from .backends.redact import redact, register_secret
from .state import RemoteStatePath, StateError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "a remote state (s3://) needs boto3, which is not installed: pip install 'dingtalk-chat-reconciler[s3]' "
    "(from a clone: .venv/bin/pip install -e '.[s3]')"
)
#: The lock's lifetime in seconds unless renewed (env, for slow stores or tests); renewed every quarter of it.
ENV_LOCK_TTL = "DTCHAT_LOCK_TTL"
DEFAULT_LOCK_TTL = 120.0
LOCK_FORMAT = "dtchat-state-lock"
#: A failed condition: the object changed (412), a concurrent conditional write won (409), or the object an
#: ``If-Match`` named is gone (404 on AWS; some stores say 412).
_CONFLICTS = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
#: An ETag no object has: the probe's ``If-Match`` must fail.
_NO_SUCH_ETAG = '"00000000000000000000000000000000"'

_clients: dict[tuple[tuple[str, str], ...], Any] = {}
_clients_lock = threading.Lock()
#: (endpoint, bucket) pairs whose store was seen to enforce conditional writes, in this process.
_enforcing: set[tuple[str, str]] = set()


def _client() -> Any:
    """One boto3 S3 client per AWS environment, configured only from it (bounded timeouts and retries)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StateError(INSTALL_HINT) from None
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    with _clients_lock:
        client = _clients.get(environment)
        if client is not None:
            return client
        for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            if os.environ.get(name):
                register_secret(os.environ[name])  # masked in every line dtchat prints, should one ever hold it
        settings: dict[str, Any] = {
            "connect_timeout": 10,
            "read_timeout": 30,
            "retries": {"mode": "standard", "max_attempts": 3},
        }
        # botocore >= 1.36 adds CRC checksums (and aws-chunked bodies) that several S3-compatible stores refuse;
        # a state is a small JSON PUT over TLS: checksums only where the API requires them, unless AWS_… says.
        for setting, env in (
            ("request_checksum_calculation", "AWS_REQUEST_CHECKSUM_CALCULATION"),
            ("response_checksum_validation", "AWS_RESPONSE_CHECKSUM_VALIDATION"),
        ):
            if not os.environ.get(env):
                settings[setting] = "when_required"
        try:
            try:
                config = Config(**settings)
            except TypeError:  # an older botocore: it has neither setting, and sends no checksum by default
                config = Config(**{k: v for k, v in settings.items() if "checksum" not in k})
            client = boto3.session.Session().client("s3", config=config)
        except Exception as exc:  # a bad profile, region or endpoint in the AWS environment
            raise StateError(_scrub(f"cannot use the AWS configuration for the remote state: {exc}")) from None
        _clients[environment] = client
        return client


def _scrub(text: str) -> str:
    """No query string of any URL (a presigned one carries a signature), no registered secret, one line."""
    text = re.sub(r"(https?://[^\s?#'\"<>]*)\?[^\s'\"<>]*", r"\1", text)
    return " ".join(redact(text).split())


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or "")
    return code or str((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or "")


def _is_client_error(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)


def _failure(where: str, doing: str, exc: Exception) -> StateError:
    """A store error as one line: what failed, the store's code, and what to check."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, ClientError):
        code = _code(exc)
        message = str((exc.response.get("Error") or {}).get("Message") or "")
        what = f"{code}{': ' + message if message and message != code else ''}"
        hints = {
            "AccessDenied": "check the credentials (AWS_ACCESS_KEY_ID…, AWS_PROFILE) and the bucket's policy",
            "403": "check the credentials (AWS_ACCESS_KEY_ID…, AWS_PROFILE) and the bucket's policy",
            "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID / AWS_PROFILE",
            "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY and the region (AWS_REGION)",
            "NoSuchBucket": "the bucket does not exist (dtchat never creates one); check --state",
            "PermanentRedirect": "the bucket is in another region: set AWS_REGION (or AWS_ENDPOINT_URL)",
            "SecondLevelDomainForbidden": "this store wants virtual-hosted addressing (docs/remote-state.md)",
        }
        hint = hints.get(code, "")
    elif isinstance(exc, NoCredentialsError):
        what, hint = "no AWS credentials", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    elif isinstance(exc, EndpointConnectionError):
        what, hint = str(exc), "check AWS_ENDPOINT_URL and the network"
    else:
        what, hint = f"{type(exc).__name__}: {exc}", ""
    return StateError(_scrub(f"{where}: cannot {doing}: {what}{'; ' + hint if hint else ''}"))


def lock_ttl() -> float:
    raw = os.environ.get(ENV_LOCK_TTL, "").strip()
    if not raw:
        return DEFAULT_LOCK_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not 1 <= ttl <= 3600:
        raise StateError(f"{ENV_LOCK_TTL}={raw!r}: must be a number of seconds from 1 to 3600")
    return ttl


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _iso(moment: _dt.datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this container
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _ci_where() -> str:
    """The CI job this run is, from the variables GitHub Actions and GitLab CI set; "" elsewhere."""
    env = os.environ
    if env.get("GITHUB_RUN_ID"):
        repo, server = env.get("GITHUB_REPOSITORY", ""), env.get("GITHUB_SERVER_URL", "https://github.com")
        url = f"{server}/{repo}/actions/runs/{env['GITHUB_RUN_ID']}" if repo else f"run {env['GITHUB_RUN_ID']}"
        job = f" job {env['GITHUB_JOB']}" if env.get("GITHUB_JOB") else ""
        return f"GitHub Actions {url}{job}"
    if env.get("CI_JOB_ID"):
        return f"GitLab CI job {env.get('CI_JOB_URL') or env['CI_JOB_ID']}"
    return "CI" if env.get("CI") else ""


def _plain(value: Any, limit: int = 200) -> str:
    """A field of a lock someone else wrote, fit for one line of output."""
    text = "".join(c for c in str(value) if c.isprintable())
    return text[:limit]


@dataclass(frozen=True)
class Holder:
    """The lock object as read: whose it is and whether it expired (on the store's clock)."""

    id: str
    who: str
    pid: str
    where: str
    since: str
    until: str
    etag: str
    expired: bool

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid else "pid unknown"
        where = f", {self.where}" if self.where else ""
        return f"{self.who} ({pid}{where}) since {self.since}"


class S3Store:
    """The state object and its lock in one bucket (see the module's docstring)."""

    def __init__(self, where: RemoteStatePath) -> None:
        self.where = where
        self.client = _client()
        self.lock_key = where.key + ".lock"
        self._lock_id: str | None = None
        self._lock_etag: str | None = None
        self._lock_body: dict[str, Any] = {}
        #: Why this run no longer holds its lock (set by the renewal thread), or None.
        self._lost: str | None = None
        self._guard = threading.Lock()

    @property
    def lock_url(self) -> str:
        return f"{self.where.url}.lock"

    # -- the state object -------------------------------------------------------------------------
    def read(self) -> tuple[bytes | None, str | None]:
        try:
            answer = self.client.get_object(Bucket=self.where.bucket, Key=self.where.key)
            return answer["Body"].read(), answer["ETag"]
        except Exception as exc:
            if _is_client_error(exc) and _code(exc) in _MISSING:
                return None, None
            raise _failure(self.where.url, "read the state", exc) from None

    def exists(self) -> bool:
        return self._etag_now() is not None

    def _etag_now(self) -> str | None:
        try:
            return str(self.client.head_object(Bucket=self.where.bucket, Key=self.where.key)["ETag"])
        except Exception as exc:
            if _is_client_error(exc) and _code(exc) in _MISSING:
                return None
            raise _failure(self.where.url, "read the state", exc) from None

    def write(self, text: str, version: str | None) -> str | None:
        self._check_held()
        body = text.encode("utf-8")
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            answer = self.client.put_object(
                Bucket=self.where.bucket, Key=self.where.key, Body=body, ContentType="application/json", **condition
            )
            return str(answer["ETag"])
        except Exception as exc:
            if not (_is_client_error(exc) and _code(exc) in _CONFLICTS | _MISSING):
                raise _failure(self.where.url, "write the state", exc) from None
        landed = self._landed(self.where.key, body)  # a retried PUT whose first attempt did land is ours
        if landed is not None:
            return landed
        raise self._conflict()

    def check_current(self, version: str | None) -> None:
        self._check_held()
        if self._lock_id is not None:
            holder = self._read_lock()
            if holder is None or holder.id != self._lock_id:
                now = f"held by {holder.describe()}" if holder else "gone"
                self._lose(f"its lock {self.lock_url} is {now}", say=False)  # the error says it
                self._check_held()
        if self._etag_now() != version:
            raise self._conflict()

    def _conflict(self) -> StateError:
        return StateError(
            f"{self.where.url}: another writer changed the state since this run read it (a second dtchat run, "
            "a `dtchat state push --force`, or a hand edit); this run stops here: nothing more is sent to "
            "DingTalk, and what it recorded so far is in the store; run it again to plan from the current state"
        )

    def _landed(self, key: str, body: bytes) -> str | None:
        """The object's ETag if it holds exactly ``body`` (our own write, whose answer was lost), else None."""
        try:
            answer = self.client.get_object(Bucket=self.where.bucket, Key=key)
            return str(answer["ETag"]) if answer["Body"].read() == body else None
        except Exception:
            return None

    # -- the lock ---------------------------------------------------------------------------------
    def check_held(self) -> None:
        self._check_held()

    def _check_held(self) -> None:
        if self._lost is not None:
            raise StateError(
                f"{self.where.url}: this run no longer holds the lock ({self._lost}); it stops here: nothing "
                "more is sent to DingTalk or written to the state"
            )

    def _lose(self, why: str, *, say: bool = True) -> None:
        """From now on every write fails; ``say`` it at once when found in the background (the run may have
        nothing more to write, and should still tell)."""
        with self._guard:
            if self._lost is None:
                self._lost = why
                if say:
                    log.error("%s: this run lost its lock: %s; it writes nothing more", self.where.url, why)

    def _put_lock(self, **condition: str) -> str:
        body = json.dumps(self._lock_body, ensure_ascii=False).encode("utf-8")
        answer = self.client.put_object(
            Bucket=self.where.bucket, Key=self.lock_key, Body=body, ContentType="application/json", **condition
        )
        return str(answer["ETag"])

    def _stamp(self, ttl: float) -> None:
        self._lock_body["until"] = _iso(_now() + _dt.timedelta(seconds=ttl))

    def _read_lock(self) -> Holder | None:
        try:
            answer = self.client.get_object(Bucket=self.where.bucket, Key=self.lock_key)
            raw = answer["Body"].read()
        except Exception as exc:
            if _is_client_error(exc) and _code(exc) in _MISSING:
                return None
            raise _failure(self.lock_url, "read the lock", exc) from None
        etag = str(answer["ETag"])
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT:
                raise ValueError("not a dtchat lock")
            ttl = float(data.get("ttl_seconds", DEFAULT_LOCK_TTL))
            if not 1 <= ttl <= 3600:
                raise ValueError("ttl out of range")
        except (ValueError, TypeError, UnicodeDecodeError):
            data, ttl = {"id": etag.strip('"'), "who": "something that is not a dtchat lock"}, DEFAULT_LOCK_TTL
        headers = (answer.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        try:
            server_now = parsedate_to_datetime(headers["date"])
        except (KeyError, TypeError, ValueError):
            server_now = _now()
        modified = answer.get("LastModified")
        expired = isinstance(modified, _dt.datetime) and server_now >= modified + _dt.timedelta(seconds=ttl)
        return Holder(
            id=_plain(data.get("id", ""), 64),
            who=_plain(data.get("who", "unknown")),
            pid=_plain(data.get("pid", ""), 16),
            where=_plain(data.get("where", "")),
            since=_plain(data.get("since", "?"), 40),
            until=_plain(data.get("until", "?"), 40),
            etag=etag,
            expired=expired,
        )

    def _refusal(self, holder: Holder, waited: float, flag: str) -> StateError:
        after = f" (waited {waited:g} s)" if waited else ""
        return StateError(
            f"{self.where.url} is locked by {holder.describe()}, until {holder.until} unless it renews it{after}; "
            f"lock id {holder.id}. Wait for it with --lock-timeout DURATION (e.g. 10m), or if that run is dead: "
            f"`dtchat state unlock {holder.id}{flag}`"
        )

    def _acquire(self, timeout: float, flag: str) -> None:
        ttl = lock_ttl()
        self._lock_id = uuid.uuid4().hex
        self._lock_body = {
            "format": LOCK_FORMAT,
            "id": self._lock_id,
            "who": _who(),
            "pid": os.getpid(),
            "where": _ci_where(),
            "state": self.where.url,
            "since": _iso(_now()),
            "until": "",
            "ttl_seconds": ttl,
        }
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            self._stamp(ttl)
            try:
                self._lock_etag = self._put_lock(IfNoneMatch="*")
                return
            except Exception as exc:
                if not (_is_client_error(exc) and _code(exc) in _CONFLICTS):
                    raise _failure(self.lock_url, "take the lock", exc) from None
            holder = self._read_lock()
            if holder is not None and holder.id == self._lock_id:  # our retried create landed
                self._lock_etag = holder.etag
                return
            if holder is not None and holder.expired:
                try:
                    self._lock_etag = self._put_lock(IfMatch=holder.etag)
                except Exception as exc:
                    if not (_is_client_error(exc) and _code(exc) in _CONFLICTS | _MISSING):
                        raise _failure(self.lock_url, "take the lock", exc) from None
                else:
                    log.warning(
                        "%s: took over the expired lock of %s (lock id %s)",
                        self.where.url,
                        holder.describe(),
                        holder.id,
                    )
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if holder is None:  # it came and went as we looked: try once more, not forever
                    holder = self._read_lock()
                    if holder is None:
                        continue
                raise self._refusal(holder, timeout, flag)
            if holder is not None and not waiting:
                waiting = True
                log.warning(
                    "%s is locked by %s (lock id %s); waiting up to %g s for it",
                    self.where.url,
                    holder.describe(),
                    holder.id,
                    timeout,
                )
            time.sleep(min(1.0, remaining) if holder is not None else 0.05)

    def _verify_enforced(self) -> None:
        """Refuse a store that ignores If-None-Match or If-Match: checked on the lock this run holds (both
        writes below must fail; if one lands, it rewrote our own lock with what it already held)."""
        endpoint = str(getattr(self.client.meta, "endpoint_url", ""))
        if (endpoint, self.where.bucket) in _enforcing:
            return
        for header, condition in (("If-None-Match: *", {"IfNoneMatch": "*"}), ("If-Match", {"IfMatch": _NO_SUCH_ETAG})):
            try:
                self._lock_etag = self._put_lock(**condition)
            except Exception as exc:
                if _is_client_error(exc) and _code(exc) in _CONFLICTS:
                    continue
                self._release()
                raise _failure(
                    self.lock_url, f"use this store: a conditional write ({header}) was refused", exc
                ) from None
            self._release()
            raise StateError(
                f"{self.where.url}: this store ignored {header} on a write (it replaced an object it should have "
                "left alone), so it cannot keep a state safe from two writers; a remote state needs a store that "
                "enforces conditional writes (docs/remote-state.md); nothing was changed"
            )
        _enforcing.add((endpoint, self.where.bucket))

    def _renew(self, stop: threading.Event, ttl: float) -> None:
        """Every quarter of the lifetime: renew with If-Match our own ETag; a failed condition means it was
        taken over or removed, and this run must write nothing more."""
        held_until = time.monotonic() + ttl
        while not stop.wait(ttl / 4):
            self._stamp(ttl)
            try:
                with self._guard:
                    etag = self._lock_etag or ""
                new = self._put_lock(IfMatch=etag)
            except Exception as exc:
                if _is_client_error(exc) and _code(exc) in _CONFLICTS | _MISSING:
                    holder = self._read_lock_quietly()
                    if holder is not None and holder.id == self._lock_id:  # our retried renewal landed
                        new = holder.etag
                    else:
                        now = f"held by {holder.describe()}" if holder else "gone (unlocked)"
                        self._lose(f"its lock was taken over or removed: {self.lock_url} is now {now}")
                        return
                else:
                    if time.monotonic() >= held_until:
                        self._lose(f"its lock could not be renewed before it expired ({_scrub(str(exc))})")
                        return
                    log.warning("%s: could not renew the lock (%s); trying again", self.where.url, _code(exc) or exc)
                    continue
            with self._guard:
                self._lock_etag = new
            held_until = time.monotonic() + ttl

    def _read_lock_quietly(self) -> Holder | None:
        try:
            return self._read_lock()
        except StateError:
            return None

    def _release(self) -> None:
        """Remove our lock if it is still ours (checked just before: it cannot have expired meanwhile)."""
        try:
            holder = self._read_lock()
            if holder is not None and holder.id == self._lock_id:
                self._delete_lock(holder.etag)
        except Exception as exc:
            if _is_client_error(exc) and _code(exc) in _CONFLICTS | _MISSING:
                return  # taken over, or removed, since it was read: not ours to remove any more
            log.warning(
                "%s: could not remove this run's lock (%s); it expires by itself, or run `dtchat state unlock %s`",
                self.where.url,
                _scrub(str(exc)),
                self._lock_id,
            )

    def _delete_lock(self, etag: str) -> None:
        """Remove the lock object only if it is still the one read (``If-Match``), so a lock another run took over
        in between is never removed. A store that refuses a conditional delete (not one that fails its condition)
        gets a plain one: the lock's id was compared just before, as the best it allows."""
        try:
            self.client.delete_object(Bucket=self.where.bucket, Key=self.lock_key, IfMatch=etag)
        except Exception as exc:
            if not _is_client_error(exc) or _code(exc) in _CONFLICTS | _MISSING:
                raise
            self.client.delete_object(Bucket=self.where.bucket, Key=self.lock_key)

    @contextlib.contextmanager
    def locked(self, timeout: float, *, flag: str = "") -> Iterator[None]:
        """Hold the lock for the ``with`` block, renewed in the background; refused (or waited for) if held."""
        ttl = lock_ttl()
        self._acquire(timeout, flag)
        self._verify_enforced()
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(stop, ttl), name="dtchat-lock-renewal", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join(timeout=60)  # a renewal in flight is bounded by the client's timeouts
            if self._lost is None:
                self._release()

    def unlock(self, lock_id: str) -> str:
        """Remove the lock ``lock_id`` (a dead run's); refused if the lock now there has another id."""
        holder = self._read_lock()
        if holder is None:
            raise StateError(f"{self.lock_url}: there is no lock (no run holds {self.where.url}); nothing was changed")
        if holder.id != lock_id:
            raise StateError(
                f"{self.lock_url}: the lock there is {holder.id}, held by {holder.describe()}, not {lock_id}; "
                "nothing was removed"
            )
        try:
            self._delete_lock(holder.etag)
        except Exception as exc:
            if _is_client_error(exc) and _code(exc) in _CONFLICTS | _MISSING:
                raise StateError(
                    f"{self.lock_url}: the lock changed since it was read (another run took it, or removed it); "
                    "nothing was removed"
                ) from None
            raise _failure(self.lock_url, "remove the lock", exc) from None
        state = (
            "it had expired"
            if holder.expired
            else f"it was held until {holder.until}: if that run is alive, it stops at its next write"
        )
        return f"Removed the lock {holder.id} of {holder.describe()} from {self.where.url} ({state})."
