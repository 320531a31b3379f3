"""Read one YAML config file: fast when it is plain, with PyYAML's own loader otherwise, strictly always.

A file in the plain shape configs are written in (10,000 chats x 200
members) is read by :mod:`.fastyaml` at regex speed. Any other file is read
by :class:`ConfigLoader`: PyYAML's safe loader (libyaml's parser when
installed), so values and ``<<`` merges are exactly ``yaml.safe_load``'s,
made strict where PyYAML is lax and safe where files from pull requests may
be hostile (design §9): duplicate keys, a second document, alias bombs and
self-containing aliases, unknown or broken tags and nesting deep enough to
overflow the stack are each one located error, never a traceback.

The text is dropped once the file is read (memory: only the values stay). A
:class:`Document` finds where something was written by reading and composing
its file again, the first time it is asked, which happens only when
something is wrong.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..model import Location
from .fastyaml import read_fast
from .issues import ConfigIssue

_C = hasattr(yaml, "CSafeLoader")
#: libyaml's parser under PyYAML's Python composer: libyaml's own composer recurses in C and
#: crashes the process on deep nesting (~30,000 levels); Python's raises RecursionError instead.
_LOADER: type[yaml.CSafeLoader | yaml.SafeLoader] = yaml.CSafeLoader if _C else yaml.SafeLoader
_BASES: tuple[type, ...] = (Composer, _LOADER) if _C else (_LOADER,)
_YAML = "tag:yaml.org,2002:"
_MERGE = _YAML + "merge"
_STR = _YAML + "str"
_TEXT = (_STR, _YAML + "value")  # a `=` key is text (PyYAML's merge makes it so)
_UNDEFINED_ALIAS = "alias `*{}` refers to no anchor defined before it (or to a mapping or list that contains it)"
#: A document may expand through aliases to at most this many nodes, or this many per character of text.
ALIAS_EXPANSION_MIN, ALIAS_EXPANSION_PER_CHAR = 10_000, 20


class _Problem(yaml.MarkedYAMLError):
    """A located problem, worded for the user (not prefixed ``invalid YAML``)."""

    problem: str  # always given, unlike a MarkedYAMLError's

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(problem=message, problem_mark=mark)


class ConfigLoader(*_BASES):  # type: ignore[misc]  # bases chosen at import (libyaml or not): mypy needs static ones
    """``yaml.safe_load``'s loader, stricter.

    Refuses a second document, duplicate anchors, aliases to undefined or
    enclosing anchors, alias expansion far beyond the text's size, tags
    other than the plain YAML types, and scalars their tag cannot build
    (``!!bool maybe``), each as a :class:`yaml.MarkedYAMLError`. Duplicate
    keys are collected in ``duplicates`` (the last wins, as in PyYAML) rather
    than raised, so the rest of the file is still checked.
    """

    def __init__(self, text: str) -> None:
        _LOADER.__init__(self, text)
        Composer.__init__(self)
        self.text = text
        #: ``(key, first key node, repeated key node)`` for each key written twice in one mapping.
        self.duplicates: list[tuple[Any, Node, Node]] = []
        self._open_anchors: set[str] = set()
        self._checked: set[int] = set()
        #: The first alias to a mapping or list that contains it. PyYAML composes such a cycle, so a syntax error
        #: later in the text is what it reports: this is raised only once the text parsed, to report the same.
        self._cycle: yaml.MarkedYAMLError | None = None

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if self._cycle is not None:
            raise self._cycle
        if node is None:
            return None
        if "*" in self.text:
            _check_expansion(node, max(ALIAS_EXPANSION_MIN, ALIAS_EXPANSION_PER_CHAR * len(self.text)))
        return self.construct_document(node)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        anchor = event.anchor
        if anchor is None:
            return super().compose_node(parent, index)
        if event.__class__ is AliasEvent:
            if anchor not in self.anchors:
                raise _Problem(event.start_mark, _UNDEFINED_ALIAS.format(anchor))
            if anchor in self._open_anchors:  # a cycle: refused once the whole text is parsed (see _cycle)
                self.get_event()
                self._cycle = self._cycle or _Problem(event.start_mark, _UNDEFINED_ALIAS.format(anchor))
                return ScalarNode(_YAML + "null", "")  # a stand-in: the document is refused all the same
            return super().compose_node(parent, index)
        if anchor in self.anchors:
            line = self.anchors[anchor].start_mark.line + 1
            raise _Problem(event.start_mark, f"duplicate anchor `&{anchor}`: already defined on line {line}")
        self._open_anchors.add(anchor)
        node = super().compose_node(parent, index)
        self._open_anchors.discard(anchor)
        return node

    def flatten_mapping(self, node: MappingNode) -> None:
        """PyYAML's merge, after noting the mapping's duplicate keys (the first time: merging rewrites it)."""
        if id(node) not in self._checked:
            self._checked.add(id(node))
            first: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.__class__ is ScalarNode and key_node.tag != _MERGE:
                    key = key_node.value if key_node.tag in _TEXT else self.construct_object(key_node)
                    if key in first:
                        self.duplicates.append((key, first[key], key_node))
                    else:
                        first[key] = key_node
        merges = [k for k, _ in node.value if k.tag == _MERGE]
        try:
            super().flatten_mapping(node)
        except yaml.constructor.ConstructorError as error:  # at the `<<`: the value may be an alias to far away
            at = merges[0].start_mark if merges else error.problem_mark
            raise _Problem(at, "`<<` must merge a mapping or a list of mappings") from None


def _strictly(construct: Any, name: str) -> Any:
    """PyYAML's constructor for ``!!name``, with a located error where it would raise a bare Python one."""

    def construct_strictly(loader: ConfigLoader, node: Node) -> Any:
        try:
            return construct(loader, node)
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError):
            hint = "" if _char_at(loader.text, node.start_mark) == "!" else "; quote it if it is text"
            shown = f"`{_shown(node.value)}`" if node.value else "empty"
            raise _Problem(node.start_mark, f"{shown} is not a valid !!{name}{hint}") from None

    return construct_strictly


