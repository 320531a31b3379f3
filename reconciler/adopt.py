"""``dtchat dump``: turn live chats into desired chats, so existing chats can be brought under management.

The YAML it produces pins each ``chatid`` and declares every setting, so a
``plan`` right after shows no change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .model import DesiredChat, LiveChat

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(name: str, chatid: str) -> str:
    """A key from the chat name (ASCII letters and digits); from the chatid when nothing is left."""
    slug = _NOT_SLUG.sub("-", name.lower()).strip("-")
    return slug or "chat-" + _NOT_SLUG.sub("", chatid.lower())[-8:]


def desired_from_live(chats: Iterable[LiveChat]) -> list[DesiredChat]:
    """One DesiredChat per live chat, keys unique (``-2``, ``-3`` … on collisions), sorted by key."""
    taken: set[str] = set()
    out: list[DesiredChat] = []
    for live in sorted(chats, key=lambda c: c.chatid):
        base = slugify(live.name, live.chatid)
        key, n = base, 1
        while key in taken:
            n += 1
            key = f"{base}-{n}"
        taken.add(key)
        out.append(
            DesiredChat(
                key=key,
                name=live.name,
                owner=live.owner,
                members=live.members,
                settings=dict(live.settings),
                chatid=live.chatid,
            )
        )
    return sorted(out, key=lambda c: c.key)
