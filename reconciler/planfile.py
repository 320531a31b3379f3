"""Plans as JSON: the documented object ``plan --format json`` prints and ``plan --out F`` saves.

``apply --plan F`` never executes what the file says. It re-checks the YAML
digest, re-reads the state and the live chats, recomputes the plan with the
options recorded in the file, and applies it only if it is identical to the
saved one (design §6). A hand-edited plan (an extra ``remove``, a ``forget``,
a malformed entry) or a stale one (someone changed a chat since) is therefore
refused before a single write: a saved plan can only ever do what the YAML says.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DtchatError
from .files import DuplicateKey, TooDeep, loads_bounded
from .model import MemberSource, Selector
from .plan import Action, ChatChange, Plan, SettingChange
from .state import now_iso

KIND = "dtchat-plan"
FORMAT_VERSION = 1


class PlanFileError(DtchatError):
    """The saved plan file is unreadable, not a dtchat plan, malformed, or no longer what the YAML says."""


def _source_to_json(s: MemberSource) -> dict[str, Any]:
    return {
        "selector": str(s.selector),
        "kind": s.selector.kind,
        "value": s.selector.value,
        "recursive": s.selector.recursive,
        "label": s.label,
        "count": s.count,
        "excluded": s.excluded,
    }


def change_to_json(c: ChatChange) -> dict[str, Any]:
    def pair(p: tuple | None) -> dict[str, Any] | None:
        return None if p is None else {"old": p[0], "new": p[1]}

    data = {
        "key": c.key,
        "action": c.action.value,
        "chatid": c.chatid,
        "name": pair(c.name),
        "owner": pair(c.owner),
        "add": list(c.add),
        "remove": list(c.remove),
        "kept": list(c.kept),
        "settings": [{"name": s.name, "old": s.old, "new": s.new} for s in c.settings],
        "live_count": c.live_count,
        "fingerprint": c.fingerprint,
        "error": c.error,
        "sources": [_source_to_json(s) for s in c.sources],
    }
    if c.pending:
        data["pending_create"] = True
    if c.digest:
        data["digest"] = c.digest
    if c.verified_at:
        data["verified_at"] = c.verified_at
    return data


def plan_to_json(plan: Plan, **extra: Any) -> dict[str, Any]:
    """The documented, versioned plan object (see docs/formats.md)."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        **extra,
        "summary": plan.counts(),
        "forecast": {"metered": plan.forecast, "reads": plan.reads, "writes": plan.writes},
        "changes": [change_to_json(c) for c in plan.changes],
    }


