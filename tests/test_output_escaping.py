"""Text from DingTalk, the directory, the state file or a pull request never reaches a terminal, a CI log or a PR
comment raw (issue 21): one escaping rule (``reconciler.textsafe``) under every human-readable renderer, Markdown
that cannot mention, link or forge diff lines, no line a CI runner would execute, and JSON left exact."""

from __future__ import annotations

import json
import re
import unicodedata
from unittest import mock

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconciler.applier import planned_calls
from reconciler.backends import backend_for
from reconciler.cli import Failure, cli
from reconciler.config.issues import ConfigError, ConfigIssue, quoted
from reconciler.drift import drift_report
from reconciler.errors import DtchatError
from reconciler.model import DesiredChat, LiveChat, Location, MemberSource, Selector
from reconciler.plan import Action, ChatChange, Plan
from reconciler.planner import plan_create, plan_update
from reconciler.render import (
    render_calls,
    render_drift_json,
    render_drift_markdown,
    render_drift_text,
    render_json,
    render_markdown,
    render_text,
    render_validation_github,
    render_validation_json,
    render_watch_json,
    render_watch_text,
    watch_kind,
)
from reconciler.textsafe import escape, guard_line, safe_line
from reconciler.watch import Alert

from helpers import APP_KEY, APP_SECRET, LocalServer, RawApi, dtchat, state_of, write_config

LEGACY, V1 = backend_for("legacy"), backend_for("v1")

#: What must never be in a line of human-readable output: C0/C1 controls and DEL, format characters (bidi,
#: zero-width), lone surrogates, line and paragraph separators.
UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

#: Pieces an attacker would use, mixed by the property tests with arbitrary text and characters.
FRAGMENTS = [
    "\x1b]52;c;aGVsbG8=\x07",  # OSC 52: write the clipboard
    "\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\",  # OSC 8 link
    "\x1b[2J",
    "\x1b[1A\x1b[2K",  # cursor up, erase line
    "\x9b31m",  # C1 CSI
    "\r",
    "\n",
    "\r\n",
    "\n::error::pwned",
    "\n::add-mask::value",
    "\n  ::stop-commands::token",
    "::set-output name=a::b",
    "##[add-mask]x",
    "##vso[task.setvariable variable=a]b",
    "\u202e",
    "\u2066",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\u00ad",
    "\u2028",
    "\u2029",
    "\x85",
    "\x7f",
    "\x00",
    "\t",
    "\ud800",
    "\U000e0041",
    "@alice",
    "@everyone",
    "ops@evil.example",
    "https://evil.example/x",
    "www.evil.example",
    "#12",
    "org/repo#3",
    "GH-7",
    "&#64;bob",
    "```",
    "`",
    "|",
    "<img src=x>",
    "\n+ mallory",
    "\n- alice",
    "工程",
    "bоb",
    " ",
    "\\x1b",
]
hostile = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(max_size=4),
        st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp"]),
    ),
    min_size=1,
    max_size=6,
).map("".join)
#: What a live chat can hold once read: anything but a lone surrogate (the planner's digests encode values as UTF-8).
live_text = hostile.map(lambda text: "".join(c for c in text if unicodedata.category(c) != "Cs"))


def read_back(value: str) -> str:
    """``value`` as any JSON reader reads it back: itself, except that two surrogates in a row are one character
    (JSON cannot tell them apart; a JSON answer never holds them apart)."""
    return json.loads(json.dumps(value))


def unsafe_in(text: str) -> list[str]:
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in UNSAFE]


def assert_safe_output(text: str, *, annotations: int = 0) -> None:
    """Every line: no raw control/format character, nothing a CI runner would take as a command (a line starting
    with ``::`` after leading whitespace, or ``##[`` anywhere) but the ``annotations`` dtchat wrote itself."""
    commands = []
    for line in text.split("\n"):
        assert not unsafe_in(line), (unsafe_in(line), line)
        if line.lstrip().startswith("::"):
            commands.append(line)
        assert not re.search(r"##(vso)?\[", line, re.IGNORECASE), line
    assert len(commands) == annotations, commands
    assert all(line.startswith("::error file=") for line in commands), commands


