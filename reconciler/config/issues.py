"""Validation problems, each tied to the place in a file where it was written.

A CI run should show every problem in one go, so loading collects
:class:`ConfigIssue` values and raises one :class:`ConfigError` at the end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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


#: Characters that would break a one-line message: C0/C1 controls, line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Longer text is cut in messages: the position already says where it is.
_SHOWN_MAX = 60


def quoted(text: Any) -> str:
    """``text`` for a message: in backticks, or as a JSON string when it holds a newline or control character.

    Every issue is one line (``file:line:col: message``, and CI annotations), so
    what a file wrote never reaches a message raw.
    """
    text = str(text)
    if len(text) > _SHOWN_MAX:
        text = text[: _SHOWN_MAX - 1] + "…"
    if _CONTROL.search(text):
        return json.dumps(text, ensure_ascii=False)
    return f"`{text}`"
