"""The seam: what the engine (planner, applier, manager, renderers, CLI) knows of DingTalk.

A :class:`ChatBackend` reads chats, turns a planned change into its exact
wire calls (pure, so ``--dry-run`` prints exactly what ``apply`` sends) and
sends them; a :class:`Directory` resolves selectors into user ids. The engine
sees domain values (``LiveChat``, ``ChatChange``), :class:`WireCall` objects it
only passes along and prints, and the error classes of ``backends.errors``.
Endpoints, body keys, wire fields and error codes stay behind this file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..model import LiveChat
from ..plan import ChatChange
from .endpoints import Endpoint

#: The values a call's answer can produce for later calls and the state file.
CHATID = "chatid"
OPEN_CONVERSATION_ID = "open_conversation_id"

#: How a placeholder reads in dry-run output, per value.
_PLACEHOLDER = {
    CHATID: "<chatid of new chat {key}>",
    OPEN_CONVERSATION_ID: "<openConversationId of {key}>",
}


def placeholder(value: str, key: str) -> str:
    """How a value still to come (``CHATID``, ``OPEN_CONVERSATION_ID``) of chat ``key`` reads in a dry run."""
    return _PLACEHOLDER[value].format(key=key)


@dataclass(frozen=True)
class WireCall:
    """One call, its body exactly as it goes on the wire.

    A call may need a value that an earlier call of the same chat answers (the
    updates after a create need the new chat's id; a robot message needs the
    chat's openConversationId): ``needs`` maps each such value to the body key
    it fills, and :meth:`bound` puts it in, first, once it is known. ``--dry-run``
    and ``-v`` print :meth:`describe`, the same body with a placeholder.
    """

    endpoint: Endpoint
    body: Mapping[str, Any] = field(default_factory=dict)
    #: value name (``CHATID``, ``OPEN_CONVERSATION_ID``) -> the body key it goes into.
    needs: Mapping[str, str] = field(default_factory=dict)
    #: The chat whose id goes into the endpoint's path (``{chatid}``), if it has one.
    path_chatid: str | None = None

    @property
    def creates(self) -> bool:
        """This call creates a chat: the state records it as pending before it is sent."""
        return self.endpoint.creates

    @property
    def metered(self) -> bool:
        return self.endpoint.metered

    def bound(self, known: Mapping[str, str | None]) -> WireCall:
        """This call with every value it needs that ``known`` has filled in."""
        filled = {key: known[name] for name, key in self.needs.items() if known.get(name)}
        if not filled:
            return self
        rest = {name: key for name, key in self.needs.items() if not known.get(name)}
        return WireCall(self.endpoint, {**filled, **self.body}, rest, self.path_chatid)

    def shown_body(self, key: str) -> dict[str, Any]:
        """The body as it will be sent, with a placeholder where a value still to come will go."""
        shown = {body_key: placeholder(name, key) for name, body_key in self.needs.items()}
        return {**shown, **self.body}

    @property
    def path(self) -> str:
        return self.endpoint.url_path(self.path_chatid) if self.path_chatid else self.endpoint.path

    def describe(self, key: str) -> str:
        """One line: method, path and JSON body (never a token)."""
        body = json.dumps(self.shown_body(key), ensure_ascii=False)
        return f"{self.endpoint.method} {self.path}" + (f" {body}" if self.body or self.needs else "")


class ChatBackend(Protocol):
    """One API generation: how chats are read, changed and messaged (design §10)."""

    #: ``"v1"`` or ``"legacy"``, as ``--api`` spells it.
    name: str
    #: The app robot that posts ``--notify`` messages (DTCHAT_ROBOT_CODE), if any.
    robot_code: str | None

    def authenticate(self) -> None:
        """Fetch a token now, so bad credentials or a wrong base URL fail before anything else."""

    def read(self, chatid: str) -> LiveChat:
        """The chat as DingTalk reports it; a DingTalkError (NotFoundError, MalformedAnswerError, …) if not."""

    def calls(self, change: ChatChange) -> list[WireCall]:
        """Every write call ``change`` needs, in order (pure); UnreachableError when the rules forbid it."""

    def notify_calls(self, text: str, *, chatid: str, open_conversation_id: str | None) -> list[WireCall]:
        """The calls that post ``text`` into the chat through the app's robot (pure)."""

    def send(self, call: WireCall) -> Mapping[str, str]:
        """Send one call; returns the values its answer produced (``CHATID``, ``OPEN_CONVERSATION_ID``)."""

    def meter(self) -> Any:
        """The metered and exempt calls answered so far (``transport.Meter``)."""


class Directory(Protocol):
    """The org directory (contact API, exempt from the quota): selectors into user ids, and whether an id
    the plan would add exists (design §8)."""

    def department_user_ids(self, dept_id: int) -> list[str]:
        """User ids of the department's direct members."""

    def sub_department_ids(self, dept_id: int) -> list[int]:
        """Ids of the department's direct sub-departments ([] for a leaf)."""

    def department_name(self, dept_id: int) -> str:
        """The department's name, for plans."""

    def role_user_ids(self, role_id: int) -> list[str]:
        """User ids of everyone holding the role."""

    def role_names(self) -> dict[int, str]:
        """Every role id and its name."""

    def user_id_by_mobile(self, mobile: str) -> str:
        """The active employee with this (normalised) mobile; NotFoundError when there is none."""

    def normalize_mobile(self, text: str) -> str:
        """A mobile number as the lookup wants it; ValueError (never echoing the number) when it is not one."""

    def user_exists(self, userid: str) -> bool:
        """Whether the org has this user id (False: unknown, or left); a DingTalkError when it cannot tell."""


def userids_in(body: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The user ids a write body names under ``keys``, each once in order (for InvalidUserError)."""
    ids: list[str] = []
    for key in keys:
        value = body.get(key)
        if isinstance(value, str):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(str(uid) for uid in value)
    return list(dict.fromkeys(ids))
