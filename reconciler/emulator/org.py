"""The emulator's org directory: departments, users and roles, loaded from a file and editable live.

``Org`` validates the whole document when it is built, so a bad org file
fails at start-up with one line that names the entry, never half-way through
a test. It is mutable at run time (a user moves or leaves, role holders
change) under one lock, because the point of a directory in tests is that it
changes between two runs of dtchat.

File format (YAML or JSON; see docs/emulator.md)::

    departments: [{id: 1, name: 公司}, {id: 100, name: 研发部, parent: 1}]
    users: [{userid: alice, name: Alice, mobile: "13800000001", departments: [100], active: true}]
    roles: [{id: 3001, name: 值班, group: 默认, holders: [alice]}]

Choices where dingtalk-api.md is silent:

* Department 1 is the root and the only department without a parent.
* ``active: false`` is a user who was invited but has not joined: listed in
  departments and roles, a valid chat member, but not found by mobile.
  A user who *left* is removed (``remove_user``): gone from departments,
  roles and mobile lookups, and an unknown user id for chats.
* Roles are grouped by ``group`` (default ``默认``); group ids are 1, 2, ...
  in order of first appearance.
* Mobiles are 1..15 digits (no ``+86``, spaces or dashes), unique.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import EmulatorSetupError
from .limits import MOBILE_MAX, ROOT_DEPT_ID

#: The sandbox's org, shipped with the package: every user of ``examples/chats/`` and a few more.
SANDBOX_ORG = Path(__file__).with_name("sandbox_org.yaml")

DEFAULT_ROLE_GROUP = "默认"
MOBILE_RE = re.compile(rf"[0-9]{{1,{MOBILE_MAX}}}")

_TOP_KEYS = ("departments", "users", "roles")
_DEPT_KEYS = ("id", "name", "parent")
_USER_KEYS = ("userid", "name", "mobile", "departments", "active")
_ROLE_KEYS = ("id", "name", "group", "holders")


@dataclass(frozen=True)
class Department:
    id: int
    name: str
    #: None for the root only.
    parent: int | None


@dataclass(frozen=True)
class User:
    userid: str
    name: str
    mobile: str | None
    departments: tuple[int, ...]
    active: bool = True


@dataclass(frozen=True)
class Role:
    id: int
    name: str
    group: str
    holders: tuple[str, ...]


class OrgError(EmulatorSetupError):
    """An org document or an org edit breaks the directory's rules; the message is one line."""


def _is_id(value: Any) -> bool:
    return type(value) is int and value > 0


def _check_keys(where: str, entry: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(entry, dict):
        raise OrgError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = [str(k) for k in entry if k not in allowed]
    if unknown:
        raise OrgError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in entry]
    if missing:
        raise OrgError(f"{where}: missing {', '.join(missing)}")


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OrgError(f"{where}: name must be a non-empty string")
    return value


