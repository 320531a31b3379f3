"""The rules a JSON Schema cannot express: across files, groups, exclusions, templates and the member cap.

Runs after the schema check, skipping only the entries the schema found
broken, so one run reports as much as possible. Groups are expanded here
(into user ids and directory selectors), defaults merged, and the immutable
:class:`~reconciler.model.DesiredChat` values built. Selectors stay
unresolved: ``validate`` is offline, the directory is read at plan time.
"""

from __future__ import annotations

import difflib
import string
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from graphlib import CycleError, TopologicalSorter
from typing import Any

from ..model import DesiredChat, Location, Selector
from ..notify import PLACEHOLDERS
from ..rules import EXACT, MEMBER_CAP
from ..textsafe import describe_char, is_unsafe
from .issues import ConfigIssue, quoted
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
    #: Group name -> its literal user ids (nested groups expanded), sorted; selectors are in ``group_selectors``.
    groups: Mapping[str, tuple[str, ...]]
    defaults: Mapping[str, Any]
    issues: tuple[ConfigIssue, ...]
    #: Group name -> its directory selectors (nested groups expanded), sorted; only groups that have some.
    group_selectors: Mapping[str, tuple[Selector, ...]] = field(default_factory=dict)
    #: ``defaults.notify``, or None.
    default_notify: str | None = None


#: The placeholders a notify template may use; the applier fills them in.
NOTIFY_PLACEHOLDERS = PLACEHOLDERS  # notify.py fills them; one list


def resolve(checked: Sequence[tuple[Document, SchemaResult]]) -> Resolved:
    """Merge the files' defaults, groups and chats, then expand groups and build the chats."""
    issues: list[ConfigIssue] = []
    defaults = _merge_defaults(checked, issues)
    default_notify = _default_notify(checked, issues)
    groups = _collect("groups", checked, issues)
    chats = _collect("chats", checked, issues)
    _check_text((*groups.values(), *chats.values()), issues)
    expander = _Expander(groups, issues)
    desired = [expander.chat(entry, defaults, default_notify) for entry in chats.values() if not entry.broken]
    _check_pinned_chatids(chats, issues)
    expanded = sorted(
        ((name, members) for name, members in expander.expanded.items() if members is not None), key=_by_name
    )
    return Resolved(
        chats=tuple(sorted((c for c in desired if c is not None), key=lambda c: c.key)),
        groups={name: tuple(sorted(members.users)) for name, members in expanded},
        defaults=defaults,
        issues=tuple(issues),
        group_selectors={name: _sorted_selectors(members.selectors) for name, members in expanded if members.selectors},
        default_notify=default_notify,
    )


def _merge_defaults(checked: Sequence[tuple[Document, SchemaResult]], issues: list[ConfigIssue]) -> dict[str, Any]:
    """Positions are only looked up for a problem: finding one re-reads the file (documents keep no text)."""
    merged: dict[str, Any] = {}
    first: dict[str, Document] = {}
    path = ("defaults", "settings")
    for document, result in checked:
        if result.is_broken(path):
            continue
        for name, value in (document.data.get("defaults") or {}).get("settings", {}).items():
            if name in first:
                before = first[name].locate((*path, name), key=True)
                issues.append(
                    ConfigIssue(
                        document.locate((*path, name), key=True),
                        f"default setting `{name}` is defined twice: first at {before}",
                    )
                )
            else:
                merged[name], first[name] = value, document
    return merged


def _default_notify(checked: Sequence[tuple[Document, SchemaResult]], issues: list[ConfigIssue]) -> str | None:
    """``defaults.notify`` of all files (defined once at most), if it is a valid template."""
    found: tuple[str, Document] | None = None
    valid = True
    path = ("defaults", "notify")
    for document, result in checked:
        if result.is_broken(path) or "notify" not in (document.data.get("defaults") or {}):
            continue
        if found is not None:
            issues.append(
                ConfigIssue(
                    document.locate(path, key=True),
                    f"default `notify` is defined twice: first at {found[1].locate(path, key=True)}",
                )
            )
            continue
        found = (document.data["defaults"]["notify"], document)
        valid = _check_template(found[0], partial(document.locate, path), issues)
    return found[0] if found is not None and valid else None


def _check_template(template: str, where: Callable[[], Location], issues: list[ConfigIssue]) -> bool:
    """Whether ``template`` is a notify template the applier can fill in; if not, why, at ``where()``
    (looked up only then: it re-reads the file)."""
    problem = _template_problem(template)
    if problem is not None:
        issues.append(ConfigIssue(where(), f"notify template: {problem}"))
    return problem is None


