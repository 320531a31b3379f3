"""Loading valid chats-as-code: the schema agrees with rules.py, values come out right, at scale too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import rules
from reconciler.backends.fields import SETTING_FIELDS
from reconciler.backends.packing import IDS_PER_CALL
from reconciler.config import Config, ConfigError, load_config
from reconciler.config.fastcheck import UnsupportedSchema, compile_schema
from reconciler.config.schema import chats_schema, validator_class
from reconciler.config.yamlload import read_document
from reconciler.model import DesiredChat, Location

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "chats"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- the schema is the contract, and it agrees with rules.py -------------------------------------


def test_schema_settings_match_rules_exactly() -> None:
    properties = chats_schema()["$defs"]["settings"]["properties"]
    assert list(properties) == list(rules.SETTING_NAMES)
    for setting in rules.SETTINGS:
        assert properties[setting.name]["enum"] == list(setting.values)
        field = SETTING_FIELDS[setting.name][0]
        assert properties[setting.name]["description"] == f"{setting.description} DingTalk field: {field}."


def test_schema_limits_match_rules() -> None:
    defs = chats_schema()["$defs"]
    name = defs["chat"]["properties"]["name"]
    assert (name["minLength"], name["maxLength"]) == (rules.NAME_MIN, rules.NAME_MAX)
    assert tuple(defs["chat"]["properties"]["members_policy"]["enum"]) == rules.MEMBERS_POLICIES


def _subschemas(schema: Any) -> Iterator[dict]:
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _subschemas(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _subschemas(value)


def test_schema_is_strict_and_documented() -> None:
    schema = chats_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for sub in _subschemas(schema):
        if "properties" in sub:
            assert sub["additionalProperties"] is False, sub
            for name, prop in sub["properties"].items():
                assert prop.get("description"), name
    for name, definition in schema["$defs"].items():
        assert definition.get("description"), name


def test_schema_ships_in_the_package_and_at_top_level() -> None:
    assert json.loads((ROOT / "schemas" / "chats.schema.json").read_text("utf-8")) == chats_schema()


# --- the examples -------------------------------------------------------------------------------


def test_examples_validate() -> None:
    config = load_config([EXAMPLES])
    assert (
        config.summary() == f"{len(config.files)} files, {len(config.chats)} chats, {len(config.groups)} groups: valid"
    )
    assert len(config.files) >= 4 and len(config.chats) >= 6
    assert max(len(chat.members) for chat in config.chats) > IDS_PER_CALL / 5  # literal ids; selectors add more
    assert {s.kind for chat in config.chats for s in chat.selectors} == {"dept", "role", "mobile"}
    assert any(chat.exclude_selectors for chat in config.chats)
    assert any(chat.members_policy == "additive" for chat in config.chats)
    assert config.defaults and all(chat.chatid is None for chat in config.chats)
    assert any(not chat.name.isascii() for chat in config.chats) and any(chat.name.isascii() for chat in config.chats)


# --- values -------------------------------------------------------------------------------------


def test_desired_chats_expand_groups_merge_defaults_and_keep_undeclared_settings_absent(tmp_path: Path) -> None:
    write(tmp_path, "groups.yaml", "version: 1\ngroups:\n  sre: [alice, bob]\n  backend: ['@sre', dave]\n")
    write(
        tmp_path,
        "chats.yaml",
        """\
version: 1
defaults:
  settings: {searchable: false, muted: false}
chats:
  eng-oncall:
    name: 工程值班
    owner: zoe
    members: ['@backend', erin, bob, "0412345678"]
    members_policy: additive
    chatid: chat0123abcd
    settings: {muted: true, mention_all: owner}
  plain:
    name: Plain
    owner: carol
