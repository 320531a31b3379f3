"""Differential: the config reader against ``yaml.safe_load`` on generated YAML, valid and broken.

The reference is ``yaml.safe_load``'s loader on libyaml's parser (``CSafeLoader``)
when installed, as dtchat uses: libyaml and PyYAML's pure-Python scanner
disagree on a few broken files (``n\tame: x``) and on some error positions.

Generated files mix what config files hold and what trips readers up: block
and flow mappings and lists, ``-`` and ``~`` in flow lists, quoted and
unquoted numbers, YAML 1.1 booleans (yes/no/on/off), dates, anchors, aliases,
``<<`` merges, comments, CRLF line ends and a BOM; a third of them then get
a few hostile edits (tabs, stray indicators, tags, a reused anchor, a second
document...).

- Where ``yaml.safe_load`` reads a file, ``read_document`` gives the identical
  value (types and key order included) through whichever path it takes, and
  both paths agree on their own; its only complaints are duplicate keys, and
  exactly when the file has some.
- Where ``yaml.safe_load`` fails, ``read_document`` gives one one-line issue
  on the line PyYAML names (a bad ``<<``: on the ``<<`` line), never a traceback.

The example count is ``DTCHAT_HYPOTHESIS_EXAMPLES`` (default 5,000: about
25 s on one free core); lower it for a quick run, raise it for a deeper one.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, ScalarNode

from reconciler.config.fastyaml import read_fast
from reconciler.config.yamlload import ConfigLoader, read_document

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
EXAMPLES = int(os.environ.get("DTCHAT_HYPOTHESIS_EXAMPLES", "5000"))

WORDS = [
    "alice",
    "bob",
    "u001",
    "群聊",
    "a b",
    "x-y",
    "-x",
    "a#b",
    "a:b",
    "@sre",
    "'q'",
    "'it''s'",
    '"dq"',
    '"a\\tb"',
    '"\\u00e9"',
    "''",
    '""',
    "'#1'",
    '"a: b"',
]
NUMBERS = [
    "0",
    "1",
    "-1",
    "+2",
    "0412345670",
    "017",
    "0o17",
    "0x1F",
    "0b101",
    "1_000",
    "1.5",
    "-.5",
    "1e3",
    "1.0e+3",
    ".inf",
    "-.Inf",
    ".NaN",
    "190:20:30",
    "'1'",
    '"0412"',
]
BOOLEANS = ["yes", "no", "on", "off", "y", "n", "Yes", "NO", "On", "True", "false", "TRUE", "'yes'", '"off"']
NULLS = ["~", "null", "Null", "NULL"]
DATES = ["2024-01-02", "2024-01-02 10:20:30", "2024-01-02T10:20:30Z", "2001-12-14t21:59:43.10-05:00"]
SCALARS = WORDS + NUMBERS + BOOLEANS + NULLS + DATES
FLOW_ONLY = ["-", "--", "-1", "~"]
KEYS = ["name", "owner", "members", "k", "a b", "'q'", '"dq"', "1", "yes", "~", "x-y", "群", "2024-01-02"]
#: Edits that make a file broken (or not): YAML indicators, tabs, tags, control and break characters.
SNIPPETS = [
    "\t",
    ":",
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "'",
    '"',
    "&a0 ",
    "*zz",
    "*a0",
    "!!bool ",
    "!!int ",
    "!!float ",
    "!!timestamp ",
    "!!str ",
    "!foo ",
    "---\n",
    "...\n",
    "? ",
    "%",
    "@",
    "`",
    "|",
    ">",
    "\x07",
    "\r",
    "\x85",
    "<<: 1\n",
    "<<: ",
    "  ",
    "\n",
    " #",
    ",",
    "=",
    "\ufeff",
]


class _Writer:
    """Renders a random document, keeping track of the anchors an alias or merge may refer to."""

    def __init__(self, draw: Callable[..., Any]) -> None:
        self.draw = draw
        self.anchors: list[tuple[str, str]] = []  # (name, "map" | "other"), completed ones only
        self.count = 0

    def new_anchor(self) -> str | None:
        if self.draw(st.integers(0, 5)) != 0:
            return None
        self.count += 1
        return f"a{self.count}"

    def comment(self) -> str:
        return self.draw(st.sampled_from(["", "", "", " # note", " #"]))

    def value(self, depth: int, flow: bool = False) -> str:
        """A one-line value: a scalar, a flow list or mapping, an alias, maybe anchored."""
        choice = self.draw(st.integers(0, 9))
        if choice == 0 and self.anchors:
            return "*" + self.draw(st.sampled_from(self.anchors))[0]
        if choice in (1, 2) and depth < 4:
            items = [self.value(depth + 1, flow=True) for _ in range(self.draw(st.integers(0, 4)))]
            text = "[" + ", ".join(items) + self.draw(st.sampled_from(["", "", ","])) * bool(items) + "]"
            kind = "other"
        elif choice == 3 and depth < 4:
            pairs = {
                self.draw(st.sampled_from(KEYS)): self.value(depth + 1, flow=True)
                for _ in range(self.draw(st.integers(0, 3)))
            }
            text = "{" + ", ".join(f"{k}: {v}" for k, v in pairs.items()) + "}"
            kind = "map"
        else:
            text = self.draw(st.sampled_from(SCALARS + FLOW_ONLY if flow else SCALARS))
            kind = "other"
        anchor = self.new_anchor()
        if anchor is None:
            return text
        self.anchors.append((anchor, kind))
        return f"&{anchor} {text}"

    def mapping(self, indent: int, depth: int) -> list[str]:
        pad = " " * indent
        lines: list[str] = []
        for i in range(self.draw(st.integers(1, 4))):
            if i and self.draw(st.integers(0, 6)) == 0:
                lines.append(" " * self.draw(st.integers(0, 4)) + self.draw(st.sampled_from(["# c", "#", ""])))
            key = self.draw(st.sampled_from(KEYS))
            kind = self.draw(st.integers(0, 7))
            maps = [name for name, what in self.anchors if what == "map"]
            if kind == 0 and maps:
                merged = self.draw(st.lists(st.sampled_from(maps), min_size=1, max_size=3))
                target = "*" + merged[0] if len(merged) == 1 else "[" + ", ".join("*" + m for m in merged) + "]"
                lines.append(f"{pad}<<: {target}{self.comment()}")
            elif kind in (1, 2) and depth < 3:
                anchor = self.new_anchor()
                lines.append(f"{pad}{key}:{' &' + anchor if anchor else ''}{self.comment()}")
                if kind == 1:
                    lines += self.mapping(indent + self.draw(st.integers(1, 3)), depth + 1)
                else:
                    lines += self.sequence(indent + self.draw(st.sampled_from([0, 2])), depth + 1)
                if anchor:
                    self.anchors.append((anchor, "map" if kind == 1 else "other"))
            else:
                value = self.draw(st.sampled_from(["", self.value(depth)]))
                lines.append(f"{pad}{key}:{' ' + value if value else ''}{self.comment()}")
        return lines

    def sequence(self, indent: int, depth: int) -> list[str]:
        pad = " " * indent
        lines: list[str] = []
        for _ in range(self.draw(st.integers(1, 4))):
            if depth < 3 and self.draw(st.integers(0, 4)) == 0:  # a mapping as an item: "- k: v" then "  k2: v2"
                item = self.mapping(indent + 2, depth + 1)
                lines += [pad + "- " + item[0][indent + 2 :]] + item[1:]
            else:
                value = self.draw(st.sampled_from(["", self.value(depth)]))
                lines.append(f"{pad}-{' ' + value if value else ''}{self.comment()}")
        return lines


@st.composite
def yaml_files(draw: Callable[..., Any]) -> bytes:
    """A generated file's bytes: usually valid YAML, a third of the time edited into something broken."""
    writer = _Writer(draw)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = writer.mapping(0, 0) if draw(st.integers(0, 9)) else writer.sequence(0, 0)
    text = eol.join(lines) + draw(st.sampled_from([eol, ""]))
    if draw(st.integers(0, 2)) == 0:
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at + draw(st.integers(0, 1)) :]
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
    return bom + text.encode("utf-8")


