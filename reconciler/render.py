"""Plan output: text for terminals, Markdown for PR comments, JSON for machines.

Text uses click styles; click strips them when the output is not a terminal.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .batching import calls_for
from .drift import ChatDrift, DriftReport, Status
from .notify import notify_call
from .plan import Action, ChatChange, Plan, SettingChange, show_value
from .planfile import FORMAT_VERSION, plan_to_json

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
}
_LABEL = {
    Action.CREATE: "create",
    Action.UPDATE: "update",
    Action.NOOP: "no change",
    Action.FORGET: "forget",
    Action.ORPHAN: "orphan",
    Action.ERROR: "error",
}


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


def _chat_lines(c: ChatChange, verbose: bool = False, plan_flag: str = "") -> list[str]:
    """The lines under a chat's heading; ``plan_flag`` is the ``--state`` its hints carry."""
    lines: list[str] = []
    if c.action is Action.ERROR:
        return [c.error or "unknown error", *(_source_line(s) for s in c.sources if verbose)]
    if c.action is Action.FORGET:
        return ["not in the YAML; --prune: dtchat stops managing it; the chat stays in DingTalk"]
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
    lines.extend(click.style(f"+ {m}", fg="green") for m in c.add)
    lines.extend(click.style(f"- {m}", fg="red") for m in c.remove)
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
    blocks: list[tuple[str, str | None, str, list[str]]],
    summary: str,
    clean: str | None,
    warnings: tuple[str, ...] = (),
    hints: tuple[str, ...] = (),
) -> str:
    """Blocks of (symbol, colour, heading, lines), then warnings, hints, the all-clear (if any) and the summary."""
    out: list[str] = []
    for symbol, colour, heading, lines in blocks:
        out.append(click.style(f"{symbol} {heading}", fg=colour, bold=True))
        out.extend(f"    {line}" for line in lines)
    if out:
        out.append("")
    out.extend(click.style(f"Warning: {w}", fg="yellow") for w in warnings)
    out.extend(f"Hint: {h}" for h in hints)
    if clean:
        out.append(clean)
    out.append(summary)
    return "\n".join(out)


def _where(chatid: str | None) -> str:
    return f" ({chatid})" if chatid else ""


def render_text(plan: Plan, *, verbose: bool = False, warnings: tuple[str, ...] = ()) -> str:
    """The plan as a terminal shows it; unchanged chats only with ``verbose``."""
    blocks = [
        (*_SYMBOL[c.action], _heading(c), _chat_lines(c, verbose, plan.flag))
        for c in plan.changes
        if verbose or c.action is not Action.NOOP
    ]
    clean = None if plan.has_changes or plan.has_errors else "No changes. DingTalk matches the configuration."
    hint = rename_hint(plan)
    return _text(blocks, plan.summary(), clean, warnings, (hint,) if hint else ())


def _md(text: Any) -> str:
    """Escape user-controlled text for a Markdown table cell or summary line."""
    s = str(text)
    for ch in "\\`*_[]<>|#":
        s = s.replace(ch, "\\" + ch)
    return s.replace("\r", " ").replace("\n", " ")


