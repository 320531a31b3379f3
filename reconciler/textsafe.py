"""One rule for text that reaches a terminal, a CI log or a pull-request comment.

Chat names, owners and member ids come from DingTalk and file names from a
pull request: any of them can hold an escape sequence (OSC 52 writes the
clipboard, OSC 8 makes links, CSI moves the cursor), a CR that overwrites a
line, an LF that starts a forged line (``::add-mask::``, ``::stop-commands::``
at column 0 of a GitHub Actions log are executed by the runner), or a bidi
override that makes a reviewer read something else.

:func:`escape` is the one function every human-readable renderer passes that
text through: each control or format character becomes a visible escape
(``\\x1b``, ``\\u202e``, ``\\U000e0041``); everything else, including
non-ASCII names (``工程值班``), is unchanged. :func:`safe_line` is
:func:`escape` plus the workflow-command guard, for one line of output. JSON
output is never passed through either: JSON escaping already keeps it exact.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

#: Unicode general categories :func:`escape` writes as escapes: controls (C0, DEL, C1: ``Cc``), format characters
#: (bidi embeddings, overrides and isolates, zero-width space/joiners, word joiner, BOM, soft hyphen, tag
#: characters: ``Cf``), lone surrogates (``Cs``, which cannot even be written as UTF-8), and the line and paragraph
#: separators U+2028/U+2029 (``Zl``, ``Zp``).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

#: A GitHub Actions runner takes a line as a workflow command when it starts with ``::`` after leading whitespace,
#: and the older ``##[command]`` form (``##vso[`` on Azure Pipelines) anywhere in a line.
_LEGACY_COMMAND = re.compile(r"##(vso)?\[", re.IGNORECASE)


def is_unsafe(char: str) -> bool:
    """Whether one character is written as an escape by :func:`escape`."""
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: Any) -> str:
    """``text`` with every control, format, surrogate and line/paragraph-separator character written visibly
    (``\\x1b``, ``\\x0a``, ``\\u202e``, ``\\u200b``, ``\\U000e0041``), so it is one line that shows what it holds.

    Backslashes are left as they are: a name that already reads ``a\\x1b`` is shown as it is (harmless text).
    """
    text = str(text)
    if text.isprintable():  # the common case, at C speed: no character of UNSAFE_CATEGORIES (nor any space but " ")
        return text
    return "".join(_escaped(char) if is_unsafe(char) else char for char in text)


def guard_line(line: str) -> str:
    """``line`` (already free of line breaks) as no CI runner will take it for a workflow command: a first
    ``::`` after leading whitespace is written ``\\x3a:``, and ``##[`` (``##vso[``) anywhere as ``##\\x5b``."""
    stripped = line.lstrip()
    if stripped.startswith("::"):
        at = len(line) - len(stripped)
        line = line[:at] + "\\x3a" + line[at + 1 :]
    return guard_inline(line)


def guard_inline(text: str) -> str:
    """``text`` with no ``##[`` (``##vso[``), which a runner reads as a command anywhere in a line: ``##\\x5b``."""
    if "##" in text:
        text = _LEGACY_COMMAND.sub(lambda m: m.group(0)[:-1] + "\\x5b", text)
    return text


def safe_line(text: Any) -> str:
    """One line of human-readable output: :func:`escape`, then :func:`guard_line`."""
    return guard_line(escape(text))


def safe_lines(text: str) -> str:
    """Multi-line output whose line breaks dtchat wrote itself (its values already escaped): each line guarded."""
    return "\n".join(guard_line(line) for line in text.split("\n"))


#: What a character without a Unicode name is, by its category.
_UNNAMED = {"Cc": "a control character", "Cs": "a lone surrogate", "Co": "a private-use character"}


def describe_char(char: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``, ``U+001B (a control character)``: a character named for a message."""
    name = unicodedata.name(char, "")
    if name:
        return f"U+{ord(char):04X} {name}"
    return f"U+{ord(char):04X} ({_UNNAMED.get(unicodedata.category(char), 'an unassigned character')})"