def _template_problem(template: str) -> str | None:
    """Checked with the parser ``str.format`` uses, so a template that passes here cannot fail at apply time.

    Attribute access, indexing, conversions and format specs are refused:
    ``{name.__class__}`` or ``{added:>999999999}`` in a pull request must not
    reach ``str.format``.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        if str(error).startswith("Single '}'"):
            return "a `}` closes nothing; write `}}` for a literal brace"
        return "a `{` is not closed by `}`; write `{{` for a literal brace"
    for _, name, spec, conversion in parsed:
        if name is None:  # literal text only
            continue
        if name not in NOTIFY_PLACEHOLDERS:
            close = difflib.get_close_matches(name, NOTIFY_PLACEHOLDERS, n=1)
            every = ", ".join(f"{{{p}}}" for p in NOTIFY_PLACEHOLDERS)
            hint = f"did you mean `{{{close[0]}}}`?" if close else f"use {every}"
            return f"unknown placeholder {quoted('{' + name + '}')}; {hint}"
        if spec or conversion:
            return f"placeholder `{{{name}}}` takes no format spec or conversion; write `{{{name}}}`"
    return None


def _collect(
    section: str, checked: Sequence[tuple[Document, SchemaResult]], issues: list[ConfigIssue]
) -> dict[str, _Entry]:
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
                issues.append(
                    ConfigIssue(entry.locate(key=True), f"{noun} `{name}` is defined twice: first at {first}")
                )
            else:
                entries[name] = entry
    return entries


def _check_text(entries: Iterable[_Entry], issues: list[ConfigIssue]) -> None:
    """Text that could deceive a reviewer: a user id (owner, members, exclude, groups) must be printable (no
    control, format, private-use, unassigned or space characters: ``bob\u200b`` or ``alice\u202e`` look like
    ``bob`` and ``alice``); a chat name may hold no format character (a bidi override, a zero-width space) nor
    control character. Non-ASCII ids (a Cyrillic ``о`` in ``bоb``) are allowed, and flagged in plans."""
    for entry in entries:
        if entry.broken:
            continue
        if entry.section == "groups":
            _check_ids(entry, (), entry.value, issues)
            continue
        chat = entry.value
        name, owner = chat["name"], chat["owner"]
        if not name.isprintable():  # spaces are fine in a name; format and control characters are not
            bad = next((char for char in name if is_unsafe(char)), None)
            if bad is not None:
                issues.append(
                    ConfigIssue(
                        entry.locate("name"),
                        f"`name` {quoted(name)} is not valid: a chat name cannot hold control or format characters "
                        f"(bidi controls, zero-width characters): it holds {describe_char(bad)}",
                    )
                )
        _check_ids(entry, ("owner",), (owner,), issues, single=True)
        for field_name in ("members", "exclude"):
            _check_ids(entry, (field_name,), chat.get(field_name, ()), issues)


def _check_ids(
    entry: _Entry, path: tuple[str, ...], items: Sequence[Any], issues: list[ConfigIssue], single: bool = False
) -> None:
    for index, user, bad in _unprintable(items):
        where = entry.locate(*path) if single else entry.locate(*path, index)
        issues.append(
            ConfigIssue(
                where,
                f"user id {quoted(user)} is not valid: a userId holds only printable characters "
                f"(no control, format or invisible ones), not {describe_char(bad)}",
            )
        )


def _unprintable(items: Sequence[Any]) -> Iterator[tuple[int, str, str]]:
    """(index, id, its first unprintable character) of each id in a member list that is not printable text.

    A whole list is checked in one C call (``str.isprintable``) first: 10,000 chats of 200 ids cost
    milliseconds; ids are looked at one by one only when that finds something (or the list holds selectors).
    """
    try:
        if "".join(items).isprintable():
            return
    except TypeError:  # directory selectors (mappings) among the ids
        pass
    for index, item in enumerate(items):
        if item.__class__ is str and not item.isprintable():
            yield index, item, next(char for char in item if not char.isprintable())


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


@dataclass(frozen=True)
class _Members:
    """A member list with its groups expanded: literal user ids, and directory selectors to resolve later."""

    users: frozenset[str]
    selectors: frozenset[Selector]


class _Expander:
    """Expands ``@group`` references; groups in a cycle or with errors expand to None (already reported)."""

    def __init__(self, groups: Mapping[str, _Entry], issues: list[ConfigIssue]) -> None:
        self._groups = groups
        self._issues = issues
        self.expanded: dict[str, _Members | None] = {}
        #: "@name" of every group; names that are not strings are broken (the schema reported them).
        self._references = frozenset("@" + name for name in groups if isinstance(name, str))
        for name in self._order_without_cycles():
            entry = groups[name]
            members = None if entry.broken or name in self.expanded else self._expand(entry.value, entry, ())
            self.expanded[name] = None if members is None else _Members(frozenset(members[0]), frozenset(members[1]))

    def chat(self, entry: _Entry, defaults: Mapping[str, Any], default_notify: str | None) -> DesiredChat | None:
        """The chat's desired value, or None when its members or template could not be worked out."""
        chat = entry.value
        members = self._expand(chat.get("members", ()), entry, ("members",))
        excluded = self._expand(chat.get("exclude", ()), entry, ("exclude",))
        notify = chat.get("notify", default_notify)
        if "notify" in chat and not _check_template(notify, lambda: entry.locate("notify"), self._issues):
            return None
        if members is None or excluded is None:
            return None
        users, selectors = members
        excluded_users, excluded_selectors = excluded
        owner = chat["owner"]
        if owner in excluded_users:
            self._owner_excluded(entry, owner)
            return None
        if excluded_users:
            users = [user for user in users if user not in excluded_users]  # stays sorted
        at = bisect_left(users, owner)
        if users[at : at + 1] != [owner]:
            users.insert(at, owner)
        if not selectors and len(users) > MEMBER_CAP:  # with selectors, the cap is checked once they are resolved
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
            members_policy=chat.get("members_policy", EXACT),
            settings={**defaults, **chat.get("settings", {})},
            chatid=chat.get("chatid"),
            selectors=_sorted_selectors(selectors),
            exclude=tuple(sorted(excluded_users)),
            exclude_selectors=_sorted_selectors(excluded_selectors),
            notify=notify,
        )

    def _owner_excluded(self, entry: _Entry, owner: str) -> None:
        """Each place in ``exclude`` that names the owner, directly or through a group."""
        for index, item in enumerate(entry.value["exclude"]):
            where = entry.locate("exclude", index)
            if item == owner:
                self._issues.append(ConfigIssue(where, "the owner cannot be excluded"))
            elif isinstance(item, str) and item in self._references:
                group = self.expanded.get(item[1:])
                if group is not None and owner in group.users:
                    self._issues.append(
                        ConfigIssue(where, f"the owner cannot be excluded: `{item}` includes {quoted(owner)}")
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

    def _expand(
        self, items: Sequence[Any], entry: _Entry, path: tuple[Any, ...]
    ) -> tuple[list[str], set[Selector]] | None:
        """User ids (sorted) and selectors of ``items``, groups expanded; None if a reference cannot be expanded.

        Runs for every chat (10,000 x 200 ids): set operations and one sort, no Python loop over the ids
        unless the list holds selectors.
        """
        try:
            users = set(items)
            selectors: set[Selector] = set()
        except TypeError:  # selector mappings are unhashable: take them out
            users = {item for item in items if item.__class__ is str}
            selectors = {_selector(item) for item in items if item.__class__ is dict}
        references = users & self._references
        users -= references
        complete = True
        for reference in references:
            expanded = self.expanded.get(reference[1:])
            if expanded is None:
                complete = False  # broken or cyclic: reported where it is defined
            else:
                users |= expanded.users
                selectors |= expanded.selectors
        ordered = sorted(users)
        # "@name" sorts between "@" and "A", and user ids never start with "@" (schema): these are undefined.
        for reference in ordered[bisect_left(ordered, "@") : bisect_left(ordered, "A")]:
            where = entry.locate(*path, list(items).index(reference))
            self._issues.append(ConfigIssue(where, _undefined_group(reference[1:], self._groups)))
            complete = False
        return (ordered, selectors) if complete else None


def _selector(written: Mapping[str, Any]) -> Selector:
    """A selector mapping the schema accepted: exactly one kind; ids as ints (``1024.0`` is ``1024``)."""
    kind = next(kind for kind in Selector.KINDS if kind in written)
    value = written[kind]
    return Selector(kind, str(value) if kind == "mobile" else int(value), bool(written.get("recursive", False)))


def _sorted_selectors(selectors: Iterable[Selector]) -> tuple[Selector, ...]:
    return tuple(sorted(selectors, key=Selector.sort_key))


def _by_name(item: tuple[Any, Any]) -> str:
    return str(item[0])  # a broken group's name may be a number


def _references(items: Sequence[Any]) -> list[str]:
    return [item[1:] for item in items if isinstance(item, str) and item.startswith("@")]


def _reference_index(items: Sequence[str], group: str) -> int:
    return list(items).index("@" + group)


def _undefined_group(name: str, groups: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, [group for group in groups if isinstance(group, str)], n=3)
    hint = "did you mean " + " or ".join(f"`@{c}`" for c in close) + "?" if close else "define it under `groups:`"
    return f"undefined group `@{name}`; {hint}"
