"""Members from the org directory: ``{dept: …}``, ``{role: …}`` and ``{mobile: …}`` selectors into user ids.

Why it is shaped this way (design §8):

* Every directory call (``listid`` of one department, ``listsubid`` of one
  department, one role, one mobile, …) is made at most once per run and
  shared between selectors, so a recursive selector on 1 and a direct one on
  100 cost one ``listid(100)``, and 50 chats sharing 10 selectors cost what
  10 selectors cost.
* Calls go to one small thread pool per API ("lane"). DingTalk limits each
  API separately, and so does the client, so a lane waiting for its own rate
  budget never holds up another API's calls: a tree walk runs at the speed of
  its slowest API, not at the sum of them.
* The caller's thread coordinates: it walks department trees as ``listsubid``
  answers land and hands each newly found department to the lanes. No pool
  worker ever waits for another call, so no parallelism can deadlock.
* A failed or empty answer is never a member list: it becomes an error for
  every chat that uses it (members are never removed on the strength of one).
  Only an error that would hit every call (``is_fatal``) stops the run.
* User ids a plan would add or make owner, and that no directory answer of
  this run already named, are checked to exist (``check_users``) on their
  own lane, once per distinct id: an unknown id, or one whose check failed,
  is an error for every chat that would add it (``unknown_user_errors``),
  never a write that DingTalk refuses half-way through an apply.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from .backends import DingTalkError, Directory, NotFoundError, is_fatal
from .model import DesiredChat, MemberSource, Selector
from .rules import MEMBER_CAP

_EMPTY = "refusing to plan members from an empty directory answer"


@dataclass(frozen=True)
class Lookup:
    """One selector's answer."""

    selector: Selector
    #: The distinct user ids it stands for; None when the lookup failed.
    users: frozenset[str] | None
    #: The department's or role's name, or the normalised mobile number: what plans show.
    label: str
    #: Why it cannot be used (``"{dept: 100}: department 100 not found (…)"``); None when usable.
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Usable: answered, and not empty (an empty answer is never trusted as "nobody")."""
        return self.error is None and bool(self.users)


@dataclass(frozen=True)
class DirectoryResult:
    """Chats with their selectors resolved, or the reason they could not be."""

    #: Same order as given; resolved chats have their final members and no selectors left.
    chats: tuple[DesiredChat, ...]
    #: chat key -> one-line reason; those chats are returned unchanged (still ``needs_directory``).
    errors: Mapping[str, str]
    #: chat key -> where its members came from, one per selector, sorted by selector.
    sources: Mapping[str, tuple[MemberSource, ...]]
    lookups: Mapping[Selector, Lookup]


# ---------------------------------------------------------------------------- the calls

_Key = tuple[str, Any]

LISTID = "listid"
LISTSUBID = "listsubid"
DEPT = "dept"
ROLE = "role"
ROLES = "roles"
MOBILE = "mobile"
USER = "user"


def _user_set(ids: Iterable[Any]) -> frozenset[str]:
    # interned: the same ids come back from the chat reads (they intern too), so big plans share strings
    return frozenset(sys.intern(str(u)) for u in ids)


#: lane -> the one directory call it makes for an argument.
_CALLS: Mapping[str, Callable[[Directory, Any], Any]] = {
    LISTID: lambda d, dept: _user_set(d.department_user_ids(dept)),
    LISTSUBID: lambda d, dept: tuple(d.sub_department_ids(dept)),
    DEPT: lambda d, dept: d.department_name(dept),
    ROLE: lambda d, role: _user_set(d.role_user_ids(role)),
    ROLES: lambda d, _: dict(d.role_names()),
    MOBILE: lambda d, mobile: sys.intern(str(d.user_id_by_mobile(mobile))),
    USER: lambda d, userid: d.user_exists(userid) is True,
}


class _Stopped(Exception):
    """A queued call skipped because the run is stopping."""


class _Calls:
    """Memoised directory calls on per-API lanes; ``drive`` waits for them and reacts as each lands."""

    def __init__(self, directory: Directory, parallelism: int) -> None:
        self._directory = directory
        self._parallelism = max(1, parallelism)
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._futures: dict[_Key, Future] = {}
        self._keys: dict[Future, _Key] = {}
        self._pending: set[Future] = set()
        self._stopping = False

    def request(self, lane: str, arg: Any = None) -> None:
        """Start the call unless this run already started it."""
        key = (lane, arg)
        if key in self._futures:
            return
        pool = self._pools.get(lane)
        if pool is None:
            pool = self._pools[lane] = ThreadPoolExecutor(self._parallelism, thread_name_prefix=f"dtchat-dir-{lane}")
        future = pool.submit(self._run, lane, arg)
        self._futures[key] = future
        self._keys[future] = key
        self._pending.add(future)

    def _run(self, lane: str, arg: Any) -> Any:
        if self._stopping:
            raise _Stopped()
        return _CALLS[lane](self._directory, arg)

    def drive(self, on_answer: Callable[[str, Any, Any], None]) -> None:
        """Wait until every call (including those ``on_answer`` starts) is done; fatal errors raise at once."""
        while self._pending:
            done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: repr(self._keys[f])):
                self._pending.discard(future)
                exc = future.exception()
                if exc is not None:
                    if not isinstance(exc, DingTalkError) or is_fatal(exc):
                        raise exc
                    continue
                lane, arg = self._keys[future]
                on_answer(lane, arg, future.result())

    def answer(self, lane: str, arg: Any = None) -> Any | DingTalkError:
        """A finished call's result, or the (non-fatal) error it raised."""
        future = self._futures[(lane, arg)]
        exc = future.exception()
        return exc if exc is not None else future.result()

    def close(self) -> None:
        """Skip queued calls and wait for the ones in flight (bounded by the client's timeouts)."""
        self._stopping = True
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------- lookups


