"""The state file: which DingTalk chatid each YAML chat key means.

DingTalk has no "list chats" call, so this mapping is the only way dtchat can
find a chat again. Losing or mangling it means creating chats twice, hence
(design §6):

* one rule for where it is, for every command (:func:`locate_state`), and no
  command ever creates a missing folder for it;
* atomic writes (temp file + fsync + rename) that keep the file's mode;
* an exclusive lock taken on the file's *real* path, so ``./s.json``,
  ``../x/s.json`` and a symlink to it are one lock;
* write-ahead creates: before a create is sent the key is durably
  recorded as ``pending_create``; the chatid replaces it the moment the answer
  arrives; a definite refusal clears it. A crash in between leaves it pending,
  and no later run creates that chat again until a person runs ``dtchat import``
  (it exists) or ``dtchat forget`` (it does not);
* a refusal to touch a file that is corrupt or not ours.

Writes are serialized by a lock, so chats applied in parallel share one writer.

Where the bytes live is a :class:`StateStore`: a local file (:class:`LocalStore`, all of the above), or an
object in an S3-compatible store for ``s3://BUCKET/KEY`` (``remote_state.S3Store``: conditional writes on
the object's ETag and an expiring lock object beside it; boto3 is imported only then). The rules above are
the same for both; only the store and the lock differ.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from .errors import DtchatError
from .files import DuplicateKey, TooDeep, loads_bounded, write_atomic

try:  # POSIX advisory locks; Windows users get no lock (documented).
    import fcntl
except ImportError:  # pragma: no cover - not on our CI
    fcntl = None  # type: ignore[assignment]

FORMAT = "dtchat-state"
VERSION = 1
DEFAULT_NAME = "dtchat.state.json"
ENV_STATE = "DTCHAT_STATE"
#: ``--state s3://BUCKET/KEY``: the state is an object in an S3-compatible store (``remote_state``).
REMOTE_SCHEME = "s3://"
#: The longest ``--lock-timeout`` (every wait is bounded).
MAX_LOCK_TIMEOUT = 6 * 3600.0


class StateError(DtchatError):
    """The state file cannot be found, read, written or locked."""


@dataclass(frozen=True)
class Binding:
    """One key's record: its chatid, or a create whose outcome is unknown."""

    chatid: str | None
    created_at: str | None = None
    #: True when a create was sent (or about to be) and its outcome is unknown.
    pending: bool = False
    #: The chat's id for robot messages and events (answered by its create, or looked up once), if known.
    open_conversation_id: str | None = None
    #: The digest of the resolved desired chat it was last converged to or found in sync with (design §11).
    digest: str | None = None
    #: When that was (UTC, ISO 8601).
    verified_at: str | None = None

    def to_json(self) -> dict:
        data: dict = {"chatid": self.chatid}
        if self.open_conversation_id:
            data["open_conversation_id"] = self.open_conversation_id
        if self.digest:
            data["digest"] = self.digest
            data["verified_at"] = self.verified_at
        if self.created_at:
            data["created_at"] = self.created_at
        if self.pending:
            data["pending_create"] = True
        return data


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def default_path(first_path: str | os.PathLike[str]) -> Path:
    """``dtchat.state.json`` in the folder of the first PATH (the folder itself if PATH is one)."""
    p = Path(first_path)
    folder = p if p.is_dir() else p.parent
    return folder / DEFAULT_NAME


def parse_duration(text: str) -> float:
    """``--lock-timeout``: ``90``, ``90s``, ``10m``, ``1h``, ``1m30s``: seconds, at most six hours."""
    spelled = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", spelled):
        seconds = float(spelled)
    elif spelled and re.fullmatch(r"(\d+(\.\d+)?[hms])+", spelled):
        unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(n) * unit[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([hms])", spelled))
    else:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 10m, 1h)")
    if seconds > MAX_LOCK_TIMEOUT:
        raise ValueError(f"{text!r} is longer than {MAX_LOCK_TIMEOUT / 3600:g} hours")
    return seconds


