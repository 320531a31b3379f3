"""Plan output: text for terminals, Markdown for PR comments, JSON for machines.

Text uses click styles; click strips them when the output is not a terminal.

Every value in human-readable output (text, Markdown, dry-run calls, watch
alerts, validation annotations) may come from DingTalk or a pull request, so
each line is passed through :func:`.textsafe.safe_line` before it is styled:
control and format characters are written as visible escapes and nothing can
start a forged line or a CI workflow command. Markdown additionally puts any
word that GitHub would turn into a mention, an issue reference or a link in a
code span (see docs/formats.md, "Text in human-readable output"). JSON output
is left to JSON escaping, exact.
"""

from __future__ import annotations

import html
import json
import re
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from .drift import ChatDrift, DriftReport, Status
from .plan import Action, ChatChange, Plan, SettingChange, show_value
from .planfile import FORMAT_VERSION, plan_to_json
from .textsafe import describe_char, escape, guard_inline, safe_line, safe_lines

if TYPE_CHECKING:
    from .backends import WireCall
    from .backends.transport import Meter

FORMATS = ("text", "markdown", "json")
#: Name at most this many people in one line ("additive: kept …"), then "and N more".
MAX_NAMES = 10

_SYMBOL = {
    Action.CREATE: ("+", "green"),
    Action.UPDATE: ("~", "yellow"),
    Action.NOOP: ("=", None),
    Action.FORGET: ("-", "magenta"),
    Action.ORPHAN: ("?", "cyan"),
    Action.ERROR: ("!", "red"),
    Action.UNREAD: ("=", None),
}
_LABEL = {
    Action.CREATE: "create",
    Action.UPDATE: "update",
    Action.NOOP: "no change",
    Action.FORGET: "forget",
    Action.ORPHAN: "orphan",
    Action.ERROR: "error",
    Action.UNREAD: "unchanged",
}
#: A lone surrogate (a ``\\ud800`` in a JSON answer): it has no UTF-8 form, so printing it would crash.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json(document: Any, indent: int | None = None) -> str:
    """JSON output, exact: non-ASCII text as it is, a lone surrogate as its ``\\uXXXX`` escape (the same value)."""
    text = json.dumps(document, ensure_ascii=False, indent=indent)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


#: Shown only with -v: chats with nothing to do.
_QUIET = (Action.NOOP, Action.UNREAD)


class _Coloured(NamedTuple):
    """A line shown in a colour on a terminal (styled only after it is escaped)."""

    text: str
    colour: str


#: One line under a chat's heading: plain, or coloured.
_Line = str | _Coloured


def _line_text(line: _Line) -> str:
    return line.text if isinstance(line, _Coloured) else line


def _styled(line: _Line, colour: str | None = None, bold: bool = False) -> str:
    """The line escaped (:func:`.textsafe.safe_line`), then styled for a terminal."""
    if isinstance(line, _Coloured):
        colour = line.colour
    text = safe_line(_line_text(line))
    return click.style(text, fg=colour, bold=bold) if colour or bold else text


def _setting_line(s: SettingChange) -> str:
    if s.old is None:
        return f"{s.name}: {show_value(s.new)}"
    return f"{s.name}: {show_value(s.old)} → {show_value(s.new)}"


def _names(ids: tuple[str, ...]) -> str:
    rest = len(ids) - MAX_NAMES
    return ", ".join(ids[:MAX_NAMES]) + (f" and {rest} more" if rest > 0 else "")


def _source_line(s: Any) -> str:
    verb = "excludes" if s.excluded else "gives"
    return f"{s.selector} ({s.label}) {verb} {s.count} user{'s' if s.count != 1 else ''}"