def lookup_selectors(
    directory: Directory, selectors: Iterable[Selector], *, parallelism: int = 8
) -> dict[Selector, Lookup]:
    """Resolve each distinct selector once, concurrently, sharing every call between them.

    ``parallelism`` is the number of calls in flight per API. A fatal error
    (``is_fatal``: credentials, quota, unreachable, long IP ban) is raised;
    any other failure, and any empty answer, is a :class:`Lookup` with ``error``.
    """
    wanted = sorted(set(selectors), key=Selector.sort_key)
    if not wanted:
        return {}
    mobiles: dict[Selector, str | ValueError] = {}
    calls = _Calls(directory, parallelism)
    try:
        if any(s.kind == ROLE for s in wanted):
            calls.request(ROLES)
        for sel in wanted:
            if sel.kind == DEPT:
                calls.request(DEPT, sel.value)
                calls.request(LISTID, sel.value)
                if sel.recursive:
                    calls.request(LISTSUBID, sel.value)
            elif sel.kind == ROLE:
                calls.request(ROLE, sel.value)
            elif sel.kind == MOBILE:
                try:
                    mobiles[sel] = directory.normalize_mobile(str(sel.value))
                except ValueError as exc:
                    mobiles[sel] = exc
                    continue
                calls.request(MOBILE, mobiles[sel])

        def walk(lane: str, arg: Any, result: Any) -> None:
            # only recursive walks ask for sub-departments, so every child found belongs to one
            if lane == LISTSUBID:
                for child in result:
                    calls.request(LISTSUBID, child)
                    calls.request(LISTID, child)

        calls.drive(walk)
    finally:
        calls.close()
    out: dict[Selector, Lookup] = {}
    for sel in wanted:
        if sel.kind == DEPT:
            out[sel] = _dept_lookup(sel, calls)
        elif sel.kind == ROLE:
            out[sel] = _role_lookup(sel, calls)
        elif sel.kind == MOBILE:
            out[sel] = _mobile_lookup(sel, calls, mobiles[sel])
        else:
            out[sel] = Lookup(sel, None, str(sel.value), f"{sel}: unknown selector kind {sel.kind!r}")
    return out


def _dept_lookup(sel: Selector, calls: _Calls) -> Lookup:
    root = sel.value
    name = calls.answer(DEPT, root)
    label = f"department {root}" if isinstance(name, DingTalkError) or not name else name
    if isinstance(name, DingTalkError):
        return Lookup(sel, None, label, f"{sel}: {_reason(name, f'department {root}')}")
    users: set[str] = set()
    queue, seen = deque([root]), {root}
    while queue:  # breadth-first over the answers the walk collected; each department once
        dept = queue.popleft()
        direct = calls.answer(LISTID, dept)
        if isinstance(direct, DingTalkError):
            return Lookup(sel, None, label, f"{sel}: {_reason(direct, f'department {dept}')}")
        users |= direct
        if not sel.recursive:
            break
        children = calls.answer(LISTSUBID, dept)
        if isinstance(children, DingTalkError):
            return Lookup(sel, None, label, f"{sel}: {_reason(children, f'department {dept}')}")
        for child in children:
            if child not in seen:
                seen.add(child)
                queue.append(child)
    if not users:
        where = "the department and the departments below it have" if sel.recursive else "the department has"
        return Lookup(sel, frozenset(), label, f"{sel}: {where} no members; {_EMPTY}")
    return Lookup(sel, frozenset(users), label)


