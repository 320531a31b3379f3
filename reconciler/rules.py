"""The DingTalk chat API's rules, in one place.

Every limit and every mapping between dtchat's setting names and the API's
integer fields lives here, so the config validator, the planner, the applier
and the emulator cannot disagree about them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: At most this many ids in ``useridlist`` (create) and in each of
#: ``add_useridlist`` / ``del_useridlist`` (update) per call.
BATCH_SIZE = 40
#: A chat holds at most this many members, owner included.
MEMBER_CAP = 1000
#: A chat name is 1..NAME_MAX characters (characters, not bytes).
NAME_MIN = 1
NAME_MAX = 20
#: ``/chat/getReadList`` page size limit.
READ_LIST_PAGE_MAX = 100
#: Default client-side budget: calls per second per API for one app.
DEFAULT_QPS = 20.0
#: The client paces itself this fraction below ``max_qps``. Calls spaced exactly 1/limit apart
#: put the (limit+1)-th call at the very edge of the server's 1-second window, where network
#: jitter tips it over: measured 46 refusals (90018) in 1,000 reads at 20/s, 0 with 5 % headroom.
RATE_HEADROOM = 0.05
#: Token lifetime announced by ``/gettoken``.
TOKEN_TTL_SECONDS = 7200

#: ``members_policy``: exact (the default) removes who is not listed; additive never removes anyone.
EXACT = "exact"
ADDITIVE = "additive"
MEMBERS_POLICIES = (EXACT, ADDITIVE)


@dataclass(frozen=True)
class Setting:
    """One chat setting: its YAML name, its API field and the value mapping."""

    name: str
    api_field: str
    #: YAML value -> API integer.
    values: Mapping[Any, int]
    description: str

    def to_api(self, value: Any) -> int:
        return self.values[value]

    def from_api(self, raw: Any) -> Any:
        """Map the API's integer back to the YAML value (unknown -> the raw value)."""
        for yaml_value, api_value in self.values.items():
            if raw == api_value and type(raw) is not bool:
                return yaml_value
        return raw


_BOOL = {False: 0, True: 1}
_WHO = {"everyone": 0, "owner": 1}

#: The six managed settings, in display order.
SETTINGS: tuple[Setting, ...] = (
    Setting("muted", "chatBannedType", _BOOL, "Mute the chat: only the owner may speak (chatBannedType)."),
    Setting("searchable", "searchable", _BOOL, "The chat can be found by search (searchable)."),
    Setting("join_validation", "validationType", _BOOL, "Joining requires approval (validationType)."),
    Setting("mention_all", "mentionAllAuthority", _WHO, "Who may @all: everyone or owner (mentionAllAuthority)."),
    Setting("management", "managementType", _WHO, "Who may manage the chat: everyone or owner (managementType)."),
    Setting("show_history", "showHistoryType", _BOOL, "New members see the chat history (showHistoryType)."),
)
SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
SETTING_NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS)
SETTING_FIELDS: tuple[str, ...] = tuple(s.api_field for s in SETTINGS)


def settings_to_api(settings: Mapping[str, Any]) -> dict[str, int]:
    """YAML-named settings -> API fields (only those given: absent stays absent)."""
    return {SETTINGS_BY_NAME[name].api_field: SETTINGS_BY_NAME[name].to_api(value) for name, value in settings.items()}


def settings_from_api(chat_info: Mapping[str, Any]) -> dict[str, Any]:
    """API ``chat_info`` -> YAML-named settings (fields missing from the response are absent)."""
    return {s.name: s.from_api(chat_info[s.api_field]) for s in SETTINGS if chat_info.get(s.api_field) is not None}