def _chat_lines(c: ChatChange, verbose: bool = False, plan_flag: str = "") -> list[_Line]:
    """The lines under a chat's heading; ``plan_flag`` is the ``--state`` its hints carry."""
    lines: list[_Line] = []
    if c.action is Action.ERROR:
        return [c.error or "unknown error", *(_source_line(s) for s in c.sources if verbose)]
    if c.action is Action.FORGET:
        return ["not in the YAML; --prune: dtchat stops managing it; the chat stays in DingTalk"]
    if c.action is Action.UNREAD:
        return [f"unchanged since {c.verified_at or 'last verified'}, not read"]
    if c.action is Action.ORPHAN:
        if c.pending:
            return [
                "in the state, not in the YAML: kept; a create of it is pending (outcome unknown), so --prune "
                f"leaves it: run `dtchat import {c.key} CHATID{plan_flag}` if the chat exists, "
                f"else `dtchat forget {c.key}{plan_flag}`"
            ]
        return ["in the state, not in the YAML: kept"]
    if c.name:
        lines.append(f"name: {c.name[1]}" if c.name[0] is None else f"name: {c.name[0]} → {c.name[1]}")
    if c.owner:
        lines.append(f"owner: {c.owner[1]}" if c.owner[0] is None else f"owner: {c.owner[0]} → {c.owner[1]}")
    lines.extend(_setting_line(s) for s in c.settings)
    lines.extend(_Coloured(f"+ {m}", "green") for m in c.add)
    lines.extend(_Coloured(f"- {m}", "red") for m in c.remove)
    if c.kept:
        n = len(c.kept)
        lines.append(f"(additive: {n} member{'s' if n != 1 else ''} not in the YAML kept: {_names(c.kept)})")
    if verbose:
        lines.extend(_source_line(s) for s in c.sources)
    return lines


def _heading(c: ChatChange) -> str:
    if c.action is Action.ORPHAN:
        return f"{c.key}{_where(c.chatid)}"
    return f"{_LABEL[c.action]} {c.key}{_where(c.chatid)}"


def rename_hint(plan: Plan) -> str | None:
    """Creates next to orphans: a key renamed in YAML would get a second chat unless its binding moves."""
    if not plan.rename_hint:
        return None
    creates, orphans = plan.of(Action.CREATE), plan.of(Action.ORPHAN)
    if len(creates) == 1 and len(orphans) == 1:
        move = f"`dtchat mv {orphans[0].key} {creates[0].key}{plan.flag}`"
    else:
        move = f"`dtchat mv OLD NEW{plan.flag}` (orphaned: {', '.join(c.key for c in orphans)})"
    return (
        f"if a chat's key was renamed in the YAML, run {move} before applying, so its chat is kept, not created again"
    )


def _text(
    blocks: list[tuple[str, str | None, str, list[_Line]]],
    summary: str,
    clean: str | None,
    warnings: tuple[str, ...] = (),
    hints: tuple[str, ...] = (),
) -> str:
    """Blocks of (symbol, colour, heading, lines), then warnings, hints, the all-clear (if any) and the summary;
    every line escaped before it is styled."""
    out: list[str] = []
    for symbol, colour, heading, lines in blocks:
        out.append(_styled(f"{symbol} {heading}", colour, bold=True))
        out.extend(f"    {_styled(line)}" for line in lines)
    if out:
        out.append("")
    out.extend(_styled(f"Warning: {w}", "yellow") for w in warnings)
    out.extend(_styled(f"Hint: {h}") for h in hints)
    if clean:
        out.append(_styled(clean))
    out.append(_styled(summary))
    return "\n".join(out)


def _where(chatid: str | None) -> str:
    return f" ({chatid})" if chatid else ""


def api_calls_line(meter: Meter, plan: Plan | None = None) -> str:
    """The metered calls this run made (the monthly quota counts them) and, for a plan, what apply will make."""
    line = f"API calls: {meter.metered} metered, {meter.exempt} exempt."
    if plan is not None:
        line += (
            f" Apply of this plan: {plan.forecast} metered call{'s' if plan.forecast != 1 else ''} "
            f"({plan.reads} read{'s' if plan.reads != 1 else ''} + {plan.writes} write{'s' if plan.writes != 1 else ''}"
            "; with --notify, 1 or 2 more per changed chat)."
        )
    return line


def _no_changes(plan: Plan) -> str:
    """The all-clear, which says so when it rests on chats not read (verified unchanged since, design §11)."""
    unread = len(plan.of(Action.UNREAD))
    if not unread:
        return "No changes. DingTalk matches the configuration."
    read = len(plan.changes) - unread
    return (
        f"No changes. {read} chat{'s' if read != 1 else ''} read, {unread} not read: unchanged since verified "
        "(changes made by hand in DingTalk show with `--refresh all` or `drift`)."
    )


