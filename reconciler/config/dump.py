"""Desired chats back to YAML, in the canonical layout ``load_config`` reads back unchanged.

Used by ``dtchat dump`` (live chats -> YAML to adopt) and to normalise
files. Layout: ``version: 1`` first, chats sorted by key, members sorted
one per line (clean diffs), ``exclude`` when some, settings in
:data:`reconciler.rules.SETTINGS` order, ``members_policy`` only when not
the default, ``chatid`` when pinned, ``notify`` when set, non-ASCII names
kept readable.

Members are written as literal user ids only: a chat whose directory
selectors are not resolved yet cannot be written without changing what it means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from ..model import DesiredChat
from ..rules import EXACT, SETTING_NAMES

_DEFAULT_POLICY = EXACT


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # base chosen at import (libyaml or not)
    """Quotes all-digit strings too: YAML 1.2 tools would read ``0412345678`` as a number."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value.isascii() and value.isdigit() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_config(
    chats: Iterable[DesiredChat],
    groups: Mapping[str, Sequence[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> str:
    """YAML text for ``chats`` (and optional ``groups`` and ``defaults.settings``).

    A chat's settings that equal ``defaults`` are left to the defaults.
    Raises ValueError for a chat that leaves unmanaged a setting
    ``defaults`` declares (loading would make it managed), and for a chat
    with unresolved directory selectors (only user ids are written).
    """
    defaults = dict(defaults or {})
    document: dict[str, Any] = {"version": 1}
    if defaults:
        document["defaults"] = {"settings": _ordered_settings(defaults)}
    if groups:
        document["groups"] = {name: sorted(groups[name]) for name in sorted(groups)}
    document["chats"] = {chat.key: _chat(chat, defaults) for chat in sorted(chats, key=lambda c: c.key)}
    return yaml.dump(
        document,
        Dumper=_Dumper,
        allow_unicode=True,
        sort_keys=False,
        default_flow_style=False,
        width=1_000_000,
    )


def _chat(chat: DesiredChat, defaults: Mapping[str, Any]) -> dict[str, Any]:
    if chat.needs_directory:
        raise ValueError(f"chat `{chat.key}` has directory selectors: resolve them to user ids before dumping it")
    unmanaged = sorted(defaults.keys() - chat.settings.keys())
    if unmanaged:
        raise ValueError(
            f"chat `{chat.key}` leaves {', '.join(unmanaged)} unmanaged, but defaults declare it: "
            "dump without those defaults"
        )
    body: dict[str, Any] = {"name": chat.name, "owner": chat.owner, "members": list(chat.members)}
    if chat.exclude:
        body["exclude"] = list(chat.exclude)
    if chat.members_policy != _DEFAULT_POLICY:
        body["members_policy"] = chat.members_policy
    if chat.chatid is not None:
        body["chatid"] = chat.chatid
    if chat.notify is not None:
        body["notify"] = chat.notify
    own = {name: value for name, value in chat.settings.items() if name not in defaults or defaults[name] != value}
    if own:
        body["settings"] = _ordered_settings(own)
    return body


def _ordered_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {name: settings[name] for name in SETTING_NAMES if name in settings}
