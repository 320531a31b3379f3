"""The emulator's state and the chat API's rules, with no HTTP in sight.

``ChatStore`` validates each call completely before touching anything and
then applies it under one lock, so a call is all or nothing and concurrent
calls never see half a chat. ``TokenBook`` issues and checks access tokens.

Where dingtalk-api.md is silent the emulator chooses, and says so here:

* ``useridlist`` (create) and ``add_useridlist``/``del_useridlist`` (update)
  that are not lists of non-empty strings, or hold too many ids, answer 40032;
  the limit counts the ids as sent, before duplicates are dropped.
* A missing chatid, or one that is not ``chat`` + lowercase hex, answers 34001;
  a well-formed chatid the store does not know answers 34013.
* In one update, deletions are applied before additions: an id in both lists
  ends up a member (do not rely on it, the doc says the order is unspecified).
  New members are appended to ``useridlist`` in the order given (join order).
* ``icon``: a non-empty string is stored; ``""`` and ``null`` leave it as is
  (the seed SDK sends ``"icon": ""`` on every update); another type is 40035.
  ``add_extidlist``, ``del_extidlist`` and ``isBan`` are accepted and ignored.
* ``/chat/send``: ``msgtype`` must be one of ``MSG_TYPES`` with its object
  present; ``text`` needs a non-empty ``content`` and ``markdown`` needs
  ``title`` and ``text``; otherwise 40035.
* ``/chat/getReadList``: ``messageId``, ``cursor`` (>= 0) and ``size``
  (1..READ_LIST_PAGE_MAX) are required; an unknown messageId or a bad value is
  40035. Everyone who was a member when the message was sent has read it,
  listed in sorted order so pages are deterministic.
* Tokens: a missing or unknown ``access_token`` is 40014; an expired one
  (past its ttl, ``expire_all``, or out of uses) is 42001. One book serves
  both API generations: a token from ``/gettoken`` or from the v1.0 call is
  accepted everywhere. ``issue`` (``/gettoken``) always makes a fresh token;
  ``issue_for_app`` (v1.0) hands back the app's still-valid v1.0 token with
  its lifetime extended, as the reference says of the v1.0 call.
* Every chat has one ``openConversationId`` from its creation (legacy or
  v1.0 create, or ``seed``), ``"cid"`` + 24 characters of standard base64
  (it may hold ``+`` and ``/``, as real ones do). It is not part of
  ``chat_info``. The data file keeps it (``open_conversation_ids``); a data
  file without it (an older emulator's) gets fresh ones on load, written back
  at once so they stay stable across restarts.
* Robot presence is per chat (``robots``); a chat gets the
  ``robot_in_new_chats`` default when it is created, seeded or loaded from a
  data file that does not say. Robot messages are kept in order
  (``robot_messages``), also in the data file.
* ``on_update`` (an attribute, settable at any time) sees every committed
  ``update`` (legacy or v1.0) as ``(before, after, openConversationId)``
  copies, under the store's lock (so in commit order), after the data file
  was written; the server turns the difference into Stream events. An
  exception from it never fails the call. ``modify`` is the by-hand path:
  it applies a change with no rules and returns the same triple.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..files import write_atomic
from .errors import EmulatorSetupError
from .limits import IDS_PER_CALL, MEMBER_CAP, NAME_MAX, NAME_MIN, READ_LIST_PAGE_MAX, SETTING_FIELDS

DATA_FORMAT = "dtchat-emulator"
DATA_VERSION = 1

CHATID_RE = re.compile(r"chat[0-9a-f]+")

#: msgtype -> keys its object must carry.
MSG_TYPES: Mapping[str, tuple[str, ...]] = {
    "text": ("content",),
    "markdown": ("title", "text"),
    "link": (),
    "oa": (),
    "action_card": (),
    "image": (),
    "file": (),
    "voice": (),
}

_INFO_KEYS = ("chatid", "name", "owner", "useridlist", "extidlist", "agentidlist", "icon", "conversationTag", "status")


class ApiError(Exception):
    """A DingTalk error answer: the server turns it into ``{"errcode", "errmsg"}``."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"{errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class V1Error(Exception):
    """A v1.0 error answer: the server turns it into HTTP ``status`` + ``{"code", "message", "requestid"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def load_users(path: str | os.PathLike[str]) -> frozenset[str]:
    """Read an org directory (YAML or JSON): a list of user ids or ``{"users": [...]}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EmulatorSetupError(f"{path}: cannot read: {exc}") from None
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise EmulatorSetupError(f"{path}: not valid YAML/JSON: {exc}") from None
    if isinstance(data, dict) and set(data) == {"users"}:
        data = data["users"]
    if not isinstance(data, list):
        raise EmulatorSetupError(f'{path}: expected a list of user ids or {{"users": [...]}}')
    bad = [u for u in data if not isinstance(u, str) or not u]
    if bad:
        raise EmulatorSetupError(f"{path}: user ids must be non-empty strings (quote numeric ids): {bad[:5]!r}")
    return frozenset(data)


def check_chatid(value: Any) -> str:
    """34001 unless ``value`` looks like a chatid at all."""
    if not isinstance(value, str) or not CHATID_RE.fullmatch(value):
        raise ApiError(34001, "invalid chatid")
    return value


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_MIN <= len(name) <= NAME_MAX:
        raise ApiError(40035, f"invalid name: must be {NAME_MIN}..{NAME_MAX} characters")
    return name


def _check_ids(body: Mapping[str, Any], key: str, min_len: int) -> list[str]:
    """A user id list from ``body[key]`` (absent/null = empty), deduplicated in order."""
    value = body.get(key)
    value = [] if value is None else value
    if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
        raise ApiError(40032, f"{key} must be a list of user ids")
    if not min_len <= len(value) <= IDS_PER_CALL:
        raise ApiError(40032, f"{key} must hold {min_len}..{IDS_PER_CALL} ids, got {len(value)}")
    return list(dict.fromkeys(value))


def _check_settings(body: Mapping[str, Any]) -> dict[str, int]:
    """The setting fields present (not null) in ``body``; each must be the int 0 or 1."""
    out = {}
    for field in SETTING_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        if type(value) is not int or value not in (0, 1):
            raise ApiError(40035, f"invalid {field}: must be 0 or 1")
        out[field] = value
    return out


def _int_param(params: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int:
    raw = params.get(key)
    try:
        value = int(raw)  # type: ignore[arg-type]  # None and junk are caught below
    except (TypeError, ValueError):
        raise ApiError(40035, f"invalid {key}") from None
    if value < low or (high is not None and value > high):
        raise ApiError(40035, f"invalid {key}: must be {low}..{high if high is not None else ''}")
    return value


def _copy_info(info: Mapping[str, Any]) -> dict[str, Any]:
    return {**info, "useridlist": list(info["useridlist"]), "extidlist": [], "agentidlist": []}


def _fresh_open_conversation_id() -> str:
    """Shaped like DingTalk's: ``cid`` + standard base64 of 16 bytes (may contain ``+``, ``/``, ``=``)."""
    return "cid" + base64.b64encode(secrets.token_bytes(16)).decode("ascii")


def _new_info(chatid: str, name: str, owner: str, members: list[str], settings: Mapping[str, int]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "chatid": chatid,
        "name": name,
        "owner": owner,
        "useridlist": members,
        "extidlist": [],
        "agentidlist": [],
        "icon": "",
        "conversationTag": 2,
        "status": 1,
    }
    info.update({field: settings.get(field, 0) for field in SETTING_FIELDS})
    return info


class ChatStore:
    """Chats and messages under one lock, optionally persisted to a JSON file after each change."""

    def __init__(
        self,
        users: Iterable[str] | None = None,
        data_path: str | os.PathLike[str] | None = None,
        unknown_users: Callable[[Iterable[str]], list[str]] | None = None,
        robot_in_new_chats: bool = True,
    ) -> None:
        """``users`` is a fixed directory; ``unknown_users`` a live one (the org), asked on every call.

        ``robot_in_new_chats``: whether the app's robot is in a chat created, seeded or loaded from
        now on (settable at any time).
        """
        if users is not None and unknown_users is not None:
            raise EmulatorSetupError("give users or unknown_users, not both")
        self._lock = threading.Lock()
        self._users = None if users is None else frozenset(users)
        self._unknown_users = unknown_users
        self._path = None if data_path is None else Path(data_path)
        self.robot_in_new_chats = robot_in_new_chats
        self._chats: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, dict[str, Any]] = {}
        #: chatid -> openConversationId, and back.
        self._ocids: dict[str, str] = {}
        self._by_ocid: dict[str, str] = {}
        #: chatid -> is the app's robot in it.
        self._robots: dict[str, bool] = {}
        self._robot_messages: list[dict[str, Any]] = []
        #: Called with (before, after, openConversationId) after each committed ``update``.
        self.on_update: Callable[[dict[str, Any], dict[str, Any], str], None] | None = None
        if self._path is not None and self._path.exists():
            self._load(self._path)
        elif self._path is not None and not self._path.parent.is_dir():
            # Like every dtchat file, no folder is created: fail now, not on the first create.
            raise EmulatorSetupError(f"{self._path}: its folder {self._path.parent} does not exist; create it first")

    # ---- API calls -------------------------------------------------------

    def create(self, body: Mapping[str, Any], *, icon: str = "") -> dict[str, Any]:
        """``/chat/create`` (and v1.0 create, which passes ``icon``): validate everything, then insert the chat."""
        name = _check_name(body.get("name"))
        members = _check_ids(body, "useridlist", 1)
        owner = body.get("owner")
        if not isinstance(owner, str) or owner not in members:
            raise ApiError(40035, "owner must be in useridlist")
        self._check_known(members)
        settings = _check_settings(body)
        with self._lock:
            chatid = self._fresh_chatid()
            info = _new_info(chatid, name, owner, members, settings)
            if icon:
                info["icon"] = icon
            ocid = self._insert(info)
            self._persist()
        return {"chatid": chatid, "openConversationId": ocid, "conversationTag": info["conversationTag"]}

    def update(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``/chat/update``: validate the whole call against the chat as it is, then apply it at once."""
        chatid = check_chatid(body.get("chatid"))
        adds = _check_ids(body, "add_useridlist", 0)
        dels = _check_ids(body, "del_useridlist", 0)
        name = None if body.get("name") is None else _check_name(body["name"])
        settings = _check_settings(body)
        icon = body.get("icon")
        if icon is not None and not isinstance(icon, str):
            raise ApiError(40035, "invalid icon")
        new_owner = body.get("owner")
        if new_owner is not None and (not isinstance(new_owner, str) or not new_owner):
            raise ApiError(40035, "invalid owner")
        self._check_known(adds)
        with self._lock:
            info = self._chat_or_34013(chatid)
            current = info["useridlist"]
            present = set(current)
            removed = set(dels)
            if info["owner"] in removed:
                raise ApiError(40035, "the owner cannot be removed")
            if new_owner is not None and new_owner not in present:
                raise ApiError(40035, "the new owner must already be a member")
            if new_owner is not None and new_owner in removed:
                raise ApiError(40035, "the new owner cannot be removed")
            kept = [m for m in current if m not in removed]
            kept_set = set(kept)
            members = kept + [a for a in adds if a not in kept_set]
            if len(members) > MEMBER_CAP:
                raise ApiError(40035, f"a chat holds at most {MEMBER_CAP} members; this would make {len(members)}")
            hook = self.on_update
            before = _copy_info(info) if hook is not None else None
            info["useridlist"] = members
            info.update(settings)
            if name is not None:
                info["name"] = name
            if new_owner is not None:
                info["owner"] = new_owner
            if icon:
                info["icon"] = icon
            self._persist()
            if hook is not None and before is not None:
                try:
                    hook(before, _copy_info(info), self._ocids.get(chatid, ""))
                except Exception:  # events are a side channel: the call itself succeeded
                    pass
        return {}

    def get(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``/chat/get``: the stored ``chat_info``."""
        chatid = check_chatid(params.get("chatid"))
        with self._lock:
            return {"chat_info": _copy_info(self._chat_or_34013(chatid))}

    def send(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``/chat/send``: store the message; everyone who is a member now will have read it."""
        chatid = check_chatid(body.get("chatid"))
        msgtype = body.get("msgtype")
        if not isinstance(msgtype, str) or msgtype not in MSG_TYPES:
            raise ApiError(40035, f"invalid msgtype; one of {', '.join(MSG_TYPES)}")
        content = body.get(msgtype)
        if not isinstance(content, dict) or not all(content.get(k) for k in MSG_TYPES[msgtype]):
            raise ApiError(
                40035, f"{msgtype} message needs an object with {', '.join(MSG_TYPES[msgtype]) or 'its fields'}"
            )
        with self._lock:
            readers = sorted(self._chat_or_34013(chatid)["useridlist"])
            message_id = secrets.token_hex(16)
            self._messages[message_id] = {"chatid": chatid, "msgtype": msgtype, msgtype: content, "readers": readers}
            self._persist()
        return {"messageId": message_id}

    def read_list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``/chat/getReadList``: one page of readers, ``next_cursor`` unless it is the last page."""
        cursor = _int_param(params, "cursor", 0)
        size = _int_param(params, "size", 1, READ_LIST_PAGE_MAX)
        with self._lock:
            message = self._messages.get(params.get("messageId") or "")
            if message is None:
                raise ApiError(40035, "invalid messageId")
            readers = message["readers"]
        out: dict[str, Any] = {"readUserIdList": readers[cursor : cursor + size]}
        if cursor + size < len(readers):
            out["next_cursor"] = cursor + size
        return out

    def open_conversation_id(self, chatid: str) -> str | None:
        """The chat's ``openConversationId`` (v1.0 convert), or None for an unknown chat."""
        with self._lock:
            return self._ocids.get(chatid)

    def chatid_for(self, open_conversation_id: str) -> str | None:
        """The chatid of an ``openConversationId``, or None."""
        with self._lock:
            return self._by_ocid.get(open_conversation_id)

    def robot_send(self, open_conversation_id: str, message: Mapping[str, Any]) -> dict[str, Any]:
        """v1.0 robot send, after the body was checked: the chat must exist, be alive and hold the robot."""
        with self._lock:
            chatid = self._by_ocid.get(open_conversation_id)
            if chatid is None:
                raise V1Error(400, "invalid.openConversationId", "openConversationId 不存在 (no such chat)")
            if self._chats[chatid].get("status") == 2:
                raise V1Error(400, "group.disbanded", "群已解散 (the chat was dissolved)")
            if not self._robots.get(chatid, False):
                raise V1Error(400, "invalidParameter.robotCode.empty", "请检查机器人是否在群内")
            key = secrets.token_urlsafe(24)
            self._robot_messages.append(
                {"chatid": chatid, "openConversationId": open_conversation_id, **message, "processQueryKey": key}
            )
            self._persist()
        return {"processQueryKey": key}

    # ---- direct access for tests (no rules beyond sanity) ----------------

    def set_robot(self, chatid: str, present: bool) -> None:
        """Put the app's robot in a chat or take it out (KeyError: no such chat)."""
        with self._lock:
            if chatid not in self._chats:
                raise KeyError(chatid)
            self._robots[chatid] = bool(present)
            self._persist()

    def robot_in(self, chatid: str) -> bool:
        """Is the app's robot in this chat (False for an unknown chat)?"""
        with self._lock:
            return self._robots.get(chatid, False)

    def robot_messages(self) -> list[dict[str, Any]]:
        """Copies of every robot message sent, in order."""
        with self._lock:
            return [{**m, "params": dict(m["params"])} for m in self._robot_messages]

    def seed(
        self,
        name: str,
        owner: str,
        members: Iterable[str],
        chatid: str | None = None,
        settings: Mapping[str, int] | None = None,
    ) -> str:
        """Insert a chat as-is; the owner is made a member if not listed."""
        unknown = sorted(set(settings or {}) - set(SETTING_FIELDS))
        if unknown:
            raise ValueError(f"unknown setting field(s): {', '.join(unknown)}")
        ids = list(dict.fromkeys([owner, *members] if owner not in members else members))
        with self._lock:
            if chatid is None:
                chatid = self._fresh_chatid()
            elif not CHATID_RE.fullmatch(chatid) or chatid in self._chats:
                raise ValueError(f"chatid {chatid!r} is malformed or already exists")
            self._insert(_new_info(chatid, name, owner, ids, settings or {}))
            self._persist()
        return chatid

    def chat(self, chatid: str) -> dict[str, Any] | None:
        """A copy of the stored ``chat_info``, or None."""
        with self._lock:
            info = self._chats.get(chatid)
            return None if info is None else _copy_info(info)

    def chats(self) -> dict[str, dict[str, Any]]:
        """Copies of every stored chat, by chatid."""
        with self._lock:
            return {cid: _copy_info(info) for cid, info in self._chats.items()}

    def set_chat(self, chatid: str, fields: Mapping[str, Any]) -> None:
        """Overwrite stored fields as a person in DingTalk would: no rules applied."""
        settable = (set(_INFO_KEYS) - {"chatid"}) | set(SETTING_FIELDS)
        unknown = sorted(set(fields) - settable)
        if unknown:
            raise ValueError(f"cannot set field(s): {', '.join(unknown)}")
        with self._lock:
            info = self._chats.get(chatid)
            if info is None:
                raise KeyError(chatid)
            info.update({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()})
            self._persist()

    def modify(
        self, chatid: str, change: Callable[[dict[str, Any]], None]
    ) -> tuple[dict[str, Any], dict[str, Any], str]:
        """Apply ``change`` to the stored chat_info with no rules (KeyError: no such chat).

        Returns copies of the chat before and after, and its openConversationId.
        """
        with self._lock:
            info = self._chats.get(chatid)
            if info is None:
                raise KeyError(chatid)
            before = _copy_info(info)
            change(info)
            self._persist()
            return before, _copy_info(info), self._ocids.get(chatid, "")

    def clear(self) -> None:
        with self._lock:
            self._chats.clear()
            self._messages.clear()
            self._ocids.clear()
            self._by_ocid.clear()
            self._robots.clear()
            self._robot_messages.clear()
            self._persist()

    # ---- internals ------------------------------------------------------

    def _check_known(self, ids: Iterable[str]) -> None:
        if self._unknown_users is not None:
            unknown = sorted(self._unknown_users(ids))
        elif self._users is not None:
            unknown = sorted(set(ids) - self._users)
        else:
            return
        if unknown:
            raise ApiError(60121, f"user not found: {', '.join(unknown)}")

    def _chat_or_34013(self, chatid: str) -> dict[str, Any]:
        info = self._chats.get(chatid)
        if info is None:
            raise ApiError(34013, "chat not found")
        return info

    def _insert(self, info: dict[str, Any]) -> str:
        """Store a new chat with a fresh openConversationId and the default robot presence (lock held)."""
        chatid = info["chatid"]
        self._chats[chatid] = info
        self._robots[chatid] = self.robot_in_new_chats
        return self._assign_ocid(chatid)

    def _assign_ocid(self, chatid: str) -> str:
        while True:
            ocid = _fresh_open_conversation_id()
            if ocid not in self._by_ocid:
                self._ocids[chatid], self._by_ocid[ocid] = ocid, chatid
                return ocid

    def _fresh_chatid(self) -> str:
        while True:
            chatid = "chat" + secrets.token_hex(16)
            if chatid not in self._chats:
                return chatid

    def _persist(self) -> None:
        """Rewrite the data file atomically (caller holds the lock): temp file, fsync, rename."""
        if self._path is None:
            return
        data = {
            "format": DATA_FORMAT,
            "version": DATA_VERSION,
            "chats": self._chats,
            "messages": self._messages,
            "open_conversation_ids": self._ocids,
            "robots": self._robots,
            "robot_messages": self._robot_messages,
        }
        write_atomic(self._path, json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise EmulatorSetupError(f"{path}: corrupt emulator data file ({exc}); fix or remove it") from None
        if not isinstance(data, dict) or data.get("format") != DATA_FORMAT or data.get("version") != DATA_VERSION:
            raise EmulatorSetupError(f"{path}: not a {DATA_FORMAT} version {DATA_VERSION} data file; fix or remove it")
        chats, messages = data.get("chats"), data.get("messages", {})
        if not isinstance(chats, dict) or not all(_is_chat(cid, info) for cid, info in chats.items()):
            raise EmulatorSetupError(f"{path}: corrupt emulator data file (bad 'chats'); fix or remove it")
        if not isinstance(messages, dict) or not all(_is_message(m) for m in messages.values()):
            raise EmulatorSetupError(f"{path}: corrupt emulator data file (bad 'messages'); fix or remove it")
        self._chats, self._messages = chats, messages
        self._load_v1_state(path, data)

    def _load_v1_state(self, path: Path, data: Mapping[str, Any]) -> None:
        """openConversationIds, robot presence and robot messages; an older file has none of them."""
        ocids, robots = data.get("open_conversation_ids", {}), data.get("robots", {})
        robot_messages = data.get("robot_messages", [])
        chats = self._chats
        if (
            not isinstance(ocids, dict)
            or not all(cid in chats and isinstance(o, str) and o for cid, o in ocids.items())
            or len(set(ocids.values())) != len(ocids)
        ):
            raise EmulatorSetupError(
                f"{path}: corrupt emulator data file (bad 'open_conversation_ids'); fix or remove it"
            )
        if not isinstance(robots, dict) or not all(cid in chats and isinstance(v, bool) for cid, v in robots.items()):
            raise EmulatorSetupError(f"{path}: corrupt emulator data file (bad 'robots'); fix or remove it")
        if not isinstance(robot_messages, list) or not all(_is_robot_message(m) for m in robot_messages):
            raise EmulatorSetupError(f"{path}: corrupt emulator data file (bad 'robot_messages'); fix or remove it")
        self._ocids = dict(ocids)
        self._by_ocid = {o: cid for cid, o in ocids.items()}
        self._robots = {cid: robots.get(cid, self.robot_in_new_chats) for cid in chats}
        self._robot_messages = robot_messages
        missing = [cid for cid in chats if cid not in self._ocids]
        for chatid in missing:
            self._assign_ocid(chatid)
        if missing:
            self._persist()  # the new ids must survive the next restart even if nothing changes


def _is_chat(chatid: Any, info: Any) -> bool:
    return (
        isinstance(info, dict)
        and info.get("chatid") == chatid
        and isinstance(info.get("name"), str)
        and isinstance(info.get("owner"), str)
        and isinstance(info.get("useridlist"), list)
        and all(isinstance(u, str) for u in info["useridlist"])
    )


def _is_robot_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("chatid"), str)
        and isinstance(message.get("openConversationId"), str)
        and isinstance(message.get("params"), dict)
    )


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("chatid"), str)
        and isinstance(message.get("readers"), list)
    )