def render_text(
    plan: Plan, *, verbose: bool = False, warnings: tuple[str, ...] = (), meter: Meter | None = None
) -> str:
    """The plan as a terminal shows it; unchanged chats only with ``verbose``."""
    blocks = [
        (*_SYMBOL[c.action], _heading(c), _chat_lines(c, verbose, plan.flag))
        for c in plan.changes
        if verbose or c.action not in _QUIET
    ]
    clean = None if plan.has_changes or plan.has_errors else _no_changes(plan)
    hint = rename_hint(plan)
    text = _text(blocks, plan.summary(), clean, (*warnings, *id_warnings(plan)), (hint,) if hint else ())
    return text + ("\n" + api_calls_line(meter, plan) if meter is not None else "")


def _odd_characters(user_id: str) -> str:
    """``о is U+043E CYRILLIC SMALL LETTER O``: each distinct non-ASCII character of an id, named."""
    odd = dict.fromkeys(char for char in user_id if not char.isascii())
    return ", ".join(f"{char} is {describe_char(char)}" for char in odd)


def id_warnings(plan: Plan) -> tuple[str, ...]:
    """One warning per chat whose change names a user id that is not plain ASCII: ``bоb`` with a Cyrillic ``о``
    reads as ``bob`` in a review. Warnings, not errors (such ids can exist); they never stop an apply."""
    out = []
    for c in plan.changes:
        ids = (*c.add, *c.remove, *(user for user in (c.owner or ()) if user))
        if "".join(ids).isascii():  # the common case, at C speed
            continue
        odd = sorted({user for user in ids if not user.isascii()})
        if not odd:
            continue
        rest = len(odd) - MAX_NAMES
        shown = "; ".join(f"{user} ({_odd_characters(user)})" for user in odd[:MAX_NAMES])
        out.append(
            f"{c.key}: user id{'s' if len(odd) != 1 else ''} with non-ASCII characters, check "
            f"{'each is' if len(odd) != 1 else 'it is'} the person meant and not a look-alike of another id: "
            + shown
            + (f" and {rest} more" if rest > 0 else "")
        )
    return tuple(out)


#: Words GitHub (and GitLab) would turn into a notification or a link: @mentions and e-mail addresses, URLs
#: (``scheme://``, ``www.``), issue references (``#12``, ``owner/repo#12``, ``GH-12``).
_MD_RISKY = re.compile(r"@|://|www\.|#\d|gh-\d", re.IGNORECASE)
#: Markdown's special characters in prose, backslash-escaped (``&`` too: ``&#64;`` would be an ``@``).
_MD_SPECIAL = "\\`*_[]<>|#&"


def _code(text: Any, cell: bool = False) -> str:
    """``text`` (escaped) as a Markdown code span, which GitHub never links or mentions from; its fence is one
    backtick longer than any run inside. In a table ``cell`` a ``|`` is written ``\\|`` (GFM reads that inside
    code spans too)."""
    s = escape(text)
    if not s:
        return ""
    fence = "`" * (max((len(run) for run in re.findall("`+", s)), default=0) + 1)
    pad = " " if s[0] == "`" or s[-1] == "`" or (s[0] == s[-1] == " " and s.strip()) else ""
    if cell:
        s = s.replace("|", "\\|")
    return f"{fence}{pad}{s}{pad}{fence}"


def _md(text: Any, cell: bool = False) -> str:
    """User-controlled text for Markdown prose (a table ``cell``, a warning, the summary): escaped
    (:func:`.textsafe.escape`), Markdown's special characters backslash-escaped, and each word that would
    mention, reference or link (``@alice``, ``#12``, ``https://…``, ``www.…``) put in a code span."""
    out = []
    for word in re.split(r"( +)", escape(text)):
        if _MD_RISKY.search(word):
            out.append(_code(word, cell))
            continue
        for ch in _MD_SPECIAL:
            word = word.replace(ch, "\\" + ch)
        out.append(word)
    return "".join(out)


