"""The immutable values that flow between config, planner and applier.

Settings use dtchat's YAML names and values (``muted: True``,
``mention_all: "owner"``); the backends map them to the wire.
A setting absent from ``settings`` is unmanaged: never sent, never compared.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from operator import lt
from types import MappingProxyType
from typing import Any, ClassVar

from .rules import EXACT


@dataclass(frozen=True)
class Location:
    """Where a value was written: ``file:line:column`` (1-based)."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if not self.line:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Selector:
    """Members drawn from the org directory at plan time: ``{dept: 1024, recursive: true}``, ``{role: 3001}``,
    ``{mobile: "13800000000"}``.

    ``value`` is the department or role id (an int) or the mobile number as written (a str).
    """

    #: What each kind of selector is written as, in the order messages list them.
    KINDS: ClassVar[tuple[str, ...]] = ("dept", "role", "mobile")

    kind: str  # "dept" | "role" | "mobile"
    value: int | str
    recursive: bool = False

    def sort_key(self) -> tuple[str, str, bool]:
        return (self.kind, str(self.value), self.recursive)

    def __str__(self) -> str:
        value = f'"{self.value}"' if isinstance(self.value, str) else str(self.value)
        return f"{{{self.kind}: {value}" + (", recursive: true}" if self.recursive else "}")


@dataclass(frozen=True)
class MemberSource:
    """Where some of a chat's members came from, for plans: a selector, what it is called, how many it gave."""

    selector: Selector
    #: The department's or role's name from the directory ("研发部"), or the mobile number.
    label: str
    #: Distinct user ids the selector gave.
    count: int
    #: True when the selector is in the chat's ``exclude:`` list.
    excluded: bool = False


@dataclass(frozen=True)
class ReadFailure:
    """A live chat that could not be read; becomes an ERROR change for its key."""

    message: str


def _freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted(mapping.items())))


@dataclass(frozen=True)
class DesiredChat:
    """A chat as the YAML wants it, groups expanded, owner included in ``members``.

    With directory selectors the chat is complete only after resolution:
    ``members`` ∪ resolved(``selectors``) − ``exclude`` − resolved(``exclude_selectors``),
    the owner always kept.
    """

    key: str
    name: str
    owner: str
    #: Sorted, deduplicated, owner included: the literal user ids (through groups too), minus ``exclude``.
    members: tuple[str, ...]
    members_policy: str = EXACT
    #: Declared settings only (chat's own merged over ``defaults``).
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: A pinned chatid (``chatid:`` in YAML), or None.
    chatid: str | None = None
    #: Directory selectors still to resolve (members', groups' and their own), deduplicated, sorted by ``sort_key``.
    #: ``members`` holds only the literal ids until the directory resolver fills them in.
    selectors: tuple[Selector, ...] = ()
    #: ``exclude:`` literal user ids, groups expanded, sorted; never the owner. Already taken out of
    #: ``members``; the resolver takes them out again from what the selectors give.
    exclude: tuple[str, ...] = ()
    #: ``exclude:`` selectors (written there or through its groups), resolved at plan time like ``selectors``.
    exclude_selectors: tuple[Selector, ...] = ()
    #: The ``apply --notify`` message template (the chat's own, else ``defaults.notify``);
    #: None: the built-in message. Placeholders are checked at load time.
    notify: str | None = None

    @property
    def needs_directory(self) -> bool:
        """True until the directory resolver has turned every selector into user ids."""
        return bool(self.selectors or self.exclude_selectors)

    def __post_init__(self) -> None:
        if not _sorted_unique_with(self.members, self.owner):
            object.__setattr__(self, "members", tuple(sorted(set(self.members) | {self.owner})))
        object.__setattr__(self, "settings", _freeze(self.settings))
        # Usually empty; sorted so that equal chats compare equal whoever built them.
        for name in ("selectors", "exclude_selectors"):
            value = getattr(self, name)
            if value:
                object.__setattr__(self, name, tuple(sorted(set(value), key=Selector.sort_key)))
        if self.exclude:
            object.__setattr__(self, "exclude", tuple(sorted(set(self.exclude))))


def _sorted_unique_with(members: Any, owner: str) -> bool:
    """``members`` is already a strictly increasing tuple holding ``owner``.

    The config loader builds 10,000 chats x 200 members already in that
    form; checking it at C speed costs a tenth of sorting them again.
    """
    if members.__class__ is not tuple:
        return False
    at = bisect_left(members, owner)
    return at < len(members) and members[at] == owner and all(map(lt, members, islice(members, 1, None)))


@dataclass(frozen=True)
class LiveChat:
    """A chat as DingTalk reports it (a backend's ``read``)."""

    chatid: str
    name: str
    owner: str
    #: Sorted.
    members: tuple[str, ...]
    #: Every setting the API reported, in YAML names and values.
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(sorted(set(self.members))))
        object.__setattr__(self, "settings", _freeze(self.settings))
