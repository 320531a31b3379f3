"""A line-oriented reader for the plain YAML config files are written in, at regex speed.

libyaml hands out one Python event per scalar: 2 million events (most of
``load_config``'s time) for 10,000 chats x 200 members. Config files use a
small part of YAML: block mappings, block lists, one-line ``[a, b]`` lists,
plain or quoted one-line scalars, comments. This reader understands exactly
that part, reads runs of list items with one regex match each, and returns
None the moment it sees anything else (anchors, tags, merges, block or
multi-line scalars, flow mappings, escapes, tabs, a second document, a
duplicate key, odd indentation...). The caller then uses the event-based
loader, which handles all of YAML and reports problems with positions.

When it does answer, the answer is what the event-based loader builds: the
same values (plain scalars go through the same resolver and constructors)
and the same key positions. ``tests/test_config_fastpath.py`` checks this
against the event-based loader on generated documents.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Optional

from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from ..model import Location

Marks = dict[tuple[Any, ...], Location]

_STR_TAG = "tag:yaml.org,2002:str"
#: Tags of plain scalars built here; any other (``<<`` merge, ``=`` value) is left to the event loader.
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "timestamp"))
_RESOLVER = Resolver()
_CONSTRUCTOR = SafeConstructor()
#: Plain scalars starting with one of these may be something else than a string.
_RESOLVER_FIRST_CHARS = frozenset(Resolver.yaml_implicit_resolvers) - {""}
#: Items of a run that need more than splitting: quoted, or maybe not a string.
_RUN_SPECIAL = _RESOLVER_FIRST_CHARS | {"'", '"'}
#: Keys at this depth or less get their positions recorded (as the event loader does).
_MARKED_DEPTH = 2
#: Deeper nesting than this is not a config file's shape: leave it to the event loader.
_MAX_DEPTH = 32
#: libyaml limits a simple key to 1024 bytes; stay well under it (4 bytes a character at most).
_MAX_KEY = 200

#: Characters no class below accepts, so a line holding one is not read here: tabs, lone CRs, other
#: line breaks, BOMs, and what YAML forbids. (A search for them first would cost one more pass.)
_OUTSIDE = r"\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff"


def _but(excluded: str) -> str:
    """A character class: any character but ``excluded``, a line break or one of :data:`_OUTSIDE`."""
    return rf"[^{excluded}\n{_OUTSIDE}]"


_INDICATORS = r"""\-?:,\[\]{}\#&*!|>'"%@`\ """
#: A plain scalar starts with no indicator and no space, or with ``-`` before a non-space (``-1``).
_FIRST = "(?:" + _but(_INDICATORS) + "|-(?=" + _but(r"\ ") + "))"
_INNER = _but(r":\#")  # ``:`` and ``#`` could end a plain scalar: left to the event loader
_LAST = _but(r":\#\ ")
_FLOW_INNER = _but(r""":\#,\[\]{}'"?""")  # inside ``[...]``, where ``,[]{}`` end it
_FLOW_LAST = _but(r""":\#,\[\]{}'"?\ """)
_NOT_QUOTE = _but("'")
#: A one-line plain scalar in block context (no trailing spaces).
_PLAIN = rf"{_FIRST}(?:{_INNER}*{_LAST})?"
_FLOW_PLAIN = rf"{_FIRST}(?:{_FLOW_INNER}*{_FLOW_LAST})?"
_SQ_INSIDE = rf"(?:{_NOT_QUOTE}|'')*"
_DQ_INSIDE = _but(r'"\\') + "*"  # no escapes: those are left to the event loader
_COMMENT = r"\#" + _but("") + "*"
_FLOW_ITEM = rf"""(?:(?P<plain>{_FLOW_PLAIN})|'(?P<sq>{_SQ_INSIDE})'|"(?P<dq>{_DQ_INSIDE})")"""
_FLOW_ITEM_NO_GROUPS = re.sub(r"\(\?P<\w+>", "(?:", _FLOW_ITEM)
_FLOW_INSIDE = rf"\ *(?:{_FLOW_ITEM_NO_GROUPS}(?:\ *,\ *{_FLOW_ITEM_NO_GROUPS})*\ *(?:,\ *)?)?"

#: Blank and comment-only lines (any number).
_SKIP = re.compile(rf"(?:\ *(?:{_COMMENT})?\n)+")
#: A run of list items at one indentation, one plain word or simple quoted string each: the bulk of a file.
_RUN_ITEM = rf"""(?:{_FIRST}{_LAST}*|'{_NOT_QUOTE}*'|"{_DQ_INSIDE}")"""
_RUN = re.compile(rf"(?P<indent>\ *)-\ {_RUN_ITEM}\n(?:(?P=indent)-\ {_RUN_ITEM}\n)*")
#: Any other line: ``- value`` or ``key: [value]``, then maybe a comment.
_ENTRY = re.compile(
    rf"""
    (?P<indent>\ *)
    (?:(?P<dash>-)|(?:(?P<kplain>{_PLAIN})|'(?P<ksq>{_SQ_INSIDE})'|"(?P<kdq>{_DQ_INSIDE})"):)
    (?:\ +(?:(?P<plain>{_PLAIN})|'(?P<sq>{_SQ_INSIDE})'|"(?P<dq>{_DQ_INSIDE})"|\[(?P<flow>{_FLOW_INSIDE})\]))?
    (?:\ +{_COMMENT}|\ *)\n
    """,
    re.VERBOSE,
)
_FLOW_ITEMS = re.compile(_FLOW_ITEM)

_KEY = 0
_ITEMS = 1
_EMPTY = object()  # a key with nothing after the colon


class _Unsupported(Exception):
    """The text leaves the subset this reader understands."""