def outside_code(markdown: str) -> str:
    """The Markdown's text outside fenced blocks, code spans and ``<code>``, as CommonMark reads it: a backslash
    escapes the next punctuation character, a run of N backticks opens a span closed by the next run of exactly N
    (else it is literal)."""
    kept: list[str] = []
    in_fence = False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = re.sub(r"<code>.*?</code>", "", line)
        i = 0
        while i < len(line):
            if line[i] == "\\" and i + 1 < len(line) and not line[i + 1].isalnum():
                kept.append(line[i + 1])
                i += 2
                continue
            if line[i] == "`":
                run = re.match("`+", line[i:])
                assert run is not None
                n = len(run.group())
                closing = re.compile(r"(?<!`)`{%d}(?!`)" % n).search(line, i + n)
                if closing:
                    i = closing.end()
                    continue
                kept.append(run.group())
                i += n
                continue
            kept.append(line[i])
            i += 1
        kept.append("\n")
    return "".join(kept)


def assert_inert_markdown(markdown: str, chats: list[ChatChange]) -> None:
    """No mention, link or issue reference outside code; one diff block per chat, with exactly its own lines."""
    prose = outside_code(markdown)
    assert not re.search(r"@|://|www\.|#\d|gh-\d", prose, re.IGNORECASE), prose
    lines = markdown.split("\n")
    starts = [i for i, line in enumerate(lines) if line == "```diff"]
    assert len(starts) == len(chats)
    for start, change in zip(starts, chats):
        end = lines.index("```", start + 1)
        assert end - start - 1 == expected_lines(change), lines[start:end]
        assert not any(line.startswith("```") for line in lines[start + 1 : end])


def expected_lines(c: ChatChange) -> int:
    """How many lines a chat's diff block has: one per value, whatever the values hold."""
    if c.action is Action.ERROR:
        return 1 + len(c.sources)
    if c.action in (Action.ORPHAN, Action.FORGET, Action.UNREAD):
        return 1
    return bool(c.name) + bool(c.owner) + len(c.settings) + len(c.add) + len(c.remove) + bool(c.kept) + len(c.sources)


def hostile_plan(name: str, owner: str, member: str, chatid: str, text: str, key: str) -> Plan:
    """Every kind of chat change, built by the real planner from live chats holding ``name``, ``owner``,
    ``member`` (DingTalk can answer anything), plus errors, orphans and unread chats holding the rest."""
    desired = DesiredChat("eng", "Eng", "alice", ("alice", "bob"), settings={"muted": True})
    live = LiveChat(chatid, name, owner, ("alice", member, member + "x"), settings={"muted": False})
    additive = DesiredChat("all", "All", "alice", ("alice",), members_policy="additive")
    changes = [
        plan_update(desired, live, backend=LEGACY),
        plan_update(additive, LiveChat(chatid + "2", name, "alice", ("alice", member)), backend=LEGACY),
        plan_create(DesiredChat("new", name, owner, (owner, member, "bob"))),
        ChatChange(
            "bad",
            Action.ERROR,
            chatid=chatid,
            error=text,
            sources=(MemberSource(Selector("dept", 5, True), text, 3), MemberSource(Selector("mobile", text), text, 0)),
        ),
        ChatChange("old", Action.UNREAD, chatid=chatid, verified_at=text),
        ChatChange(key, Action.ORPHAN, chatid=chatid, pending=True),
        ChatChange(key + "-gone", Action.FORGET, chatid=chatid),
    ]
    return Plan(tuple(sorted(changes, key=lambda c: c.key)), flag=f" --state {text}")


def no_styles():
    """click.style as the identity: output is checked as written, with no escape sequence of dtchat's own."""
    return mock.patch.object(click, "style", lambda text, **_: text)