def _details(symbol: str, label: str, key: str, lines: list[_Line]) -> list[str]:
    """A collapsible section; the lines (escaped: one line each) go in a diff fence that user text cannot close."""
    body = [safe_line(_line_text(line)).replace("```", "'''") for line in lines]
    return [
        f"<details><summary>{symbol} {label} <code>{html.escape(escape(key))}</code></summary>",
        "",
        "```diff",
        *body,
        "```",
        "</details>",
        "",
    ]


def _markdown(
    title: str,
    columns: list[str],
    rows: list[tuple[list[str], str, str, str, list[_Line]]],
    empty: str,
    summary: str,
    warnings: tuple[str, ...] = (),
    hints: tuple[str, ...] = (),
) -> str:
    """Summary table, then one collapsible section per row: (cells, symbol, label, key, lines)."""
    out = [f"### {title}", ""]
    for w in warnings:
        out += [f"> **Warning:** {_md(w)}", ""]
    for h in hints:
        out += [f"> **Hint:** {_md(h)}", ""]
    if rows:
        out += ["| " + " | ".join(columns) + " |", "|---|---|---:|---:|---|---|"]
        out += ["| " + " | ".join(cells) + " |" for cells, *_ in rows]
        out.append("")
        for _, symbol, label, key, lines in rows:
            out += _details(symbol, label, key, lines)
    else:
        out += [empty, ""]
    out.append(f"**{_md(summary)}**")
    return safe_lines("\n".join(out)) + "\n"


def _pair_cell(label: str, pair: tuple | None) -> str | None:
    if not pair:
        return None
    return _md(f"{label}: {pair[1]}" if pair[0] is None else f"{label}: {pair[0]} → {pair[1]}", cell=True)


def render_markdown(plan: Plan, *, warnings: tuple[str, ...] = (), meter: Meter | None = None) -> str:
    """A PR comment: summary table, then a collapsible section per changed chat."""
    rows = [
        (
            [
                _code(c.key, cell=True),
                _LABEL[c.action],
                str(len(c.add)),
                str(len(c.remove)),
                ", ".join(x for x in (_pair_cell("name", c.name), _pair_cell("owner", c.owner)) if x),
                ", ".join(_md(_setting_line(s), cell=True) for s in c.settings),
            ],
            _SYMBOL[c.action][0],
            _LABEL[c.action],
            c.key,
            _chat_lines(c, verbose=True, plan_flag=plan.flag),
        )
        for c in plan.changes
        if c.action not in _QUIET
    ]
    hint = rename_hint(plan)
    summary = plan.summary() + (" " + api_calls_line(meter, plan) if meter is not None else "")
    return _markdown(
        "dtchat plan",
        ["Chat", "Action", "+ members", "− members", "Name / owner", "Settings"],
        rows,
        "No changes.",
        summary,
        (*warnings, *id_warnings(plan)),
        (hint,) if hint else (),
    )


PlannedCalls = Sequence[tuple[str, "WireCall | None"]]


def render_calls(plan: Plan, calls: PlannedCalls) -> str:
    """``apply --dry-run``: every API call apply would make, in order, each body exactly as it would be sent
    (a new chat's id, not known yet, as ``<chatid of new chat KEY>``); a forget changes only the state."""
    out = ["", "Dry run: these API calls would be made (nothing was changed):"]
    chatids = {c.key: c.chatid for c in plan.changes}
    count = 0
    for key, call in calls:
        if call is None:
            out.append(safe_line(f"  {key}: (state only) forget {chatids.get(key)}"))
        else:
            out.append(safe_line(f"  {key}: {call.describe(key)}"))
            count += 1
    out.append(f"{count} API call{'s' if count != 1 else ''}.")
    return "\n".join(out)


def render_calls_json(plan: Plan, calls: PlannedCalls) -> str:
    """``apply --dry-run --format json`` (see docs/formats.md)."""
    document = {
        "format_version": FORMAT_VERSION,
        "kind": "dtchat-dry-run",
        "calls": [
            {"key": key, "method": call.endpoint.method, "endpoint": call.path, "body": call.shown_body(key)}
            for key, call in calls
            if call is not None
        ],
        "forget": [key for key, call in calls if call is None],
        "errors": [{"key": c.key, "error": c.error} for c in plan.of(Action.ERROR)],
    }
    return _json(document, indent=2)


