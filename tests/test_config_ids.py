"""The configuration cannot deceive a reviewer (issue 21): a user id (owner, members, exclude, groups) is printable
text, a chat name holds no control or format character; each one a located one-line error. Non-ASCII ids that
are printable stay valid (plans warn about them: tests/test_output_escaping.py)."""

from __future__ import annotations

import textwrap
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.config import ConfigError, load_config

CHAT = """\
version: 1
chats:
  eng:
    name: Eng
    owner: alice
"""


def errors_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "a.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config([tmp_path / "a.yaml"])
    return [line.replace(str(tmp_path), ".") for line in str(caught.value).splitlines()]


def rule(char: str) -> str:
    return "is not valid: a userId holds only printable characters (no control, format or invisible ones), not " + char


ID_CASES = {
    "zero-width space in the owner": (
        CHAT.replace("owner: alice", 'owner: "bob\\u200b"'),
        f'./a.yaml:5:12: user id "bob\\u200b" {rule("U+200B ZERO WIDTH SPACE")}',
    ),
    "right-to-left override in a member": (
        CHAT + '    members: [bob, "ali\\u202ece"]\n',
        f'./a.yaml:6:20: user id "ali\\u202ece" {rule("U+202E RIGHT-TO-LEFT OVERRIDE")}',
    ),
    "escape character in a member": (
        CHAT + '    members: ["\\e]52;c;aGk=\\a"]\n',
        f'./a.yaml:6:15: user id "\\u001b]52;c;aGk=\\u0007" {rule("U+001B (a control character)")}',
    ),
    "soft hyphen in an exclusion": (
        CHAT + '    exclude: ["da\\u00adve"]\n',
        f'./a.yaml:6:15: user id "da\\xadve" {rule("U+00AD SOFT HYPHEN")}',
    ),
    "byte order mark in a group": (
        'version: 1\ngroups:\n  sre: [alice, "\\ufeffbob"]\nchats:\n  eng: {name: Eng, owner: alice, members: ["@sre"]}\n',
        f'./a.yaml:3:16: user id "\\ufeffbob" {rule("U+FEFF ZERO WIDTH NO-BREAK SPACE")}',
    ),
    "tag character (outside the BMP)": (
        CHAT + '    members: ["bob\\U000E0041"]\n',
        f'./a.yaml:6:15: user id "bob\\U000e0041" {rule("U+E0041 TAG LATIN CAPITAL LETTER A")}',
    ),
    "left-to-right isolate beside a selector": (
        CHAT + '    members: [{dept: 5}, "x\\u2066y"]\n',
        f'./a.yaml:6:26: user id "x\\u2066y" {rule("U+2066 LEFT-TO-RIGHT ISOLATE")}',
    ),
    "private-use character": (
        CHAT + '    members: ["bob\\ue000"]\n',
        f"./a.yaml:6:15: user id `bob\ue000` {rule('U+E000 (a private-use character)')}",
    ),
}


@pytest.mark.parametrize("case", sorted(ID_CASES))
def test_a_user_id_must_be_printable(tmp_path, case):
    text, error = ID_CASES[case]
    assert errors_of(tmp_path, text) == [error]


NAME_CASES = {
    "right-to-left override": ("Eng\\u202eOps", "U+202E RIGHT-TO-LEFT OVERRIDE", '"Eng\\u202eOps"'),
    "zero-width space": ("Eng\\u200bOps", "U+200B ZERO WIDTH SPACE", '"Eng\\u200bOps"'),
    "first strong isolate": ("\\u2068Eng", "U+2068 FIRST STRONG ISOLATE", '"\\u2068Eng"'),
    "tag character": ("Eng\\U000E007F", "U+E007F CANCEL TAG", '"Eng\\U000e007f"'),
}


@pytest.mark.parametrize("case", sorted(NAME_CASES))
def test_a_chat_name_holds_no_format_character(tmp_path, case):
    written, char, shown = NAME_CASES[case]
    assert errors_of(tmp_path, CHAT.replace("name: Eng", f'name: "{written}"')) == [
        f"./a.yaml:4:11: `name` {shown} is not valid: a chat name cannot hold control or format characters "
        f"(bidi controls, zero-width characters): it holds {char}"
    ]


def test_every_deceptive_id_and_name_is_reported_at_once(tmp_path):
    text = (
        'version: 1\ngroups:\n  sre: ["a\\u200bb", ok]\nchats:\n'
        '  eng:\n    name: "x\\u202e"\n    owner: "o\\u2060"\n    members: ["@sre", "m\\u200e"]\n'
        '    exclude: ["e\\u00ad"]\n'
    )
    lines = errors_of(tmp_path, text)
    assert [line.split(": ", 1)[0] for line in lines] == [
        "./a.yaml:3:9",
        "./a.yaml:6:11",
        "./a.yaml:7:12",
        "./a.yaml:8:23",
        "./a.yaml:9:15",
    ]
    assert all(unicodedata.category(c) not in ("Cc", "Cf") for line in lines for c in line)


def test_printable_non_ascii_ids_and_names_with_spaces_stay_valid(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "version: 1\n"
        "groups:\n  team: [bоb, 张三]\n"
        "chats:\n"
        "  eng:\n    name: 工程 值班\u3000🙂 Ops\n    owner: zoë\n    members: ['@team', dave]\n"
        "    exclude: [mallory]\n",
        encoding="utf-8",
    )
    (chat,) = load_config([tmp_path / "a.yaml"]).chats
    assert chat.name == "工程 值班\u3000🙂 Ops"
    assert chat.members == ("bоb", "dave", "zoë", "张三")


def test_validate_shows_the_deceptive_id_escaped_on_one_line_and_as_one_annotation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.yaml").write_text(CHAT.replace("owner: alice", 'owner: "bob\\u200b"'), encoding="utf-8")
    runner = CliRunner()
    text = runner.invoke(cli, ["validate", "a.yaml"])
    assert text.exit_code == 1
    assert text.output.splitlines() == [
        f'a.yaml:5:12: user id "bob\\u200b" {rule("U+200B ZERO WIDTH SPACE")}',
        "Error: configuration is invalid (1 error)",
    ]
    github = runner.invoke(cli, ["validate", "a.yaml", "--format", "github"])
    assert github.exit_code == 1
    assert github.output.splitlines() == [
        f'::error file=a.yaml,line=5,col=12,title=dtchat validate::user id "bob\\u200b" {rule("U+200B ZERO WIDTH SPACE")}',
        "configuration is invalid (1 error)",
    ]