# -- the rule ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]52;c;aGk=\x07", "\\x1b]52;c;aGk=\\x07"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("\x7f\x85\x9b\x00\t", "\\x7f\\x85\\x9b\\x00\\x09"),
        ("ali\u202ece", "ali\\u202ece"),
        ("b\u200bo\u200d\u2060\ufeff\u00ad", "b\\u200bo\\u200d\\u2060\\ufeff\\xad"),
        ("x\u2028y\u2029", "x\\u2028y\\u2029"),
        ("\U000e0041\ud800", "\\U000e0041\\ud800"),
        ("工程值班 bоb 🙂\u3000a\\x1b", "工程值班 bоb 🙂\u3000a\\x1b"),  # printable: unchanged, backslashes too
    ],
)
def test_escape_writes_control_and_format_characters_visibly_and_nothing_else(raw, shown):
    assert escape(raw) == shown
    assert escape(shown) == shown  # its output needs no second pass


@pytest.mark.parametrize(
    ("line", "guarded"),
    [
        ("::error::x", "\\x3a:error::x"),
        ("   ::add-mask::x", "   \\x3a:add-mask::x"),
        ("\u3000::stop-commands::t", "\u3000\\x3a:stop-commands::t"),
        ("a ::error:: in the middle", "a ::error:: in the middle"),
        ("x ##[add-mask]y ##VSO[task]z", "x ##\\x5badd-mask]y ##VSO\\x5btask]z"),
        (":single colon", ":single colon"),
    ],
)
def test_no_line_can_be_a_workflow_command(line, guarded):
    assert guard_line(line) == guarded
    assert safe_line(guard_line(line)) == guarded


@given(hostile)
@example("\x1b]52;c;aGk=\x07\n::add-mask::x\u202e")
def test_escape_leaves_one_line_without_unsafe_characters(text):
    shown = escape(text)
    assert not unsafe_in(shown) and "\n" not in shown
    assert escape(shown) == shown
    if text.isprintable():
        assert shown == text


def test_config_quotes_hold_no_raw_format_character():
    assert quoted("Eng\nOps") == '"Eng\\nOps"'
    assert quoted("Eng\u202eOps") == '"Eng\\u202eOps"'
    assert quoted("a\x85b") == '"a\\x85b"'
    assert quoted("工程") == "`工程`"


# -- the property: every renderer, any string -----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(name=live_text, owner=live_text, member=live_text, chatid=live_text, text=hostile, key=hostile)
@example(
    name="Eng\x1b]52;c;aGk=\x07\n+ mallory\n::add-mask::x @everyone https://evil.example ```",
    owner="boss\u202e",
    member="m\n::error::pwned",
    chatid="chat\x1b[2J",
    text="\n::stop-commands::t ##[add-mask]z",
    key="::error::k",
)
def test_no_plan_drift_watch_or_dry_run_output_holds_a_raw_control_or_a_forged_line(
    name, owner, member, chatid, text, key
):
    plan = hostile_plan(name, owner, member, chatid, text, key)
    report = drift_report(plan)
    shown = [c for c in plan.changes if c.action not in (Action.NOOP, Action.UNREAD)]
    drifted = [d for d in report.chats if d.status.value not in ("in_sync", "not_read")]
    with no_styles():
        outputs = [
            render_text(plan, warnings=(text,)),
            render_text(plan, verbose=True, warnings=(text,)),
            render_drift_text(report, verbose=True),
            render_calls(plan, planned_calls(plan, LEGACY, {}, notify=True)),
            render_calls(plan, planned_calls(plan, V1, {}, notify=True)),
        ]
        for d in report.chats:
            for enforced in (False, True):
                alert = Alert(d.key, chatid, text, d, enforced, problem=text, metered=2)
                line = render_watch_text(alert)
                assert line is not None or (watch_kind(alert) == "in_sync" and not text)
                outputs.append(line or "")
        markdown = render_markdown(plan, warnings=(text,))
        drift_markdown = render_drift_markdown(report)
    for output in [*outputs, markdown, drift_markdown]:
        assert_safe_output(output)
    assert_inert_markdown(markdown, shown)
    assert len(re.findall(r"^```diff$", drift_markdown, re.MULTILINE)) == len(drifted)
    assert not re.search(r"@|://|www\.|#\d|gh-\d", outside_code(drift_markdown), re.IGNORECASE)

    # JSON stays exact: the values read back as they were
    data = json.loads(render_json(plan))
    eng = next(c for c in data["changes"] if c["key"] == "eng")
    assert eng["chatid"] == chatid and (eng["name"] is None or eng["name"]["old"] == name)
    assert next(c for c in data["changes"] if c["key"] == "bad")["error"] == read_back(text)
    assert {c["key"] for c in data["changes"]} == {read_back(c.key) for c in plan.changes}
    drift = json.loads(render_drift_json(report))
    assert [c["chatid"] for c in drift["chats"] if c["key"] == "eng"] == [chatid]
    watch = json.loads(render_watch_json(Alert("eng", chatid, text, report.chats[0], problem="p" + text)))
    assert (watch["chatid"], watch["cause"], watch["problem"]) == (chatid, read_back(text), read_back("p" + text))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=hostile, other=hostile, value=hostile)
