"""The state file: which DingTalk chatid each YAML chat key means.

DingTalk has no "list chats" call, so this mapping is the only way dtchat can
find a chat again. Losing or mangling it means creating chats twice, hence:
atomic writes (temp file + fsync + rename), a lock so two applies cannot
interleave, and a refusal to touch a file that is corrupt or not ours.

A key may also be recorded as *pending*: a create was sent but its outcome is
unknown (the connection dropped). Such a key is never created again until a
person says which chat it is (``dtchat import``) or that it does not exist
(``dtchat forget``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

from .errors import DtchatError
from .files import write_atomic

try:  # POSIX advisory locks; Windows users get no lock (documented).
    import fcntl
except ImportError:  # pragma: no cover - not on our CI
    fcntl = None  # type: ignore[assignment]

FORMAT = "dtchat-state"
VERSION = 1
DEFAULT_NAME = "dtchat.state.json"


class StateError(DtchatError):
    """The state file cannot be read, written or locked."""


@dataclass(frozen=True)
class Binding:
    """One key's record: its chatid, or a create whose outcome is unknown."""

    chatid: Optional[str]
    created_at: Optional[str] = None
    #: True when a create was sent and its outcome is unknown.
    pending: bool = False

    def to_json(self) -> dict:
        data: dict = {"chatid": self.chatid}
        if self.created_at:
            data["created_at"] = self.created_at
        if self.pending:
            data["pending_create"] = True
        return data


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def default_path(first_path: "str | os.PathLike[str]") -> Path:
    """``dtchat.state.json`` in the folder of the first PATH (the folder itself if PATH is one)."""
    p = Path(first_path)
    folder = p if p.is_dir() else p.parent
    return folder / DEFAULT_NAME


class StateFile:
    """A state file on disk. Reads are cheap; every write is atomic and immediate."""

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = Path(path)
        self._bindings: dict[str, Binding] = self._read()

    # -- reading -----------------------------------------------------------
    def _read(self) -> dict[str, Binding]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read state file: {exc.strerror}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise StateError(f"{self.path}: state file is not UTF-8 text; refusing to use or overwrite it") from None
        except json.JSONDecodeError as exc:
            raise StateError(
                f"{self.path}:{exc.lineno}:{exc.colno}: state file is not valid JSON ({exc.msg}); "
                "refusing to use or overwrite it"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateError(f"{self.path}: not a dtchat state file (no \"format\": \"{FORMAT}\"); refusing to use or overwrite it")
        if data.get("version") != VERSION:
            raise StateError(f"{self.path}: state file version {data.get('version')!r} is not supported (expected {VERSION})")
        chats = data.get("chats")
        if not isinstance(chats, dict):
            raise StateError(f"{self.path}: \"chats\" must be an object")
        bindings: dict[str, Binding] = {}
        for key, entry in chats.items():
            if not isinstance(entry, dict):
                raise StateError(f"{self.path}: chats.{key}: must be an object")
            chatid = entry.get("chatid")
            pending = entry.get("pending_create", False)
            if chatid is not None and (not isinstance(chatid, str) or not chatid):
                raise StateError(f"{self.path}: chats.{key}.chatid: must be a non-empty string")
            if not isinstance(pending, bool) or (chatid is None and not pending):
                raise StateError(f"{self.path}: chats.{key}: needs a chatid or \"pending_create\": true")
            created = entry.get("created_at")
            bindings[key] = Binding(chatid=chatid, created_at=created if isinstance(created, str) else None, pending=pending)
        return bindings

    @property
    def bindings(self) -> Mapping[str, Binding]:
        return dict(self._bindings)

    def chatids(self) -> dict[str, str]:
        """key -> chatid for every key with a known chatid."""
        return {k: b.chatid for k, b in self._bindings.items() if b.chatid}

    def get(self, key: str) -> Optional[Binding]:
        return self._bindings.get(key)

    # -- writing -----------------------------------------------------------
    def record(self, key: str, chatid: str, *, created: bool = False) -> None:
        """Bind ``key`` to ``chatid`` and write the file now."""
        old = self._bindings.get(key)
        created_at = now_iso() if created else (old.created_at if old else None)
        self._bindings[key] = Binding(chatid=chatid, created_at=created_at)
        self.save()

    def mark_pending(self, key: str) -> None:
        """Remember that a create for ``key`` may have succeeded (outcome unknown)."""
        self._bindings[key] = Binding(chatid=None, created_at=now_iso(), pending=True)
        self.save()

    def forget(self, key: str) -> bool:
        """Stop managing ``key`` (the chat itself stays in DingTalk). True if it was known."""
        if key not in self._bindings:
            return False
        del self._bindings[key]
        self.save()
        return True

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "chats": {k: self._bindings[k].to_json() for k in sorted(self._bindings)},
        }

    def save(self) -> None:
        """Atomic replace: a crash leaves the old file or the new one, never half of either."""
        try:
            write_atomic(self.path, json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n")
        except OSError as exc:
            raise StateError(f"{self.path}: cannot write state file: {exc.strerror or exc}") from None


@contextlib.contextmanager
def locked(path: "str | os.PathLike[str]") -> Iterator[StateFile]:
    """Open the state file under an exclusive lock (``<state>.lock``), failing fast if held."""
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
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
        yield StateFile(path)
    finally:
        os.close(fd)
