"""Atomic file writes: the one way dtchat writes a file it may need again.

A crash, a SIGKILL or a full disk leaves the old file or the new one, never
half of either: write a temp file in the same folder, fsync it, rename it over
the target, fsync the folder so the rename itself survives a power cut.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: "str | os.PathLike[str]", text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically; raises OSError, leaving no temp file behind."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
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
