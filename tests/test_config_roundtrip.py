"""Property: any valid config loads, dumps with dump_config and loads back to equal values."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import rules
from reconciler.config import dump_config, load_config
from reconciler.config.semantics import NOTIFY_PLACEHOLDERS
from reconciler.model import DesiredChat, Selector

TRICKY_IDS = [
    "0412345678",
    "0312340001",
    "007",
    "true",
    "null",
    "~",
    "1e3",
    "0x1F",
    "2024-01-02",
    "yes",
    "#x",
    "a:b",
    "-",
]
user_ids = st.one_of(
    st.sampled_from(TRICKY_IDS),
    st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True),
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zs", "Zl", "Zp")), min_size=1, max_size=8
    ).filter(lambda s: not s.startswith("@") and not any(c.isspace() for c in s)),
)
group_names = st.from_regex(r"[a-z0-9]([a-z0-9_-]{0,6}[a-z0-9])?", fullmatch=True)
chat_keys = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
#: One line: no controls (Cc), no format characters (Cf) and no line or paragraph separators (Zl, Zp).
chat_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp")), min_size=rules.NAME_MIN, max_size=rules.NAME_MAX
)
templates = (
    st.lists(
        st.one_of(
            st.sampled_from([f"{{{p}}}" for p in NOTIFY_PLACEHOLDERS] + ["{{", "}}", "\n", "[dtchat] "]),
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"), max_size=5),
        ),
        min_size=1,
        max_size=6,
    )
    .map("".join)
    .filter(bool)
)
setting_maps = st.fixed_dictionaries({}, optional={s.name: st.sampled_from(list(s.values)) for s in rules.SETTINGS})


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    """A valid document: groups only include earlier groups, so there are no cycles."""
    groups: dict[str, list[str]] = {}
    for name in draw(st.lists(group_names, unique=True, max_size=4)):
        refs = [f"@{g}" for g in draw(st.lists(st.sampled_from(list(groups)), max_size=2))] if groups else []
        groups[name] = draw(st.lists(user_ids, max_size=5)) + refs
    member_items = st.one_of(user_ids, st.sampled_from([f"@{g}" for g in groups])) if groups else user_ids
    chats: dict[str, dict[str, Any]] = {}
    for index, key in enumerate(draw(st.lists(chat_keys, unique=True, min_size=1, max_size=5))):
        chat: dict[str, Any] = {"name": draw(chat_names), "owner": draw(user_ids)}
        if draw(st.booleans()):
            chat["members"] = draw(st.lists(member_items, max_size=8))
        if draw(st.booleans()):
            excluded = draw(st.lists(member_items, max_size=3))
            chat["exclude"] = [item for item in excluded if chat["owner"] not in expand([item], groups)]
        if draw(st.booleans()):
            chat["notify"] = draw(templates)
        if draw(st.booleans()):
            chat["members_policy"] = draw(st.sampled_from(rules.MEMBERS_POLICIES))
        if draw(st.booleans()):
            chat["chatid"] = f"chat{index:04d}{draw(st.from_regex(r'[0-9a-f]{4}', fullmatch=True))}"
        chat_settings = draw(setting_maps)
        if chat_settings:
            chat["settings"] = chat_settings
        chats[key] = chat
    document: dict[str, Any] = {"version": 1, "groups": groups, "chats": chats}
    defaults = draw(setting_maps)
    if defaults:
        document["defaults"] = {"settings": defaults}
    if draw(st.booleans()):
        document.setdefault("defaults", {})["notify"] = draw(templates)
    return document


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    """The test's own, obviously-correct group expansion."""
    users: set[str] = set()
    for item in items:
        users |= expand(groups[item[1:]], groups) if item.startswith("@") else {item}
    return users


def expected_chats(document: dict[str, Any]) -> list[DesiredChat]:
    defaults = document.get("defaults", {}).get("settings", {})
    groups = document["groups"]
    return [
        DesiredChat(
            key=key,
            name=chat["name"],
            owner=chat["owner"],
            members=tuple(expand(chat.get("members", []), groups) - expand(chat.get("exclude", []), groups)),
            members_policy=chat.get("members_policy", "exact"),
            settings={**defaults, **chat.get("settings", {})},
            chatid=chat.get("chatid"),
            exclude=tuple(expand(chat.get("exclude", []), groups)),
            notify=chat.get("notify", document.get("defaults", {}).get("notify")),
        )
        for key, chat in sorted(document["chats"].items())
    ]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_load_dump_load_round_trips(document: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.yaml"
        source.write_text(
            yaml.dump(document, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), allow_unicode=True),
            encoding="utf-8",
        )
        first = load_config([source])
        assert list(first.chats) == expected_chats(document)

        dumped = dump_config(first.chats, document["groups"], first.defaults)
        again = Path(tmp) / "again.yaml"
        again.write_text(dumped, encoding="utf-8")
        second = load_config([again])
    assert second.chats == first.chats
    assert second.groups == first.groups
    assert second.defaults == first.defaults
    assert dumped.startswith("version: 1\n")


def test_dump_layout_is_canonical() -> None:
    chat = DesiredChat(
        key="eng-oncall",
        name="工程值班",
        owner="alice",
        members=("zoe", "0412345678", "bob"),
        members_policy="additive",
        settings={"show_history": True, "muted": True, "searchable": False, "mention_all": "owner"},
        chatid="chat0123abcd",
    )
    plain = DesiredChat(key="a-plain", name="Plain", owner="bob", members=(), settings={"searchable": False})
    assert dump_config([chat, plain], {"sre": ["bob", "@web"], "web": ["alice"]}, {"searchable": False}) == (
        "version: 1\n"
        "defaults:\n"
        "  settings:\n"
        "    searchable: false\n"
        "groups:\n"
        "  sre:\n"
        "  - '@web'\n"
        "  - bob\n"
        "  web:\n"
        "  - alice\n"
        "chats:\n"
        "  a-plain:\n"
        "    name: Plain\n"
        "    owner: bob\n"
        "    members:\n"
        "    - bob\n"
        "  eng-oncall:\n"
        "    name: 工程值班\n"
        "    owner: alice\n"
        "    members:\n"
        "    - '0412345678'\n"
        "    - alice\n"
        "    - bob\n"
        "    - zoe\n"
        "    members_policy: additive\n"
        "    chatid: chat0123abcd\n"
        "    settings:\n"
        "      muted: true\n"
        "      mention_all: owner\n"
        "      show_history: true\n"
    )


def test_dump_refuses_a_chat_that_defaults_would_change() -> None:
    chat = DesiredChat(key="c", name="C", owner="a", members=())
    with pytest.raises(ValueError, match="muted"):
        dump_config([chat], defaults={"muted": True})


def test_dump_writes_exclusions_and_the_notify_template_so_they_load_back() -> None:
    chat = DesiredChat(
        key="eng", name="工程", owner="alice", members=("bob",), exclude=("zoe", "carl"), notify="{name}: {summary}"
    )
    text = dump_config([chat])
    assert text.endswith(
        "    members:\n    - alice\n    - bob\n    exclude:\n    - carl\n    - zoe\n    notify: '{name}: {summary}'\n"
    )


def test_dump_refuses_a_chat_whose_selectors_are_not_resolved() -> None:
    """dump writes user ids only: writing such a chat would silently drop its directory members."""
    chat = DesiredChat(key="c", name="C", owner="a", members=(), selectors=(Selector("dept", 1024, True),))
    with pytest.raises(ValueError, match="selectors"):
        dump_config([chat])