def _unsupported(loader: ConfigLoader, node: Node) -> Any:
    if node.tag == _MERGE:
        raise _Problem(node.start_mark, "`<<` (merge) can only be a mapping key")
    plain = "" if isinstance(node, ScalarNode) else ": use a plain mapping or list"
    raise _Problem(node.start_mark, f"unsupported YAML tag `{node.tag}`{plain}")


for _name in ("null", "bool", "int", "float", "binary", "timestamp"):
    ConfigLoader.add_constructor(_YAML + _name, _strictly(ConfigLoader.yaml_constructors[_YAML + _name], _name))
for _tag in (_YAML + "set", _YAML + "omap", _YAML + "pairs", None):
    ConfigLoader.add_constructor(_tag, _unsupported)


def _check_expansion(root: Node, limit: int) -> None:
    """Raise if the document, every alias expanded, would hold more than ``limit`` nodes.

    Counts each node's expanded size once (aliases share nodes): time linear in
    the composed nodes, whatever the expansion. The composer refused cycles.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [] if root.__class__ is ScalarNode else [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = node.value if node.__class__ is SequenceNode else [n for pair in node.value for n in pair]
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if child.__class__ is not ScalarNode)
            continue
        size = 1 + sum(sizes.get(id(child), 1) for child in children)
        if size > limit:
            kind = "list" if node.__class__ is SequenceNode else "mapping"
            message = f"aliases expand this {kind} to more than {limit:,} values, far beyond what the file holds"
            raise _Problem(node.start_mark, message + ": refusing it (an alias bomb?)")
        sizes[id(node)] = size


def read_document(path: Path, file: str) -> tuple[Document | None, list[ConfigIssue]]:
    """Load ``path`` (shown as ``file``); on failure the document is None and the issues say why."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        return None, [ConfigIssue(Location(file), f"cannot read the file: {error.strerror}")]
    digest = zlib.crc32(raw)
    try:
        text = raw.decode("utf-8")  # the BOM stays, for the loader to treat as yaml.load(raw) does
    except UnicodeDecodeError as error:
        return None, [_not_utf8(file, raw, error)]
    del raw
    data = read_fast(text)
    issues = []
    if data is None:
        loader = None
        try:
            loader = ConfigLoader(text)  # PyYAML's own reader checks the characters here
            data = loader.get_single_data()
        except (yaml.YAMLError, RecursionError) as error:
            return None, [_issue(file, text, error, loader)]
        finally:
            if loader is not None:
                loader.dispose()
        for key, first, again in loader.duplicates:
            message = f"duplicate key `{_shown(key)}`: already defined on line {first.start_mark.line + 1}"
            issues.append(ConfigIssue(_location(file, again.start_mark), message))
    if data is None:
        return None, [ConfigIssue(Location(file, 1, 1), "the file is empty; it needs at least `version: 1`")]
    return Document(file, data, path, digest), issues