def _details(symbol: str, label: str, key: str, lines: list[str]) -> list[str]:
    """A collapsible section; the lines go in a diff fence that user text cannot close."""
    body = [click.unstyle(line).replace("```", "'''") for line in lines]
    return [
        f"<details><summary>{symbol} {label} <code>{_md(key)}</code></summary>",
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
    rows: list[tuple[list[str], str, str, str, list[str]]],
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
    return "\n".join(out) + "\n"


def _pair_cell(label: str, pair: tuple | None) -> str | None:
    if not pair:
        return None
    return _md(f"{label}: {pair[1]}" if pair[0] is None else f"{label}: {pair[0]} → {pair[1]}")


def render_markdown(plan: Plan, *, warnings: tuple[str, ...] = ()) -> str:
    """A PR comment: summary table, then a collapsible section per changed chat."""
    rows = [
        (
            [
                f"`{_md(c.key)}`",
                _LABEL[c.action],
                str(len(c.add)),
                str(len(c.remove)),
                ", ".join(x for x in (_pair_cell("name", c.name), _pair_cell("owner", c.owner)) if x),
                ", ".join(_md(_setting_line(s)) for s in c.settings),
            ],
            _SYMBOL[c.action][0],
            _LABEL[c.action],
            c.key,
            _chat_lines(c, verbose=True, plan_flag=plan.flag),
        )
        for c in plan.changes
        if c.action is not Action.NOOP
    ]
    hint = rename_hint(plan)
    return _markdown(
        "dtchat plan",
        ["Chat", "Action", "+ members", "− members", "Name / owner", "Settings"],
        rows,
        "No changes.",
        plan.summary(),
        warnings,
        (hint,) if hint else (),
    )


def dry_run_calls(plan: Plan, *, notify: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, endpoint, body) of every call apply would make, in each chat's order; a new chat's id is a
    placeholder (``<chatid of new chat KEY>``); a forget is ("key", "forget", {"chatid": …}) (no call)."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for change in plan.changes:
        calls = calls_for(change)
        out.extend((change.key, call.endpoint, call.shown_body(change.key)) for call in calls)
        if notify and calls:
            out.append((change.key, *notify_call(change, change.chatid or f"<chatid of new chat {change.key}>")))
        if change.action is Action.FORGET:
            out.append((change.key, "forget", {"chatid": change.chatid}))
    return out


def render_calls(plan: Plan, *, notify: bool = False) -> str:
    """``apply --dry-run``: every API call apply would make, in order, each body exactly as it would be sent."""
    out = ["", "Dry run: these API calls would be made (nothing was changed):"]
    count = 0
    for key, endpoint, body in dry_run_calls(plan, notify=notify):
        if endpoint == "forget":
            out.append(f"  {key}: (state only) forget {body['chatid']}")
        else:
            out.append(f"  {key}: POST {endpoint} {json.dumps(body, ensure_ascii=False)}")
            count += 1
    out.append(f"{count} API call{'s' if count != 1 else ''}.")
    return "\n".join(out)


def render_calls_json(plan: Plan, *, notify: bool = False) -> str:
    """``apply --dry-run --format json`` (see docs/formats.md)."""
    entries = dry_run_calls(plan, notify=notify)
    calls = [{"key": k, "endpoint": e, "body": b} for k, e, b in entries if e != "forget"]
    forgets = [k for k, e, _ in entries if e == "forget"]
    document = {
        "format_version": FORMAT_VERSION,
        "kind": "dtchat-dry-run",
        "calls": calls,
        "forget": forgets,
        "errors": [{"key": c.key, "error": c.error} for c in plan.of(Action.ERROR)],
    }
    return json.dumps(document, ensure_ascii=False, indent=2)


def render_json(plan: Plan, *, warnings: tuple[str, ...] = ()) -> str:
    return json.dumps(plan_to_json(plan, warnings=list(warnings)), ensure_ascii=False, indent=2) + "\n"


# -- drift ----------------------------------------------------------------------------

_DRIFT_SYMBOL = {
    Status.DRIFTED: ("~", "yellow"),
    Status.MISSING: ("+", "green"),
    Status.ERROR: ("!", "red"),
    Status.IN_SYNC: ("=", None),
}


def _drift_lines(d: ChatDrift) -> list[str]:
    if d.status is Status.ERROR:
        return [d.error or "unknown error"]
    if d.status is Status.MISSING:
        return ["no chat exists for this key yet (run apply)"]
    lines = []
    if d.name:
        lines.append(f"name: expected {d.name[0]}, live {d.name[1]}")
    if d.owner:
        lines.append(f"owner: expected {d.owner[0]}, live {d.owner[1]}")
    lines.extend(f"{s.name}: expected {show_value(s.expected)}, live {show_value(s.actual)}" for s in d.settings)
    lines.extend(click.style(f"+ {m} (in the YAML, not in the chat)", fg="green") for m in d.missing)
    lines.extend(click.style(f"- {m} (in the chat, not in the YAML)", fg="red") for m in d.unexpected)
    return lines


def render_drift_text(report: DriftReport, *, verbose: bool = False) -> str:
    blocks = [
        (*_DRIFT_SYMBOL[d.status], f"{d.status.value.replace('_', ' ')} {d.key}{_where(d.chatid)}", _drift_lines(d))
        for d in report.chats
        if verbose or d.status is not Status.IN_SYNC
    ]
    clean = None if report.has_drift or report.has_errors else "No drift. DingTalk matches the configuration."
    return _text(blocks, report.summary(), clean)


def render_drift_markdown(report: DriftReport) -> str:
    rows = [
        (
            [
                f"`{_md(d.key)}`",
                d.status.value,
                str(len(d.missing)),
                str(len(d.unexpected)),
                ", ".join(
                    _md(f"{label}: {pair[1]} (expected {pair[0]})")
                    for label, pair in (("name", d.name), ("owner", d.owner))
                    if pair
                ),
                ", ".join(
                    _md(f"{s.name}: {show_value(s.actual)} (expected {show_value(s.expected)})") for s in d.settings
                ),
            ],
            _DRIFT_SYMBOL[d.status][0],
            d.status.value,
            d.key,
            _drift_lines(d),
        )
        for d in report.chats
        if d.status is not Status.IN_SYNC
    ]
    return _markdown(
        "dtchat drift",
        ["Chat", "Status", "Missing members", "Unexpected members", "Name / owner", "Settings"],
        rows,
        "No drift.",
        report.summary(),
    )


def drift_to_json(report: DriftReport) -> dict[str, Any]:
    """The documented, versioned drift object (see docs/formats.md)."""

    def pair(p: tuple | None) -> dict[str, Any] | None:
        return None if p is None else {"expected": p[0], "actual": p[1]}

    return {
        "format_version": FORMAT_VERSION,
        "kind": "dtchat-drift",
        "summary": report.counts(),
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
            }
            for d in report.chats
        ],
    }


def render_drift_json(report: DriftReport) -> str:
    return json.dumps(drift_to_json(report), ensure_ascii=False, indent=2) + "\n"


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
    return json.dumps(document, ensure_ascii=False, indent=2)


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def render_validation_github(issues: tuple[Any, ...], summary: str) -> str:
    """``validate --format github``: one workflow-command annotation per problem, at file:line:col."""
    lines = []
    for issue in issues:
        where = issue.location
        props = [f"file={_gh_property(where.file)}"]
        if where.line:
            props += [f"line={where.line}", f"col={where.column or 1}"]
        props.append("title=dtchat validate")
        lines.append(f"::error {','.join(props)}::{_gh_data(issue.message)}")
    lines.append(summary)
    return "\n".join(lines)


# -- apply result -------------------------------------------------------------------------


def render_apply_json(result: Any) -> str:
    """``apply --format json``: per chat what was done (see docs/formats.md)."""
    document = {
        "format_version": FORMAT_VERSION,
        "kind": "dtchat-apply",
        "ok": result.ok,
        "interrupted": result.interrupted,
        "summary": result.summary(),
        "calls": result.calls,
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
    return json.dumps(document, ensure_ascii=False, indent=2)