def config_digest(files: Iterable[str]) -> str:
    """sha256 over each file's path and bytes, in sorted order."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode("utf-8") + b"\0")
        try:
            h.update(Path(name).read_bytes())
        except OSError:
            h.update(b"<missing>")
        h.update(b"\0")
    return "sha256:" + h.hexdigest()[:32]


@dataclass(frozen=True)
class PlanOptions:
    """What a plan was made with, so applying it can make the same plan again."""

    targets: tuple[str, ...] | None = None
    prune: bool = False
    #: ``--refresh``: which chats were read (``changed``: those that can have changed; ``all``).
    refresh: str = "changed"

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": list(self.targets) if self.targets is not None else None,
            "prune": self.prune,
            "refresh": self.refresh,
        }


def plan_document(
    plan: Plan,
    config_files: Sequence[str],
    state_file: str | None,
    warnings: Sequence[str] = (),
    options: PlanOptions = PlanOptions(),
) -> dict[str, Any]:
    return plan_to_json(
        plan,
        warnings=list(warnings),
        created_at=now_iso(),
        config={"files": list(config_files), "digest": config_digest(config_files)},
        state_file=state_file,
        options=options.to_json(),
    )


@dataclass(frozen=True)
class SavedPlan:
    """A plan file as read back: only what is needed to make the same plan again and compare."""

    config_files: tuple[str, ...]
    config_digest: str
    state_file: str | None
    options: PlanOptions
    #: The ``changes`` list exactly as saved.
    changes: list
    #: The file it was read from, for messages.
    source: str = ""
    #: The saved ``warnings`` and ``forecast`` (for ``dtchat show``; never trusted by apply).
    warnings: tuple[str, ...] = ()
    forecast: Any = None


def _fail(path: Any, where: str, what: str) -> PlanFileError:
    return PlanFileError(f"{path}: {where}: {what}")


def _strings(path: Any, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, where, "must be a list of strings")
    return tuple(value)


def read_plan(path: str | os.PathLike[str]) -> SavedPlan:
    """Load a saved plan and check its shape; every problem is a one-line PlanFileError."""
    try:
        data = loads_bounded(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read plan: {exc.strerror}") from None
    except TooDeep as exc:
        raise PlanFileError(f"{path}: not a JSON plan file ({exc})") from None
    except DuplicateKey as exc:
        raise PlanFileError(
            f"{path}:{exc.line}:{exc.column}: the key {exc.key!r} is written twice in one object; "
            "refusing the plan, nothing was changed"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise PlanFileError(f"{path}: not a JSON plan file ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise PlanFileError(f"{path}: not a dtchat plan (write one with `dtchat plan PATH --out {path}`)")
    if data.get("format_version") != FORMAT_VERSION:
        raise PlanFileError(f"{path}: plan format_version {data.get('format_version')!r} is not supported")
    config = data.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
        raise _fail(path, "config", 'must be {"files": [...], "digest": "..."}')
    files = _strings(path, "config.files", config.get("files"))
    if not files:
        raise _fail(path, "config.files", "names no configuration file")
    changes = data.get("changes")
    if not isinstance(changes, list):
        raise _fail(path, "changes", "must be a list")
    options = data.get("options", {})
    if (
        not isinstance(options, dict)
        or not isinstance(options.get("prune", False), bool)
        or options.get("refresh", "all") not in ("changed", "all")
    ):
        raise _fail(
            path, "options", 'must be {"targets": [...] or null, "prune": true|false, "refresh": "changed"|"all"}'
        )
    targets = options.get("targets")
    state_file = data.get("state_file")
    if state_file is not None and not isinstance(state_file, str):
        raise _fail(path, "state_file", "must be a string or null")
    return SavedPlan(
        config_files=files,
        config_digest=config["digest"],
        state_file=state_file,
        options=PlanOptions(
            None if targets is None else _strings(path, "options.targets", targets),
            options.get("prune", False),
            # a plan saved before --refresh existed read every chat
            options.get("refresh", "all"),
        ),
        changes=changes,
        source=str(path),
        warnings=_strings(path, "warnings", data.get("warnings", [])),
        forecast=data.get("forecast"),
    )


def _pair(path: Any, where: str, value: Any) -> tuple[str | None, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("new"), str)
        or not isinstance(value.get("old"), (str, type(None)))
    ):
        raise _fail(path, where, 'must be null or {"old": text or null, "new": text}')
    return value["old"], value["new"]


def _source_from_json(path: Any, where: str, value: Any) -> MemberSource:
    if not isinstance(value, dict) or value.get("kind") not in Selector.KINDS:
        raise _fail(path, where, f"must be a selector source with a kind of {', '.join(Selector.KINDS)}")
    selector_value, label, count = value.get("value"), value.get("label"), value.get("count")
    if (
        not isinstance(selector_value, (int, str))
        or isinstance(selector_value, bool)
        or not isinstance(label, str)
        or not isinstance(count, int)
        or isinstance(count, bool)
    ):
        raise _fail(path, where, "must have a value, a label and a count")
    selector = Selector(value["kind"], selector_value, value.get("recursive") is True)
    return MemberSource(selector, label, count, value.get("excluded") is True)


def _change_from_json(path: Any, where: str, c: Any) -> ChatChange:
    """One saved change, checked as strictly as it was written (a hand-edited file is one-line errors)."""
    if not isinstance(c, dict) or not isinstance(c.get("key"), str):
        raise _fail(path, where, "must be an object with a key")
    try:
        action = Action(c.get("action"))
    except ValueError:
        raise _fail(path, f"{where}.action", f"must be one of {', '.join(a.value for a in Action)}") from None
    settings = c.get("settings", [])
    if not isinstance(settings, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) for s in settings
    ):
        raise _fail(path, f"{where}.settings", 'must be a list of {"name", "old", "new"}')
    for name in ("chatid", "error", "fingerprint", "digest", "verified_at"):
        if not isinstance(c.get(name), (str, type(None))):
            raise _fail(path, f"{where}.{name}", "must be text or null")
    live_count = c.get("live_count", 0)
    if not isinstance(live_count, int) or isinstance(live_count, bool):
        raise _fail(path, f"{where}.live_count", "must be a whole number")
    sources = c.get("sources", [])
    if not isinstance(sources, list):
        raise _fail(path, f"{where}.sources", "must be a list")
    return ChatChange(
        key=c["key"],
        action=action,
        chatid=c.get("chatid"),
        name=_pair(path, f"{where}.name", c.get("name")),
        owner=_pair(path, f"{where}.owner", c.get("owner")),
        add=_strings(path, f"{where}.add", c.get("add", [])),
        remove=_strings(path, f"{where}.remove", c.get("remove", [])),
        kept=_strings(path, f"{where}.kept", c.get("kept", [])),
        settings=tuple(SettingChange(s["name"], s.get("old"), s.get("new")) for s in settings),
        live_count=live_count,
        error=c.get("error"),
        fingerprint=c.get("fingerprint"),
        sources=tuple(_source_from_json(path, f"{where}.sources[{i}]", s) for i, s in enumerate(sources)),
        pending=c.get("pending_create") is True,
        digest=c.get("digest"),
        verified_at=c.get("verified_at"),
    )


def saved_plan_as_plan(saved: SavedPlan, flag: str = "") -> Plan:
    """The saved plan as a Plan to render (``dtchat show``): exactly what it recorded, nothing read again."""
    forecast = saved.forecast if isinstance(saved.forecast, dict) else {}
    counts = [forecast.get(k) for k in ("reads", "writes")]
    reads, writes = (n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0 for n in counts)
    changes = tuple(_change_from_json(saved.source, f"changes[{i}]", c) for i, c in enumerate(saved.changes))
    return Plan(changes, flag=flag, reads=reads, writes=writes)


def differences(saved: SavedPlan, plan: Plan) -> list[str]:
    """Why ``plan`` (made again now) is not the saved plan; [] when they are identical."""
    if config_digest(saved.config_files) != saved.config_digest:
        return ["the configuration files changed since the plan was made"]
    now = json.loads(json.dumps([change_to_json(c) for c in plan.changes], ensure_ascii=False))
    before = {c.get("key") if isinstance(c, dict) else None: c for c in saved.changes}
    after = {c["key"]: c for c in now}
    problems = []
    for key in sorted(set(before) | set(after), key=str):
        if before.get(key) != after.get(key):
            if key not in after:
                problems.append(f"{key}: in the saved plan, not in the plan made now")
            elif key not in before:
                problems.append(f"{key}: not in the saved plan")
            elif before[key].get("fingerprint") != after[key].get("fingerprint"):
                problems.append(f"{key}: chat {after[key].get('chatid')} changed in DingTalk since the plan was made")
            else:
                problems.append(
                    f"{key}: the saved entry differs from the plan made now (the state or the "
                    "directory changed since, or the file was edited)"
                )
    if not problems and len(saved.changes) != len(now):
        problems.append("the saved plan lists a chat twice")
    return problems
