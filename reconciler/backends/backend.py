"""What both API generations share: reading a chat with ``/chat/get``, robot messages, sending a call.

There is no v1.0 read of an internal group, so both generations read through
``/chat/get`` (with whichever token ``--api`` uses), and both post ``--notify``
messages through the app's robot (``/chat/send`` is closed to new apps since
2022). The subclasses, :class:`~reconciler.backends.legacy.LegacyBackend` and
:class:`~reconciler.backends.v1.V1Backend`, differ in how a change becomes write
calls and how their create answers.

A read answer is trusted only as far as the reference documents it: it must
name the chat that was asked for, and every field dtchat compares must have
its documented type, or the chat is an error (never a redirected or coerced
update).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..model import LiveChat
from ..plan import ChatChange
from ..rules import MEMBER_CAP
from . import fields
from .base import CHATID, OPEN_CONVERSATION_ID, WireCall, userids_in
from .endpoints import CHAT_GET, CONVERT_ID, ROBOT_SEND, Endpoint
from .errors import AmbiguousCreateError, MalformedAnswerError, NotFoundError
from .packing import Step

if TYPE_CHECKING:  # the transport pulls in requests; planning and dry runs need none of it
    from .transport import Meter, Transport

#: The body keys that hold user ids (both generations), named in InvalidUserError.
USERID_KEYS = ("owner", "useridlist", "add_useridlist", "del_useridlist")
#: ``chat_info.status`` of a chat people dissolved in DingTalk.
DISSOLVED = 2
#: The robot message template dtchat posts, and the size DingTalk allows its parameters.
ROBOT_TEXT_TEMPLATE = "sampleText"
MSG_PARAM_MAX_BYTES = 15_000
#: What a chatid or an openConversationId from a create or convert answer may be (``chat`` + 32 hex digits and
#: ``cid`` + base64 in practice): printable ASCII, no spaces, bounded. Anything else is not trusted as an id.
_WIRE_ID = re.compile(r"[!-~]{1,256}")


def _wire_id(value: Any) -> str | None:
    return value if isinstance(value, str) and _WIRE_ID.fullmatch(value) else None


def _malformed(chatid: str, why: str) -> MalformedAnswerError:
    return MalformedAnswerError(CHAT_GET.path, f"malformed answer for chat {chatid}: {why}; nothing trusted from it")


def _member_ids(chatid: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _malformed(chatid, f"useridlist is {type(value).__name__}, not a list")
    if len(value) > MEMBER_CAP:
        raise _malformed(chatid, f"useridlist holds {len(value):,} ids, more than a chat's {MEMBER_CAP:,}")
    if not all(isinstance(u, str) and u for u in value):
        raise _malformed(chatid, "useridlist holds something other than user ids (non-empty strings)")
    # interned: 10,000 chats x 200 members share their id strings with the config's
    return tuple(sys.intern(u) for u in value)


def parse_chat(chatid: str, payload: Mapping[str, Any]) -> LiveChat:
    """A ``/chat/get`` success answer as a LiveChat, or MalformedAnswerError / NotFoundError (dissolved)."""
    info = payload.get("chat_info")
    if not isinstance(info, dict):
        raise _malformed(chatid, "no chat_info object")
    answered = info.get("chatid")
    if answered is not None and answered != chatid:
        raise _malformed(chatid, f"it names another chat ({str(answered)[:80]!r})")
    status = info.get("status")
    if status is not None and type(status) is not int:
        raise _malformed(chatid, f"status is {type(status).__name__}, not a number")
    if status == DISSOLVED:
        raise NotFoundError(CHAT_GET.path, f"chat {chatid} was dissolved in DingTalk")
    name, owner = info.get("name"), info.get("owner")
    if not isinstance(name, str):
        raise _malformed(chatid, f"name is {type(name).__name__}, not text")
    if not isinstance(owner, str) or not owner:
        raise _malformed(chatid, "no owner")
    try:
        settings = fields.from_api(info)
    except ValueError as exc:
        raise _malformed(chatid, str(exc)) from None
    return LiveChat(
        chatid=chatid, name=name, owner=owner, members=_member_ids(chatid, info.get("useridlist")), settings=settings
    )


def _text_param(text: str) -> str:
    """The robot's ``msgParam`` for ``text``, shortened (with "…") to DingTalk's size limit if need be."""
    param = json.dumps({"content": text}, ensure_ascii=False)
    while len(param.encode("utf-8")) > MSG_PARAM_MAX_BYTES:
        text = text[: max(0, len(text) - max(16, (len(param.encode("utf-8")) - MSG_PARAM_MAX_BYTES) // 3))]
        param = json.dumps({"content": text + "…"}, ensure_ascii=False)
    return param


def update_call(endpoint: Endpoint, step: Step, change: ChatChange, settings: Mapping[str, Any]) -> WireCall:
    """One update call of either generation: the chat, its new name, ``settings`` (each generation's own
    shape), the owner, then the members to add and to remove; the chat's id filled in later for a new chat."""
    body: dict[str, Any] = {"chatid": change.chatid} if change.chatid else {}
    if step.name is not None:
        body["name"] = step.name
    body.update(settings)
    if step.owner is not None:
        body["owner"] = step.owner
    if step.add:
        body["add_useridlist"] = list(step.add)
    if step.remove:
        body["del_useridlist"] = list(step.remove)
    return WireCall(endpoint, body, needs={} if change.chatid else {CHATID: "chatid"})