@dataclass(frozen=True)
class RemoteStatePath:
    """``s3://BUCKET/KEY``: a state kept in an S3-compatible store (``remote_state``). It prints as its URL,
    which names no credential: the endpoint and the credentials come only from the AWS environment."""

    bucket: str
    key: str
    #: How long taking its lock waits for another run (``--lock-timeout``); 0 refuses at once.
    lock_timeout: float = 0.0

    @classmethod
    def parse(cls, url: str, *, lock_timeout: float = 0.0) -> RemoteStatePath:
        bucket, _, key = url[len(REMOTE_SCHEME) :].partition("/")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}", bucket):
            raise StateError(f"{url}: not a state URL; expected s3://BUCKET/KEY, e.g. s3://my-bucket/dtchat.state.json")
        if not key or key.endswith("/") or len(key.encode("utf-8")) > 1000 or not key.isprintable():
            raise StateError(
                f"{url}: needs the state object's key after the bucket, e.g. s3://{bucket}/dtchat/dtchat.state.json"
            )
        return cls(bucket, key, lock_timeout)

    @property
    def url(self) -> str:
        return f"{REMOTE_SCHEME}{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        """The URL, so that comparing two spellings of a state (``os.path.realpath``, as a saved plan's check
        does) works for both kinds; nothing ever opens it as a local file."""
        return self.url

    def exists(self) -> bool:
        from .remote_state import S3Store

        return S3Store(self).exists()


#: Where a state is: a local file, or an object in an S3-compatible store.
StatePath = Path | RemoteStatePath


@dataclass(frozen=True)
class StateLocation:
    """Where this run's state file is, and how to say so in a hint."""

    path: StatePath
    #: The ``--state F`` a follow-up command (import, forget, mv) needs to find the same file; "" if none.
    flag: str = ""

    @property
    def remote(self) -> bool:
        return isinstance(self.path, RemoteStatePath)


def locate_state(
    given: str | None,
    *,
    first_path: str | None = None,
    env: Mapping[str, str] | None = None,
    sandbox_path: Path | None = None,
    must_exist: bool = False,
    lock_timeout: float = 0.0,
) -> StateLocation:
    """The one rule (design §6): ``--state F``, else ``$DTCHAT_STATE``, else beside the first PATH,
    else ``./dtchat.state.json``.

    ``sandbox_path`` replaces the environment and PATH defaults in ``--sandbox`` runs, so sandbox chat
    ids never enter a real state file. ``must_exist`` (import, forget, mv) refuses to guess: with no
    ``--state``, no ``$DTCHAT_STATE`` and no file in the working folder, a new file there would be one
    that ``plan chats/`` never reads.
    The folder must exist: no command creates one. ``s3://BUCKET/KEY`` (as ``--state`` or in
    ``$DTCHAT_STATE``) is a remote state; ``lock_timeout`` is how long its lock is waited for.
    """
    env = os.environ if env is None else env
    from_env = (env.get(ENV_STATE) or "").strip()
    spelled = given or (from_env if sandbox_path is None else "")
    if spelled.startswith(REMOTE_SCHEME):
        remote = RemoteStatePath.parse(spelled, lock_timeout=lock_timeout)
        return StateLocation(remote, _flag_for(remote, env))
    if given:
        path = Path(given)
    elif sandbox_path is not None:
        path = sandbox_path
    elif from_env:
        path = Path(from_env)
    elif first_path:
        path = default_path(first_path)
    else:
        path = Path(DEFAULT_NAME)
        if must_exist and not path.exists():
            raise StateError(
                f"no state file: ./{DEFAULT_NAME} does not exist here; pass --state F "
                f"(the file beside your YAML) or set {ENV_STATE}"
            )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise StateError(f"{path}: the folder {folder} does not exist (dtchat never creates folders); check --state")
    return StateLocation(path, _flag_for(path, env))