""",
    )
    config = load_config([tmp_path])
    assert config.files == (str(tmp_path / "chats.yaml"), str(tmp_path / "groups.yaml"))
    assert [chat.key for chat in config.chats] == ["eng-oncall", "plain"]
    assert dict(config.groups) == {"backend": ("alice", "bob", "dave"), "sre": ("alice", "bob")}
    assert config.defaults == {"searchable": False, "muted": False}
    assert config.chat("eng-oncall") == DesiredChat(
        key="eng-oncall",
        name="工程值班",
        owner="zoe",
        members=("0412345678", "alice", "bob", "dave", "erin", "zoe"),
        members_policy="additive",
        settings={"muted": True, "mention_all": "owner", "searchable": False},
        chatid="chat0123abcd",
    )
    plain = config.chat("plain")
    assert plain.members == ("carol",) and plain.members_policy == "exact" and plain.chatid is None
    assert dict(plain.settings) == {"muted": False, "searchable": False}  # nothing else is managed
    assert not plain.needs_directory and plain.notify is None and plain.exclude == ()
    with pytest.raises(KeyError):
        config.chat("nope")


def test_folders_are_read_recursively_sorted_skipping_hidden_and_each_file_once(tmp_path: Path) -> None:
    write(tmp_path, "b/z.yml", "version: 1\ngroups:\n  z: [z]\n")
    write(tmp_path, "a.yaml", "version: 1\ngroups:\n  a: [a]\n")
    write(tmp_path, ".hidden/x.yaml", "not: valid")
    write(tmp_path, "notes.txt", "ignored")
    config = load_config([tmp_path, tmp_path / "a.yaml"])
    assert config.files == (str(tmp_path / "a.yaml"), str(tmp_path / "b" / "z.yml"))
    assert config.summary() == "2 files, 0 chats, 2 groups: valid"


def test_single_counts_are_singular(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "version: 1\ngroups: {g: [x]}\nchats:\n  c:\n    name: C\n    owner: x\n")
    assert load_config([str(path)]).summary() == "1 file, 1 chat, 1 group: valid"
    assert load_config(str(path)).files == (str(path),)  # a bare path is one path, not its characters


def test_yaml_features_load_as_pyyaml_safe_load_would(tmp_path: Path) -> None:
    text = """\
version: 1
base: &base {name: Base, owner: alice}
list: &people [a, "b", 'c']
chats:
  one:
    <<: *base
    name: One
  two:
    <<: {owner: bob, members: *people}
    name: Base
  three: {name: !!str 2024, owner: "0412345678", members: [~, null, yes, 0o17, 017, 1_000, 1e3, .inf, 2024-01-02]}
  four:
    name: |
      multi
      line
    owner: >-
      folded
      text