@example(file="::error::x.yaml", other="\n::add-mask::s", value="bob\u200b")
@example(file="  ::stop-commands::t.yaml", other="a\rb", value="\x1b[2J")
def test_no_validation_output_holds_a_raw_control_or_a_command_dtchat_did_not_write(file, other, value, capsys):
    issues = (
        ConfigIssue(Location(file, 3, 7), f"user id {quoted(value)} is not valid"),
        ConfigIssue(Location(file, 4, 1), f"chat `eng` is defined twice: first at {Location(other, 1, 1)}"),
        ConfigIssue(Location(other), "no such file or folder"),
    )
    error = ConfigError(issues)
    github = render_validation_github(error.issues, "configuration is invalid (3 errors)")
    assert_safe_output(github, annotations=len(error.issues))
    assert_safe_output("\n".join(map(str, error.issues)))
    Failure(error).show()
    Failure(DtchatError(f"{file}: {other}")).show()
    captured = capsys.readouterr()
    assert_safe_output(captured.err)
    assert captured.err.count("\n") == len(error.issues) + 2  # one line per problem, the summary, the other error

    data = json.loads(render_validation_json((file, other), error.issues, "invalid"))
    assert data["files"] == [read_back(file), read_back(other)]
    assert {e["file"] for e in data["errors"]} == {read_back(file), read_back(other)}


def test_markdown_mentions_links_and_references_are_code_spans_and_other_text_is_escaped_as_before():
    change = ChatChange(
        "eng", Action.UPDATE, chatid="c1", name=("@team see https://x.example | www.y.example #3", "Eng")
    )
    markdown = render_markdown(Plan((change,)))
    cell = "name: `@team` see `https://x.example` \\| `www.y.example` `#3` → Eng"
    assert f"| `eng` | update | 0 | 0 | {cell} |  |" in markdown
    assert "```diff\nname: @team see https://x.example | www.y.example #3 → Eng\n```" in markdown
    fenced = ChatChange("eng", Action.UPDATE, chatid="c1", name=("a`@x`b", "c|@d``e"))
    assert "name: ``a`@x`b`` → ```c\\|@d``e```" in render_markdown(Plan((fenced,)))


# -- warnings about non-ASCII ids -----------------------------------------------------------------------------