class Document:
    """One loaded file's values, and a way to find where any part of them was written."""

    def __init__(self, file: str, data: Any, source: Path | None = None, digest: int | None = None) -> None:
        self.file = file  #: the file's name as shown in messages
        self.data = data  #: what ``yaml.safe_load`` returns for it
        self._source = source
        self._digest = digest
        self._keys: dict[int, dict[Any, tuple[Node, Node]]] = {}  # mapping node -> its keys, built when asked

    def __repr__(self) -> str:
        return f"Document({self.file!r})"

    def locate(self, path: Sequence[Any], *, key: bool = False) -> Location:
        """Where the value at ``path`` (or, with ``key``, its key) was written.

        When the path leads somewhere the file does not spell out (a value
        that came in through a ``<<`` merge), the closest enclosing place;
        when the file cannot be read again as it was, the file alone.
        """
        found = self._find(tuple(path), key)
        return Location(self.file) if found is None else _location(self.file, found[0].start_mark)

    def written(self, path: Sequence[Any], *, key: bool = False) -> str | None:
        """The scalar at ``path`` exactly as written (``0412345670``, not the number YAML made of it)."""
        found = self._find(tuple(path), key)
        return found[0].value if found is not None and found[1] and isinstance(found[0], ScalarNode) else None

    def _find(self, path: tuple[Any, ...], key: bool) -> tuple[Node, bool] | None:
        """The node at ``path`` (or its key node) and True; else the deepest enclosing node and False."""
        node = self._root
        if node is None:
            return None
        key_node: Node | None = None
        for element in path:
            child = self._child(node, element)
            if child is None:
                return node, False
            key_node, node = child
        if key:
            return (key_node, True) if key_node is not None else (node, False)
        return node, True

    def _child(self, node: Node, element: Any) -> tuple[Node | None, Node] | None:
        """The (key node, value node) at ``element`` of a mapping or list node, if written there."""
        if isinstance(node, MappingNode):
            if id(node) not in self._keys:  # the last of equal keys wins, as in the values
                pairs = [(k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.tag != _MERGE]
                self._keys[id(node)] = {_key_value(k): (k, v) for k, v in pairs}
            try:
                return self._keys[id(node)].get(element)
            except TypeError:  # an unhashable element: not a key of this file
                return None
        if isinstance(node, SequenceNode) and isinstance(element, int) and 0 <= element < len(node.value):
            return None, node.value[element]
        return None

    @cached_property
    def _root(self) -> Node | None:
        """The file composed again, with positions; None if it no longer holds what was loaded."""
        try:
            raw = self._source.read_bytes() if self._source is not None else b""
            if zlib.crc32(raw) != self._digest:
                return None
            loader = ConfigLoader(raw.decode("utf-8"))
            try:
                return loader.get_single_node()
            finally:
                loader.dispose()
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
            return None


def _key_value(node: ScalarNode) -> Any:
    construct = None if node.tag == _STR else SafeConstructor.yaml_constructors.get(node.tag)
    return node.value if construct is None else construct(SafeConstructor(), node)


def _shown(value: Any) -> str:
    """``value`` for a one-line message: escaped if it holds line breaks or other unprintables, cut if long."""
    text = str(value)
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if len(text) <= 60 else text[:57] + "..."


def _char_at(text: str, mark: Any) -> str:
    """The character of ``text`` at ``mark`` ("" at the end); libyaml's marks do not count a leading BOM."""
    at = mark.index + (1 if _C and text.startswith("\ufeff") else 0)
    return text[at : at + 1]


def _location(file: str, mark: Any) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def _issue(file: str, text: str, error: BaseException, loader: ConfigLoader | None) -> ConfigIssue:
    """One located line for what stopped reading ``text``."""
    if isinstance(error, RecursionError):
        where = Location(file, 1, 1)
        if loader is not None:
            try:
                where = _location(file, loader.peek_event().start_mark)
            except Exception:  # noqa: BLE001 - the parser's state after a RecursionError is not worth trusting
                pass
        return ConfigIssue(where, "the file is nested too deeply to read")
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.MarkedYAMLError) and mark is not None:
        if isinstance(error, _Problem):
            message = error.problem
        elif _char_at(text, mark) == "\t":
            message = "invalid YAML: a tab character; YAML indents with spaces only"
        elif error.problem == "but found another document":
            message = "a second YAML document (`---`): put one document in each file"
        elif error.problem == "found unhashable key":
            message = "a mapping key must be a plain value, not a mapping or list"
        elif (error.problem or "").startswith("exceeded maximum nesting depth"):  # PyYAML >= 6.0.4's own limit
            message = "the file is nested too deeply to read"
        else:
            message = f"invalid YAML: {error.problem}"
            if error.context and error.context_mark is not None:
                message += f" ({error.context} on line {error.context_mark.line + 1})"
        return ConfigIssue(_location(file, mark), message)
    if isinstance(error, yaml.reader.ReaderError):
        # libyaml counts the position in UTF-8 bytes, PyYAML's own reader in characters.
        before = text.encode("utf-8")[: error.position].decode("utf-8", "replace") if _C else text[: error.position]
        before = before.removeprefix("\ufeff")
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        code = error.character if isinstance(error.character, int) else ord(error.character)
        return ConfigIssue(Location(file, line, column), f"invalid YAML: control character U+{code:04X} is not allowed")
    return ConfigIssue(Location(file), f"invalid YAML: {' '.join(str(error).split())}")


def _not_utf8(file: str, raw: bytes, error: UnicodeDecodeError) -> ConfigIssue:
    offset = error.start
    line_start = raw.rfind(b"\n", 0, offset) + 1
    line = raw.count(b"\n", 0, offset) + 1
    column = len(raw[line_start:offset].decode("utf-8", "replace")) + 1
    return ConfigIssue(
        Location(file, line, column),
        f"the file is not valid UTF-8 (byte 0x{raw[offset]:02x} at byte offset {offset}); save it as UTF-8",
    )
