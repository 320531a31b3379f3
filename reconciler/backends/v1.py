"""The v1.0 API (``--api v1``, the default): ``/v1.0/im/group/create`` and ``/v1.0/im/group/update``.

What a DingTalk app created today can write with (``dingtalk-api.md``, "The
v1.0 API"). Members, owner and name have the legacy fields; the six settings
are nested in ``managementOptions``. The update page does not say that absent
settings are left unchanged, and says of ``showHistoryType`` that no value
means "cannot see history", so an update that changes any setting carries all
six (the changed ones at their desired values, the others at the live values
read just before), and an update that changes none carries no
``managementOptions`` at all: no setting is ever reset by omission.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..plan import ChatChange
from ..rules import SETTING_NAMES
from . import fields
from .backend import Backend, update_call
from .base import WireCall
from .endpoints import GROUP_CREATE, GROUP_UPDATE
from .errors import MalformedAnswerError
from .packing import Step, UnreachableError, steps_for


def management_options(change: ChatChange) -> dict[str, int]:
    """All six settings for an update that changes any: desired where changed, live everywhere else."""
    changed = {s.name: s.new for s in change.settings}
    missing = [name for name in SETTING_NAMES if name not in changed and name not in change.live_settings]
    if missing:
        names = ", ".join(missing)
        raise UnreachableError(
            f"cannot change settings through the v1.0 API: DingTalk did not report {names} for this chat, and an "
            f"update that sets any setting must set all six or risk resetting the others; declare {names} in the YAML"
        )
    return fields.to_api({name: changed.get(name, change.live_settings.get(name)) for name in SETTING_NAMES})


class V1Backend(Backend):
    """A ChatBackend on the v1.0 API (what a new app is granted)."""

    name = "v1"

    def calls(self, change: ChatChange) -> list[WireCall]:
        steps = steps_for(change)
        options = management_options(change) if any(s.settings for s in steps if not s.create) else None
        return [self._call(step, change, options) for step in steps]

    @staticmethod
    def _call(step: Step, change: ChatChange, options: dict[str, int] | None) -> WireCall:
        if step.create:
            body: dict[str, Any] = {"name": step.name, "owner": step.owner, "useridlist": list(step.add)}
            declared = fields.to_api({s.name: s.new for s in change.settings})
            if declared:  # absent on create = 0, as the page says
                body["managementOptions"] = declared
            return WireCall(GROUP_CREATE, body)
        settings = {"managementOptions": options} if step.settings and options is not None else {}
        return update_call(GROUP_UPDATE, step, change, settings)

    def answered(self, call: WireCall, payload: Mapping[str, Any]) -> Mapping[str, str]:
        if call.endpoint is GROUP_UPDATE and payload.get("success") is not True:
            raise MalformedAnswerError(call.endpoint.path, "the update answered without success: true")
        return super().answered(call, payload)
