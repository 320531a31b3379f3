"""The six chat settings on the wire: dtchat's names and values ↔ DingTalk's fields and integers.

Both generations use the same field names and integers (the v1.0 API nests
them in ``managementOptions``), so this is the one place that knows them.
``rules.SETTINGS`` holds the domain side (names, YAML values, descriptions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import rules

_BOOL: Mapping[Any, int] = {False: 0, True: 1}
_WHO: Mapping[Any, int] = {"everyone": 0, "owner": 1}

#: YAML setting name -> (API field, YAML value -> API integer).
SETTING_FIELDS: Mapping[str, tuple[str, Mapping[Any, int]]] = {
    "muted": ("chatBannedType", _BOOL),
    "searchable": ("searchable", _BOOL),
    "join_validation": ("validationType", _BOOL),
    "mention_all": ("mentionAllAuthority", _WHO),
    "management": ("managementType", _WHO),
    "show_history": ("showHistoryType", _BOOL),
}
#: The API fields, in ``rules.SETTING_NAMES`` order.
API_FIELDS: tuple[str, ...] = tuple(SETTING_FIELDS[name][0] for name in rules.SETTING_NAMES)

assert tuple(SETTING_FIELDS) == rules.SETTING_NAMES, "the wire mapping must cover exactly the domain's settings"
for _name, (_field, _values) in SETTING_FIELDS.items():
    assert set(_values) == set(rules.SETTINGS_BY_NAME[_name].values), f"{_name}: wire and domain values differ"


def to_api(settings: Mapping[str, Any]) -> dict[str, int]:
    """YAML-named settings -> API fields (only those given: absent stays absent)."""
    out = {}
    for name, value in settings.items():
        field, values = SETTING_FIELDS[name]
        out[field] = values[value]
    return out


def from_api(chat_info: Mapping[str, Any]) -> dict[str, Any]:
    """API fields -> YAML-named settings. Absent (or null) fields stay absent; a value outside the
    documented 0/1 raises ValueError naming the field (an answer that is not the documented shape)."""
    out: dict[str, Any] = {}
    for name, (field, values) in SETTING_FIELDS.items():
        raw = chat_info.get(field)
        if raw is None:
            continue
        for yaml_value, api_value in values.items():
            if type(raw) is int and raw == api_value:
                out[name] = yaml_value
                break
        else:
            raise ValueError(f"{field} is {raw!r}, not 0 or 1")
    return out