def _role_lookup(sel: Selector, calls: _Calls) -> Lookup:
    names = calls.answer(ROLES)
    # the role list only names things: if it failed, the holders' own answer still decides
    name = names.get(sel.value) if isinstance(names, dict) else None
    label = str(name) if name else f"role {sel.value}"
    holders = calls.answer(ROLE, sel.value)
    if isinstance(holders, DingTalkError):
        return Lookup(sel, None, label, f"{sel}: {_reason(holders, f'role {sel.value}')}")
    if not holders:
        return Lookup(sel, frozenset(), label, f"{sel}: nobody holds the role; {_EMPTY}")
    return Lookup(sel, holders, label)


def _mobile_lookup(sel: Selector, calls: _Calls, mobile: str | ValueError) -> Lookup:
    if isinstance(mobile, ValueError):
        return Lookup(sel, None, str(sel.value), f"{sel}: {mobile}")
    user = calls.answer(MOBILE, mobile)
    if isinstance(user, NotFoundError):
        return Lookup(sel, None, mobile, f"{sel}: {user.text} ({user.code_text}: unknown, left or not yet joined)")
    if isinstance(user, DingTalkError):
        return Lookup(sel, None, mobile, f"{sel}: {_reason(user, f'mobile {mobile}')}")
    return Lookup(sel, frozenset({user}), mobile)


def _reason(exc: DingTalkError, what: str) -> str:
    """One line: "department 100 not found (…)", or what the directory said."""
    if isinstance(exc, NotFoundError):
        return f"{what} not found ({exc.code_text})"
    return f"cannot read {what}: {exc}"


# ---------------------------------------------------------------------------- user ids


#: ``check_users``: this many failed second asks in a row and the rest are not asked again.
RETRY_GIVE_UP = 3


def check_users(
    directory: Directory, userids: Iterable[str], *, parallelism: int = 8
) -> dict[str, bool | DingTalkError]:
    """Ask the directory once per distinct id whether it exists, concurrently on the ``user`` lane.

    Each id maps to True / False, or to the (non-fatal) error that kept the directory from telling; a
    fatal one (``is_fatal``) is raised. Ids whose concurrent lookup failed are asked once more, one at a
    time: a burst of lookups can lose races a single call wins (a token the others just used up, a
    throttled spell). ``RETRY_GIVE_UP`` failures in a row end that pass, since the directory is then
    really refusing (a permission, a busy spell), and the rest keep their first error.
    """
    wanted = sorted(set(userids))
    if not wanted:
        return {}
    calls = _Calls(directory, parallelism)
    try:
        for userid in wanted:
            calls.request(USER, userid)
        calls.drive(lambda lane, arg, result: None)
    finally:
        calls.close()
    answers: dict[str, bool | DingTalkError] = {userid: calls.answer(USER, userid) for userid in wanted}
    in_a_row = 0
    for userid in [u for u, answer in answers.items() if isinstance(answer, DingTalkError)]:
        try:
            answers[userid] = directory.user_exists(userid) is True
            in_a_row = 0
        except DingTalkError as exc:
            if is_fatal(exc):
                raise
            answers[userid] = exc
            in_a_row += 1
            if in_a_row >= RETRY_GIVE_UP:
                break
    return answers


def directory_users(lookups: Mapping[Selector, Lookup]) -> frozenset[str]:
    """Every user id a usable directory answer of this run named: they exist, no need to ask again."""
    return frozenset().union(*(lookup.users or () for lookup in lookups.values() if lookup.error is None))


def unknown_user_errors(
    wanted: Mapping[str, Collection[str]], answers: Mapping[str, bool | DingTalkError]
) -> dict[str, str]:
    """chat key -> one line naming the ids it would add that do not exist, or could not be checked (pure).

    ``wanted`` maps each chat to the ids it would add or make owner; ``answers`` is :func:`check_users`'s.
    An id without an answer counts as not checked: never as existing.
    """
    errors: dict[str, str] = {}
    for key, userids in wanted.items():
        unknown: list[str] = []
        failed: dict[str, list[str]] = {}
        for userid in sorted(set(userids)):
            answer = answers.get(userid)
            if answer is True:
                continue
            if answer is False:
                unknown.append(userid)
            else:
                why = str(answer) if isinstance(answer, DingTalkError) else "it was not looked up"
                failed.setdefault(why, []).append(userid)
        problems = []
        if unknown:
            s = "s" if len(unknown) > 1 else ""
            problems.append(
                f"unknown user id{s} {_some(unknown, 50)}: not in the organisation's directory "
                f"(a typo, or someone who left); correct or remove {'them' if s else 'it'} in the YAML"
            )
        for why, ids in failed.items():
            s = "s" if len(ids) > 1 else ""
            problems.append(f"cannot check that user id{s} {_some(ids, 10)} exist{'' if s else 's'}: {why}")
        if problems:
            errors[key] = "; ".join(problems)
    return errors