def _flag_for(path: StatePath, env: Mapping[str, str]) -> str:
    """The ``--state`` a hint must carry: none when import/forget/mv would find this file by themselves."""
    from_env = (env.get(ENV_STATE) or "").strip()
    if isinstance(path, RemoteStatePath):
        return "" if from_env == path.url else f" --state {_shell_word(path.url)}"
    default = Path(from_env) if from_env else Path(DEFAULT_NAME)
    with contextlib.suppress(OSError):
        if os.path.realpath(default) == os.path.realpath(path):
            return ""
    return f" --state {_shell_word(str(path))}"


def _shell_word(text: str) -> str:
    safe = all(c.isalnum() or c in "-_./:@%+=," for c in text)
    return text if safe and text else "'" + text.replace("'", "'\\''") + "'"


class StateStore(Protocol):
    """Where a state's bytes live. ``read`` and ``write`` carry a version (an ETag) so that a store that
    can make a write conditional on it does: a write must fail, not overwrite, when another writer
    changed the state since this run read it (or, with no version, when one created it)."""

    def read(self) -> tuple[bytes | None, str | None]:
        """The state's bytes and their version; ``(None, None)`` when there is none yet."""
        ...

    def write(self, text: str, version: str | None) -> str | None:
        """Replace the state written at ``version`` (create it, when None) and return the new version."""
        ...

    def check_current(self, version: str | None) -> None:
        """Raise :class:`StateError` unless the state is still at ``version`` and this run still holds its lock."""
        ...

    def check_held(self) -> None:
        """Raise :class:`StateError` if this run is known to have lost its lock (no request: a flag)."""
        ...