class Backend:
    """The part of a ChatBackend both generations share (see the module docstring)."""

    name = ""

    def __init__(self, transport: Transport | None, *, robot_code: str | None = None) -> None:
        """``transport`` may be None for pure use (``calls``, ``notify_calls``: plans and dry runs in tests)."""
        self._transport = transport
        self.robot_code = robot_code

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("this backend has no transport: it can only plan calls")
        return self._transport

    def authenticate(self) -> None:
        self.transport.authenticate()

    def meter(self) -> Meter:
        return self.transport.meter

    def read(self, chatid: str) -> LiveChat:
        return parse_chat(chatid, self.transport.call(CHAT_GET, params={"chatid": chatid}))

    def calls(self, change: ChatChange) -> list[WireCall]:
        raise NotImplementedError

    def notify_calls(self, text: str, *, chatid: str, open_conversation_id: str | None) -> list[WireCall]:
        """The robot message (``robotCode`` from DTCHAT_ROBOT_CODE), after a one-off lookup of the chat's
        openConversationId when the state does not have it yet."""
        body = {"robotCode": self.robot_code or "", "msgKey": ROBOT_TEXT_TEMPLATE, "msgParam": _text_param(text)}
        if open_conversation_id:
            return [WireCall(ROBOT_SEND, {"openConversationId": open_conversation_id, **body})]
        return [
            WireCall(CONVERT_ID, path_chatid=chatid),
            WireCall(ROBOT_SEND, body, needs={OPEN_CONVERSATION_ID: "openConversationId"}),
        ]

    def send(self, call: WireCall) -> Mapping[str, str]:
        if call.needs:
            raise ValueError(f"{call.endpoint}: still needs {', '.join(call.needs)}")
        payload = self.transport.call(
            call.endpoint,
            body=(call.body or None) if call.endpoint.method == "POST" else None,  # convert takes no body
            chatid=call.path_chatid,
            userids=userids_in(call.body, USERID_KEYS),
        )
        return self.answered(call, payload)

    def answered(self, call: WireCall, payload: Mapping[str, Any]) -> Mapping[str, str]:
        """The values a success answer produced; a create's answer must carry the new chat's id."""
        if call.endpoint is CONVERT_ID:
            ocid = _wire_id(payload.get("openConversationId"))
            if ocid is None:
                raise MalformedAnswerError(call.endpoint.path, "malformed answer: no openConversationId")
            return {OPEN_CONVERSATION_ID: ocid}
        if call.endpoint is ROBOT_SEND:
            if not isinstance(payload.get("processQueryKey"), str):
                raise MalformedAnswerError(call.endpoint.path, "malformed answer: no processQueryKey")
            return {}
        if call.creates:
            chatid = _wire_id(payload.get("chatid"))
            if chatid is None:  # missing, or not an id: never recorded, never used in a URL
                raise AmbiguousCreateError(
                    call.endpoint.path,
                    "malformed response: the chat was created but no usable chatid came back",
                    detail="check DingTalk and record the chat with `dtchat import KEY CHATID`",
                )
            produced = {CHATID: chatid}
            ocid = _wire_id(payload.get("openConversationId"))
            if ocid is not None:  # optional: one that is not an id is left out, fetched by convert when needed
                produced[OPEN_CONVERSATION_ID] = ocid
            return produced
        return {}
