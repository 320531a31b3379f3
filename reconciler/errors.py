"""The one root of every failure dtchat expects and reports as a single line.

The CLI prints a :class:`DtchatError` as one line and exits 1; anything else is
a bug and shows its traceback, so it gets reported instead of being mistaken
for bad input.
"""

from __future__ import annotations


class DtchatError(Exception):
    """An expected failure: bad input, an unusable file, an API refusal. ``str()`` is one line, secret-free."""


class UsageError(DtchatError):
    """Bad input from the command line (unknown --target, bad key, conflicting flags, …)."""
