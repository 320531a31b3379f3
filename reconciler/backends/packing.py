"""Turn one chat's change into the fewest write steps the API's rules allow, for either generation.

Pure: no I/O and no wire names. A backend renders each :class:`Step` as one
call in its own dialect. The rules (``dingtalk-api.md``, the same in both
generations): at most ``IDS_PER_CALL`` ids per id list per call; never above
the member cap after any call; the new owner must already be a member when
the transferring call is made; the current owner cannot be deleted; never rely
on the order of the parts of one call. Name and setting changes ride on the
first call. Removals go as early as possible and additions as late as the
member cap requires, so a full chat never overflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DtchatError
from ..plan import Action, ChatChange
from ..rules import MEMBER_CAP

#: At most this many ids in the member list of a create and in each of the add / remove lists of an
#: update, per call (legacy 创建群 / 更新群; the v1.0 pages give no limit, assumed the same).
IDS_PER_CALL = 40


class UnreachableError(DtchatError):
    """The change cannot be made within the API's rules (e.g. a full chat's owner swap)."""


@dataclass(frozen=True)
class Step:
    """One write call's worth of a change, in domain terms.

    A create's first step carries ``members`` (the owner first); every other
    step is an update of the chat: members in and out, maybe the owner, and on
    the first step only, the new name and the setting changes.
    """

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    owner: str | None = None
    name: str | None = None
    #: This step carries the change's setting changes.
    settings: bool = False
    #: A create: ``add`` is the new chat's member list and ``owner`` its owner.
    create: bool = False


def create_steps(change: ChatChange) -> list[Step]:
    """A create with the owner and up to 39 others, then updates adding 40 at a time."""
    owner = change.new_owner
    name = change.new_name
    assert owner is not None and name is not None
    others = [m for m in change.add if m != owner]
    first, rest = others[: IDS_PER_CALL - 1], others[IDS_PER_CALL - 1 :]
    steps = [Step(add=(owner, *first), owner=owner, name=name, settings=bool(change.settings), create=True)]
    for i in range(0, len(rest), IDS_PER_CALL):
        steps.append(Step(add=tuple(rest[i : i + IDS_PER_CALL])))
    return steps


def update_steps(change: ChatChange) -> list[Step]:
    """Updates for an existing chat, packing up to 40 adds + 40 removals per call."""
    new_owner = change.new_owner
    old_owner = change.owner[0] if change.owner else None
    adds = list(change.add)
    removes = list(change.remove)
    add_owner_first = new_owner is not None and new_owner in adds
    if add_owner_first:
        assert new_owner is not None
        adds.remove(new_owner)
        adds.insert(0, new_owner)
    # The old owner may only leave after the transfer; hold it back until then.
    old_owner_leaving = old_owner is not None and new_owner is not None and old_owner in removes
    if old_owner_leaving:
        assert old_owner is not None
        removes.remove(old_owner)
    count = change.live_count
    name, settings = change.new_name, bool(change.settings)

    steps: list[Step] = []
    transferred = new_owner is None
    owner_is_member = not add_owner_first
    while adds or removes or old_owner_leaving or not transferred or name is not None or settings:
        # Decisions use the chat as it is *before* this call.
        dels, removes = removes[:IDS_PER_CALL], removes[IDS_PER_CALL:]
        if old_owner_leaving and transferred and len(dels) < IDS_PER_CALL:
            assert old_owner is not None
            dels.append(old_owner)
            old_owner_leaving = False
        owner = None
        if not transferred and owner_is_member:
            owner = new_owner
            transferred = True
        room = max(min(IDS_PER_CALL, MEMBER_CAP - (count - len(dels))), 0)
        ins, adds = adds[:room], adds[room:]
        if ins:
            owner_is_member = owner_is_member or new_owner in ins
        step = Step(add=tuple(ins), remove=tuple(dels), owner=owner, name=name, settings=settings)
        name, settings = None, False
        if step == Step():
            raise UnreachableError(f"cannot reach the desired members without exceeding {MEMBER_CAP} members mid-way")
        count += len(ins) - len(dels)
        steps.append(step)
    return steps


def steps_for(change: ChatChange) -> list[Step]:
    """Every write step ``change`` needs, in order ([] for noop/forget/orphan/error)."""
    if change.action is Action.CREATE:
        return create_steps(change)
    if change.action is Action.UPDATE:
        return update_steps(change)
    return []


def minimum_calls(change: ChatChange) -> int:
    """The theoretical minimum number of write calls (ignoring the member cap).

    Kept next to the packing it bounds: the property test and ``bench/bench_apply_calls.py`` hold
    :func:`steps_for` to it, so a change that wastes a metered call fails there.
    """
    if change.action is Action.CREATE:
        return 1 + math.ceil(max(len(change.add) - IDS_PER_CALL, 0) / IDS_PER_CALL)
    if change.action is not Action.UPDATE:
        return 0
    phases = 1
    if change.owner:
        new_owner, old_owner = change.owner[1], change.owner[0]
        phases += int(new_owner in change.add) + int(old_owner in change.remove)
    return max(phases, math.ceil(len(change.add) / IDS_PER_CALL), math.ceil(len(change.remove) / IDS_PER_CALL))
