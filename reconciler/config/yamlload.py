"""Read one YAML file safely and fast, and remember where things were written.

Valid input must load fast (10,000 chats x 200 members): a file in the
plain shape configs are written in is read by :mod:`.fastyaml` at regex
speed; any other file has its values built straight from libyaml's parse
events: no node tree, no per-node Python resolver calls for ordinary
strings. Only the keys of ``chats:``, ``groups:`` and the other sections get
their positions recorded on the way (the planner points at chats). Anything else that needs a position (an error deeper in a
chat, or a duplicate key, which must name both lines) re-reads the file as a
node tree with marks, which only happens when something is wrong.

PyYAML silently keeps the last of two equal keys in one mapping; here that is
an error. Only the safe subset of YAML is understood: plain mappings, lists
and scalars, anchors, aliases and ``<<`` merges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..model import Location
from .fastyaml import read_fast
from .issues import ConfigIssue

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAPPING_TAGS = (None, "!", "tag:yaml.org,2002:map")
_SEQUENCE_TAGS = (None, "!", "tag:yaml.org,2002:seq")
#: A plain scalar whose first character is not here is a string: skip the resolver.
_RESOLVER_FIRST_CHARS = frozenset(_Loader.yaml_implicit_resolvers)
#: Keys at this depth or less (a section, then its entries) get their positions recorded.
_MARKED_DEPTH = 2
_NO_KEY = object()
_MERGE = object()


class _Problem(Exception):
    """A located problem that stops reading the file."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


@dataclass(frozen=True)
class Document:
    """One loaded file: its data, and a way to find where any part of it was written."""

    file: str
    text: str = field(repr=False)
    data: Any = field(repr=False)
    #: Positions of the keys at depth 1 and 2 (``("chats", "eng-oncall")``), recorded while loading.
    key_marks: Mapping[tuple[Any, ...], Location] = field(repr=False, default_factory=dict)

    def locate(self, path: Sequence[Any], *, key: bool = False) -> Location:
        """Where the value at ``path`` (or, with ``key``, its key) was written.

        When the path leads somewhere the file does not spell out (a value
        that came in through a ``<<`` merge), the closest enclosing place.
        """
        path = tuple(path)
        if key and path in self.key_marks:
            return self.key_marks[path]
        return _location(self.file, self._find(path, key)[0].start_mark)

    def written(self, path: Sequence[Any], *, key: bool = False) -> Optional[str]:
        """The scalar at ``path`` exactly as written (``0412345670``, not the number YAML made of it)."""
        node, exact = self._find(tuple(path), key)
        return node.value if exact and isinstance(node, ScalarNode) else None

    def _find(self, path: tuple[Any, ...], key: bool) -> tuple[Node, bool]:
        """The node at ``path`` (or its key node) and True; else the deepest enclosing node and False."""
        node = self._root
        key_node: Optional[Node] = None
        for element in path:
            child = _child(node, element)
            if child is None:
                return node, False
            key_node, node = child
        if key:
            return (key_node, True) if key_node is not None else (node, False)
        return node, True

    def duplicate_key_issues(self) -> list[ConfigIssue]:
        """Every key written twice in one mapping, naming both lines."""
        issues = []
        seen_nodes: set[int] = set()
        stack = [self._root]
        while stack:
            node = stack.pop()
            if id(node) in seen_nodes:
                continue
            seen_nodes.add(id(node))
            if isinstance(node, MappingNode):
                first: dict[Any, Node] = {}
                for key_node, value_node in node.value:
                    stack.append(value_node)
                    if not _is_plain_key(key_node):
                        continue
                    name = _key_value(key_node)
                    if name in first:
                        where = _location(self.file, key_node.start_mark)
                        line = first[name].start_mark.line + 1
                        issues.append(ConfigIssue(where, f"duplicate key `{name}`: already defined on line {line}"))
                    else:
                        first[name] = key_node
            elif isinstance(node, SequenceNode):
                stack.extend(node.value)
        return issues

    @cached_property
    def _root(self) -> Node:
        return yaml.compose(self.text, Loader=_Loader)


