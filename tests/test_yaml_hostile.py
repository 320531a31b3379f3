"""Hostile YAML from pull requests (issue 11, design §9): one located line each, never a crash, hang or blow-up.

The alias bomb and the deep nesting run ``dtchat validate`` in a subprocess
with a generous ``timeout=`` (a guard, not a timing assertion): a regression
there would hang or kill the interpreter, not just fail an assert.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.config import ConfigError, load_config
from reconciler.config.yamlload import Document, read_document
from reconciler.model import Location

ROOT = Path(__file__).resolve().parents[1]
CHAT = "version: 1\nchats:\n  eng:\n    name: Eng\n    owner: alice\n"


def errors_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "a.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config([tmp_path / "a.yaml"])
    return [line.replace(str(tmp_path), ".") for line in str(caught.value).splitlines()]


def validate_in_subprocess(path: Path) -> subprocess.CompletedProcess:
    """``dtchat validate path`` in a child limited to 60 s and 2 GiB of address space (guards, not measurements)."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
    code = limit + "import sys; from reconciler.cli import main; sys.argv = ['dtchat', 'validate', sys.argv[1]]; main()"
    return subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def alias_bomb(levels: int = 8, width: int = 9) -> str:
    """The ~450-byte file of issue 11: each level lists the previous one ``width`` times."""
    lines = ["version: 1", "a: &a [" + ", ".join(["x"] * width) + "]"]
    names = "abcdefghijklmnopqrstuvwxyz"
    for previous, name in zip(names, names[1 : levels + 1]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * width) + "]")
    lines += ["chats:", "  eng:", "    name: Eng", "    owner: alice", f"    members: *{names[levels]}"]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_with_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(), encoding="utf-8")
    assert len(path.read_bytes()) < 500
    result = validate_in_subprocess(path)
    assert result.returncode == 1, result.stderr[-2000:]
    output = (result.stdout + result.stderr).replace(str(tmp_path), ".")
    assert "Traceback" not in output
    assert output.splitlines()[0] == (
        "./bomb.yaml:6:4: aliases expand this list to more than 10,000 values, far beyond what the file holds: "
        "refusing it (an alias bomb?)"
    )


def test_aliases_that_stay_near_the_size_of_the_text_are_fine(tmp_path: Path) -> None:
    team = ", ".join(f"u{i:03d}" for i in range(200))
    chats = "".join(f"  c{i}:\n    name: C{i}\n    owner: u000\n    members: *team\n" for i in range(100))
    path = tmp_path / "a.yaml"
    path.write_text(f"version: 1\nteam: &team [{team}]\nchats:\n{chats}", encoding="utf-8")
    document, issues = read_document(path, "a.yaml")
    assert document is not None and len(document.data["chats"]) == 100  # 20,000 values from 4,600 characters
    assert issues == []


def test_an_alias_to_the_mapping_that_contains_it_is_refused(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "version: 1\nchats: &c\n  eng:\n    name: Eng\n    owner: alice\n    members: *c\n") == [
        "./a.yaml:6:14: alias `*c` refers to no anchor defined before it (or to a mapping or list that contains it)"
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ("!!bool maybe", "`maybe` is not a valid !!bool"),
        ('!!int ""', "empty is not a valid !!int"),
        ("!!timestamp nope", "`nope` is not a valid !!timestamp"),
        ("!!float null", "`null` is not a valid !!float"),
        ("!!int 0x", "`0x` is not a valid !!int"),
        ("2024-13-45", "`2024-13-45` is not a valid !!timestamp; quote it if it is text"),
        ("!foo bar", "unsupported YAML tag `!foo`"),
        ("!!set {a}", "unsupported YAML tag `tag:yaml.org,2002:set`: use a plain mapping or list"),
    ],
)
def test_every_tag_error_is_one_located_line(tmp_path: Path, value: str, message: str) -> None:
    assert errors_of(tmp_path, CHAT.replace("name: Eng", f"name: {value}")) == [f"./a.yaml:4:11: {message}"]