def identical(a: Any, b: Any) -> bool:
    """Equal values of equal types, dict keys in the same order (``True`` is not ``1`` here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return (
            [type(k) for k in a] == [type(k) for k in b]
            and list(a) == list(b)
            and all(identical(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _mappings(node: Any, seen: set[int]) -> Iterator[MappingNode]:
    stack = [node]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            yield node
            stack += [n for pair in node.value for n in pair]
        elif not isinstance(node, ScalarNode):
            stack += node.value


def has_duplicate_keys(raw: bytes) -> bool:
    """The oracle: some mapping, as PyYAML composes it, has two keys PyYAML builds equal (``<<`` aside)."""
    constructor = yaml.constructor.SafeConstructor()
    for mapping in _mappings(yaml.compose(raw, Loader=SAFE_LOADER), set()):
        keys = [
            k.value if k.tag.endswith(":value") else constructor.construct_object(k)  # `=` keys are text to PyYAML
            for k, _ in mapping.value
            if k.tag != "tag:yaml.org,2002:merge"
        ]
        if len(keys) != len(set(keys)):
            return True
    return False


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(raw=yaml_files())
def test_the_config_reader_agrees_with_pyyaml(folder: Path, raw: bytes) -> None:
    path = folder / "f.yaml"
    path.write_bytes(raw)
    document, issues = read_document(path, "f.yaml")
    assert all("\n" not in str(issue) and issue.location.line >= 1 for issue in issues), issues
    try:
        expected = yaml.load(raw, Loader=SAFE_LOADER)
    except yaml.MarkedYAMLError as error:
        event(f"PyYAML: {type(error).__name__}")
        # A syntax error is the first one in the text: the lines must agree. A document can hold several
        # construction errors (a bad tag, a bad merge), and which one PyYAML meets first changed in 6.0.4
        # (merges are flattened before keys are built): there, any one of them, located, is right.
        constructing = isinstance(error, yaml.constructor.ConstructorError)
        _assert_one_error(document, issues, raw, None if constructing else error.problem_mark.line + 1)
        return
    except Exception as error:  # noqa: BLE001 - PyYAML's constructors raise bare ValueError, KeyError... (`!!bool maybe`)
        event(f"PyYAML: {type(error).__name__}")
        _assert_one_error(document, issues, raw, None)
        return
    if expected is None:
        assert document is None and [i.message for i in issues] == ["the file is empty; it needs at least `version: 1`"]
        return
    assert document is not None, issues
    assert identical(document.data, expected), (document.data, expected)
    assert all(issue.message.startswith("duplicate key `") for issue in issues), issues
    assert bool(issues) == has_duplicate_keys(raw)
    text = raw.decode("utf-8")  # a BOM included, as read_document passes it on
    fast = read_fast(text)
    event("read: " + ("fast path" if fast is not None else "aliases" if "*" in text else "PyYAML's loader"))
    event(f"duplicate keys: {bool(issues)}")
    if fast is not None:  # read_document took the fast path: PyYAML's loader must agree too
        assert identical(fast, expected)
        loader = ConfigLoader(text)
        try:
            assert identical(loader.get_single_data(), expected)
        finally:
            loader.dispose()


def _assert_one_error(document: Any, issues: list, raw: bytes, line: int | None) -> None:
    assert document is None and len(issues) == 1, issues
    (issue,) = issues
    lines = raw.decode("utf-8-sig", "replace").splitlines() or [""]  # the line breaks YAML knows, \r\n as one
    if issue.message == "`<<` must merge a mapping or a list of mappings":
        assert "<<" in lines[issue.location.line - 1], issue
    elif line is not None:
        assert issue.location.line == line, (issue, line)
    else:
        assert issue.location.line <= len(lines) + 1, issue
