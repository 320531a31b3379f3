"""The legacy chat API (``--api legacy``): ``/chat/create`` and ``/chat/update`` on the oapi host.

For apps that were granted these calls before DingTalk closed them to new apps
(``dingtalk-api.md``, "Who can call what"). Settings are top-level fields of
the body; an update sends only what changes (a setting sent as 0 is set to 0).
"""

from __future__ import annotations

from ..plan import ChatChange
from . import fields
from .backend import Backend, update_call
from .base import WireCall
from .endpoints import CHAT_CREATE, CHAT_UPDATE
from .packing import Step, steps_for


class LegacyBackend(Backend):
    """A ChatBackend for apps that still hold the legacy chat permissions."""

    name = "legacy"

    def calls(self, change: ChatChange) -> list[WireCall]:
        return [self._call(step, change) for step in steps_for(change)]

    @staticmethod
    def _call(step: Step, change: ChatChange) -> WireCall:
        changed = fields.to_api({s.name: s.new for s in change.settings}) if step.settings else {}
        if step.create:
            return WireCall(
                CHAT_CREATE, {"name": step.name, "owner": step.owner, "useridlist": list(step.add), **changed}
            )
        return update_call(CHAT_UPDATE, step, change, changed)