def test_plans_warn_about_each_non_ascii_id_they_add_remove_or_make_owner_and_json_lists_it():
    desired = DesiredChat("eng", "Eng", "bоb", ("alice", "bоb", "dave"))
    live = LiveChat("c1", "Eng", "alice", ("alice", "dаve", "erin"))
    plan = Plan((plan_update(desired, live, backend=LEGACY),))
    expected = (
        "eng: user ids with non-ASCII characters, check each is the person meant and not a look-alike of another "
        "id: bоb (о is U+043E CYRILLIC SMALL LETTER O); dаve (а is U+0430 CYRILLIC SMALL LETTER A)"
    )
    with no_styles():
        assert f"Warning: {expected}" in render_text(plan).split("\n")
    assert "> **Warning:** eng: user ids with non-ASCII characters" in render_markdown(plan)
    assert json.loads(render_json(plan, warnings=("other",)))["warnings"] == ["other", expected]
    ascii_live = LiveChat("c1", "工程", "alice", ("alice", "erin"))
    ascii_only = Plan((plan_update(DesiredChat("eng", "Eng", "alice", ("bob",)), ascii_live, backend=LEGACY),))
    assert "Warning" not in render_text(ascii_only)
    assert json.loads(render_json(ascii_only))["warnings"] == []


# -- through the CLI, against the emulator --------------------------------------------------------------------

HAND_NAME = "Eng\x1b]52;c;aGk=\x07\n+ mallory\n::add-mask::x @everyone https://evil.example\u202e"
HAND_MEMBERS = ["m\n::error::pwned", "\x1b[2Jeve", "bob\u200b", "##[add-mask]z"]


@pytest.fixture
def handled(emulator, tmp_path):
    """One chat applied, then renamed and joined in DingTalk by hand with hostile text."""
    cfg = tmp_path / "chats"
    write_config(cfg, {"eng": {"name": "Eng", "owner": "alice", "members": ["bob"]}})
    assert dtchat(emulator, "apply", str(cfg), "--auto-approve").exit_code == 0
    chatid = state_of(cfg / "dtchat.state.json")["eng"]
    with RawApi(emulator, APP_KEY, APP_SECRET) as api:
        answer = api.admin("hand", {"chatid": chatid, "name": HAND_NAME, "add": HAND_MEMBERS})
    assert answer.json()["ok"], answer.text
    assert emulator.chat(chatid)["name"] == HAND_NAME
    return cfg, chatid


def test_cli_plan_and_drift_show_a_hostile_live_chat_escaped_and_json_exact(emulator, handled):
    cfg, chatid = handled
    text = dtchat(emulator, "plan", str(cfg), "--refresh", "all")
    assert text.exit_code == 0, text.output
    assert_safe_output(text.output)
    assert (
        "name: Eng\\x1b]52;c;aGk=\\x07\\x0a+ mallory\\x0a::add-mask::x @everyone https://evil.example\\u202e → Eng"
        in (text.output)
    )
    assert "- m\\x0a::error::pwned" in text.output and "- bob\\u200b" in text.output
    assert "- ##\\x5badd-mask]z" in text.output

    markdown = dtchat(emulator, "plan", str(cfg), "--refresh", "all", "--format", "markdown")
    assert markdown.exit_code == 0
    assert_safe_output(markdown.output)
    assert "`@everyone` `https://evil.example\\u202e`" in markdown.output
    assert not re.search(r"@|://", outside_code(markdown.output))
    block = markdown.output.split("```diff\n")[1].split("\n```")[0].split("\n")
    assert len(block) == 1 + len(HAND_MEMBERS)  # the name line and one line per stray member: no forged lines

    data = json.loads(dtchat(emulator, "plan", str(cfg), "--refresh", "all", "--format", "json").output)
    (eng,) = data["changes"]
    assert eng["name"] == {"old": HAND_NAME, "new": "Eng"} and sorted(eng["remove"]) == sorted(HAND_MEMBERS)

    for args in ((), ("--format", "markdown")):
        drift = dtchat(emulator, "drift", str(cfg), *args)
        assert drift.exit_code == 2
        assert_safe_output(drift.output)
        assert "m\\x0a::error::pwned" in drift.output
    drift_json = json.loads(dtchat(emulator, "drift", str(cfg), "--format", "json").output)
    assert drift_json["chats"][0]["name"] == {"expected": "Eng", "actual": HAND_NAME}