def render_json(plan: Plan, *, warnings: tuple[str, ...] = (), meter: Meter | None = None) -> str:
    extra: dict[str, Any] = {"warnings": [*warnings, *id_warnings(plan)]}
    if meter is not None:
        extra["api_calls"] = meter.to_json()
    return _json(plan_to_json(plan, **extra), indent=2) + "\n"


# -- drift ----------------------------------------------------------------------------

_DRIFT_SYMBOL = {
    Status.DRIFTED: ("~", "yellow"),
    Status.MISSING: ("+", "green"),
    Status.ERROR: ("!", "red"),
    Status.IN_SYNC: ("=", None),
    Status.NOT_READ: ("=", None),
}
_DRIFT_QUIET = (Status.IN_SYNC, Status.NOT_READ)
#: A drift hint names each drifted chat with --target up to this many; beyond, it re-reads them all.
MAX_HINT_TARGETS = 10


def _drift_lines(d: ChatDrift) -> list[_Line]:
    if d.status is Status.NOT_READ:
        return [f"unchanged since {d.verified_at or 'last verified'}, not in today's slice: not read"]
    if d.status is Status.ERROR:
        return [d.error or "unknown error"]
    if d.status is Status.MISSING:
        return ["no chat exists for this key yet (run apply)"]
    lines: list[_Line] = []
    if d.name:
        lines.append(f"name: expected {d.name[0]}, live {d.name[1]}")
    if d.owner:
        lines.append(f"owner: expected {d.owner[0]}, live {d.owner[1]}")
    lines.extend(f"{s.name}: expected {show_value(s.expected)}, live {show_value(s.actual)}" for s in d.settings)
    lines.extend(_Coloured(f"+ {m} (in the YAML, not in the chat)", "green") for m in d.missing)
    lines.extend(_Coloured(f"- {m} (in the chat, not in the YAML)", "red") for m in d.unexpected)
    return lines


def drift_fix_hint(report: DriftReport, paths: Sequence[str], flag: str = "") -> str | None:
    """The command that puts drifted chats back: a default apply does not read chats verified unchanged since,
    so it would not see what was changed by hand."""
    keys = [d.key for d in report.of(Status.DRIFTED)]
    if not keys:
        return None
    targets = "".join(f" --target {shlex.quote(k)}" for k in keys) if len(keys) <= MAX_HINT_TARGETS else ""
    where = " ".join(shlex.quote(p) for p in paths)
    return (
        f"`dtchat apply {where} --refresh all{targets}{flag}` puts the drifted chat{'s' if len(keys) != 1 else ''} "
        "back (a default apply reads only chats whose YAML or directory members changed)"
    )


def render_drift_text(
    report: DriftReport, *, verbose: bool = False, meter: Meter | None = None, hint: str | None = None
) -> str:
    blocks = [
        (*_DRIFT_SYMBOL[d.status], f"{d.status.value.replace('_', ' ')} {d.key}{_where(d.chatid)}", _drift_lines(d))
        for d in report.chats
        if verbose or d.status not in _DRIFT_QUIET
    ]
    clean = None if report.has_drift or report.has_errors else "No drift. DingTalk matches the configuration."
    if clean and report.rotation is not None:
        clean = "No drift in the chats read today."
    text = _text(blocks, report.summary(), clean, hints=(hint,) if hint else ())
    return text + ("\n" + api_calls_line(meter) if meter is not None else "")