def read_fast(text: str, file: str) -> Optional[tuple[Any, Marks]]:
    """The document's value and its depth 1-2 key positions, or None when the event loader must read it."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    reader = _Reader(file)
    try:
        return reader.read(text), reader.marks
    except _Unsupported:
        return None


class _Reader:
    """Cuts the text into tokens (a key line, or list items), then nests them by indentation."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.marks: Marks = {}
        self.tokens: list[tuple[int, int, int, Any, Any]] = []  # (indent, kind, line, key or items, value)
        self.resolved: dict[str, Any] = {}

    def read(self, text: str) -> Any:
        self._tokenize(text)
        tokens = self.tokens
        if not tokens or tokens[0][1] != _KEY:
            raise _Unsupported  # empty, or not a mapping: the schema and the event loader explain it
        root, end = self._mapping(0, tokens[0][0], 1, ())
        if end != len(tokens):
            raise _Unsupported
        return root

    def _tokenize(self, text: str) -> None:
        run, skip, entry = _RUN.match, _SKIP.match, _ENTRY.match
        append = self.tokens.append
        scalar, special, intern = self._plain, self._run_item, sys.intern
        pos, line, end = 0, 1, len(text)
        while pos < end:
            m = run(text, pos)
            if m is not None:
                indent = m["indent"]
                items = m[0][len(indent) + 2 : -1].split("\n" + indent + "- ")
                items = [special(x) if x[0] in _RUN_SPECIAL else intern(x) for x in items]
                append((len(indent), _ITEMS, line, items, None))
                line += len(items)
                pos = m.end()
                continue
            m = skip(text, pos)
            if m is not None:
                line += m[0].count("\n")
                pos = m.end()
                continue
            m = entry(text, pos)
            if m is None:
                raise _Unsupported
            kind = m.lastgroup
            if kind == "plain":
                value = scalar(m["plain"])
            elif kind == "sq":
                value = m["sq"].replace("''", "'")
            elif kind == "dq":
                value = m["dq"]
            elif kind == "flow":
                value = [
                    scalar(item["plain"]) if item["plain"] is not None
                    else item["sq"].replace("''", "'") if item["sq"] is not None
                    else item["dq"]
                    for item in _FLOW_ITEMS.finditer(m["flow"])
                ]
            else:
                value = _EMPTY
            if m["dash"] is not None:
                if value is _EMPTY:
                    raise _Unsupported  # `-` alone: a nested block or an empty item
                append((len(m["indent"]), _ITEMS, line, [value], None))
            else:
                append((len(m["indent"]), _KEY, line, self._key(m), value))
            line += 1
            pos = m.end()

    def _key(self, m: "re.Match[str]") -> Any:
        if m["kplain"] is not None:
            raw = m["kplain"]
            key = self._plain(raw)
        elif m["ksq"] is not None:
            raw = m["ksq"]
            key = raw.replace("''", "'")
        else:
            raw = key = m["kdq"]
        if len(raw) > _MAX_KEY:
            raise _Unsupported
        return key

    def _run_item(self, item: str) -> Any:
        """A list item that is quoted or may not be a string. User ids are interned: they repeat across chats."""
        if item[0] in "'\"":
            return sys.intern(item[1:-1])
        value = self._plain(item)
        return sys.intern(value) if value.__class__ is str else value

    def _plain(self, text: str) -> Any:
        """A plain scalar's value, resolved as the event loader does (once per distinct text)."""
        if text[0] not in _RESOLVER_FIRST_CHARS:
            return text
        try:
            return self.resolved[text]
        except KeyError:
            pass
        tag = _RESOLVER.resolve(ScalarNode, text, (True, False))
        if tag == _STR_TAG:
            value: Any = text
        elif tag in _SCALAR_TAGS:
            value = _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, ScalarNode(tag, text))
        else:
            raise _Unsupported
        self.resolved[text] = value
        return value

    def _mapping(self, i: int, indent: int, depth: int, path: tuple[Any, ...]) -> tuple[dict[Any, Any], int]:
        """The block mapping whose keys are the tokens from ``i`` at ``indent``; and the index after it."""
        if depth > _MAX_DEPTH:
            raise _Unsupported
        tokens, n = self.tokens, len(self.tokens)
        mapping: dict[Any, Any] = {}
        while i < n:
            at, kind, line, key, value = tokens[i]
            if at != indent or kind != _KEY:
                break
            if key in mapping:
                raise _Unsupported  # the event loader reports both lines
            if depth <= _MARKED_DEPTH:
                self.marks[(*path, key)] = Location(self.file, line, indent + 1)
            i += 1
            if value is _EMPTY:
                value = None
                if i < n:
                    at, kind = tokens[i][0], tokens[i][1]
                    if kind == _KEY and at > indent:
                        value, i = self._mapping(i, at, depth + 1, (*path, key) if depth < _MARKED_DEPTH else ())
                    elif kind == _ITEMS and at >= indent:  # a list may sit at its key's indentation
                        value, i = self._sequence(i, at)
            mapping[key] = value
        if i < n and tokens[i][0] >= indent:
            raise _Unsupported  # deeper or misplaced lines: multi-line scalars, bad indentation...
        return mapping, i

    def _sequence(self, i: int, indent: int) -> tuple[list[Any], int]:
        """The block list whose items are the tokens from ``i`` at ``indent``; and the index after it."""
        tokens, n = self.tokens, len(self.tokens)
        items = tokens[i][3]
        i += 1
        while i < n and tokens[i][0] == indent and tokens[i][1] == _ITEMS:
            items.extend(tokens[i][3])
            i += 1
        if i < n and tokens[i][0] > indent:
            raise _Unsupported
        return items, i
