"""A line-oriented reader for the plain YAML config files are written in, at regex speed.

PyYAML builds one Python node per scalar: 2 million for 10,000 chats x 200
members, most of ``load_config``'s time. Config files use a small part of
YAML: block mappings and lists (``- dept: 1`` items too), one-line lists and
mappings of scalars (``[a, {dept: 1}]``), plain or quoted one-line scalars,
comments. This reader understands exactly that part, reads runs of list items
with one regex match each, and returns None the moment it sees anything else
(anchors, aliases, tags, merges, block or multi-line scalars, deeper flow
nesting, escapes, tabs, a second document, a duplicate key, a value PyYAML
cannot build, odd indentation...). The caller then uses PyYAML's own loader,
which handles all of YAML and reports problems with positions.

When it answers, the answer is what ``yaml.safe_load`` returns: plain scalars
go through PyYAML's own resolver and constructors. ``tests/test_config_fastpath.py``
and ``tests/test_yaml_differential.py`` check this on generated documents.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

_STR_TAG = "tag:yaml.org,2002:str"
#: Tags of plain scalars built here; any other (``<<`` merge, ``=`` value) is left to PyYAML.
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "timestamp"))
_RESOLVER = Resolver()
_CONSTRUCTOR = SafeConstructor()
#: Plain scalars starting with one of these may be something else than a string.
_RESOLVER_FIRST_CHARS = frozenset(Resolver.yaml_implicit_resolvers) - {""}
#: Items of a run that need more than splitting: quoted, or maybe not a string.
_RUN_SPECIAL = _RESOLVER_FIRST_CHARS | {"'", '"'}
#: Deeper nesting than this is not a config file's shape: leave it to PyYAML.
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
#: In ``[...]`` a ``-`` may also end the item (``[a, -]``), and the items are matched without the ``]``.
_FLOW_FIRST = "(?:" + _but(_INDICATORS) + r"|-(?!\ ))"
_INNER = _but(r":\#")  # ``:`` and ``#`` could end a plain scalar: left to PyYAML
_LAST = _but(r":\#\ ")
_FLOW_INNER = _but(r""":\#,\[\]{}'"?""")  # inside ``[...]``, where ``,[]{}`` end it
_FLOW_LAST = _but(r""":\#,\[\]{}'"?\ """)
_NOT_QUOTE = _but("'")
#: A one-line plain scalar in block context (no trailing spaces).
_PLAIN = rf"{_FIRST}(?:{_INNER}*{_LAST})?"
_FLOW_PLAIN = rf"{_FLOW_FIRST}(?:{_FLOW_INNER}*{_FLOW_LAST})?"
_SQ_INSIDE = rf"(?:{_NOT_QUOTE}|'')*"
_DQ_INSIDE = _but(r'"\\') + "*"  # no escapes: those are left to PyYAML
_COMMENT = r"\#" + _but("") + "*"
_FLOW_SCALAR = rf"""(?:(?P<plain>{_FLOW_PLAIN})|'(?P<sq>{_SQ_INSIDE})'|"(?P<dq>{_DQ_INSIDE})")"""
#: ``key: value`` in ``{...}``: groups ``kplain``/``ksq``/``kdq`` then ``plain``/``sq``/``dq``.
_PAIR = _FLOW_SCALAR.replace("?P<", "?P<k") + r":\ +" + _FLOW_SCALAR


def _inside(item: str) -> str:
    """``item, item, ...`` (maybe a trailing comma) as found between brackets, its groups unnamed."""
    item = re.sub(r"\(\?P<\w+>", "(?:", item)
    return rf"\ *(?:{item}(?:\ *,\ *{item})*\ *(?:,\ *)?)?"


_MAP_INSIDE = _inside(_PAIR)
_FLOW_ITEM = rf"(?:{_FLOW_SCALAR}|\{{(?P<map>{_MAP_INSIDE})\}})"