def read_document(path: Path, file: str) -> tuple[Optional[Document], list[ConfigIssue]]:
    """Load ``path`` (shown as ``file``); on failure the document is None and the issues say why."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        return None, [ConfigIssue(Location(file), f"cannot read the file: {error.strerror}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return None, [_not_utf8(file, raw, error)]
    try:
        data, key_marks, has_duplicates = _build(text, file)
    except yaml.YAMLError as error:
        return None, [_syntax_issue(file, text, error)]
    except _Problem as problem:
        return None, [ConfigIssue(_location(file, problem.mark), problem.message)]
    if data is None:
        return None, [ConfigIssue(Location(file, 1, 1), "the file is empty; it needs at least `version: 1`")]
    document = Document(file, text, data, key_marks)
    return document, document.duplicate_key_issues() if has_duplicates else []


def _build(text: str, file: str) -> tuple[Any, dict[tuple[Any, ...], Location], bool]:
    fast = read_fast(text, file)
    if fast is not None:
        return (*fast, False)
    return _build_with_events(text, file)


def _build_with_events(text: str, file: str) -> tuple[Any, dict[tuple[Any, ...], Location], bool]:
    loader = _Loader(text)
    try:
        return _build_from_events(loader, file)
    finally:
        loader.dispose()


def _build_from_events(loader: Any, file: str) -> tuple[Any, dict[tuple[Any, ...], Location], bool]:
    """Build the document's value from parse events (what PyYAML's safe loader would build).

    Returns the value, the recorded key positions and whether some mapping
    had a key twice (the last one wins here, as in PyYAML; the caller reports it).
    """
    get_event = loader.get_event
    first_chars = _RESOLVER_FIRST_CHARS
    document: list[Any] = []  # receives the root value
    containers: list[Any] = [document]  # open mappings and lists, outermost first
    keys: list[Any] = [_NO_KEY]  # per open container: the key waiting for its value, or _NO_KEY
    anchors: dict[str, Any] = {}
    container_anchors: dict[int, str] = {}  # depth -> anchor of the open container there
    merges: dict[int, list[tuple[Any, Any]]] = {}  # depth -> values of `<<` keys in that mapping
    key_marks: dict[tuple[Any, ...], Location] = {}
    has_duplicates = False
    get_event()  # stream start
    if loader.check_event(StreamEndEvent):
        return None, key_marks, False
    get_event()  # document start
    while True:
        event = get_event()
        cls = event.__class__
        if cls is ScalarEvent:
            value = event.value
            if event.tag is None and event.anchor is None:  # the common case: plain or quoted text
                if value[:1] in first_chars and event.implicit[0]:
                    value = _implicit_scalar(loader, event, keys[-1] is _NO_KEY and containers[-1].__class__ is dict)
            else:
                value = _explicit_scalar(loader, event, anchors)
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            mapping = cls is MappingStartEvent
            if event.tag not in (_MAPPING_TAGS if mapping else _SEQUENCE_TAGS):
                raise _Problem(event.start_mark, f"unsupported YAML tag `{event.tag}`: use a plain mapping or list")
            if event.anchor:
                container_anchors[len(containers)] = event.anchor
            containers.append({} if mapping else [])
            keys.append(_NO_KEY)
            continue
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            depth = len(containers) - 1
            value = containers.pop()
            keys.pop()
            if depth in merges:
                _apply_merges(value, merges.pop(depth))
            if depth in container_anchors:
                anchors[container_anchors.pop(depth)] = value
        elif cls is AliasEvent:
            if event.anchor not in anchors:
                raise _Problem(
                    event.start_mark,
                    f"alias `*{event.anchor}` refers to no anchor defined before it (or to a mapping or list that contains it)",
                )
            value = anchors[event.anchor]
        elif cls is DocumentEndEvent:
            break
        else:  # pragma: no cover - libyaml emits no other event inside a document
            raise _Problem(event.start_mark, f"unexpected YAML event {cls.__name__}")

        top = containers[-1]
        if top.__class__ is list:
            top.append(value)
            continue
        key = keys[-1]
        if key is _NO_KEY:
            if value.__class__ in (dict, list):
                raise _Problem(event.start_mark, "a mapping key must be a plain value, not a mapping or list")
            keys[-1] = value
            if len(containers) <= _MARKED_DEPTH + 1 and containers[1].__class__ is dict:
                key_marks[(*keys[1:-1], value)] = _location(file, event.start_mark)
            continue
        keys[-1] = _NO_KEY
        if key is _MERGE:
            merges.setdefault(len(containers) - 1, []).append((value, event.start_mark))
            continue
        if key in top:
            has_duplicates = True
        top[key] = value

    if not loader.check_event(StreamEndEvent):
        raise _Problem(get_event().start_mark, "a second YAML document (`---`): put one document in each file")
    return document[0], key_marks, has_duplicates


def _implicit_scalar(loader: Any, event: ScalarEvent, is_key: bool) -> Any:
    """A plain scalar that may be a number, boolean, null, date or ``<<`` (resolved as PyYAML does)."""
    tag = loader.resolve(ScalarNode, event.value, event.implicit)
    if tag == _STR_TAG:
        return event.value
    if tag == _MERGE_TAG:
        if not is_key:
            raise _Problem(event.start_mark, "`<<` (merge) can only be a mapping key")
        return _MERGE
    return _construct_scalar(loader, tag, event)


def _explicit_scalar(loader: Any, event: ScalarEvent, anchors: dict[str, Any]) -> Any:
    """A scalar with a tag (``!!str 0123``) or an anchor (``&name``)."""
    tag = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(ScalarNode, event.value, event.implicit)
    if tag == _MERGE_TAG:
        raise _Problem(event.start_mark, "`<<` (merge) cannot carry a tag or anchor")
    value = event.value if tag == _STR_TAG else _construct_scalar(loader, tag, event)
    if event.anchor:
        anchors[event.anchor] = value
    return value


def _construct_scalar(loader: Any, tag: str, event: ScalarEvent) -> Any:
    """The value of a non-string scalar (number, boolean, null, date, explicit tag), as PyYAML builds it."""
    node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    if tag not in loader.yaml_constructors:
        raise _Problem(event.start_mark, f"unsupported YAML tag `{tag}`")
    return loader.yaml_constructors[tag](loader, node)


def _apply_merges(mapping: dict[Any, Any], sources: list[tuple[Any, Any]]) -> None:
    """``<<: *base``: keys written in the mapping win; in ``<<: [*a, *b]`` the first listed wins."""
    merged: dict[Any, Any] = {}
    for value, mark in sources:
        parts = value if isinstance(value, list) else [value]
        if not all(isinstance(part, dict) for part in parts):
            raise _Problem(mark, "`<<` must merge a mapping or a list of mappings")
        for part in reversed(parts):
            merged.update(part)
    merged.update(mapping)
    mapping.clear()
    mapping.update(merged)


def _is_plain_key(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag != _MERGE_TAG


def _key_value(node: ScalarNode) -> Any:
    return SafeConstructor().construct_object(node)


def _child(node: Node, element: Any) -> Optional[tuple[Optional[Node], Node]]:
    """The (key node, value node) at ``element`` of a mapping or list node, if written there."""
    if isinstance(node, MappingNode):
        for key_node, value_node in reversed(node.value):  # the last of equal keys wins
            if _is_plain_key(key_node) and _key_value(key_node) == element:
                return key_node, value_node
    elif isinstance(node, SequenceNode) and isinstance(element, int) and 0 <= element < len(node.value):
        return None, node.value[element]
    return None


def _location(file: str, mark: Any) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def _syntax_issue(file: str, text: str, error: yaml.YAMLError) -> ConfigIssue:
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.MarkedYAMLError) and mark is not None:
        message = f"invalid YAML: {error.problem}"
        if error.context and error.context_mark is not None:
            message += f" ({error.context} on line {error.context_mark.line + 1})"
        return ConfigIssue(_location(file, mark), message)
    if isinstance(error, yaml.reader.ReaderError):
        # libyaml counts the position in UTF-8 bytes, PyYAML's own reader in characters.
        if _Loader is yaml.SafeLoader:
            before = text[: error.position]
        else:
            before = text.encode("utf-8")[: error.position].decode("utf-8", "replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)
        return ConfigIssue(Location(file, line, column), f"invalid YAML: control character U+{code:04X} is not allowed")
    return ConfigIssue(Location(file), f"invalid YAML: {error}")


def _not_utf8(file: str, raw: bytes, error: UnicodeDecodeError) -> ConfigIssue:
    offset = error.start
    line_start = raw.rfind(b"\n", 0, offset) + 1
    line = raw.count(b"\n", 0, offset) + 1
    column = len(raw[line_start:offset].decode("utf-8", "replace")) + 1
    return ConfigIssue(
        Location(file, line, column),
        f"the file is not valid UTF-8 (byte 0x{raw[offset]:02x} at byte offset {offset}); save it as UTF-8",
    )
