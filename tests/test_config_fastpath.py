"""The fast YAML reader returns exactly what ``yaml.safe_load`` returns, or steps aside.

Every test compares ``read_fast`` with PyYAML on the same text: where the
fast reader answers, values (types included) and key order must be
identical; where it does not, PyYAML's own loader (:class:`ConfigLoader`,
which handles all of YAML and reports errors) is what ``read_document`` uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.config import dump_config, load_config
from reconciler.config.fastyaml import read_fast
from reconciler.config.yamlload import ConfigLoader, read_document
from reconciler.model import DesiredChat, Location


def identical(a: Any, b: Any) -> bool:
    """Equal values of equal types, dict keys in the same order (``True`` is not ``1`` here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return (
            list(a) == list(b)
            and all(identical(ka, kb) for ka, kb in zip(a, b))
            and all(identical(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def load_strictly(text: str) -> Any:
    """What the slow path builds; it must not fail (nor find duplicates) where the fast reader answered."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def agrees(text: str) -> bool:
    """True if the fast reader answered (and then its answer is ``yaml.safe_load``'s); False if it stepped aside."""
    fast = read_fast(text)
    if fast is None:
        return False
    assert identical(fast, yaml.safe_load(text)), (fast, yaml.safe_load(text))
    data, duplicates = load_strictly(text)
    assert identical(fast, data) and duplicates == []
    return True


# --- targeted cases -----------------------------------------------------------------------------

READ_FAST = {
    "bench shape": "version: 1\nchats:\n  chat-1:\n    name: 群聊 1\n    owner: u1\n    members:\n"
    '      - "@team-01"\n      - u2\n      - u3\n    settings:\n      muted: false\n      mention_all: owner\n',
    "list at its key's indentation": "groups:\n  g:\n  - a\n  - b\nx: 1\n",
    "quoting": "a: 'it''s'\nb: \"say: #1\"\n'c d': ''\n\"e\": \"\"\nf: ' spaced '\n",
    "comments and blank lines": "# head\n\na: 1  # one\n  # indented comment\n\n"
    "b:\n  # inside\n  - x # item\n  - 'y'   \n",
    "unicode": "名前: 群聊 ✓\nemoji: 😀 ok\nnbsp: a\xa0b\nideographic: a\u3000b\n",
    "numeric-looking ids": "m:\n  - 0412345670\n  - '0412345670'\n  - 0x1F\n  - 1_000\n  - -1\n"
    "  - 1.5\n  - .inf\n  - 1e3\n  - 2024-01-02\n",
    "resolved words": "t: true\nf: False\nn: null\nt2: ~\ny: yes\no: off\nk: on\nplain: nothing\nempty:\n",
    "typed keys": "2: two\ntrue: yes\n~: none\n2024-01-02: day\n",
    "CRLF line endings": "a: 1\r\nb:\r\n  - x\r\n  - y\r\n",
    "no final newline": "a: 1\nb: [x, 'y', \"z\"]",
    "trailing spaces": "a: 1   \nb:   \n  - x   \n  - y\n",
    "flow lists": "a: []\nb: [ ]\nc: [x, y,]\nd: [ x , 'y z' , \"w\" ]\ne:\n  - [1, 2]\n",
    "directory selectors (flow mappings)": "members:\n  - {dept: 1024, recursive: true}\n  - bob\n  - {mobile: '138'}\n"
    "exclude: [bob, {role: 3001}, {}, { }, {'q': \"x\", r: -,}]\nsel: {dept: 1}\n",
    "mappings as list items (block selectors)": "members:\n  - bob\n  - dept: 1024\n    recursive: true\n  -   role: 2\n"
    "      x: [a]\nm:\n- a: 1\n  b:\n  - x\n- c:\n    d: e\nz: 1\n",
    "dashes in flow lists": "a: [alice, -]\nb: [-, x, -,]\nc: [-1, --, -x, '-']\nd: [-]\n",
    "values PyYAML resolves": "a: [~, yes, No, on, OFF, y, n, 0o17, 017, 0b11, 1_000, 1e3, 6.8523015e+5, .NaN]\n",
    "deeper nesting": "a:\n  b:\n    c:\n      d: [e]\n",
    "wide indentation": "a:\n        b: 1\n        c:\n              - x\n",
}

STEPS_ASIDE = {
    "empty": "",
    "comments only": "# nothing\n",
    "anchor and alias": "a: &x 1\nb: *x\n",
    "merge": "a: {k: 1}\nb:\n  <<: {k: 2}\n",
    "tag": "a: !!str 1\n",
    "block scalar": "a: |\n  text\n",
    "multi-line plain": "a: b\n  c\n",
    "multi-line quoted": "a: 'b\n  c'\n",
    "flow mapping holding a list": "a: {b: [1]}\n",
    "flow mapping with a duplicate key": "a: {b: 1, b: 2}\n",
    "flow mapping without a space after a colon": "a: {b:1}\n",
    "nested flow list": "a: [[1]]\n",
    "escape": 'a: "\\u00e9"\n',
    "tab": "a:\tb\n",
    "document marker": "---\na: 1\n",
    "document end": "a: 1\n...\n",
    "second document": "a: 1\n---\nb: 2\n",
    "duplicate key": "a: 1\na: 2\n",
    "keys equal once resolved": "1: a\n01: b\n",
    "lone CR": "a: 1\rb: 2\n",
    "BOM inside": "a: \ufeffb\n",
    "line separator": "a: b\u2028c\n",
    "control character": "a: b\x07c\n",
    "colon in plain": "a: http://x\n",
    "hash in plain": "a: C#\n",
    "root list": "- a\n- b\n",
    "root scalar": "hello\n",
    "bad indentation": "a:\n    b: 1\n  c: 2\n",
    "item after value": "a: 1\n- b\n",
    "empty item": "a:\n  -\n  - b\n",
    "item keys out of line": "a:\n  - b: 1\n   c: 2\n",
    "nested list item": "a:\n  - - b\n",
    "space before colon": "a : 1\n",
    "value indicator": "a: = \n",
    "merge key only": "<<: 1\n",
    "question mark key": "? a\n: b\n",
    "value PyYAML cannot build": "a: 2024-13-45\n",
    "dash then space in a flow list": "a: [x, - y]\n",
}


@pytest.mark.parametrize("text", READ_FAST.values(), ids=READ_FAST.keys())
def test_fast_reader_reads_the_plain_shape(text: str) -> None:
    assert agrees(text)


@pytest.mark.parametrize("text", STEPS_ASIDE.values(), ids=STEPS_ASIDE.keys())
def test_fast_reader_steps_aside_for_anything_else(text: str) -> None:
    assert read_fast(text) is None


def test_read_document_takes_the_fast_path_with_a_bom_and_finds_places_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    text = "\ufeffversion: 1\r\n# c\r\nchats:\r\n  eng:\r\n    name: N\r\n    owner: o\r\n"
    path.write_bytes(text.encode("utf-8"))
    assert read_fast(text[1:]) is not None
    document, issues = read_document(path, "a.yaml")
    assert issues == [] and document is not None
    assert document.data == {"version": 1, "chats": {"eng": {"name": "N", "owner": "o"}}}
    assert document.locate(("chats", "eng"), key=True) == Location("a.yaml", 4, 3)
    assert document.locate(("chats", "eng", "owner")) == Location("a.yaml", 6, 12)
    assert document.written(("version",)) == "1"


def test_dumped_config_is_read_by_the_fast_path(tmp_path: Path) -> None:
    chats = [
        DesiredChat(
            "eng", "工程", "0412345670", ("0412345670", "alice", "bob"), settings={"muted": True, "searchable": False}
        ),
        DesiredChat(
            "ops",
            "Ops: on call",
            "nina",
            ("nina", "olaf", "tom"),
            members_policy="additive",
            chatid="cid",
            settings={"searchable": False},
        ),
    ]
    text = dump_config(chats, groups={"team": ["alice", "yuki"]}, defaults={"searchable": False})
    assert agrees(text)
    path = tmp_path / "chats.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config([path])
    assert config.chats == tuple(chats)
    assert config.groups == {"team": ("alice", "yuki")}


def test_duplicate_keys_are_still_reported_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("version: 1\nchats:\n  eng:\n    name: N\n    owner: a\n    owner: b\n", encoding="utf-8")
    _, issues = read_document(path, "a.yaml")
    assert [str(issue) for issue in issues] == ["a.yaml:6:5: duplicate key `owner`: already defined on line 5"]


def test_user_ids_in_lists_are_interned() -> None:
    data = read_fast("a:\n  - " + "u" + "12345\n  - x\nb:\n  - u12345\n  - '0412'\nc:\n  - '0" + "412'\n")
    assert data is not None
    assert data["a"][0] is data["b"][0]
    assert data["b"][1] is data["c"][0]


# --- generated documents: the subset is read, and anything near it is read right or left alone ----

_SAFE_FIRST = "abcdefghijklmnopqrstuvwxyz群é"
_SAFE_REST = _SAFE_FIRST + "0123456789-_.@/ 群聊😀"
_HOSTILE = _SAFE_REST + " \t:#'\"-?[]{},&*!|>%@`~<=+\\\n\r\ufeff\x85\u2028\xa0\u3000" + "0123456789tfnoyTFNY."

#: Plain text that stays plain: a letter first, no trailing space.
safe_words = st.builds(
    lambda first, rest: (first + rest).rstrip(),
    st.sampled_from(_SAFE_FIRST),
    st.text(_SAFE_REST, max_size=8),
)
#: Values that YAML may turn into numbers, booleans, nulls or dates (still in the subset).
typed_words = st.sampled_from(
    [
        "1",
        "0412345670",
        "-1",
        "+2",
        "0x1F",
        "0o17",
        "1.5",
        ".inf",
        "true",
        "No",
        "off",
        "null",
        "~",
        "2024-01-02",
        "1_000",
        "1e3",
        "yes",
        "nan",
        ".NaN",
        "0b101",
        "y",
        "n",
    ]
)
hostile_words = st.text(_HOSTILE, max_size=8)


def _quoted(word: str, draw: Callable[..., Any]) -> str:
    style = draw(st.sampled_from(["plain", "single", "double"]))
    if style == "single":
        return "'" + word.replace("'", "''") + "'"
    if style == "double":
        return '"' + word + '"'
    return word


def _render(value: Any, indent: int, draw: Callable[..., Any]) -> list[str]:
    """Lines of a block mapping at ``indent``, with the layout choices a person might make."""
    lines: list[str] = []
    step = draw(st.integers(1, 4))
    for key, child in value.items():
        if draw(st.integers(0, 9)) == 0:
            lines.append(" " * draw(st.integers(0, 6)) + draw(st.sampled_from(["", "# note", "#"])))
        head = " " * indent + _quoted(key, draw) + ":"
        tail = draw(st.sampled_from(["", "", " ", "  # c", " #"]))
        if isinstance(child, dict):
            lines.append(head + tail)
            lines += _render(child, indent + step, draw)
        elif isinstance(child, list) and draw(st.booleans()):
            lines.append(head + " [" + ", ".join(_quoted(w, draw) for w in child) + "]" + tail)
        elif isinstance(child, list):
            lines.append(head + tail)
            at = indent + draw(st.sampled_from([0, step]))
            lines += [" " * at + "- " + _quoted(w, draw) + draw(st.sampled_from(["", "", " ", " # c"])) for w in child]
        elif child is None:
            lines.append(head + tail)
        else:
            lines.append(head + " " + _quoted(child, draw) + tail)
    return lines


def _tree(words: st.SearchStrategy[str], keys: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    leaves = st.one_of(words, st.none(), st.lists(words, max_size=5))
    return st.recursive(
        st.dictionaries(keys, leaves, min_size=1, max_size=4),
        lambda inner: st.dictionaries(keys, st.one_of(leaves, inner), min_size=1, max_size=4),
        max_leaves=12,
    )


def _document(draw: Callable[..., Any], tree: dict[str, Any]) -> str:
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join(_render(tree, 0, draw)) + draw(st.sampled_from([eol, ""]))


_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(st.data())
def test_documents_in_the_subset_are_read_fast_and_the_same(data: st.DataObject) -> None:
    keys = st.builds(lambda w: "k" + w.replace(" ", ""), safe_words)  # unique once resolved: always strings
    tree = data.draw(_tree(st.one_of(safe_words, typed_words), keys))
    text = _document(data.draw, tree)
    assert agrees(text), text


@_SETTINGS
@given(st.data())
def test_documents_near_the_subset_are_read_right_or_left_alone(data: st.DataObject) -> None:
    words = st.one_of(safe_words, typed_words, hostile_words)
    text = _document(data.draw, data.draw(_tree(words, words)))
    for _ in range(data.draw(st.integers(0, 3))):  # then a few random edits
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + data.draw(st.text(_HOSTILE, max_size=3)) + text[at + data.draw(st.integers(0, 2)) :]
    agrees(text)
