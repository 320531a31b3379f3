"""Turn one chat's change into the fewest API calls the API's rules allow.

Pure: no I/O. The rules (``dingtalk-api.md``): at most 40 ids per id list per
call; never above 1,000 members after any call; the new owner must already be
a member when the transferring call is made; the current owner cannot be
deleted; never rely on the order of the parts of one call. Name and setting
changes ride on the first call. Removals go as early as possible and
additions as late as the member cap requires, so a full chat never overflows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DtchatError
from .plan import Action, ChatChange
from .rules import BATCH_SIZE, MEMBER_CAP, settings_to_api

CREATE = "/chat/create"
UPDATE = "/chat/update"


class BatchingError(DtchatError):
    """The change cannot be made within the API's rules (e.g. a full chat's owner swap)."""


@dataclass(frozen=True)
class ApiCall:
    """One write call, its body exactly as it goes on the wire.

    The updates that follow a create cannot name their chat yet: they are
    ``for_new_chat`` and get the new chatid put first by :meth:`bound` the
    moment the create answers. ``--dry-run`` and ``-v`` print :meth:`describe`,
    the same body with a placeholder for that id.
    """

    endpoint: str
    body: Mapping[str, Any] = field(default_factory=dict)
    for_new_chat: bool = False

    def bound(self, chatid: str) -> ApiCall:
        """This call with the new chat's id filled in."""
        return ApiCall(self.endpoint, {"chatid": chatid, **self.body}) if self.for_new_chat else self

    def shown_body(self, key: str) -> dict[str, Any]:
        """The body as it will be sent, with ``<chatid of new chat KEY>`` where a new chat's id will go."""
        return self.bound(f"<chatid of new chat {key}>").body if self.for_new_chat else dict(self.body)

    def describe(self, key: str) -> str:
        """One line: endpoint + JSON body (never a token)."""
        return f"POST {self.endpoint} {json.dumps(self.shown_body(key), ensure_ascii=False)}"


def _settings_body(change: ChatChange) -> dict[str, int]:
    return settings_to_api({s.name: s.new for s in change.settings})


def create_calls(change: ChatChange) -> list[ApiCall]:
    """A create with the owner and up to 39 others, then updates adding 40 at a time."""
    owner = change.new_owner
    assert owner is not None and change.new_name is not None
    others = [m for m in change.add if m != owner]
    first, rest = others[: BATCH_SIZE - 1], others[BATCH_SIZE - 1 :]
    body: dict[str, Any] = {"name": change.new_name, "owner": owner, "useridlist": [owner, *first]}
    body.update(_settings_body(change))
    calls = [ApiCall(CREATE, body)]
    for i in range(0, len(rest), BATCH_SIZE):
        calls.append(ApiCall(UPDATE, {"add_useridlist": rest[i : i + BATCH_SIZE]}, for_new_chat=True))
    return calls


def update_calls(change: ChatChange) -> list[ApiCall]:
    """Updates for an existing chat, packing up to 40 adds + 40 removals per call."""
    chatid = change.chatid
    new_owner = change.new_owner
    old_owner = change.owner[0] if change.owner else None
    adds = list(change.add)
    removes = list(change.remove)
    add_owner_first = new_owner is not None and new_owner in adds
    if add_owner_first:
        adds.remove(new_owner)
        adds.insert(0, new_owner)
    # The old owner may only leave after the transfer; hold it back until then.
    old_owner_leaving = old_owner is not None and new_owner is not None and old_owner in removes
    if old_owner_leaving:
        removes.remove(old_owner)
    count = change.live_count
    extras: dict[str, Any] = {}
    if change.new_name is not None:
        extras["name"] = change.new_name
    extras.update(_settings_body(change))

    calls: list[ApiCall] = []
    transferred = new_owner is None
    owner_is_member = not add_owner_first
    while adds or removes or old_owner_leaving or not transferred or extras:
        # Decisions use the chat as it is *before* this call.
        body: dict[str, Any] = {"chatid": chatid, **extras}
        extras = {}
        dels, removes = removes[:BATCH_SIZE], removes[BATCH_SIZE:]
        if old_owner_leaving and transferred and len(dels) < BATCH_SIZE:
            dels.append(old_owner)
            old_owner_leaving = False
        if not transferred and owner_is_member:
            body["owner"] = new_owner
            transferred = True
        room = max(min(BATCH_SIZE, MEMBER_CAP - (count - len(dels))), 0)
        ins, adds = adds[:room], adds[room:]
        if ins:
            body["add_useridlist"] = ins
            owner_is_member = owner_is_member or new_owner in ins
        if dels:
            body["del_useridlist"] = dels
        if len(body) == 1:
            raise BatchingError(f"cannot reach the desired members without exceeding {MEMBER_CAP} members mid-way")
        count += len(ins) - len(dels)
        calls.append(ApiCall(UPDATE, body))
    return calls


def calls_for(change: ChatChange) -> list[ApiCall]:
    """Every write call ``change`` needs, in order ([] for noop/forget/error)."""
    if change.action is Action.CREATE:
        return create_calls(change)
    if change.action is Action.UPDATE:
        return update_calls(change)
    return []


def minimum_calls(change: ChatChange) -> int:
    """The theoretical minimum number of write calls (ignoring the member cap).

    Kept next to the packing it bounds: the property test and ``bench/bench_apply_calls.py`` hold
    :func:`calls_for` to it, so a change that wastes a metered call fails there.
    """
    if change.action is Action.CREATE:
        return 1 + math.ceil(max(len(change.add) - BATCH_SIZE, 0) / BATCH_SIZE)
    if change.action is not Action.UPDATE:
        return 0
    phases = 1
    if change.owner:
        new_owner, old_owner = change.owner[1], change.owner[0]
        phases += int(new_owner in change.add) + int(old_owner in change.remove)
    return max(phases, math.ceil(len(change.add) / BATCH_SIZE), math.ceil(len(change.remove) / BATCH_SIZE))
