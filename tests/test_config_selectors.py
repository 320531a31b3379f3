"""Directory selectors, ``exclude:``, notify templates and editor support: what loads into DesiredChat."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest

from reconciler.config import ConfigError, load_config
from reconciler.config.schema import chats_schema, validator_class
from reconciler.model import DesiredChat, Selector
from reconciler.rules import MEMBER_CAP

ROOT = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, text: str, name: str = "chats.yaml"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config([path])


RND = """\
version: 1
groups:
  oncall: [{role: 3001}]                 # a group of selectors only
  interns: [{dept: 1099}, intern-zed]
chats:
  rnd:
    name: 研发部
    owner: gaofeng
    members:
      - {dept: 1024, recursive: true}    # 研发部 and its sub-teams
      - "@oncall"
      - mobile: "+86 138 0000 0000"      # a block mapping works too
      - liuyang
      - intern-zed
      - {role: 3001}                     # also through @oncall: once
    exclude: ["@interns", carl, {dept: 1024, recursive: false}]
"""


def test_selectors_groups_and_exclude_load_into_the_model(tmp_path: Path) -> None:
    config = load(tmp_path, RND)
    assert config.chat("rnd") == DesiredChat(
        key="rnd",
        name="研发部",
        owner="gaofeng",
        members=("gaofeng", "liuyang"),  # literal ids, minus the excluded intern-zed
        selectors=(Selector("dept", 1024, True), Selector("mobile", "+86 138 0000 0000"), Selector("role", 3001)),
        exclude=("carl", "intern-zed"),
        exclude_selectors=(Selector("dept", 1024), Selector("dept", 1099)),
    )
    assert config.chat("rnd").needs_directory
    assert dict(config.groups) == {"interns": ("intern-zed",), "oncall": ()}


def test_selectors_are_deduplicated_and_sorted_whichever_way_they_are_written(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        version: 1
        groups:
          a: [{dept: 7}, "@b"]
          b: [{dept: 7.0, recursive: false}, {role: 2}]
        chats:
          c:
            name: C
            owner: o
            members: [{role: 2}, "@a", {dept: 7}, {mobile: "13800000000"}, {dept: 10}]
        """,
    )
    chat = config.chat("c")
    assert chat.selectors == (
        Selector("dept", 10),
        Selector("dept", 7),
        Selector("mobile", "13800000000"),
        Selector("role", 2),
    )
    assert all(type(s.value) is int for s in chat.selectors if s.kind != "mobile")
    assert chat.members == ("o",) and chat.exclude == () and chat.exclude_selectors == ()


def test_a_chat_of_selectors_only_is_valid_and_the_owner_is_a_member(tmp_path: Path) -> None:
    config = load(tmp_path, "version: 1\nchats:\n  c:\n    name: C\n    owner: o\n    members: [{dept: 1}]\n")
    assert config.chat("c").members == ("o",) and config.chat("c").selectors == (Selector("dept", 1),)