def test_a_long_bad_value_is_shown_short_on_one_line(tmp_path: Path) -> None:
    (line,) = errors_of(tmp_path, CHAT.replace("name: Eng", 'name: !!int "' + "x\\n" * 50 + '"'))
    assert line == "./a.yaml:4:11: `" + "x\\n" * 19 + "...` is not a valid !!int"


def test_a_duplicate_key_with_a_line_break_is_shown_on_one_line(tmp_path: Path) -> None:
    assert errors_of(tmp_path, 'version: 1\n"a\\nb": 1\n"a\\nb": 2\n')[0] == (
        "./a.yaml:3:1: duplicate key `a\\nb`: already defined on line 2"
    )


def test_a_duplicate_anchor_with_a_duplicate_key_is_one_located_line(tmp_path: Path) -> None:
    text = "version: 1\nchats:\n  eng: &x\n    name: Eng\n    owner: alice\n    owner: bob\n  ops: &x {name: Ops}\n"
    assert errors_of(tmp_path, text) == ["./a.yaml:7:8: duplicate anchor `&x`: already defined on line 3"]


def test_a_bad_merge_is_reported_at_the_merge_key(tmp_path: Path) -> None:
    text = "version: 1\nbase: &b plain\nchats:\n  eng:\n    <<: *b\n    name: Eng\n    owner: alice\n"
    assert errors_of(tmp_path, text) == ["./a.yaml:5:5: `<<` must merge a mapping or a list of mappings"]


