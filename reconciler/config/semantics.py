"""The rules a JSON Schema cannot express: across files, groups, and the member cap.

Runs after the schema check, skipping only the entries the schema found
broken, so one run reports as much as possible. Groups are expanded here,
defaults merged, and the immutable :class:`~reconciler.model.DesiredChat`
values built.
"""
from __future__ import annotations

import difflib
from bisect import bisect_left
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..model import DesiredChat, Location
from ..rules import MEMBER_CAP
from .issues import ConfigIssue
from .schema import SchemaResult
from .yamlload import Document


@dataclass(frozen=True)
class _Entry:
    """A chat or group as written in one file."""

    document: Document
    section: str
    name: str
    value: Any
    #: The schema check failed inside this entry: skip it (its problems are reported).
    broken: bool

    def locate(self, *path: Any, key: bool = False) -> Location:
        return self.document.locate((self.section, self.name, *path), key=key)


@dataclass(frozen=True)
class Resolved:
    """The merged, expanded content of all files, and what was wrong with it."""

    chats: tuple[DesiredChat, ...]
    groups: Mapping[str, tuple[str, ...]]
    defaults: Mapping[str, Any]
    issues: tuple[ConfigIssue, ...]


def resolve(checked: Sequence[tuple[Document, SchemaResult]]) -> Resolved:
    """Merge the files' defaults, groups and chats, then expand groups and build the chats."""
    issues: list[ConfigIssue] = []
    defaults = _merge_defaults(checked, issues)
    groups = _collect("groups", checked, issues)
    chats = _collect("chats", checked, issues)
    expander = _Expander(groups, issues)
    desired = [expander.chat(entry, defaults) for entry in chats.values() if not entry.broken]
    _check_pinned_chatids(chats, issues)
    return Resolved(
        chats=tuple(sorted((c for c in desired if c is not None), key=lambda c: c.key)),
        groups={
            name: tuple(sorted(users))
            for name, users in sorted(expander.expanded.items(), key=_by_name)
            if users is not None
        },
        defaults=defaults,
        issues=tuple(issues),
    )


