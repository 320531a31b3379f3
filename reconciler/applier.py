"""The applier: executes a Plan's calls chat by chat, recording every new chatid at once.

Chats are independent: one chat's failure is reported and the others go on.
A create whose outcome is unknown is never retried; the key is marked pending
in the state so no later run creates the chat a second time by accident.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from .batching import CREATE, ApiCall, BatchingError, calls_for, describe_call
from .dingtalk import AmbiguousCreateError, DingTalkClient, DingTalkError
from .live import is_fatal
from .notify import message_for
from .plan import Action, ChatChange, Plan
from .state import StateError, StateFile

log = logging.getLogger("reconciler.applier")


@dataclass(frozen=True)
class ChatResult:
    key: str
    action: Action
    ok: bool
    calls: int = 0
    chatid: Optional[str] = None
    error: Optional[str] = None
    #: A problem that did not fail the chat (e.g. the --notify message could not be sent).
    warning: Optional[str] = None
    #: The failure would hit every other chat too (quota used up, credentials, API unreachable).
    fatal: bool = False


@dataclass(frozen=True)
class ApplyResult:
    results: tuple[ChatResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> tuple[ChatResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.results)

    def summary(self) -> str:
        done = {a: 0 for a in (Action.CREATE, Action.UPDATE, Action.FORGET)}
        for r in self.results:
            if r.ok and r.action in done:
                done[r.action] += 1
        return (
            f"Apply: {done[Action.CREATE]} created, {done[Action.UPDATE]} updated, "
            f"{done[Action.FORGET]} forgotten, {len(self.failed)} failed "
            f"({self.calls} API call{'s' if self.calls != 1 else ''})."
        )


def send_call(client: DingTalkClient, call: ApiCall) -> Optional[str]:
    """Issue one write call; returns the new chatid for a create."""
    body = dict(call.body)
    if call.endpoint == CREATE:
        settings = {k: v for k, v in body.items() if k not in ("name", "owner", "useridlist")}
        return client.create_chat(body["name"], body["owner"], body["useridlist"], settings or None)
    chatid = body.pop("chatid")
    settings = {k: v for k, v in body.items() if k not in ("name", "owner", "add_useridlist", "del_useridlist")}
    client.update_chat(
        chatid,
        name=body.get("name"),
        owner=body.get("owner"),
        add=body.get("add_useridlist", ()),
        remove=body.get("del_useridlist", ()),
        settings=settings or None,
    )
    return None


def apply_change(
    change: ChatChange,
    client: DingTalkClient,
    state: StateFile,
    *,
    on_call: Optional[Callable[[str, str], None]] = None,
    notify: bool = False,
) -> ChatResult:
    """Converge one chat. Never raises for API errors: they become a failed ChatResult."""
    key = change.key
    if change.action is Action.ERROR:
        return ChatResult(key, change.action, ok=False, chatid=change.chatid, error=change.error)
    if change.action is Action.FORGET:
        state.forget(key)
        return ChatResult(key, change.action, ok=True, chatid=change.chatid)
    try:
        calls = calls_for(change)
    except BatchingError as exc:
        return ChatResult(key, change.action, ok=False, chatid=change.chatid, error=str(exc))
    chatid = change.chatid
    done = 0
    for call in calls:
        if chatid and call.body.get("chatid", chatid) is None:
            call = call.with_chatid(chatid)
        if on_call:
            on_call(key, describe_call(call, key))
        try:
            new_chatid = send_call(client, call)
        except AmbiguousCreateError as exc:
            state.mark_pending(key)
            return ChatResult(
                key, change.action, ok=False, calls=done + 1,
                error=(
                    f"{exc}. The chat may now exist in DingTalk; dtchat will not create it again. "
                    f"If it exists, run `dtchat import {key} CHATID`; if not, run `dtchat forget {key}` and apply again"
                ),
            )
        except DingTalkError as exc:
            return ChatResult(key, change.action, ok=False, calls=done + 1, chatid=chatid, error=str(exc),
                              fatal=is_fatal(exc))
        done += 1
        if new_chatid:
            chatid = new_chatid
            try:
                state.record(key, chatid, created=True)  # before any further call
            except StateError as exc:
                return ChatResult(
                    key, change.action, ok=False, calls=done, chatid=chatid, fatal=True,
                    error=f"chat created as {chatid}, but {exc}; once the file is writable, run "
                          f"`dtchat import {key} {chatid}` so it is not created again",
                )
    if chatid and (state.get(key) is None or state.get(key).chatid != chatid):
        state.record(key, chatid)  # a pinned chat: remember it
    warning = None
    if notify and calls and chatid:
        try:
            done += 1
            client.send_text(chatid, message_for(change))
        except DingTalkError as exc:
            warning = f"changes applied, but the --notify message was not sent: {exc}"
    return ChatResult(key, change.action, ok=True, calls=done, chatid=chatid, warning=warning)


def apply_plan(
    plan: Plan,
    client: DingTalkClient,
    state: StateFile,
    *,
    on_call: Optional[Callable[[str, str], None]] = None,
    on_result: Optional[Callable[[ChatResult], None]] = None,
    notify: bool = False,
) -> ApplyResult:
    """Apply every change in plan order; the caller holds the state lock.

    A failure no other chat would escape stops the run: the remaining chats are
    reported as not attempted rather than each retrying into the same wall.
    """
    results: list[ChatResult] = []
    stopped: Optional[str] = None
    for change in plan.changes:
        if stopped is None:
            result = apply_change(change, client, state, on_call=on_call, notify=notify)
            if result.fatal:
                stopped = result.error
        elif change.action is Action.NOOP:
            result = ChatResult(change.key, change.action, ok=True, chatid=change.chatid)
        else:
            result = ChatResult(change.key, change.action, ok=False, chatid=change.chatid,
                                error=f"not attempted: {stopped}")
        if not result.ok:
            log.warning("chat %s failed: %s", change.key, result.error)
        if on_result:
            on_result(result)
        results.append(result)
    return ApplyResult(tuple(results))