def render_drift_markdown(report: DriftReport, meter: Meter | None = None) -> str:
    rows = [
        (
            [
                _code(d.key, cell=True),
                d.status.value,
                str(len(d.missing)),
                str(len(d.unexpected)),
                ", ".join(
                    _md(f"{label}: {pair[1]} (expected {pair[0]})", cell=True)
                    for label, pair in (("name", d.name), ("owner", d.owner))
                    if pair
                ),
                ", ".join(
                    _md(f"{s.name}: {show_value(s.actual)} (expected {show_value(s.expected)})", cell=True)
                    for s in d.settings
                ),
            ],
            _DRIFT_SYMBOL[d.status][0],
            d.status.value,
            d.key,
            _drift_lines(d),
        )
        for d in report.chats
        if d.status not in _DRIFT_QUIET
    ]
    return _markdown(
        "dtchat drift",
        ["Chat", "Status", "Missing members", "Unexpected members", "Name / owner", "Settings"],
        rows,
        "No drift.",
        report.summary() + (" " + api_calls_line(meter) if meter is not None else ""),
    )


def drift_to_json(report: DriftReport, meter: Meter | None = None) -> dict[str, Any]:
    """The documented, versioned drift object (see docs/formats.md)."""

    def pair(p: tuple | None) -> dict[str, Any] | None:
        return None if p is None else {"expected": p[0], "actual": p[1]}

    rotation = report.rotation
    return {
        "format_version": FORMAT_VERSION,
        "kind": "dtchat-drift",
        "summary": report.counts(),
        **({"api_calls": meter.to_json()} if meter is not None else {}),
        "rotation": None
        if rotation is None
        else {"days": rotation.days, "slice": rotation.slice + 1, "date": rotation.date, "reads": report.reads},
        "chats": [
            {
                "key": d.key,
                "status": d.status.value,
                "chatid": d.chatid,
                "members_missing": list(d.missing),
                "members_unexpected": list(d.unexpected),
                "settings": [{"name": s.name, "expected": s.expected, "actual": s.actual} for s in d.settings],
                "name": pair(d.name),
                "owner": pair(d.owner),
                "error": d.error,
                "verified_at": d.verified_at,
            }
            for d in report.chats
        ],
    }


def render_drift_json(report: DriftReport, meter: Meter | None = None) -> str:
    return _json(drift_to_json(report, meter), indent=2) + "\n"


# -- validate ---------------------------------------------------------------------------

VALIDATE_FORMATS = ("text", "json", "github")


def _issue_json(issue: Any) -> dict[str, Any]:
    where = issue.location
    return {"file": where.file, "line": where.line or None, "column": where.column or None, "message": issue.message}


def render_validation_json(files: tuple[str, ...], issues: tuple[Any, ...], summary: str) -> str:
    """``validate --format json`` (see docs/formats.md)."""
    document = {
        "format_version": FORMAT_VERSION,
        "kind": "dtchat-validate",
        "valid": not issues,
        "files": list(files),
        "errors": [_issue_json(i) for i in issues],
        "summary": summary,
    }
    return _json(document, indent=2)


def _gh_data(text: str) -> str:
    """A workflow command's message: :func:`.textsafe.safe_line` (a control character in a file name or a value
    shows as ``\\x1b``, a line break as ``\\x0a``), then percent-encoded as the Actions toolkit does."""
    return _gh_percent(safe_line(text))