def _some(ids: Sequence[str], most: int) -> str:
    """``a, b, c`` or, past ``most``, ``a, b, … and 7 more``: one line stays readable."""
    if len(ids) <= most:
        return ", ".join(ids)
    return ", ".join(ids[:most]) + f", … and {len(ids) - most} more"


# ---------------------------------------------------------------------------- expansion


def expand_chats(chats: Sequence[DesiredChat], lookups: Mapping[Selector, Lookup]) -> DirectoryResult:
    """Turn each chat's selectors into members with ``lookups`` (pure: no I/O).

    members = literal members ∪ selectors' users − ``exclude`` ids − exclude
    selectors' users, owner always in. A chat that uses a failed or empty
    lookup, excludes its owner, or ends above the member cap is an error and
    is returned unchanged.
    """
    out: list[DesiredChat] = []
    errors: dict[str, str] = {}
    sources: dict[str, tuple[MemberSource, ...]] = {}
    for chat in chats:
        if not chat.needs_directory:
            out.append(chat)
            continue
        used = sorted({*chat.selectors, *chat.exclude_selectors}, key=Selector.sort_key)
        problems = [p for p in (_unusable(sel, lookups.get(sel)) for sel in used) if p]
        if problems:
            errors[chat.key] = "; ".join(problems)
            out.append(chat)
            continue
        sources[chat.key] = tuple(
            sorted(
                [MemberSource(s, lookups[s].label, len(lookups[s].users or ()), False) for s in set(chat.selectors)]
                + [
                    MemberSource(s, lookups[s].label, len(lookups[s].users or ()), True)
                    for s in set(chat.exclude_selectors)
                ],
                key=lambda m: (m.selector.sort_key(), m.excluded),
            )
        )
        error = _owner_excluded(chat, lookups)
        members: set[str] = set(chat.members)
        for sel in chat.selectors:
            members |= lookups[sel].users or frozenset()
        members.difference_update(chat.exclude)
        for sel in chat.exclude_selectors:
            members -= lookups[sel].users or frozenset()
        members.add(chat.owner)
        if error is None and len(members) > MEMBER_CAP:
            error = (
                f"{len(members):,} members after resolving the directory selectors, "
                f"more than the {MEMBER_CAP:,} a chat may have (owner included)"
            )
        if error is not None:
            errors[chat.key] = error
            out.append(chat)
            continue
        out.append(replace(chat, members=tuple(sorted(members)), selectors=(), exclude_selectors=()))
    return DirectoryResult(
        chats=tuple(out),
        errors=MappingProxyType(errors),
        sources=MappingProxyType(sources),
        lookups=MappingProxyType(dict(lookups)),
    )


def _unusable(sel: Selector, lookup: Lookup | None) -> str | None:
    if lookup is None:
        return f"{sel}: was not looked up"
    if lookup.error is not None:
        return lookup.error
    if not lookup.users:
        return f"{sel}: the directory answered no users; {_EMPTY}"
    return None


def _owner_excluded(chat: DesiredChat, lookups: Mapping[Selector, Lookup]) -> str | None:
    if chat.owner in chat.exclude:
        return f"the owner {chat.owner} cannot be excluded; exclude: lists them"
    for sel in sorted(chat.exclude_selectors, key=Selector.sort_key):
        if chat.owner in (lookups[sel].users or ()):
            return f"the owner {chat.owner} cannot be excluded; {sel} contains them"
    return None


def resolve_directory(directory: Directory, chats: Sequence[DesiredChat], *, parallelism: int = 8) -> DirectoryResult:
    """Look up every selector the chats use (once each) and expand the chats with the answers."""
    wanted = {sel for chat in chats for sel in (*chat.selectors, *chat.exclude_selectors)}
    return expand_chats(chats, lookup_selectors(directory, wanted, parallelism=parallelism))