class LocalStore:
    """A state file on disk: read whole, replaced atomically; serialized by the lock on its real path
    (``locked``), so it needs no version."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            return self.path.read_bytes(), None
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read state file: {exc.strerror}") from None

    def write(self, text: str, version: str | None) -> str | None:
        try:
            write_atomic(self.path, text)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot write state file: {exc.strerror or exc}") from None
        return None

    def check_current(self, version: str | None) -> None:
        return None

    def check_held(self) -> None:
        return None


def open_store(path: StatePath) -> StateStore:
    if isinstance(path, RemoteStatePath):
        from .remote_state import S3Store  # boto3 only when a remote state is used

        return S3Store(path)
    return LocalStore(path)


class StateFile:
    """A state file on disk. Reads are cheap; every write is atomic, immediate and serialized."""

    def __init__(
        self, path: str | os.PathLike[str] | RemoteStatePath, *, flag: str = "", store: StateStore | None = None
    ) -> None:
        self.path: StatePath = path if isinstance(path, RemoteStatePath) else Path(path)
        #: ``--state F`` for hints (see :class:`StateLocation`).
        self.flag = flag
        self._lock = threading.Lock()
        self._store = store if store is not None else open_store(self.path)
        #: The version (ETag) of the state this run last read or wrote; every write is conditional on it.
        self._version: str | None = None
        #: Whether there was a state to read (False: the first write creates it).
        self.existed = False
        self._bindings: dict[str, Binding] = self._read()

    # -- reading -----------------------------------------------------------
    def _refuse(self, why: str) -> StateError:
        return StateError(f"{self.path}: {why}; refusing to use or overwrite it")

    def _read(self) -> dict[str, Binding]:
        raw, self._version = self._store.read()
        if raw is None:
            return {}
        self.existed = True
        try:
            data = loads_bounded(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise self._refuse("state file is not UTF-8 text") from None
        except TooDeep as exc:
            raise self._refuse(f"state file is {exc}") from None
        except DuplicateKey as exc:
            raise StateError(
                f"{self.path}:{exc.line}:{exc.column}: the key {exc.key!r} is written twice in one object "
                "(a bad merge?); refusing to guess which one is right, or to overwrite it"
            ) from None
        except json.JSONDecodeError as exc:
            raise StateError(
                f"{self.path}:{exc.lineno}:{exc.colno}: state file is not valid JSON ({exc.msg}); "
                "refusing to use or overwrite it"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise self._refuse(f'not a dtchat state file (no "format": "{FORMAT}")')
        if data.get("version") != VERSION:
            raise StateError(
                f"{self.path}: state file version {data.get('version')!r} is not supported (expected {VERSION})"
            )
        chats = data.get("chats")
        if not isinstance(chats, dict):
            raise self._refuse('"chats" must be an object')
        bindings: dict[str, Binding] = {}
        for key, entry in chats.items():
            if not isinstance(entry, dict):
                raise self._refuse(f"chats.{key}: must be an object")
            chatid = entry.get("chatid")
            pending = entry.get("pending_create", False)
            if chatid is not None and (not isinstance(chatid, str) or not chatid):
                raise self._refuse(f"chats.{key}.chatid: must be a non-empty string")
            if not isinstance(pending, bool) or (chatid is None and not pending):
                raise self._refuse(f'chats.{key}: needs a chatid or "pending_create": true')
            created = entry.get("created_at")
            ocid = entry.get("open_conversation_id")
            if ocid is not None and (not isinstance(ocid, str) or not ocid):
                raise self._refuse(f"chats.{key}.open_conversation_id: must be a non-empty string")
            digest, verified = entry.get("digest"), entry.get("verified_at")
            if digest is not None and (not isinstance(digest, str) or not isinstance(verified, str) or pending):
                raise self._refuse(f"chats.{key}.digest: must be a string with a verified_at, on a settled chat")
            bindings[key] = Binding(
                chatid=chatid,
                created_at=created if isinstance(created, str) else None,
                pending=pending,
                open_conversation_id=ocid,
                digest=digest,
                verified_at=verified if digest else None,
            )
        return bindings

    @property
    def bindings(self) -> Mapping[str, Binding]:
        with self._lock:
            return dict(self._bindings)

    def get(self, key: str) -> Binding | None:
        with self._lock:
            return self._bindings.get(key)

    # -- writing -----------------------------------------------------------
    def _write(self, key: str, binding: Binding | None) -> None:
        """Set (or drop) one key and save; on a failed save the memory copy is left as the file is."""
        with self._lock:
            old = self._bindings.get(key)
            if binding is None:
                self._bindings.pop(key, None)
            else:
                self._bindings[key] = binding
            try:
                self._save()
            except StateError:
                if old is None:
                    self._bindings.pop(key, None)
                else:
                    self._bindings[key] = old
                raise

    def record(self, key: str, chatid: str, *, created: bool = False, open_conversation_id: str | None = None) -> None:
        """Bind ``key`` to ``chatid`` and write the file now (a known open conversation id of the same chat is kept)."""
        old = self.get(key)
        same = old is not None and not old.pending and old.chatid == chatid
        created_at = now_iso() if created else (old.created_at if old and not old.pending else None)
        ocid = open_conversation_id or (old.open_conversation_id if same and old else None)
        digest, verified_at = (old.digest, old.verified_at) if same and old else (None, None)
        self._write(
            key,
            Binding(
                chatid=chatid,
                created_at=created_at,
                open_conversation_id=ocid,
                digest=digest,
                verified_at=verified_at,
            ),
        )

    def verified(self, digests: Mapping[str, str]) -> None:
        """Record, in one write, that each key's chat was converged to (or found in sync with) the resolved
        desired chat of ``digest``: later runs need not read it until that changes (design §11)."""
        stamp = now_iso()
        with self._lock:
            snapshot = dict(self._bindings)
            changed = False
            for key, digest in digests.items():
                old = self._bindings.get(key)
                if old is not None and old.chatid and not old.pending:
                    self._bindings[key] = replace(old, digest=digest, verified_at=stamp)
                    changed = True
            if not changed:
                return
            try:
                self._save()
            except StateError:
                self._bindings = snapshot
                raise

    def unverified(self, key: str) -> None:
        """Forget a key's digest (its apply failed part-way): the next run reads the chat again."""
        old = self.get(key)
        if old is not None and old.digest:
            self._write(key, replace(old, digest=None, verified_at=None))

    def remember_open_conversation_id(self, key: str, chatid: str, open_conversation_id: str) -> None:
        """Keep a looked-up open conversation id (a metered call) so it is never looked up again."""
        old = self.get(key)
        if old is not None and old.chatid == chatid and old.open_conversation_id != open_conversation_id:
            self._write(key, replace(old, open_conversation_id=open_conversation_id))

    def begin_create(self, key: str) -> None:
        """Write-ahead: record that a create for ``key`` is about to be sent (design §6)."""
        self._write(key, Binding(chatid=None, created_at=now_iso(), pending=True))

    def abort_create(self, key: str) -> None:
        """The create was definitely refused (an error answer): no chat exists, clear the pending mark."""
        bound = self.get(key)
        if bound is not None and bound.pending:
            self._write(key, None)

    def forget(self, key: str) -> bool:
        """Stop managing ``key`` (the chat itself stays in DingTalk). True if it was known."""
        if self.get(key) is None:
            return False
        self._write(key, None)
        return True

    def move(self, old: str, new: str) -> Binding:
        """Rename a key (after renaming it in YAML) so no second chat is created; refused if ``new`` is bound."""
        with self._lock:
            binding = self._bindings.get(old)
            if binding is None:
                raise StateError(f"{self.path}: no chat key `{old}` in the state file")
            if new in self._bindings:
                raise StateError(
                    f"{self.path}: `{new}` is already bound to {self._bindings[new].chatid or 'a pending create'}; "
                    f"run `dtchat forget {new}{self.flag}` first if that binding is wrong"
                )
            snapshot = dict(self._bindings)
            del self._bindings[old]
            self._bindings[new] = binding
            try:
                self._save()
            except StateError:
                self._bindings = snapshot
                raise
            return binding

    def check_current(self) -> None:
        """Raise :class:`StateError` if another writer changed the state since this run read it, or (a remote
        state) this run lost its lock: called before an apply's first write to DingTalk, so a run that lost
        the race sends nothing. (Every state write is also conditional on the version read, whatever calls
        this.) Free for a local file, which the OS lock alone serializes."""
        with self._lock:
            self._store.check_current(self._version)

    def check_held(self) -> None:
        """Raise :class:`StateError` if this run lost its lock (a remote state whose lock another run took over
        or removed): called before each chat's first write to DingTalk. A flag, no request."""
        self._store.check_held()

    def _save(self) -> None:
        """Atomic replace (caller holds the lock): a crash leaves the old file or the new one; a remote state
        is replaced only if it is still the version this run last read or wrote."""
        data = {
            "format": FORMAT,
            "version": VERSION,
            "chats": {k: self._bindings[k].to_json() for k in sorted(self._bindings)},
        }
        self._version = self._store.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n", self._version)
        self.existed = True