#: Blank and comment-only lines (any number).
_SKIP = re.compile(rf"(?:\ *(?:{_COMMENT})?\n)+")
#: A run of list items at one indentation, one plain word or simple quoted string each: the bulk of a file.
_RUN_ITEM = rf"""(?:{_FIRST}{_LAST}*|'{_NOT_QUOTE}*'|"{_DQ_INSIDE}")"""
_RUN = re.compile(rf"(?P<indent>\ *)-\ {_RUN_ITEM}\n(?:(?P=indent)-\ {_RUN_ITEM}\n)*")
#: Any other line: ``- value``, ``key: [value]`` or ``- key: value``, then maybe a comment.
_ENTRY = re.compile(
    rf"""
    (?P<indent>\ *)
    (?:(?P<dash>-)|(?P<item>-\ +)?(?:(?P<kplain>{_PLAIN})|'(?P<ksq>{_SQ_INSIDE})'|"(?P<kdq>{_DQ_INSIDE})"):)
    (?:\ +(?:(?P<plain>{_PLAIN})|'(?P<sq>{_SQ_INSIDE})'|"(?P<dq>{_DQ_INSIDE})"
             |\[(?P<flow>{_inside(_FLOW_ITEM)})\]|\{{(?P<map>{_MAP_INSIDE})\}}))?
    (?:\ +{_COMMENT}|\ *)\n
    """,
    re.VERBOSE,
)
_FLOW_ITEMS = re.compile(_FLOW_ITEM)
_PAIRS = re.compile(_PAIR)

_KEY = 0
_ITEMS = 1
_EMPTY = object()  # a key with nothing after the colon
_MAPPING_ITEM = object()  # ``- key: ...``: the list item is the mapping whose keys follow


class _Unsupported(Exception):
    """The text leaves the subset this reader understands."""


