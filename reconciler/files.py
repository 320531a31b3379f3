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


def loads_bounded(text: str) -> Any:
    """``json.loads`` that turns pathological nesting (``[[[[…``) into :class:`TooDeep` instead of a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep("nested too deeply to be a dtchat file") from None
