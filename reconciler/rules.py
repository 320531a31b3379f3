"""The rules a desired chat obeys whatever the API generation, in one place.

The member cap, the name length, the six settings and their YAML values, the
members policies: the config validator, the planner and the directory resolver
read them here. How each rule looks on the wire (ids per call, setting fields
and integers) is the backends' knowledge (``reconciler/backends/``); the
emulator states DingTalk's side on its own (``emulator/limits.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: A chat holds at most this many members, owner included.
MEMBER_CAP = 1000
#: A chat name is 1..NAME_MAX characters (characters, not bytes).
NAME_MIN = 1
NAME_MAX = 20
#: Default client-side budget: calls per second per API for one app.
DEFAULT_QPS = 20.0
#: The client paces itself this fraction below ``max_qps``. Calls spaced exactly 1/limit apart
#: put the (limit+1)-th call at the very edge of the server's 1-second window, where network
#: jitter tips it over: measured 46 throttling refusals in 1,000 reads at 20/s, 0 with 5 % headroom.
RATE_HEADROOM = 0.05

#: ``members_policy``: exact (the default) removes who is not listed; additive never removes anyone.
EXACT = "exact"
ADDITIVE = "additive"
MEMBERS_POLICIES = (EXACT, ADDITIVE)


@dataclass(frozen=True)
class Setting:
    """One chat setting as the YAML writes it: its name, the values it takes, what it means.

    How each value goes on the wire is the backends' business (``backends/fields.py``).
    """

    name: str
    #: The YAML values, the "off" / "everyone" one first.
    values: tuple[Any, ...]
    description: str


_BOOL = (False, True)
_WHO = ("everyone", "owner")

#: The six managed settings, in display order.
SETTINGS: tuple[Setting, ...] = (
    Setting("muted", _BOOL, "Mute the chat: only the owner may speak."),
    Setting("searchable", _BOOL, "The chat can be found by search."),
    Setting("join_validation", _BOOL, "Joining requires approval."),
    Setting("mention_all", _WHO, "Who may @all: everyone or owner."),
    Setting("management", _WHO, "Who may manage the chat: everyone or owner."),
    Setting("show_history", _BOOL, "New members see the chat history."),
)
SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
SETTING_NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS)