def test_a_dash_in_a_flow_list_is_a_member_not_dropped(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(CHAT + "    members: [bob, -]\n", encoding="utf-8")
    assert load_config([tmp_path / "a.yaml"]).chat("eng").members == ("-", "alice", "bob")


@pytest.mark.parametrize(
    "text, where",
    [
        (CHAT + "\tmembers: [bob]\n", "6:1"),
        (CHAT + "    members:\n    \t- bob\n", "7:5"),
        (CHAT.replace("    owner", "  \t  owner"), "5:3"),
    ],
)
def test_a_tab_in_indentation_is_called_a_tab(tmp_path: Path, text: str, where: str) -> None:
    assert errors_of(tmp_path, text) == [
        f"./a.yaml:{where}: invalid YAML: a tab character; YAML indents with spaces only"
    ]


def test_nesting_deep_enough_to_overflow_a_c_stack_is_one_located_error(tmp_path: Path) -> None:
    """libyaml's own composer recurses in C: 30,000 levels used to kill the process (SIGSEGV)."""
    for name, text in {
        "flow.yaml": "version: 1\nchats: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "block.yaml": "version: 1\nchats:\n" + "- " * 100_000 + "x\n",
    }.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        result = validate_in_subprocess(path)
        assert result.returncode == 1, result.stderr[-2000:]
        output = result.stdout + result.stderr
        assert "Traceback" not in output and f"{path}:" in output and "nested too deeply" in output, output[-2000:]


def test_the_text_is_not_kept_and_places_come_from_reading_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(CHAT + "    members: [bob, &c carol, *c]\n", encoding="utf-8")  # the slow path
    document, issues = read_document(path, "a.yaml")
    assert issues == [] and isinstance(document, Document)
    assert not [v for v in vars(document).values() if isinstance(v, (str, bytes)) and len(v) > 20]
    assert document.locate(("chats", "eng", "members", 2)) == Location("a.yaml", 6, 20)  # an alias: at its anchor
    assert document.written(("chats", "eng", "members", 1)) == "carol"

    path.write_text(CHAT, encoding="utf-8")
    changed, _ = read_document(path, "a.yaml")
    path.write_text("\n" + CHAT, encoding="utf-8")  # changed since it was read: no position rather than a wrong one
    assert changed is not None and changed.locate(("chats", "eng"), key=True) == Location("a.yaml")
    gone, _ = read_document(path, "a.yaml")
    path.unlink()
    assert gone is not None and gone.written(("chats", "eng", "name")) is None
    assert repr(gone) == "Document('a.yaml')"
    assert document.locate(("chats", ["not a key"], "name")) == Location("a.yaml", 3, 3)


def test_an_alias_bomb_in_a_mapping_is_refused_in_process(tmp_path: Path) -> None:
    """The same check on mappings, in this process (684 characters: at most 20 x 684 values)."""
    lines = ["version: 1", "m0: &m0 {" + ", ".join(f"k{i}: x" for i in range(10)) + "}"]
    lines += [f"m{n}: &m{n} {{" + ", ".join(f"k{i}: *m{n - 1}" for i in range(10)) + "}" for n in range(1, 7)]
    (tmp_path / "a.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    document, issues = read_document(tmp_path / "a.yaml", "a.yaml")
    assert document is None and [str(issue) for issue in issues] == [
        "a.yaml:5:5: aliases expand this mapping to more than 13,680 values, far beyond what the file holds: "
        "refusing it (an alias bomb?)"
    ]


@pytest.mark.parametrize(
    "text, error",
    [
        ("version: <<\n", "1:10: `<<` (merge) can only be a mapping key"),
        ("version: 1\n? [a]\n: b\n", "2:3: a mapping key must be a plain value, not a mapping or list"),
    ],
)
def test_misplaced_yaml_features_are_one_located_line(tmp_path: Path, text: str, error: str) -> None:
    assert errors_of(tmp_path, text) == [f"./a.yaml:{error}"]


def test_an_unreadable_path_is_one_line(tmp_path: Path) -> None:
    document, issues = read_document(tmp_path, "folder.yaml")
    assert document is None and [str(issue) for issue in issues] == [
        "folder.yaml: cannot read the file: Is a directory"
    ]


def test_duplicate_keys_name_both_lines_and_the_rest_is_still_checked(tmp_path: Path) -> None:
    text = CHAT + "    owner: bob\n    members: [1]\n" + "  ops: {name: Ops, owner: a, name: Ops2}\n"
    assert errors_of(tmp_path, text) == [
        "./a.yaml:6:5: duplicate key `owner`: already defined on line 5",
        "./a.yaml:7:15: member 1 is read as a number, but DingTalk user ids are strings "
        '(numeric ones often start with zeros that YAML drops): quote it: "1"',
        "./a.yaml:8:30: duplicate key `name`: already defined on line 8",
    ]


def test_keys_equal_once_read_are_duplicates_but_merged_keys_are_not(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        version: 1
        groups: {g: [a], 0x1: [b], 1: [c]}
        chats:
          eng:
            <<: {name: Base, owner: alice}
            name: Eng
        """
    )
    assert errors_of(tmp_path, text) == [
        "./a.yaml:2:28: duplicate key `1`: already defined on line 2",
        './a.yaml:2:28: group name must be a string, not a number: quote it: "1"',
    ]


@pytest.mark.parametrize(
    "raw, error",
    [
        (
            b"\xef\xbb\xbfversion: 1\n\xff\n",
            "2:1: the file is not valid UTF-8 (byte 0xff at byte offset 14); save it as UTF-8",
        ),
        (b"\xef\xbb\xbf\tversion: 1\n", "1:1: invalid YAML: a tab character; YAML indents with spaces only"),
        (b"\xef\xbb\xbfab\x07\n", "1:3: invalid YAML: control character U+0007 is not allowed"),
        (b"\xef\xbb\xbfa: 2024-13-45\n", "1:4: `2024-13-45` is not a valid !!timestamp; quote it if it is text"),
    ],
)
def test_positions_after_a_bom_are_counted_as_editors_do(tmp_path: Path, raw: bytes, error: str) -> None:
    (tmp_path / "a.yaml").write_bytes(raw)
    with pytest.raises(ConfigError) as caught:
        load_config([tmp_path / "a.yaml"])
    assert str(caught.value) == f"{tmp_path / 'a.yaml'}:{error}"