def _merge_defaults(checked: Sequence[tuple[Document, SchemaResult]], issues: list[ConfigIssue]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    first: dict[str, Location] = {}
    for document, result in checked:
        path = ("defaults", "settings")
        if result.is_broken(path):
            continue
        for name, value in (document.data.get("defaults") or {}).get("settings", {}).items():
            where = document.locate((*path, name), key=True)
            if name in first:
                issues.append(ConfigIssue(where, f"default setting `{name}` is defined twice: first at {first[name]}"))
            else:
                merged[name], first[name] = value, where
    return merged


def _collect(section: str, checked: Sequence[tuple[Document, SchemaResult]], issues: list[ConfigIssue]) -> dict[str, _Entry]:
    """Every entry of ``section`` across files; a name defined twice is an error naming both places."""
    noun = section[:-1]
    entries: dict[str, _Entry] = {}
    for document, result in checked:
        if result.is_broken((section,)):
            continue
        for name, value in (document.data.get(section) or {}).items():
            entry = _Entry(document, section, name, value, result.is_broken((section, name)))
            if name in entries:
                first = entries[name].locate(key=True)
                issues.append(ConfigIssue(entry.locate(key=True), f"{noun} `{name}` is defined twice: first at {first}"))
            else:
                entries[name] = entry
    return entries


def _check_pinned_chatids(chats: Mapping[str, _Entry], issues: list[ConfigIssue]) -> None:
    pinned: dict[str, _Entry] = {}
    for entry in chats.values():
        chatid = None if entry.broken else entry.value.get("chatid")
        if chatid is None:
            continue
        if chatid in pinned:
            first = pinned[chatid]
            issues.append(
                ConfigIssue(
                    entry.locate("chatid"),
                    f"chatid `{chatid}` is pinned twice: also by chat `{first.name}` at {first.locate('chatid')}",
                )
            )
        else:
            pinned[chatid] = entry


class _Expander:
    """Expands ``@group`` references; groups in a cycle or with errors expand to None (already reported)."""

    def __init__(self, groups: Mapping[str, _Entry], issues: list[ConfigIssue]) -> None:
        self._groups = groups
        self._issues = issues
        self.expanded: dict[str, Optional[frozenset[str]]] = {}
        #: "@name" of every group; names that are not strings are broken (the schema reported them).
        self._references = frozenset("@" + name for name in groups if isinstance(name, str))
        for name in self._order_without_cycles():
            entry = groups[name]
            users = None if entry.broken or name in self.expanded else self._expand(entry.value, entry, ())
            self.expanded[name] = None if users is None else frozenset(users)

    def chat(self, entry: _Entry, defaults: Mapping[str, Any]) -> Optional[DesiredChat]:
        """The chat's desired value, or None when its members could not be worked out."""
        chat = entry.value
        users = self._expand(chat.get("members", ()), entry, ("members",))
        if users is None:
            return None
        owner = chat["owner"]
        at = bisect_left(users, owner)
        if users[at : at + 1] != [owner]:
            users.insert(at, owner)
        if len(users) > MEMBER_CAP:
            self._issues.append(
                ConfigIssue(
                    entry.locate("members", key=True),
                    f"chat `{entry.name}` has {len(users)} members after expanding groups (owner included); "
                    f"the limit is {MEMBER_CAP}",
                )
            )
            return None
        return DesiredChat(
            key=entry.name,
            name=chat["name"],
            owner=owner,
            members=tuple(users),  # sorted, deduplicated, owner in: DesiredChat need not sort again
            members_policy=chat.get("members_policy", "exact"),
            settings={**defaults, **chat.get("settings", {})},
            chatid=chat.get("chatid"),
            location=entry.locate(key=True),
        )

    def _order_without_cycles(self) -> Iterable[str]:
        """Groups, included ones first; each cycle is reported and its groups marked None."""
        graph = {
            name: set() if entry.broken else set(_references(entry.value)) & self._groups.keys()
            for name, entry in self._groups.items()
        }
        while True:
            try:
                return tuple(TopologicalSorter(graph).static_order())
            except CycleError as error:
                # args[1] lists each node before the one it is included by: reverse it to read "includes".
                cycle = list(reversed(error.args[1][1:]))
                start = cycle.index(min(cycle))
                cycle = cycle[start:] + cycle[:start]
                entry = self._groups[cycle[0]]
                at = entry.locate(_reference_index(entry.value, cycle[1 % len(cycle)]))
                self._issues.append(ConfigIssue(at, "group cycle: " + " -> ".join(cycle + cycle[:1])))
                for name in cycle:
                    self.expanded[name] = None
                    del graph[name]

    def _expand(self, items: Sequence[str], entry: _Entry, path: tuple[Any, ...]) -> Optional[list[str]]:
        """User ids of ``items`` with groups expanded, sorted; None if a reference cannot be expanded.

        Runs for every chat (10,000 x 200 ids): set operations and one sort, no Python loop over the ids.
        """
        users = set(items)
        references = users & self._references
        users -= references
        complete = True
        for reference in references:
            expanded = self.expanded.get(reference[1:])
            if expanded is None:
                complete = False  # broken or cyclic: reported where it is defined
            else:
                users |= expanded
        ordered = sorted(users)
        # "@name" sorts between "@" and "A", and user ids never start with "@" (schema): these are undefined.
        for reference in ordered[bisect_left(ordered, "@") : bisect_left(ordered, "A")]:
            where = entry.locate(*path, list(items).index(reference))
            self._issues.append(ConfigIssue(where, _undefined_group(reference[1:], self._groups)))
            complete = False
        return ordered if complete else None


def _by_name(item: tuple[Any, Any]) -> str:
    return str(item[0])  # a broken group's name may be a number


def _references(items: Sequence[str]) -> list[str]:
    return [item[1:] for item in items if item.startswith("@")]


def _reference_index(items: Sequence[str], group: str) -> int:
    return list(items).index("@" + group)


def _undefined_group(name: str, groups: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, [group for group in groups if isinstance(group, str)], n=3)
    hint = "did you mean " + " or ".join(f"`@{c}`" for c in close) + "?" if close else "define it under `groups:`"
    return f"undefined group `@{name}`; {hint}"
