"""An in-memory fake of the seam (``ChatBackend`` and ``Directory``) for engine unit tests.

The planner, the applier and the manager depend only on the protocols in
``reconciler/backends/base.py``; these fakes implement them with dicts, so the
engine's own logic (ordering, stop-on-fatal, write-ahead creates, thresholds)
is tested without HTTP. They keep the API's member rules (the owner must be a
member, the cap, ids per call) so a wrong plan still fails here. The real
backends are proven against the emulator by the conformance suite.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

from reconciler.backends import CHATID, DingTalkError, NotFoundError, WireCall
from reconciler.backends.endpoints import Endpoint
from reconciler.backends.packing import IDS_PER_CALL, steps_for
from reconciler.backends.transport import Meter
from reconciler.model import LiveChat
from reconciler.plan import ChatChange
from reconciler.rules import MEMBER_CAP

CREATE = Endpoint("POST", "fake:create", "fake", metered=True, repeat_unsafe=True, creates=True)
UPDATE = Endpoint("POST", "fake:update", "fake", metered=True)
NOTIFY = Endpoint("POST", "fake:notify", "fake", metered=True, repeat_unsafe=True)


class FakeBackend:
    """Chats in a dict; every call it is sent is recorded in ``sent``; ``fail`` makes chosen calls fail."""

    name = "fake"

    def __init__(self, chats: Mapping[str, LiveChat] | None = None, *, robot_code: str | None = "robot") -> None:
        self.chats: dict[str, LiveChat] = dict(chats or {})
        self.robot_code = robot_code
        self.sent: list[WireCall] = []
        self.reads: list[str] = []
        self.authenticated = 0
        #: (endpoint path, chatid or chat name) -> the error that call raises; "*" matches any chat.
        self.fail: dict[tuple[str, str], DingTalkError] = {}
        #: Seconds each read takes (to let events pile up while one is in flight).
        self.read_delay = 0.0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- the protocol ------------------------------------------------------------------------------------
    def authenticate(self) -> None:
        self.authenticated += 1

    def meter(self) -> Meter:
        return Meter(len(self.sent) + len(self.reads), self.authenticated)

    def read(self, chatid: str) -> LiveChat:
        with self._lock:
            self.reads.append(chatid)
        if self.read_delay:
            time.sleep(self.read_delay)
        self._maybe_fail("fake:read", chatid)
        if chatid not in self.chats:
            raise NotFoundError("fake:read", f"chat {chatid} not found")
        return self.chats[chatid]

    def calls(self, change: ChatChange) -> list[WireCall]:
        out = []
        for step in steps_for(change):
            body: dict[str, Any] = {"add": list(step.add), "remove": list(step.remove)}
            if step.owner is not None:
                body["owner"] = step.owner
            if step.name is not None:
                body["name"] = step.name
            if step.settings:
                body["settings"] = {s.name: s.new for s in change.settings}
            if step.create:
                out.append(WireCall(CREATE, body))
            elif change.chatid:
                out.append(WireCall(UPDATE, {"chatid": change.chatid, **body}))
            else:
                out.append(WireCall(UPDATE, body, needs={CHATID: "chatid"}))
        return out

    def notify_calls(self, text: str, *, chatid: str, open_conversation_id: str | None) -> list[WireCall]:
        return [WireCall(NOTIFY, {"chatid": chatid, "text": text})]

    def send(self, call: WireCall) -> Mapping[str, str]:
        assert not call.needs, f"sent before its {call.needs} was known"
        body = dict(call.body)
        for key in ("add", "remove"):
            assert len(body.get(key, ())) <= IDS_PER_CALL, f"{key}: more than {IDS_PER_CALL} ids in one call"
        with self._lock:
            self.sent.append(call)
        self._maybe_fail(call.endpoint.path, str(body.get("chatid") or body.get("name") or ""))
        with self._lock:
            if call.endpoint is CREATE:
                chatid = f"chatfake{next(self._ids):04d}"
                members = tuple(body["add"])
                assert body["owner"] in members, "the owner must be in the member list"
                self.chats[chatid] = LiveChat(chatid, body["name"], body["owner"], members, body.get("settings", {}))
                return {CHATID: chatid, "open_conversation_id": "cid" + chatid}
            if call.endpoint is UPDATE:
                self._update(body)
            return {}

    # -- the rules ---------------------------------------------------------------------------------------
    def _update(self, body: dict[str, Any]) -> None:
        chat = self.chats.get(body["chatid"])
        if chat is None:
            raise NotFoundError("fake:update", f"chat {body['chatid']} not found")
        members = [m for m in chat.members if m not in body["remove"]]
        assert chat.owner not in body["remove"], "the current owner cannot be removed"
        owner = body.get("owner", chat.owner)
        assert owner in chat.members, "the new owner must already be a member"
        members += [m for m in body["add"] if m not in members]
        assert len(members) <= MEMBER_CAP, "above the member cap"
        settings = {**chat.settings, **body.get("settings", {})}
        self.chats[chat.chatid] = LiveChat(chat.chatid, body.get("name", chat.name), owner, tuple(members), settings)

    def _maybe_fail(self, path: str, which: str) -> None:
        error = self.fail.get((path, which)) or self.fail.get((path, "*"))
        if error is not None:
            raise error


class FakeDirectory:
    """Departments, roles and mobiles in dicts."""

    def __init__(
        self,
        departments: Mapping[int, list[str]] | None = None,
        children: Mapping[int, list[int]] | None = None,
        roles: Mapping[int, list[str]] | None = None,
        mobiles: Mapping[str, str] | None = None,
        users: Collection[str] | None = None,
    ) -> None:
        self.departments = dict(departments or {})
        self.children = dict(children or {})
        self.roles = dict(roles or {})
        self.mobiles = dict(mobiles or {})
        #: The org's user ids for ``user_exists``; None: every id exists (like the emulator without an org).
        self.users: set[str] | None = None if users is None else set(users)
        #: user id -> the error ``user_exists`` raises for it (a lookup that cannot tell).
        self.fail_users: dict[str, DingTalkError] = {}
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def department_user_ids(self, dept_id: int) -> list[str]:
        self.calls.append(("users", dept_id))
        if dept_id not in self.departments:
            raise NotFoundError("fake:dept", f"department {dept_id} not found")
        return list(self.departments[dept_id])

    def sub_department_ids(self, dept_id: int) -> list[int]:
        self.calls.append(("children", dept_id))
        return list(self.children.get(dept_id, []))

    def department_name(self, dept_id: int) -> str:
        return f"dept-{dept_id}"

    def role_user_ids(self, role_id: int) -> list[str]:
        self.calls.append(("role", role_id))
        if role_id not in self.roles:
            raise NotFoundError("fake:role", f"role {role_id} not found")
        return list(self.roles[role_id])

    def role_names(self) -> dict[int, str]:
        return {rid: f"role-{rid}" for rid in self.roles}

    def user_id_by_mobile(self, mobile: str) -> str:
        if mobile not in self.mobiles:
            raise NotFoundError("fake:mobile", f"no active user has mobile {mobile}")
        return self.mobiles[mobile]

    def normalize_mobile(self, text: str) -> str:
        return text.replace(" ", "").replace("-", "")

    def user_exists(self, userid: str) -> bool:
        with self._lock:  # called from the directory lanes' threads
            self.calls.append(("user", userid))
        if userid in self.fail_users:
            raise self.fail_users[userid]
        return self.users is None or userid in self.users