def require_state(location: StateLocation, *, init: bool, command: str, first_path: str | None = None) -> None:
    """A missing state file is an error, not "every chat is new" (design §6): with a fresh checkout or a
    mistyped ``--state``, planning from nothing would create every chat a second time, and DingTalk cannot
    delete chats. ``dtchat init`` (or ``--init`` on this run) is how one starts from nothing."""
    if init or location.path.exists():
        return
    where = f" {_shell_word(first_path)}" if first_path else ""
    beside = first_path is not None and os.path.abspath(default_path(first_path)) == os.path.abspath(location.path)
    flag = "" if beside else f" --state {_shell_word(str(location.path))}"
    if " --sandbox" in location.flag:
        flag += " --sandbox"
    keep = "" if location.remote else " and commit the file it writes"
    raise StateError(
        f"{location.path}: no state file. Without it every chat would look new and be created again; "
        f"if this is the first run, run `dtchat init{where}{flag}`{keep} "
        f"(or pass --init to this {command}); if the file should exist, check --state, ${ENV_STATE} and the checkout"
    )


def init_state(location: StateLocation) -> StatePath:
    """``dtchat init``: write an empty state file where every command will look for it; never overwrite one."""
    if location.path.exists():
        raise StateError(f"{location.path}: a state file is already there; nothing was changed")
    StateFile(location.path, flag=location.flag)._save()  # a remote one only if it is still absent (If-None-Match)
    return location.path


