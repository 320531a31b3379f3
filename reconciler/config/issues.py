"""Validation problems, each tied to the place in a file where it was written.

A CI run should show every problem in one go, so loading collects
:class:`ConfigIssue` values and raises one :class:`ConfigError` at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import DtchatError
from ..model import Location


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where (``file:line:col``) and what."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.location.file, self.location.line, self.location.column, self.message)


class ConfigError(DtchatError):
    """Every problem found in a set of config files, sorted by file, line, column."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(sorted(set(issues), key=ConfigIssue.sort_key))
        super().__init__("\n".join(str(issue) for issue in self.issues))
