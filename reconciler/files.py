"""Atomic file writes and bounded JSON reads: the one way dtchat writes a file it may need again.

A crash, a SIGKILL or a full disk leaves the old file or the new one, never
half of either: write a temp file in the same folder, fsync it, rename it over
the target, fsync the folder so the rename itself survives a power cut. The
new file keeps the old one's permissions (a state file shared by a team stays
group-readable). No folder is ever created: a mistyped path must fail, not
grow a tree where nobody will look for the file again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically; raises OSError, leaving no temp file behind.

    A symlink is followed: the file it points to is replaced, and the link stays a link (renaming over the
    link itself would leave the real file, the one other runs read, without the new content).
    """
    path = Path(os.path.realpath(path))
    folder = path.parent if str(path.parent) else Path(".")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class TooDeep(ValueError):
    """A JSON document nested deeper than any file dtchat writes."""


class DuplicateKey(ValueError):
    """A JSON object names one key twice (a bad merge): which one wins is not dtchat's to guess."""

    def __init__(self, key: str, line: int, column: int) -> None:
        self.key, self.line, self.column = key, line, column
        super().__init__(f"{line}:{column}: the key {json.dumps(key, ensure_ascii=False)} appears twice in one object")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _where_twice(text: str, key: str) -> tuple[int, int]:
    """Line and column of the second ``"key":`` in ``text`` (the one a reader would have silently kept)."""
    pattern = re.compile(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:")
    found = list(pattern.finditer(text)) or list(re.finditer(re.escape(json.dumps(key)) + r"\s*:", text))
    at = found[1].start() if len(found) > 1 else (found[0].start() if found else 0)
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1


def loads_bounded(text: str) -> Any:
    """``json.loads`` that turns pathological nesting (``[[[[…``) into :class:`TooDeep` instead of a RecursionError,
    and a key written twice in one object into a located :class:`DuplicateKey` instead of keeping the last."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise TooDeep("nested too deeply to be a dtchat file") from None
    except _Duplicate as dup:
        raise DuplicateKey(dup.key, *_where_twice(text, dup.key)) from None
