"""Validation problems, each tied to the place in a file where it was written.

A CI run should show every problem in one go, so loading collects
:class:`ConfigIssue` values and raises one :class:`ConfigError` at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import DtchatError
from ..model import Location
from ..textsafe import escape, is_unsafe, safe_line


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where (``file:line:col``) and what."""

    location: Location
    message: str

    def __str__(self) -> str:
        """One line, whatever the file's name or the message quote: control and format characters escaped, and
        never a CI workflow command (a file named ``::error::x.yaml`` shows as ``\\x3a:error::x.yaml``)."""
        return safe_line(f"{self.location}: {self.message}")

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.location.file, self.location.line, self.location.column, self.message)


class ConfigError(DtchatError):
    """Every problem found in a set of config files, sorted by file, line, column."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(sorted(set(issues), key=ConfigIssue.sort_key))
        super().__init__("\n".join(str(issue) for issue in self.issues))


#: Longer text is cut in messages: the position already says where it is.
_SHOWN_MAX = 60


def quoted(text: Any) -> str:
    """``text`` for a message: in backticks, or as a JSON string when it holds a control or format character
    (a newline, a bidi override, a zero-width space), the rest of them escaped as :func:`.textsafe.escape` does.

    Every issue is one line (``file:line:col: message``, and CI annotations), so
    what a file wrote never reaches a message raw.
    """
    text = str(text)
    if len(text) > _SHOWN_MAX:
        text = text[: _SHOWN_MAX - 1] + "…"
    if not text.isprintable() and any(map(is_unsafe, text)):
        return escape(json.dumps(text, ensure_ascii=False))
    return f"`{text}`"