class TokenBook:
    """Access tokens of both API generations: random, expiring after ``ttl`` seconds, optionally after N uses."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        #: token -> [expires_at (monotonic), uses]
        self._tokens: dict[str, list[float]] = {}
        #: app key -> the token the v1.0 call last issued to that app.
        self._by_app: dict[str, str] = {}

    def issue(self) -> dict[str, Any]:
        """A fresh token and its announced lifetime (whole seconds, rounded up)."""
        token = secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = [time.monotonic() + self._ttl, 0]
        return {"access_token": token, "expires_in": math.ceil(self._ttl)}

    def issue_for_app(self, app_key: str, max_uses: int) -> tuple[str, int]:
        """v1.0: (token, expireIn): the app's v1.0 token while still valid, its lifetime extended, else a fresh one."""
        now = time.monotonic()
        with self._lock:
            token = self._by_app.get(app_key, "")
            entry = self._tokens.get(token)
            if entry is None or now >= entry[0] or (max_uses > 0 and entry[1] >= max_uses):
                token = secrets.token_hex(16)
                entry = self._tokens[token] = [now, 0]
                self._by_app[app_key] = token
            entry[0] = now + self._ttl
        return token, math.ceil(self._ttl)

    def check(self, token: str | None, max_uses: int) -> None:
        """Raise 40014 (missing/unknown) or 42001 (expired); count one use otherwise."""
        with self._lock:
            entry = self._tokens.get(token or "")
            if entry is None:
                raise ApiError(40014, "invalid access_token")
            if time.monotonic() >= entry[0] or (max_uses > 0 and entry[1] >= max_uses):
                raise ApiError(42001, "access_token expired")
            entry[1] += 1

    def expire_all(self) -> None:
        with self._lock:
            for entry in self._tokens.values():
                entry[0] = -math.inf

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._by_app.clear()
