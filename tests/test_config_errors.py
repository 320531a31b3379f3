"""Every invalid input gives an exact ``file:line:col: message``, all of them at once, never a traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reconciler.config import ConfigError, ConfigIssue, load_config
from reconciler.model import Location
from reconciler.rules import MEMBER_CAP, NAME_MAX


def errors_of(tmp_path: Path, files: dict[str, str | bytes], paths: list[str] | None = None) -> list[str]:
    """Write ``files`` under tmp_path, load them, return the error lines with tmp_path shown as ``.``."""
    for name, content in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(textwrap.dedent(content), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config([tmp_path / p for p in (paths or sorted(files))])
    return [line.replace(str(tmp_path), ".") for line in str(caught.value).splitlines()]


CHAT = """\
version: 1
chats:
  eng:
    name: Eng
    owner: alice
"""

CASES = {
    "syntax error": (
        {"a.yaml": "version: 1\nchats:\n  eng: [a\n  b: c\n"},
        ["./a.yaml:4:4: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence on line 3)"],
    ),
    "unknown key with suggestion": (
        {"a.yaml": CHAT + "    memebers: [bob]\n"},
        ["./a.yaml:6:5: unknown key `memebers`; did you mean `members`?"],
    ),
    "unknown top-level key without a close match": (
        {"a.yaml": CHAT + "zzz: 1\n"},
        ["./a.yaml:6:1: unknown key `zzz`; expected one of: version, defaults, groups, chats"],
    ),
    "numeric user id": (
        {"a.yaml": CHAT.replace("alice", "0412345670")},
        [
            "./a.yaml:5:12: user id 0412345670 is read as a number, but DingTalk user ids are strings "
            '(numeric ones often start with zeros that YAML drops): quote it: "0412345670"'
        ],
    ),
    "numeric member": (
        {"a.yaml": CHAT + "    members: [bob, 12345]\n"},
        [
            "./a.yaml:6:20: member 12345 is read as a number, but DingTalk user ids are strings "
            '(numeric ones often start with zeros that YAML drops): quote it: "12345"'
        ],
    ),
    "wrong type for members": (
        {"a.yaml": CHAT + "    members: bob\n"},
        ["./a.yaml:6:14: `members` must be a list, not a string"],
    ),
    "name as a number": (
        {"a.yaml": CHAT.replace("name: Eng", "name: 2024")},
        ['./a.yaml:4:11: `name` must be a string, not a number: quote it: "2024"'],
    ),
    "name too long": (
        {"a.yaml": CHAT.replace("name: Eng", "name: " + "工" * (NAME_MAX + 1))},
        [f"./a.yaml:4:11: `name` has {NAME_MAX + 1} characters; it must have 1 to {NAME_MAX} characters"],
    ),
    "name empty": (
        {"a.yaml": CHAT.replace("name: Eng", 'name: ""')},
        [f"./a.yaml:4:11: `name` is empty; it must have 1 to {NAME_MAX} characters"],
    ),
    "missing owner": (
        {"a.yaml": "version: 1\nchats:\n  eng:\n    name: Eng\n"},
        ["./a.yaml:3:3: missing required key `owner` in `eng`"],
    ),
    "bad slug": (
        {"a.yaml": CHAT.replace("  eng:", "  Eng_Oncall:")},
        [
            "./a.yaml:3:3: chat key `Eng_Oncall` is not valid: a chat key must be a lowercase slug: "
            "a-z, 0-9 and '-', starting and ending with a letter or digit"
        ],
    ),
    "group as owner": (
        {"a.yaml": CHAT.replace("owner: alice", 'owner: "@sre"')},
        [
            "./a.yaml:5:12: user id `@sre` is not valid: a userId has no spaces and does not start with '@' "
            "(a group cannot own a chat)"
        ],
    ),
    "bad setting value": (
        {"a.yaml": CHAT + "    settings:\n      muted: maybe\n      mention_all: yes\n"},
        [
            "./a.yaml:7:14: `muted` must be one of: false, true (got `maybe`)",
            "./a.yaml:8:20: `mention_all` must be one of: everyone, owner (got `yes`)",
        ],
    ),
    "bad members_policy": (
        {"a.yaml": CHAT + "    members_policy: strict\n"},
        ["./a.yaml:6:21: `members_policy` must be one of: exact, additive (got `strict`)"],
    ),
    "wrong version": (
        {"a.yaml": CHAT.replace("version: 1", "version: 2")},
        ["./a.yaml:1:10: `version` must be 1 (got `2`)"],
    ),
    "missing version": (
        {"a.yaml": "groups:\n  sre: [alice]\n"},
        ["./a.yaml:1:1: missing required key `version`"],
    ),
    f"{MEMBER_CAP + 1} members after expansion": (
        {
            "a.yaml": "version: 1\ngroups:\n  big: ["
            + ", ".join(f"u{i}" for i in range(MEMBER_CAP))
            + "]\nchats:\n  eng:\n    name: Eng\n    owner: alice\n    members: ['@big', u1]\n"
        },
        [
            f"./a.yaml:8:5: chat `eng` has {MEMBER_CAP + 1} members after expanding groups (owner included); "
            f"the limit is {MEMBER_CAP}"
        ],
    ),
    "duplicate key in one mapping": (
        {"a.yaml": CHAT + "    owner: bob\n"},
        ["./a.yaml:6:5: duplicate key `owner`: already defined on line 5"],
    ),
    "duplicate chat key in one file": (
        {"a.yaml": CHAT + "  eng:\n    name: Eng 2\n    owner: bob\n"},
        ["./a.yaml:6:3: duplicate key `eng`: already defined on line 3"],
    ),
    "chat defined in two files": (
        {"a.yaml": CHAT, "b.yaml": "\n" + CHAT},
        ["./b.yaml:4:3: chat `eng` is defined twice: first at ./a.yaml:3:3"],
    ),
    "group defined in two files": (
        {"a.yaml": "version: 1\ngroups:\n  sre: [a]\n", "b.yaml": "version: 1\ngroups:\n  web: [b]\n  sre: [c]\n"},
        ["./b.yaml:4:3: group `sre` is defined twice: first at ./a.yaml:3:3"],
    ),
    "chatid pinned twice": (
        {"a.yaml": CHAT + "    chatid: chat1\n  ops:\n    name: Ops\n    owner: bob\n    chatid: chat1\n"},
        ["./a.yaml:10:13: chatid `chat1` is pinned twice: also by chat `eng` at ./a.yaml:6:13"],
    ),
    "default setting defined in two files": (
        {
            "a.yaml": "version: 1\ndefaults:\n  settings: {muted: true}\n",
            "b.yaml": "version: 1\ndefaults:\n  settings:\n    searchable: true\n    muted: true\n",
        },
        ["./b.yaml:5:5: default setting `muted` is defined twice: first at ./a.yaml:3:14"],
    ),
    "undefined group": (
        {"a.yaml": "version: 1\ngroups:\n  sre: [a]\n" + CHAT[11:] + "    members: [b, '@sr']\n"},
        ["./a.yaml:8:18: undefined group `@sr`; did you mean `@sre`?"],
    ),
    "undefined group without a close name": (
        {"a.yaml": CHAT + "    members: ['@zzz']\n"},
        ["./a.yaml:6:15: undefined group `@zzz`; define it under `groups:`"],
    ),
    "group cycle": (
        {"a.yaml": "version: 1\ngroups:\n  c: ['@a']\n  b: [x, '@c']\n  a: ['@b']\n"},
        ["./a.yaml:5:7: group cycle: a -> b -> c -> a"],
    ),
    "group including itself": (
        {"a.yaml": "version: 1\ngroups:\n  a: [x, '@a']\n"},
        ["./a.yaml:3:10: group cycle: a -> a"],
    ),
    "empty file": ({"a.yaml": ""}, ["./a.yaml:1:1: the file is empty; it needs at least `version: 1`"]),
    "comments only": ({"a.yaml": "# nothing\n"}, ["./a.yaml:1:1: the file is empty; it needs at least `version: 1`"]),
    "top level is a list": (
        {"a.yaml": "- version: 1\n"},
        ["./a.yaml:1:1: the top level must be a mapping (version, defaults, groups, chats), not a list"],
    ),
    "not UTF-8": (
        {"a.yaml": b"version: 1\nchats:\n  eng:\n    name: \xb9\xa4\xb3\xcc\n    owner: alice\n"},
        ["./a.yaml:4:11: the file is not valid UTF-8 (byte 0xb9 at byte offset 35); save it as UTF-8"],
    ),
    "control character": (
        {"a.yaml": CHAT.replace("name: Eng", "name: 工\x07")},
        ["./a.yaml:4:12: invalid YAML: control character U+0007 is not allowed"],
    ),
    "two documents": (
        {"a.yaml": CHAT + "---\nversion: 1\n"},
        ["./a.yaml:6:1: a second YAML document (`---`): put one document in each file"],
    ),
    "unsupported tag": (
        {"a.yaml": CHAT + "    members: !!set {bob}\n"},
        ["./a.yaml:6:14: unsupported YAML tag `tag:yaml.org,2002:set`: use a plain mapping or list"],
    ),
    "undefined alias": (
        {"a.yaml": CHAT + "    members: *team\n"},
        [
            "./a.yaml:6:14: alias `*team` refers to no anchor defined before it "
            "(or to a mapping or list that contains it)"
        ],
    ),
    # --- hostile input: one located, one-line error each (issue 11) ---
    "name with a newline": (
        {"a.yaml": CHAT.replace("name: Eng", 'name: "Eng\\nOps"')},
        [
            './a.yaml:4:11: `name` "Eng\\nOps" is not valid: a chat name is one line of text: '
            "no newlines, tabs or other control characters"
        ],
    ),
    "name as a block scalar (it ends with a newline)": (
        {"a.yaml": CHAT.replace("name: Eng", "name: |\n      Eng")},
        [
            './a.yaml:4:11: `name` "Eng\\n" is not valid: a chat name is one line of text: '
            "no newlines, tabs or other control characters"
        ],
    ),
    "name with a tab": (
        {"a.yaml": CHAT.replace("name: Eng", 'name: "E\\tng"')},
        [
            './a.yaml:4:11: `name` "E\\tng" is not valid: a chat name is one line of text: no newlines, tabs or other control characters'
        ],
    ),
    "user id with a trailing newline": (
        {"a.yaml": CHAT.replace("owner: alice", 'owner: "alice\\n"')},
        [
            "./a.yaml:5:12: user id \"alice\\n\" is not valid: a userId has no spaces and does not start with '@' "
            "(a group cannot own a chat)"
        ],
    ),
    "mis-indented chat": (
        {"a.yaml": "version: 1\nchats:\n  eng:\n  name: 工程\n  owner: alice\n"},
        ["./a.yaml:3:3: chat `eng` is empty; its fields name, owner must be indented under it"],
    ),
    "mis-indented chat followed by a good one": (
        {
            "a.yaml": "version: 1\nchats:\n  eng:\n  name: 工程\n  owner: alice\n  members: [bob]\n"
            "  members_policy: additive\n  settings: {muted: true}\n  ops:\n    name: Ops\n    owner: bob\n"
            "    members: [1]\n"
        },
        [
            "./a.yaml:3:3: chat `eng` is empty; its fields name, owner, members, members_policy, settings "
            "must be indented under it",
            "./a.yaml:12:15: member 1 is read as a number, but DingTalk user ids are strings "
            '(numeric ones often start with zeros that YAML drops): quote it: "1"',
        ],
    ),
    "empty chat": (
        {"a.yaml": "version: 1\nchats:\n  eng:\n  ops:\n    name: Ops\n    owner: bob\n"},
        ["./a.yaml:3:3: chat `eng` is empty; it needs at least `name` and `owner`"],
    ),
    "misspelled required key: one error, not two": (
        {"a.yaml": CHAT.replace("name: Eng", "nmae: Eng")},
        ["./a.yaml:4:5: unknown key `nmae`; did you mean `name`?"],
    ),
    # --- directory selectors (issue 12) ---
    "unknown selector key": (
        {"a.yaml": CHAT + "    members: [{dpt: 1024}]\n"},
        ["./a.yaml:6:16: unknown key `dpt`; did you mean `dept`?"],
    ),
    "unknown selector key in a block mapping": (
        {"a.yaml": CHAT + "    members:\n      - bob\n      - rol: 3001\n"},
        ["./a.yaml:8:9: unknown key `rol`; did you mean `role`?"],
    ),
    "selector with two kinds": (
        {"a.yaml": CHAT + "    members: [bob, {dept: 1, role: 2}]\n"},
        ["./a.yaml:6:20: a selector takes exactly one of `dept`, `role` or `mobile`, not both `dept` and `role`"],
    ),
    "selector with no kind": (
        {"a.yaml": CHAT + "    members: [{}]\n"},
        ["./a.yaml:6:15: a selector needs one of `dept`, `role` or `mobile`"],
    ),
    "recursive without dept": (
        {"a.yaml": CHAT + "    members: [{role: 3001, recursive: true}]\n"},
        ["./a.yaml:6:28: `recursive` can only be used with `dept`"],
    ),
    "recursive not a boolean": (
        {"a.yaml": CHAT + "    members: [{dept: 1, recursive: maybe}]\n"},
        ["./a.yaml:6:36: `recursive` must be true or false, not a string"],
    ),
    "department id zero": (
        {"a.yaml": CHAT + "    members: [{dept: 0}]\n"},
        ["./a.yaml:6:22: `dept` must be a positive whole number (got `0`)"],
    ),
    "department id quoted": (
        {"a.yaml": CHAT + "    members: [{dept: '1024'}]\n"},
        ["./a.yaml:6:22: `dept` must be a whole number, not a string: write it without quotes: 1024"],
    ),
    "role id a fraction": (
        {"a.yaml": CHAT + "    exclude: [{role: 1.5}]\n"},
        ["./a.yaml:6:22: `role` must be a whole number, not 1.5"],
    ),
    "mobile unquoted": (
        {"a.yaml": CHAT + "    members: [{mobile: 13800000000}]\n"},
        ['./a.yaml:6:24: `mobile` must be a string, not a number: quote it: "13800000000"'],
    ),
    "mobile with letters": (
        {"a.yaml": "version: 1\ngroups:\n  vip: [{mobile: '138-CALL-ME'}]\n"},
        [
            "./a.yaml:3:18: `mobile` `138-CALL-ME` is not valid: a mobile number has 5 to 20 characters: "
            "digits, spaces, '+', '-', '(' and ')'"
        ],
    ),
    "mobile too short": (
        {"a.yaml": CHAT + "    members: [{mobile: '110'}]\n"},
        ["./a.yaml:6:24: `mobile` has 3 characters; it must have 5 to 20 characters"],
    ),
    "member that is a list": (
        {"a.yaml": CHAT + "    members: [bob, [carol]]\n"},
        ["./a.yaml:6:20: member must be a string or a mapping, not a list"],
    ),
    "exclude that is not a list": (
        {"a.yaml": CHAT + "    exclude: bob\n"},
        ["./a.yaml:6:14: `exclude` must be a list, not a string"],
    ),
    "owner excluded": (
        {"a.yaml": CHAT + "    members: [bob]\n    exclude: [bob, alice]\n"},
        ["./a.yaml:7:20: the owner cannot be excluded"],
    ),
    "owner excluded through a group": (
        {"a.yaml": "version: 1\ngroups:\n  leads: [alice, {role: 1}]\n" + CHAT[11:] + "    exclude: ['@leads']\n"},
        ["./a.yaml:8:15: the owner cannot be excluded: `@leads` includes `alice`"],
    ),
    "undefined group in exclude": (
        {"a.yaml": CHAT + "    exclude: ['@interns']\n"},
        ["./a.yaml:6:15: undefined group `@interns`; define it under `groups:`"],
    ),
    f"{MEMBER_CAP + 1} literal members with only excluded selectors": (
        {
            "a.yaml": "version: 1\ngroups:\n  big: ["
            + ", ".join(f"u{i}" for i in range(MEMBER_CAP))
            + "]\nchats:\n  eng:\n    name: Eng\n    owner: alice\n    members: ['@big']\n    exclude: [{dept: 1}]\n"
        },
        [
            f"./a.yaml:8:5: chat `eng` has {MEMBER_CAP + 1} members after expanding groups (owner included); "
            f"the limit is {MEMBER_CAP}"
        ],
    ),
    # --- notify templates (issue 14) ---
    "notify: unknown placeholder": (
        {"a.yaml": CHAT + "    notify: '{nmae} 已更新'\n"},
        ["./a.yaml:6:13: notify template: unknown placeholder `{nmae}`; did you mean `{name}`?"],
    ),
    "notify: attribute access": (
        {"a.yaml": CHAT + "    notify: '{name.__class__}'\n"},
        [
            "./a.yaml:6:13: notify template: unknown placeholder `{name.__class__}`; use {key}, {name}, {summary}, "
            "{added}, {removed}, {added_count}, {removed_count}"
        ],
    ),
    "notify: positional placeholder": (
        {"a.yaml": CHAT + "    notify: 'changed: {}'\n"},
        [
            "./a.yaml:6:13: notify template: unknown placeholder `{}`; use {key}, {name}, {summary}, "
            "{added}, {removed}, {added_count}, {removed_count}"
        ],
    ),
    "notify: format spec": (
        {"a.yaml": CHAT + "    notify: '{added:>99999999}'\n"},
        ["./a.yaml:6:13: notify template: placeholder `{added}` takes no format spec or conversion; write `{added}`"],
    ),
    "notify: unclosed brace": (
        {"a.yaml": CHAT + "    notify: '{name 更新'\n"},
        ["./a.yaml:6:13: notify template: a `{` is not closed by `}`; write `{{` for a literal brace"],
    ),
    "notify: lone closing brace": (
        {"a.yaml": "version: 1\ndefaults:\n  notify: 'done :}'\n"},
        ["./a.yaml:3:11: notify template: a `}` closes nothing; write `}}` for a literal brace"],
    ),
    "notify: too long": (
        {"a.yaml": CHAT + "    notify: " + "x" * 501 + "\n"},
        ["./a.yaml:6:13: `notify` has 501 characters; it must have 1 to 500 characters"],
    ),
    "default notify defined in two files": (
        {
            "a.yaml": "version: 1\ndefaults:\n  notify: '{name}'\n",
            "b.yaml": "version: 1\ndefaults:\n  notify: '{key}'\n",
        },
        ["./b.yaml:3:3: default `notify` is defined twice: first at ./a.yaml:3:3"],
    ),
}
#: Cases that load other paths than the files they write.
PATH_CASES = {
    "missing path": ({"a.yaml": CHAT}, ["a.yaml", "nope.yaml"], ["./nope.yaml: no such file or folder"]),
    "folder without YAML": ({"docs/readme.txt": "hi"}, ["docs"], ["./docs: no *.yaml or *.yml files in this folder"]),
}


@pytest.mark.parametrize("files, expected", CASES.values(), ids=list(CASES))
def test_each_error_is_reported_at_its_place(tmp_path: Path, files: dict, expected: list[str]) -> None:
    assert errors_of(tmp_path, files) == expected


@pytest.mark.parametrize("files, paths, expected", PATH_CASES.values(), ids=list(PATH_CASES))
def test_bad_paths_are_reported(tmp_path: Path, files: dict, paths: list[str], expected: list[str]) -> None:
    assert errors_of(tmp_path, files, paths) == expected


def test_all_errors_at_once_sorted_by_file_line_column(tmp_path: Path) -> None:
    lines = errors_of(
        tmp_path,
        {
            "b.yaml": CHAT + "    memebers: [bob]\n    settings: {muted: maybe}\n",
            "a.yaml": "version: 1\ngroups:\n  x: ['@y']\n  y: ['@x']\n",
            "c.yaml": "",
        },
    )
    assert lines == [
        "./a.yaml:3:7: group cycle: x -> y -> x",
        "./b.yaml:6:5: unknown key `memebers`; did you mean `members`?",
        "./b.yaml:7:23: `muted` must be one of: false, true (got `maybe`)",
        "./c.yaml:1:1: the file is empty; it needs at least `version: 1`",
    ]


def test_error_exposes_issues_with_locations(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(CHAT + "    owner: bob\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config([tmp_path])
    (issue,) = caught.value.issues
    assert issue == ConfigIssue(
        Location(str(tmp_path / "a.yaml"), 6, 5), "duplicate key `owner`: already defined on line 5"
    )
    assert str(issue) == f"{tmp_path / 'a.yaml'}:6:5: duplicate key `owner`: already defined on line 5"


def test_a_broken_chat_does_not_hide_problems_of_others(tmp_path: Path) -> None:
    lines = errors_of(
        tmp_path,
        {"a.yaml": CHAT + "    members: [1]\n  ops:\n    name: Ops\n    owner: bob\n    members: ['@nope']\n"},
    )
    assert [line.split(": ", 1)[0] for line in lines] == ["./a.yaml:6:15", "./a.yaml:10:15"]


def test_chats_with_a_broken_group_are_not_reported_twice(tmp_path: Path) -> None:
    lines = errors_of(
        tmp_path,
        {"a.yaml": "version: 1\ngroups:\n  sre: [1]\n" + CHAT[11:] + "    members: ['@sre']\n"},
    )
    assert len(lines) == 1 and lines[0].startswith("./a.yaml:3:9: member 1 is read as a number")


def test_absurd_nesting_is_one_located_error(tmp_path: Path) -> None:
    """PyYAML >= 6.0.4 stops at its own depth limit; older ones parse and our checker stops: one line either way."""
    (error,) = errors_of(tmp_path, {"a.yaml": "version: 1\nchats: " + "[" * 3000 + "]" * 3000 + "\n"})
    assert error.startswith("./a.yaml:")
    assert "nested too deeply" in error or "maximum nesting depth" in error


def test_a_group_named_by_a_number_and_an_undefined_reference_are_both_reported(tmp_path: Path) -> None:
    lines = errors_of(tmp_path, {"a.yaml": "version: 1\ngroups:\n  1: [a]\n" + CHAT[11:] + "    members: ['@nope']\n"})
    assert lines == [
        './a.yaml:3:3: group name must be a string, not a number: quote it: "1"',
        "./a.yaml:8:15: undefined group `@nope`; define it under `groups:`",
    ]


def test_undefined_references_are_reported_in_chats_and_groups_alongside_good_ones(tmp_path: Path) -> None:
    groups = "version: 1\ngroups:\n  team: [bob, '@tema']\n  ops: [carol]\n"
    text = groups + CHAT[11:] + "    members: [dan, '@ops', '@opps', '@team']\n"
    assert errors_of(tmp_path, {"a.yaml": text}) == [
        "./a.yaml:3:15: undefined group `@tema`; did you mean `@team`?",
        "./a.yaml:9:28: undefined group `@opps`; did you mean `@ops`?",
    ]