def _gh_percent(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_percent(guard_inline(escape(text))).replace(":", "%3A").replace(",", "%2C")


def render_validation_github(issues: tuple[Any, ...], summary: str) -> str:
    """``validate --format github``: one workflow-command annotation per problem, at file:line:col; the only
    lines that start with ``::`` are the ones written here."""
    lines = []
    for issue in issues:
        where = issue.location
        props = [f"file={_gh_property(where.file)}"]
        if where.line:
            props += [f"line={where.line}", f"col={where.column or 1}"]
        props.append("title=dtchat validate")
        lines.append(f"::error {','.join(props)}::{_gh_data(issue.message)}")
    lines.append(safe_line(summary))
    return "\n".join(lines)


# -- apply result -------------------------------------------------------------------------


def render_apply_json(result: Any, meter: Meter | None = None) -> str:
    """``apply --format json``: per chat what was done (see docs/formats.md)."""
    document = {
        "format_version": FORMAT_VERSION,
        "kind": "dtchat-apply",
        "ok": result.ok,
        "interrupted": result.interrupted,
        "summary": result.summary(),
        "calls": result.calls,
        **({"api_calls": meter.to_json()} if meter is not None else {}),
        "not_started": list(result.not_started),
        "chats": [
            {
                "key": r.key,
                "action": r.action.value,
                "ok": r.ok,
                "chatid": r.chatid,
                "calls": r.calls,
                "error": r.error,
                "warning": r.warning,
            }
            for r in result.results
        ],
    }
    return _json(document, indent=2)


# -- watch ------------------------------------------------------------------------------------------


def _watch_parts(d: ChatDrift) -> list[str]:
    parts = [f"+ {m}" for m in d.unexpected] + [f"- {m}" for m in d.missing]
    if d.name:
        parts.append(f"name: {d.name[1]} (wanted {d.name[0]})")
    if d.owner:
        parts.append(f"owner: {d.owner[1]} (wanted {d.owner[0]})")
    parts.extend(f"{s.name}: {show_value(s.actual)} (wanted {show_value(s.expected)})" for s in d.settings)
    if d.status is Status.ERROR:
        parts.append(d.error or "unreadable")
    return parts


def watch_kind(alert: Any) -> str:
    """``drift``, ``enforced``, ``in_sync`` or ``error``: what one handling of a chat came to."""
    if alert.enforced:
        return "enforced"
    if alert.drift is None or alert.drift.status is Status.ERROR:
        return "error"
    return "drift" if alert.drift.status is Status.DRIFTED else "in_sync"


def render_watch_text(alert: Any) -> str | None:
    """One line for a chat that drifted or was re-converged (``drift eng-oncall: + mallory (added in
    DingTalk)``); None for one found in sync (that goes to the log)."""
    kind = watch_kind(alert)
    if kind == "in_sync" and not alert.problem:
        return None
    parts = _watch_parts(alert.drift) if alert.drift is not None else []
    what = ", ".join(parts) if parts else "no difference left"
    line = f"{kind} {alert.key}{_where(alert.chatid)}: {what} ({alert.cause})"
    if alert.enforced:
        line += f"; converged ({alert.metered} metered call{'s' if alert.metered != 1 else ''})"
    if alert.problem:
        line += f"; {alert.problem}"
    return safe_line(line)


def render_watch_json(alert: Any) -> str:
    """One JSON object on one line per handled chat (docs/watch.md)."""
    d = alert.drift
    document = {
        "kind": watch_kind(alert),
        "key": alert.key,
        "chatid": alert.chatid,
        "cause": alert.cause,
        "members_unexpected": list(d.unexpected) if d else [],
        "members_missing": list(d.missing) if d else [],
        "name": {"expected": d.name[0], "actual": d.name[1]} if d and d.name else None,
        "owner": {"expected": d.owner[0], "actual": d.owner[1]} if d and d.owner else None,
        "settings": [{"name": s.name, "expected": s.expected, "actual": s.actual} for s in d.settings] if d else [],
        "enforced": alert.enforced,
        "problem": alert.problem or (d.error if d else None),
        "metered": alert.metered,
    }
    return _json(document)


# -- the state file (``dtchat state list`` / ``state show``) -------------------------------------------


def _binding_status(binding: Any) -> str:
    if binding.pending:
        return f"pending create since {binding.created_at or 'an unknown time'}: `dtchat import` or `forget` it"
    if binding.digest:
        return f"verified {binding.verified_at}"
    return "never verified (the next plan reads it)"


def render_state_text(path: Any, bindings: Any) -> str:
    """One line per key: its chat and what dtchat knows of it."""
    if not bindings:
        return safe_line(f"{path}: no chats yet (apply records each chat it creates)")
    width = max(len(key) for key in bindings)
    lines = [
        f"{key:<{width}}  {binding.chatid or '-':<36}  {_binding_status(binding)}"
        for key, binding in sorted(bindings.items())
    ]
    n = len(bindings)
    return "\n".join(safe_line(line) for line in [*lines, f"{n} chat{'s' if n != 1 else ''} in {path}."])


def render_state_json(path: Any, bindings: Any) -> str:
    chats = {key: binding.to_json() for key, binding in sorted(bindings.items())}
    return _json({"state_file": str(path), "chats": chats}, indent=2)
