"""``load_config``: files and folders in, one validated :class:`Config` (or every problem) out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..model import DesiredChat, Location
from .issues import ConfigError, ConfigIssue
from .schema import SchemaChecker
from .semantics import resolve
from .yamlload import read_document

_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Config:
    """Every chat the files describe, groups expanded and defaults merged."""

    files: tuple[str, ...]
    #: Sorted by key.
    chats: tuple[DesiredChat, ...]
    #: Group name -> its user ids, nested groups expanded, sorted.
    groups: Mapping[str, tuple[str, ...]]
    #: ``defaults.settings`` of all files merged.
    defaults: Mapping[str, Any]

    def summary(self) -> str:
        """One line for CI logs, e.g. ``3 files, 12 chats, 4 groups: valid``."""
        counts = ((len(self.files), "file"), (len(self.chats), "chat"), (len(self.groups), "group"))
        return ", ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in counts) + ": valid"

    def chat(self, key: str) -> DesiredChat:
        """The chat with this key; KeyError if no file defines it."""
        for chat in self.chats:
            if chat.key == key:
                return chat
        raise KeyError(key)


def load_config(paths: Sequence[str | os.PathLike[str]]) -> Config:
    """Load, validate and merge ``paths`` (files, or folders of ``*.yaml``/``*.yml``).

    Raises :class:`ConfigError` listing every problem found, not just the first.
    """
    if isinstance(paths, (str, os.PathLike)):  # one path given bare: not a sequence of characters
        paths = [paths]
    issues: list[ConfigIssue] = []
    files = _discover(paths, issues)
    checker = SchemaChecker()
    checked = []
    for path, shown in files:
        document, read_issues = read_document(path, shown)
        issues.extend(read_issues)
        if document is not None:
            result = checker.check(document)
            issues.extend(result.issues)
            checked.append((document, result))
    resolved = resolve(checked)
    issues.extend(resolved.issues)
    if issues:
        raise ConfigError(issues)
    return Config(
        files=tuple(shown for _, shown in files),
        chats=resolved.chats,
        groups=MappingProxyType(dict(resolved.groups)),
        defaults=MappingProxyType(dict(resolved.defaults)),
    )


def _discover(paths: Sequence[str | os.PathLike[str]], issues: list[ConfigIssue]) -> list[tuple[Path, str]]:
    """The files to read (path, name to show), each once, folders expanded recursively and sorted.

    Hidden files and folders (``.git``, ``.github``, ``.dtchat-sandbox``) are skipped.
    """
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    if not paths:
        issues.append(ConfigIssue(Location("."), "no config path given"))
    for given in paths:
        path = Path(given)
        shown = os.fspath(given)
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file() and not _hidden(p.relative_to(path))
            )
            if not inside:
                issues.append(ConfigIssue(Location(shown), "no *.yaml or *.yml files in this folder"))
            candidates = [(p, os.path.join(shown, os.fspath(p.relative_to(path)))) for p in inside]
        elif path.exists():
            candidates = [(path, shown)]
        else:
            issues.append(ConfigIssue(Location(shown), "no such file or folder"))
            candidates = []
        for candidate, name in candidates:
            real = candidate.resolve()
            if real not in seen:
                seen.add(real)
                found.append((candidate, name))
    return found


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
