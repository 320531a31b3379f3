"""Fuzz ``dtchat validate`` with broken, hostile config files: exit 1, one located line per problem, no traceback.

Each file is a valid config put through random edits (YAML indicators,
tabs, tags, anchors, control characters, bytes that are not UTF-8, an alias
bomb, nesting 100,000 levels deep...) plus one edit that always breaks it,
so every run must exit 1. Every line before the summary must start with
``FILE:LINE:COL: `` (or ``FILE: `` where a file has no position).

Bounded time: each run is guarded by a 30 s ``SIGALRM`` timer (a guard, not
a timing assertion; runs take milliseconds). ``DTCHAT_HYPOTHESIS_EXAMPLES``
raises the example count (default 300).
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.cli import cli

EXAMPLES = int(os.environ.get("DTCHAT_HYPOTHESIS_EXAMPLES", "300"))
GUARD_S = 30

BASE = """\
version: 1
defaults:
  settings: {searchable: false}
groups:
  sre: [alice, bob]
  web: &web
    - carol
    - "0412345670"
chats:
  eng-oncall:
    name: 工程值班
    owner: alice
    members: ["@sre", erin, -]
    settings:
      muted: true
      mention_all: owner
  ops: &ops
    name: Ops
    owner: bob
    members: *web
  ops-2:
    <<: *ops
    name: Ops 2
"""

SNIPPETS = [
    "\t",
    "\t\t",
    ":",
    ": ",
    "- ",
    "-",
    "[",
    "]",
    "{",
    "}",
    "'",
    '"',
    "&web ",
    "&x ",
    "*x",
    "*web",
    "*ops",
    "!!bool ",
    "!!int ",
    "!!float ",
    "!!timestamp ",
    "!!set ",
    "!!binary ",
    "!foo ",
    "!!",
    "---\n",
    "...\n",
    "? ",
    "%YAML 1.1\n",
    "@",
    "`",
    "|",
    ">-",
    "\x07",
    "\x00",
    "\r",
    "\x85",
    "\u2028",
    "\ufeff",
    "<<: ",
    "<<: *web\n",
    "  ",
    "\n",
    " #",
    ",",
    "=",
    "~",
    "yes",
    "0x",
    "2024-13-45",
    "\\",
    "\\u",
    "é",
    "😀",
]


def alias_bomb(levels: int, width: int) -> str:
    lines = ["b0: &b0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@st.composite
def broken_files(draw: Callable[..., Any]) -> bytes:
    text = BASE
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        edit = draw(
            st.one_of(
                st.sampled_from(SNIPPETS),
                st.lists(st.sampled_from(SNIPPETS), max_size=4).map("".join),
                st.builds(alias_bomb, st.integers(2, 9), st.integers(2, 12)),
                st.integers(1, 100_000).map(lambda n: "[" * n + "]" * draw(st.sampled_from([0, n]))),
                st.integers(1, 100_000).map(lambda n: "- " * n + "x\n"),
                st.integers(1, 5_000).map(lambda n: "x" * n),
            )
        )
        text = text[:at] + edit + text[at + cut :]
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    raw = text.replace("\n", eol).encode("utf-8")
    if draw(st.booleans()):
        raw = b"\xef\xbb\xbf" + raw
    # One edit that always breaks it: a second document, a control character, rarely bytes that are not UTF-8
    # (which hide everything else).
    breaker = draw(st.sampled_from([b"\n---\nversion: 1\n"] * 4 + [b"\x07"] * 3 + [b"\xff"]))
    at = len(raw) if breaker.startswith(b"\n") else draw(st.integers(0, len(raw)))
    return raw[:at] + breaker + raw[at:]


class _TooLong(BaseException):
    """Raised by the guard timer; a BaseException so no ``except Exception`` in dtchat can swallow it."""


def _alarm(signum: int, frame: Any) -> None:
    raise _TooLong(f"dtchat validate took more than {GUARD_S} s")


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(raw=broken_files())
def test_validate_reports_broken_files_one_located_line_each(folder: Path, raw: bytes) -> None:
    path = folder / "chats.yaml"
    path.write_bytes(raw)
    guarded = hasattr(signal, "SIGALRM")
    if guarded:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, GUARD_S)
    try:
        result = CliRunner().invoke(cli, ["--no-color", "validate", str(path)], catch_exceptions=False)
    finally:
        if guarded:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    output = result.stdout + result.stderr
    assert result.exit_code == 1, output
    assert "Traceback" not in output
    *issues, summary = result.stderr.splitlines()
    assert re.fullmatch(r"Error: configuration is invalid \((\d+) errors?\)", summary), summary
    assert int(re.findall(r"\d+", summary)[0]) == len(issues) >= 1
    located = re.compile(re.escape(str(path)) + r"(:\d+:\d+)?: \S")
    assert all(located.match(line) for line in issues), issues