def test_cli_apply_shows_the_hostile_plan_escaped_and_converges(emulator, handled):
    cfg, chatid = handled
    result = dtchat(emulator, "apply", str(cfg), "--auto-approve", "--refresh", "all")
    assert result.exit_code == 0, result.output
    assert_safe_output(result.output)
    assert emulator.chat(chatid)["name"] == "Eng"
    assert sorted(emulator.chat(chatid)["useridlist"]) == ["alice", "bob"]


def test_cli_validate_escapes_a_hostile_file_name_in_every_format(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from reconciler.cli import cli

    monkeypatch.chdir(tmp_path)
    bad = "::error::x\u202e.yaml"
    (tmp_path / bad).write_text('version: 1\nchats:\n  eng: {name: Eng, owner: "bob\\u200b"}\n', encoding="utf-8")
    runner = CliRunner()
    text = runner.invoke(cli, ["validate", bad])
    assert text.exit_code == 1
    assert_safe_output(text.output)
    assert text.output.startswith('\\x3a:error::x\\u202e.yaml:3:27: user id "bob\\u200b" is not valid')
    github = runner.invoke(cli, ["validate", bad, "--format", "github"])
    assert github.exit_code == 1
    assert_safe_output(github.output, annotations=1)
    assert github.output.startswith("::error file=%3A%3Aerror%3A%3Ax\\u202e.yaml,line=3,col=27,")
    data = json.loads(runner.invoke(cli, ["validate", bad, "--format", "json"]).output)
    assert data["errors"][0]["file"] == bad


def test_cli_plan_warns_about_a_non_ascii_id_and_apply_still_applies(emulator, tmp_path):
    cfg = tmp_path / "chats"
    write_config(cfg, {"eng": {"name": "Eng", "owner": "alice", "members": ["bоb"]}})
    plan = dtchat(emulator, "plan", str(cfg))
    assert plan.exit_code == 0
    assert (
        "Warning: eng: user id with non-ASCII characters, check it is the person meant and not a look-alike of "
        "another id: bоb (о is U+043E CYRILLIC SMALL LETTER O)"
    ) in plan.output
    applied = dtchat(emulator, "apply", str(cfg), "--auto-approve")
    assert applied.exit_code == 0, applied.output
    assert "Warning: eng: user id with non-ASCII characters" in applied.output
    assert "bоb" in emulator.chat(state_of(cfg / "dtchat.state.json")["eng"])["useridlist"]


def test_log_lines_carry_server_text_escaped(tmp_path):
    """A retry warning quotes DingTalk's errmsg: it goes through the log handler, which escapes it like any
    other output (no clipboard write, no line erase, no workflow command)."""
    hostile = "busy\x1b]52;c;ZXZpbA==\x07\x1b[2K\r\n::add-mask::x\u202e"

    def reply(handler):
        if handler.path.startswith("/gettoken"):
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps({"errcode": 0, "access_token": "t", "expires_in": 7200}).encode(),
            )
        return 200, {"Content-Type": "application/json"}, json.dumps({"errcode": -1, "errmsg": hostile}).encode()

    server = LocalServer(reply)
    try:
        folder = tmp_path / "c"
        write_config(folder, {"a": {"name": "A", "owner": "x", "chatid": "chat0123abcd"}})
        env = {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "NO_COLOR": "1"}
        result = CliRunner().invoke(
            cli, ["--api", "legacy", "--api-base", server.url, "plan", str(folder)], env=env, catch_exceptions=False
        )
    finally:
        server.stop()
    assert result.exit_code == 1
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING: ")]
    assert warnings and all("busy\\x1b]52;c;ZXZpbA==\\x07" in line for line in warnings), result.stderr
    assert_safe_output(result.stderr)