def _userid(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise OrgError(f"{where}: userid must be a non-empty string (quote numeric ids), got {value!r}")
    return value


def _mobile(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not MOBILE_RE.fullmatch(value):
        raise OrgError(f"{where}: mobile must be a quoted string of 1..{MOBILE_MAX} digits, got {value!r}")
    return value


class Org:
    """A validated, thread-safe org directory. Build with ``Org.from_data`` or ``load_org``."""

    def __init__(self, departments: Iterable[Department], users: Iterable[User], roles: Iterable[Role]) -> None:
        """Validate everything (OrgError on the first problem), then keep it."""
        self._lock = threading.Lock()
        self._depts: dict[int, Department] = {}
        for d in departments:
            if d.id in self._depts:
                raise OrgError(f"department {d.id}: duplicate id")
            self._depts[d.id] = d
        self._check_tree()
        self._users: dict[str, User] = {}
        self._by_mobile: dict[str, str] = {}
        for u in users:
            self._add(u)
        self._roles: dict[int, Role] = {}
        for r in roles:
            if r.id in self._roles:
                raise OrgError(f"role {r.id}: duplicate id")
            self._roles[r.id] = self._checked_role(r)

    # ---- building ---------------------------------------------------------------------------

    @classmethod
    def from_data(cls, data: Any) -> Org:
        """An Org from the file format's parsed document; OrgError names the entry at fault."""
        if not isinstance(data, dict):
            raise OrgError("expected a mapping with departments, users and roles")
        _check_keys("org", data, _TOP_KEYS, ("departments", "users"))
        sections: dict[str, Any] = {k: data.get(k) if data.get(k) is not None else [] for k in _TOP_KEYS}
        for key, value in sections.items():
            if not isinstance(value, list):
                raise OrgError(f"{key}: expected a list")
        depts = []
        for i, entry in enumerate(sections["departments"]):
            where = f"departments[{i}]"
            _check_keys(where, entry, _DEPT_KEYS, ("id", "name"))
            if not _is_id(entry["id"]):
                raise OrgError(f"{where}: id must be a positive integer, got {entry['id']!r}")
            parent = entry.get("parent")
            if parent is not None and not _is_id(parent):
                raise OrgError(f"{where} (id {entry['id']}): parent must be a department id, got {parent!r}")
            depts.append(Department(entry["id"], _name(where, entry["name"]), parent))
        users = []
        for i, entry in enumerate(sections["users"]):
            where = f"users[{i}]"
            _check_keys(where, entry, _USER_KEYS, ("userid", "departments"))
            userid = _userid(where, entry["userid"])
            where = f"{where} ({userid})"
            users.append(_user_from(where, userid, entry))
        roles = []
        for i, entry in enumerate(sections["roles"]):
            where = f"roles[{i}]"
            _check_keys(where, entry, _ROLE_KEYS, ("id", "name"))
            if not _is_id(entry["id"]):
                raise OrgError(f"{where}: id must be a positive integer, got {entry['id']!r}")
            group = entry.get("group", DEFAULT_ROLE_GROUP)
            holders = entry.get("holders") or []
            if not isinstance(holders, list):
                raise OrgError(f"{where} (id {entry['id']}): holders must be a list of user ids")
            roles.append(
                Role(
                    entry["id"],
                    _name(where, entry["name"]),
                    _name(f"{where} group", group),
                    tuple(_userid(f"{where} holders", h) for h in holders),
                )
            )
        return cls(depts, users, roles)

    def copy(self) -> Org:
        """An independent Org with the same content (the server keeps one to restore on reset)."""
        with self._lock:
            return Org(self._depts.values(), self._users.values(), self._roles.values())

    def to_data(self) -> dict[str, Any]:
        """The org in the file format (what ``GET /__emulator__/org`` serves)."""
        with self._lock:
            return {
                "departments": [
                    {"id": d.id, "name": d.name, **({} if d.parent is None else {"parent": d.parent})}
                    for d in self._depts.values()
                ],
                "users": [
                    {
                        "userid": u.userid,
                        "name": u.name,
                        **({} if u.mobile is None else {"mobile": u.mobile}),
                        "departments": list(u.departments),
                        "active": u.active,
                    }
                    for u in self._users.values()
                ],
                "roles": [
                    {"id": r.id, "name": r.name, "group": r.group, "holders": list(r.holders)}
                    for r in self._roles.values()
                ],
            }

    # ---- reads (what the contact API answers from) --------------------------------------------

    def department(self, dept_id: int) -> Department | None:
        with self._lock:
            return self._depts.get(dept_id)

    def sub_departments(self, dept_id: int) -> list[int] | None:
        """Direct children in file order; None when ``dept_id`` is not a department."""
        with self._lock:
            if dept_id not in self._depts:
                return None
            return [d.id for d in self._depts.values() if d.parent == dept_id]

    def members(self, dept_id: int) -> list[str] | None:
        """Direct members' user ids in file order; None when ``dept_id`` is not a department."""
        with self._lock:
            if dept_id not in self._depts:
                return None
            return [u.userid for u in self._users.values() if dept_id in u.departments]

    def role(self, role_id: int) -> Role | None:
        with self._lock:
            return self._roles.get(role_id)

    def role_groups(self) -> list[tuple[int, str, list[Role]]]:
        """(groupId, group name, roles) in order of first appearance."""
        with self._lock:
            groups: dict[str, list[Role]] = {}
            for r in self._roles.values():
                groups.setdefault(r.group, []).append(r)
        return [(i, name, roles) for i, (name, roles) in enumerate(groups.items(), start=1)]

    def user(self, userid: str) -> User | None:
        with self._lock:
            return self._users.get(userid)

    def user_by_mobile(self, mobile: str) -> User | None:
        """The *active* user with this mobile, or None."""
        with self._lock:
            user = self._users.get(self._by_mobile.get(mobile, ""))
            return user if user is not None and user.active else None

    def unknown_users(self, userids: Iterable[str]) -> list[str]:
        """The ids that are not (or no longer) users of this org."""
        with self._lock:
            return [u for u in set(userids) if u not in self._users]

    @property
    def userids(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._users)

    # ---- edits (tests change the org between runs) ------------------------------------------

    def move_user(self, userid: str, departments: Iterable[int]) -> None:
        """Put ``userid`` in exactly these departments (KeyError: no such user; OrgError: bad departments)."""
        depts = _dept_tuple(f"user {userid}", departments)
        with self._lock:
            user = self._users.get(userid)
            if user is None:
                raise KeyError(userid)
            self._check_user_depts(f"user {userid}", depts)
            self._users[userid] = replace(user, departments=depts)

    def remove_user(self, userid: str) -> None:
        """The user leaves: out of every department and role, not found by mobile, unknown to chats."""
        with self._lock:
            user = self._users.pop(userid, None)
            if user is None:
                raise KeyError(userid)
            if user.mobile is not None:
                self._by_mobile.pop(user.mobile, None)
            for rid, role in self._roles.items():
                if userid in role.holders:
                    self._roles[rid] = replace(role, holders=tuple(h for h in role.holders if h != userid))

    def add_user(
        self,
        userid: str,
        departments: Iterable[int],
        name: str | None = None,
        mobile: str | None = None,
        active: bool = True,
    ) -> None:
        """A new hire (OrgError when the id or mobile is taken or a department is unknown)."""
        where = f"user {userid}"
        if not isinstance(active, bool):
            raise OrgError(f"{where}: active must be true or false")
        user = User(
            _userid(where, userid),
            _name(where, name if name is not None else userid),
            _mobile(where, mobile),
            _dept_tuple(where, departments),
            active,
        )
        with self._lock:
            self._add(user)

    def set_active(self, userid: str, active: bool) -> None:
        """Mark a user joined (True) or invited-but-not-joined (False)."""
        if not isinstance(active, bool):
            raise OrgError(f"user {userid}: active must be true or false")
        with self._lock:
            user = self._users.get(userid)
            if user is None:
                raise KeyError(userid)
            self._users[userid] = replace(user, active=active)

    def set_role_holders(self, role_id: int, holders: Iterable[str]) -> None:
        """Replace a role's holders (KeyError: no such role; OrgError: unknown user)."""
        if isinstance(holders, (str, bytes, Mapping)) or not isinstance(holders, Iterable):
            raise OrgError(f"role {role_id}: holders must be a list of user ids")
        listed = tuple(holders)
        if not all(isinstance(h, str) and h for h in listed):
            raise OrgError(f"role {role_id}: holders must be a list of user ids")
        with self._lock:
            role = self._roles.get(role_id)
            if role is None:
                raise KeyError(role_id)
            self._roles[role_id] = self._checked_role(replace(role, holders=listed))

    # ---- internals (callers hold the lock, or are __init__) -----------------------------------

    def _check_tree(self) -> None:
        root = self._depts.get(ROOT_DEPT_ID)
        if root is None:
            raise OrgError(f"departments: the root department (id {ROOT_DEPT_ID}) is missing")
        if root.parent is not None:
            raise OrgError(f"department {ROOT_DEPT_ID} ({root.name}) is the root: it cannot have a parent")
        for d in self._depts.values():
            if d.id == ROOT_DEPT_ID:
                continue
            if d.parent is None:
                raise OrgError(f"department {d.id} ({d.name}): no parent (only the root, id {ROOT_DEPT_ID}, has none)")
            if d.parent not in self._depts:
                raise OrgError(f"department {d.id} ({d.name}): unknown parent {d.parent}")
        for d in self._depts.values():
            seen = [d.id]
            current = d
            while current.parent is not None:
                if current.parent in seen:
                    loop = " → ".join(str(i) for i in seen[seen.index(current.parent) :] + [current.parent])
                    raise OrgError(f"departments form a cycle: {loop}")
                seen.append(current.parent)
                current = self._depts[current.parent]

    def _check_user_depts(self, where: str, depts: tuple[int, ...]) -> None:
        if not depts:
            raise OrgError(f"{where}: must be in at least one department")
        bad = [d for d in depts if not _is_id(d)]
        if bad:
            raise OrgError(f"{where}: department ids must be positive integers, got {bad[0]!r}")
        unknown = [d for d in depts if d not in self._depts]
        if unknown:
            raise OrgError(f"{where}: unknown department {unknown[0]}")
        if len(set(depts)) != len(depts):
            raise OrgError(f"{where}: a department is listed twice")

    def _add(self, user: User) -> None:
        where = f"user {user.userid}"
        if user.userid in self._users:
            raise OrgError(f"{where}: duplicate userid")
        self._check_user_depts(where, user.departments)
        if user.mobile is not None:
            other = self._by_mobile.get(user.mobile)
            if other is not None:
                raise OrgError(f"{where}: mobile {user.mobile} is already {other}'s")
            self._by_mobile[user.mobile] = user.userid
        self._users[user.userid] = user

    def _checked_role(self, role: Role) -> Role:
        unknown = [h for h in role.holders if h not in self._users]
        if unknown:
            raise OrgError(f"role {role.id} ({role.name}): unknown holder {unknown[0]}")
        return replace(role, holders=tuple(dict.fromkeys(role.holders)))


def _dept_tuple(where: str, departments: Any) -> tuple[int, ...]:
    if isinstance(departments, (str, bytes, Mapping)) or not isinstance(departments, Iterable):
        raise OrgError(f"{where}: departments must be a list of department ids")
    return tuple(departments)


def _user_from(where: str, userid: str, entry: Mapping[str, Any]) -> User:
    depts = entry["departments"]
    if not isinstance(depts, list):
        raise OrgError(f"{where}: departments must be a list of department ids")
    active = entry.get("active", True)
    if not isinstance(active, bool):
        raise OrgError(f"{where}: active must be true or false")
    name = entry.get("name", userid)
    return User(userid, _name(where, name), _mobile(where, entry.get("mobile")), tuple(depts), active)


def load_org(path: str | os.PathLike[str]) -> Org:
    """Read and validate an org file (YAML, or JSON when it ends in ``.json``); ValueError names the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OrgError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise OrgError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = " ".join(str(exc).split())
        raise OrgError(f"{path}: not valid YAML/JSON: {first}") from None
    try:
        return Org.from_data(data)
    except OrgError as exc:
        raise OrgError(f"{path}: {exc}") from None