"""
    path = write(tmp_path, "a.yaml", text)
    document, issues = read_document(path, "a.yaml")
    assert issues == [] and document is not None
    assert document.data == yaml.load(text, Loader=yaml.SafeLoader)
    # A list of merges: earlier mappings win (YAML merge spec; PyYAML 6.0.4 changed its own order, so not compared).
    listed, _ = read_document(
        write(tmp_path, "b.yaml", "x: &a {k: 1}\ny: &b {k: 2, j: 3}\nz:\n  <<: [*a, *b]\n"), "b.yaml"
    )
    assert listed is not None and listed.data["z"] == {"k": 1, "j": 3}
    assert document.locate(("chats", "two"), key=True) == Location("a.yaml", 8, 3)
    assert document.locate(("chats", "three", "members", 8)) == Location("a.yaml", 11, 103)
    assert document.locate(("chats", "two", "owner")) == Location("a.yaml", 9, 5)  # merged: nearest place written


# --- the fast validity check agrees with jsonschema -----------------------------------------------


SAMPLES = [
    {"version": 1},
    {"version": True},
    {"version": 1.0},
    {"version": "1"},
    [],
    None,
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "members": ["b", "@g"]}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "members": ["b", 1]}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "members": ["b", ["x"]]}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "members": "b"}}},
    {"version": 1, "chats": {"Bad": {"name": "N", "owner": "a"}}},
    {"version": 1, "chats": {1: {"name": "N", "owner": "a"}}},
    {"version": 1, "chats": {"ok": {"name": "", "owner": "a"}}},
    {"version": 1, "chats": {"ok": {"name": "x" * 21, "owner": "a"}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "@a"}}},
    {"version": 1, "chats": {"ok": {"name": "N"}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "settings": {"muted": 1}}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "settings": {"muted": True, "mention_all": "owner"}}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "settings": {"mention_all": True}}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "extra": 1}}},
    {"version": 1, "groups": {"g": ["a", "@h"], "h": []}, "defaults": {"settings": {"searchable": False}}},
    {"version": 1, "groups": {"g": ["a b"]}},
    {"version": 1, "groups": {"G": ["a"]}},
    {"version": 1, "defaults": {"other": 1}},
    # directory selectors, exclusions, notify templates
    {"version": 1, "groups": {"g": [{"dept": 1}, "a", {"role": 2}, {"mobile": "+86 138-0000 0000"}]}},
    {"version": 1, "groups": {"g": [{"dept": 1, "recursive": True}, {"dept": 1.0, "recursive": False}]}},
    {"version": 1, "groups": {"g": [{"dept": 0}]}},
    {"version": 1, "groups": {"g": [{"dept": -3}]}},
    {"version": 1, "groups": {"g": [{"dept": 1.5}]}},
    {"version": 1, "groups": {"g": [{"dept": True}]}},
    {"version": 1, "groups": {"g": [{"dept": "1"}]}},
    {"version": 1, "groups": {"g": [{"dept": 2**63}]}},
    {"version": 1, "groups": {"g": [{"dpt": 1}]}},
    {"version": 1, "groups": {"g": [{}]}},
    {"version": 1, "groups": {"g": [{"dept": 1, "role": 2}]}},
    {"version": 1, "groups": {"g": [{"role": 2, "recursive": True}]}},
    {"version": 1, "groups": {"g": [{"recursive": True}]}},
    {"version": 1, "groups": {"g": [{"mobile": 13800000000}]}},
    {"version": 1, "groups": {"g": [{"mobile": "1380"}]}},
    {"version": 1, "groups": {"g": [{"mobile": "138x0000000"}]}},
    {"version": 1, "groups": {"g": [{"mobile": "13800000000\n"}]}},
    {"version": 1, "groups": {"g": [{"role": 1, "recursive": "yes"}]}},
    {"version": 1, "groups": {"g": ["a", ["b"]]}},
    {"version": 1, "groups": {"g": ["a", {"dept": 1}, "a b"]}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "exclude": ["b", "@g", {"role": 1}]}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "exclude": "b"}}},
    {"version": 1, "chats": {"ok": {"name": "N\nM", "owner": "a"}}},
    {"version": 1, "chats": {"ok": {"name": "N\t", "owner": "a"}}},
    {"version": 1, "chats": {"ok": {"name": "N\u2028", "owner": "a"}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a\n"}}},
    {"version": 1, "chats": {"ok\n": {"name": "N", "owner": "a"}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "notify": "{name}"}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "notify": ""}}},
    {"version": 1, "chats": {"ok": {"name": "N", "owner": "a", "notify": "x" * 501}}},
    {"version": 1, "defaults": {"notify": "{summary}", "settings": {}}},
    {"version": 1, "defaults": {"notify": 1}},
]


@pytest.mark.parametrize("document", SAMPLES)
def test_fast_check_agrees_with_jsonschema(document: Any) -> None:
    schema = chats_schema()
    is_valid = compile_schema(schema)
    expected = validator_class()(schema).is_valid(document)
    assert is_valid(document) is expected
    assert is_valid(document) is expected  # again, now with remembered strings


@pytest.mark.parametrize(
    "value, valid",
    [("alice", True), ("alice\n", False), ("a$b", True), ("a b", False)],
)
def test_patterns_end_where_the_string_ends_as_in_ecma_262(value: str, valid: bool) -> None:
    """Python's ``$`` also matches before a final newline; editors (ECMA-262) and dtchat do not."""
    document = {"version": 1, "chats": {"ok": {"name": "N", "owner": value}}}
    assert compile_schema(chats_schema())(document) is valid
    assert validator_class()(chats_schema()).is_valid(document) is valid