def read_fast(text: str) -> Any:
    """The document's value (a leading BOM skipped), or None when PyYAML must read it (and explain what is wrong)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    try:
        tokens = _tokenize(text, 1 if text.startswith("\ufeff") else 0, {})
        if not tokens or tokens[0][1] != _KEY:
            return None  # empty, or not a mapping
        root, end = _mapping(tokens, 0, tokens[0][0], 1)
    except _Unsupported:
        return None
    return root if end == len(tokens) else None


def _tokenize(text: str, pos: int, resolved: dict[str, Any]) -> list[tuple[int, int, Any, Any]]:
    """Each line from ``pos`` as ``(indent, _KEY, key, value)`` or ``(indent, _ITEMS, items, None)``, a run as one."""
    run, skip, entry, intern = _RUN.match, _SKIP.match, _ENTRY.match, sys.intern
    tokens: list[tuple[int, int, Any, Any]] = []
    end = len(text)
    while pos < end:
        m = run(text, pos)
        if m is not None:
            indent = m["indent"]
            items = m[0][len(indent) + 2 : -1].split("\n" + indent + "- ")
            # User ids are interned: they repeat across chats.
            items = [intern(x) if x[0] not in _RUN_SPECIAL else _run_item(x, resolved) for x in items]
            tokens.append((len(indent), _ITEMS, items, None))
        elif (m := skip(text, pos)) is None:
            m = entry(text, pos)
            if m is None:
                raise _Unsupported
            kind = m.lastgroup
            if kind == "flow":
                value: Any = [_flow_item(item, resolved) for item in _FLOW_ITEMS.finditer(m["flow"])]
            elif kind == "map":
                value = _flow_map(m["map"], resolved)
            else:
                value = _scalar(m, resolved) if kind in ("plain", "sq", "dq") else _EMPTY
            if m["dash"] is None:
                at = m.end("indent")
                if m["item"] is not None:  # the item's keys line up with this one
                    tokens.append((at - pos, _ITEMS, _MAPPING_ITEM, None))
                    at = m.end("item")
                if max(m.end("kplain"), m.end("ksq"), m.end("kdq")) - at > _MAX_KEY:
                    raise _Unsupported
                tokens.append((at - pos, _KEY, _scalar(m, resolved, "k"), value))
            elif value is _EMPTY:
                raise _Unsupported  # `-` alone: a nested block or an empty item
            else:
                tokens.append((len(m["indent"]), _ITEMS, [value], None))
        pos = m.end()
    return tokens


def _scalar(m: re.Match[str], resolved: dict[str, Any], prefix: str = "") -> Any:
    """The value of the plain, single- or double-quoted scalar that ``m`` matched (groups named ``[prefix]plain`` ...)."""
    plain = m[prefix + "plain"]
    if plain is not None:
        return _plain(plain, resolved)
    quoted = m[prefix + "sq"]
    return quoted.replace("''", "'") if quoted is not None else m[prefix + "dq"]


def _flow_item(m: re.Match[str], resolved: dict[str, Any]) -> Any:
    return _scalar(m, resolved) if m["map"] is None else _flow_map(m["map"], resolved)


def _flow_map(text: str, resolved: dict[str, Any]) -> dict[Any, Any]:
    """The mapping written ``{text}``: ``{dept: 1024, recursive: true}``."""
    mapping: dict[Any, Any] = {}
    for pair in _PAIRS.finditer(text):
        key = _scalar(pair, resolved, "k")
        if key in mapping or max(pair.end("kplain"), pair.end("ksq"), pair.end("kdq")) - pair.start() > _MAX_KEY:
            raise _Unsupported  # PyYAML's loader reports duplicates (libyaml: keys up to 1024 bytes)
        mapping[key] = _scalar(pair, resolved)
    return mapping


def _run_item(item: str, resolved: dict[str, Any]) -> Any:
    """A list item that is quoted (with nothing to unescape) or may not be a string."""
    if item[0] in "'\"":
        return sys.intern(item[1:-1])
    value = _plain(item, resolved)
    return sys.intern(value) if value.__class__ is str else value


def _plain(text: str, resolved: dict[str, Any]) -> Any:
    """A plain scalar's value, resolved and built by PyYAML's own code (once per distinct text)."""
    if text[0] not in _RESOLVER_FIRST_CHARS:
        return text
    value = resolved.get(text, _EMPTY)
    if value is _EMPTY:
        tag = _RESOLVER.resolve(ScalarNode, text, (True, False))
        if tag == _STR_TAG:
            value = text
        elif tag not in _SCALAR_TAGS:
            raise _Unsupported
        else:
            try:
                value = _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, ScalarNode(tag, text))
            except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError):
                raise _Unsupported from None  # `2024-13-45`: PyYAML's loader reports it with its place
        resolved[text] = value
    return value


def _mapping(tokens: list[Any], i: int, indent: int, depth: int) -> tuple[dict[Any, Any], int]:
    """The block mapping whose keys are the tokens from ``i`` at ``indent``; and the index after it."""
    if depth > _MAX_DEPTH:
        raise _Unsupported
    n = len(tokens)
    mapping: dict[Any, Any] = {}
    while i < n:
        at, kind, key, value = tokens[i]
        if at != indent or kind != _KEY:
            break
        if key in mapping:
            raise _Unsupported  # PyYAML's loader reports both lines
        i += 1
        if value is _EMPTY:
            value = None
            if i < n:
                at, kind = tokens[i][0], tokens[i][1]
                if kind == _KEY and at > indent:
                    value, i = _mapping(tokens, i, at, depth + 1)
                elif kind == _ITEMS and at >= indent:  # a list may sit at its key's indentation
                    value, i = _sequence(tokens, i, at, depth + 1)
        mapping[key] = value
    if i < n and tokens[i][0] >= indent:
        raise _Unsupported  # deeper or misplaced lines: multi-line scalars, bad indentation...
    return mapping, i


def _sequence(tokens: list[Any], i: int, indent: int, depth: int) -> tuple[list[Any], int]:
    """The block list whose items are the tokens from ``i`` at ``indent``; and the index after it."""
    n = len(tokens)
    items: list[Any] = []
    while i < n and tokens[i][0] == indent and tokens[i][1] == _ITEMS:
        if tokens[i][2] is _MAPPING_ITEM:
            item, i = _mapping(tokens, i + 1, tokens[i + 1][0], depth + 1)
            items.append(item)
        else:
            items += tokens[i][2]
            i += 1
    if i < n and tokens[i][0] > indent:
        raise _Unsupported
    return items, i