def test_exclude_takes_literal_ids_out_of_members_and_keeps_them_for_after_resolution(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        version: 1
        groups:
          team: [ann, bob, cat]
        chats:
          c:
            name: C
            owner: ann
            members: ["@team", dan]
            exclude: [bob, eve]
        """,
    )
    chat = config.chat("c")
    assert chat.members == ("ann", "cat", "dan")
    assert chat.exclude == ("bob", "eve") and not chat.needs_directory


def test_only_excluded_selectors_still_need_the_directory(tmp_path: Path) -> None:
    config = load(tmp_path, "version: 1\nchats:\n  c:\n    name: C\n    owner: o\n    exclude: [{role: 9}]\n")
    assert config.chat("c").exclude_selectors == (Selector("role", 9),) and config.chat("c").needs_directory


def test_the_member_cap_waits_for_resolution_when_a_chat_has_selectors(tmp_path: Path) -> None:
    many = ", ".join(f"u{i}" for i in range(MEMBER_CAP + 5))
    config = load(
        tmp_path,
        f"""\
        version: 1
        groups:
          many: [{many}]
        chats:
          with-selector:
            name: A
            owner: o
            members: ["@many", {{dept: 1}}]
          excluded-down-to-the-cap:
            name: B
            owner: u0
            members: ["@many"]
            exclude: [u1, u2, u3, u4, u5]
        """,
    )
    assert len(config.chat("with-selector").members) == MEMBER_CAP + 6  # checked at plan time
    assert len(config.chat("excluded-down-to-the-cap").members) == MEMBER_CAP


def test_owner_excluded_by_id_is_an_error_even_when_listed_as_a_member(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "version: 1\nchats:\n  c:\n    name: C\n    owner: o\n    members: [o]\n    exclude: [x, o]\n")
    assert [str(issue).split(": ", 1)[1] for issue in caught.value.issues] == ["the owner cannot be excluded"]
    assert (caught.value.issues[0].location.line, caught.value.issues[0].location.column) == (7, 18)


# --- notify templates ---------------------------------------------------------------------------


def test_notify_template_comes_from_the_chat_else_the_defaults_else_none(tmp_path: Path) -> None:
    load(tmp_path, "version: 1\ndefaults:\n  notify: '[dtchat] {name}: {summary}'\n", "defaults.yaml")
    load(
        tmp_path,
        """\
        version: 1
        chats:
          own:
            name: Own
            owner: o
            notify: |-
              {name} 成员变动：+{added_count} -{removed_count}
              加入：{added}；离开：{removed} {{dtchat}} {key}
          inherited:
            name: Inherited
            owner: o
        """,
    )
    config = load_config([tmp_path])
    assert (
        config.chat("own").notify
        == "{name} 成员变动：+{added_count} -{removed_count}\n加入：{added}；离开：{removed} {{dtchat}} {key}"
    )
    assert config.chat("inherited").notify == "[dtchat] {name}: {summary}"
    (tmp_path / "defaults.yaml").unlink()
    assert load_config([tmp_path]).chat("inherited").notify is None


def test_a_template_of_500_characters_is_accepted(tmp_path: Path) -> None:
    template = "{summary}" + "。" * 491
    config = load(tmp_path, f"version: 1\nchats:\n  c:\n    name: C\n    owner: o\n    notify: '{template}'\n")
    assert len(config.chat("c").notify or "") == 500


# --- editor support -----------------------------------------------------------------------------


def test_the_schema_has_a_stable_urn_id_that_resolves_its_own_references() -> None:
    schema = chats_schema()
    assert schema["$id"] == "urn:dtchat:schema:chats:1"
    document = {"version": 1, "chats": {"c": {"name": "C", "owner": "o", "members": [{"dept": 1}, "@g"]}}}
    assert jsonschema.Draft202012Validator(schema).is_valid(document)
    assert not validator_class()(schema).is_valid({**document, "groups": {"g": [{"dpt": 1}]}})


MODELINE = "# yaml-language-server: $schema=../../schemas/chats.schema.json"


def test_the_documented_modeline_is_accepted_and_points_at_the_schema_from_the_examples(tmp_path: Path) -> None:
    assert MODELINE in (ROOT / "docs" / "yaml.md").read_text("utf-8")
    target = ROOT / "examples" / "chats" / MODELINE.split("=", 1)[1]
    assert json.loads(target.read_text("utf-8"))["$id"] == "urn:dtchat:schema:chats:1"
    config = load(tmp_path, MODELINE + "\nversion: 1\nchats:\n  c: {name: C, owner: o}\n", "examples/chats/a.yaml")
    assert [chat.key for chat in config.chats] == ["c"]


def test_every_complete_example_in_the_yaml_docs_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "yaml.md").read_text("utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    complete = [block for block in blocks if re.search(r"^version: 1\b", block, re.MULTILINE)]
    assert len(complete) >= 3
    for index, block in enumerate(complete):
        load(tmp_path / str(index), block)


def test_desired_chat_sorts_and_deduplicates_selectors_and_exclusions_whoever_builds_it() -> None:
    """The resolver and the planner compare chats: two equal configurations must give equal values."""
    dept, role = Selector("dept", 5, True), Selector("role", 1)
    chat = DesiredChat("k", "N", "o", ("o",), selectors=[role, dept, role], exclude=["z", "a", "z"])  # type: ignore[arg-type]
    assert chat.selectors == (dept, role) and chat.exclude == ("a", "z") and chat.exclude_selectors == ()
    assert chat == DesiredChat("k", "N", "o", ("o",), selectors=(dept, role), exclude=("a", "z"))