MINI_SCHEMAS = [
    {"anyOf": [{"type": "string", "pattern": "^a"}, {"type": "integer", "minimum": 2}]},
    {"oneOf": [{"type": "integer"}, {"type": "number", "maximum": 3}]},
    {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
    {"type": "object", "dependentRequired": {"a": ["b", "c"]}},
    {"exclusiveMinimum": 1, "exclusiveMaximum": 4},
    {"type": "array", "items": {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "object", "required": ["k"]}]}},
    {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": ["string", "null"]}]}},
]
_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2, 5), st.floats(-2, 5), st.text("abc", max_size=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abck"), inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MINI_SCHEMAS), _VALUES)
def test_fast_check_agrees_with_jsonschema_on_the_combining_keywords(schema: dict, value: Any) -> None:
    assert compile_schema(schema)(value) is jsonschema.Draft202012Validator(schema).is_valid(value)


def test_fast_check_refuses_keywords_it_does_not_know() -> None:
    with pytest.raises(UnsupportedSchema):
        compile_schema({"type": "object", "patternProperties": {"x": {}}, "additionalProperties": False})


# --- scale (its speed is measured by bench/bench_config.py, not here) ------------------------------


def test_two_thousand_chats_of_two_hundred_members_load_exactly(tmp_path: Path) -> None:
    expected: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for f in range(10):
        lines = ["version: 1", "chats:"]
        for c in range(f * 200, (f + 1) * 200):
            ids = [f"u{(c * 37 + i) % 50000:06d}" for i in range(199)]
            lines += [f"  chat-{c}:", f"    name: 群聊 {c}", f"    owner: u{c}", "    members:"]
            lines += [f"      - {userid}" for userid in ids]
            expected[f"chat-{c}"] = (f"群聊 {c}", f"u{c}", tuple(sorted({*ids, f"u{c}"})))
        write(tmp_path, f"{f}.yaml", "\n".join(lines) + "\n")
    config = load_config([tmp_path])
    assert config.files == tuple(str(tmp_path / f"{f}.yaml") for f in range(10))
    assert [chat.key for chat in config.chats] == sorted(expected)
    assert {chat.key: (chat.name, chat.owner, chat.members) for chat in config.chats} == expected
    assert all(
        len(chat.members) == 200
        and chat.members_policy == "exact"
        and not chat.settings
        and chat.chatid is None
        and not chat.selectors
        for chat in config.chats
    )


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config([EXAMPLES])
    assert isinstance(config, Config)
    with pytest.raises(TypeError):
        config.groups["x"] = ("a",)  # type: ignore[index]
    with pytest.raises(TypeError):
        config.defaults["muted"] = True  # type: ignore[index]


def test_config_error_is_an_exception_with_issues() -> None:
    error = ConfigError([])
    assert isinstance(error, Exception) and error.issues == () and str(error) == ""


# --- the fast paths keep the contract -------------------------------------------------------------


@pytest.mark.parametrize(
    "members, expected",
    [
        (("c", "a", "b", "a"), ("a", "b", "c", "o")),  # unsorted, duplicated, owner missing
        (("a", "o", "o"), ("a", "o")),  # sorted but duplicated
        (("a", "b"), ("a", "b", "o")),  # sorted, owner missing
        (["o", "a"], ("a", "o")),  # a list
        ((), ("o",)),
    ],
)
def test_desired_chat_members_are_always_sorted_deduplicated_with_the_owner(members: Any, expected: tuple) -> None:
    chat = DesiredChat("k", "N", "o", members)
    assert chat.members == expected and type(chat.members) is tuple


def test_desired_chat_keeps_members_that_are_already_in_order() -> None:
    members = ("a", "b", "o", "z")
    assert DesiredChat("k", "N", "o", members).members is members


def _member_document(members: list[Any]) -> dict[str, Any]:
    chat = {"name": "N", "owner": "o", "members": members}
    return {"version": 1, "groups": {"g": members[: len(members) // 2]}, "chats": {"c": chat}}


_SELECTOR = st.dictionaries(
    st.sampled_from(["dept", "role", "mobile", "recursive", "dpt"]),
    st.one_of(st.integers(-1, 3), st.booleans(), st.sampled_from(["13800000000", "1380", "x"])),
    max_size=3,
)
_MEMBER = st.one_of(st.text("ab @\n\t-_.9", max_size=4), st.integers(0, 3), st.booleans(), _SELECTOR)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_MEMBER, max_size=6), min_size=1, max_size=4))
def test_fast_check_agrees_with_jsonschema_on_member_lists(lists: list[list[Any]]) -> None:
    """The bulk check of new strings, and the memory of strings that passed, answer as jsonschema does."""
    schema = chats_schema()
    is_valid = compile_schema(schema)  # one predicate for all documents: its memory is exercised too
    validator = validator_class()(schema)
    for members in lists:
        document = _member_document(members)
        assert is_valid(document) is validator.is_valid(document), members