@contextlib.contextmanager
def locked(
    path: str | os.PathLike[str] | RemoteStatePath, *, flag: str = "", timeout: float | None = None
) -> Iterator[StateFile]:
    """Open the state file under an exclusive lock on its real path, failing fast if another run holds it.

    The folder must be writable now: a state file that cannot be written is found before the first
    API call, never after a create succeeded.

    A remote state (``s3://``) is locked by an expiring lock object beside it, renewed while the run lasts;
    another run's lock is waited for up to ``timeout`` seconds (default: the path's ``--lock-timeout``).
    """
    if isinstance(path, RemoteStatePath):
        from .remote_state import S3Store

        store = S3Store(path)
        with store.locked(path.lock_timeout if timeout is None else timeout, flag=flag):
            yield StateFile(path, flag=flag, store=store)  # read once the lock is held
        return
    path = Path(path)
    real = Path(os.path.realpath(path))
    lock_path = real.with_name(real.name + ".lock")
    if not real.parent.is_dir():
        raise StateError(f"{path}: the folder {real.parent} does not exist (dtchat never creates folders)")
    if not os.access(real.parent, os.W_OK | os.X_OK) or (real.exists() and not os.access(real, os.R_OK)):
        raise StateError(f"{path}: cannot write state file here (permission denied); nothing was changed")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateError(f"{lock_path}: cannot create lock file: {exc.strerror}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StateError(
                        f"{path}: another dtchat run holds the lock ({lock_path}); wait for it to finish"
                    ) from None
                raise
        yield StateFile(real, flag=flag)  # read and written at the real path, the one the lock is on
    finally:
        os.close(fd)


def copy_state(
    source: StatePath, target: StatePath, *, force: bool = False, source_flag: str = "", target_flag: str = ""
) -> int:
    """``dtchat state push`` / ``pull``: copy the state at ``source`` to ``target``, both under their locks.

    A state already at ``target`` is replaced only with ``force``, and then only if it is still the version
    just read (a run that wrote it meanwhile makes the copy fail, not vanish). Returns how many keys were copied.
    """
    if not source.exists():
        raise StateError(f"{source}: no state file there to copy; nothing was changed")
    with locked(source, flag=source_flag) as src, locked(target, flag=target_flag) as dst:
        if dst.existed and not force:
            n = len(dst.bindings)
            raise StateError(
                f"{target}: a state is already there ({n} chat{'s' if n != 1 else ''}); pass --force to replace it "
                "(only if nobody writes it meanwhile); nothing was changed"
            )
        bindings = dict(src.bindings)
        with dst._lock:
            dst._bindings = bindings
            dst._save()
    return len(bindings)


def unlock_state(path: StatePath, lock_id: str) -> str:
    """``dtchat state unlock LOCK_ID``: remove the lock a dead run left on a remote state; says whose it was."""
    if not isinstance(path, RemoteStatePath):
        raise StateError(
            f"{path}: a local state file is locked by the operating system only while a run is alive, so no lock "
            "is ever left behind; `state unlock` is for a remote state (--state s3://BUCKET/KEY)"
        )
    from .remote_state import S3Store

    return S3Store(path).unlock(lock_id)
