"""Saved plans: ``plan --out F`` writes one, ``apply --plan F`` applies exactly it, or refuses.

A saved plan records a fingerprint of each chat's live state and a digest of
the config files. Applying it re-reads the chats it would change; if any moved
since (someone added a member by hand, another apply ran) or the YAML changed,
the whole plan is refused before a single write, as Terraform does.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .errors import DtchatError
from .model import LiveChat
from .plan import Action, ChatChange, Plan, SettingChange, live_fingerprint
from .planner import LiveResult
from .render import FORMAT_VERSION, plan_to_json
from .state import Binding, now_iso

KIND = "dtchat-plan"


class PlanFileError(DtchatError):
    """The saved plan file is unreadable, not a dtchat plan, or malformed."""


@dataclass(frozen=True)
class SavedPlan:
    plan: Plan
    config_files: tuple[str, ...]
    config_digest: str
    state_file: Optional[str]
    #: The file it was read from, for messages.
    source: str = ""


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


def plan_document(plan: Plan, config_files: Sequence[str], state_file: Optional[str],
                  warnings: Sequence[str] = ()) -> dict[str, Any]:
    return plan_to_json(
        plan,
        warnings=list(warnings),
        created_at=now_iso(),
        config={"files": list(config_files), "digest": config_digest(config_files)},
        state_file=state_file,
    )


def _fail(path: "str | os.PathLike[str]", where: str, what: str) -> PlanFileError:
    return PlanFileError(f"{path}: {where}: {what}")


def _strings(path, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, where, "must be a list of strings")
    return tuple(value)


def _pair(path, where: str, value: Any) -> Optional[tuple[Optional[str], str]]:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("new"), str):
        raise _fail(path, where, 'must be null or {"old": ..., "new": "..."}')
    return (value.get("old"), value["new"])


def _change(path, i: int, raw: Any) -> ChatChange:
    where = f"changes[{i}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str):
        raise _fail(path, where, 'must be an object with a string "key"')
    try:
        action = Action(raw.get("action"))
    except ValueError:
        raise _fail(path, f"{where}.action", f"unknown action {raw.get('action')!r}") from None
    settings_raw = raw.get("settings") or []
    if not isinstance(settings_raw, list) or not all(isinstance(s, dict) and "name" in s for s in settings_raw):
        raise _fail(path, f"{where}.settings", 'must be a list of {"name", "old", "new"}')
    live_count = raw.get("live_count", 0)
    if not isinstance(live_count, int):
        raise _fail(path, f"{where}.live_count", "must be an integer")
    return ChatChange(
        key=raw["key"],
        action=action,
        chatid=raw.get("chatid"),
        name=_pair(path, f"{where}.name", raw.get("name")),
        owner=_pair(path, f"{where}.owner", raw.get("owner")),
        add=_strings(path, f"{where}.add", raw.get("add", [])),
        remove=_strings(path, f"{where}.remove", raw.get("remove", [])),
        kept=_strings(path, f"{where}.kept", raw.get("kept", [])),
        settings=tuple(SettingChange(s["name"], s.get("old"), s.get("new")) for s in settings_raw),
        live_count=live_count,
        error=raw.get("error"),
        fingerprint=raw.get("fingerprint"),
    )


def read_plan(path: "str | os.PathLike[str]") -> SavedPlan:
    """Load and validate a saved plan; every problem is a one-line PlanFileError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read plan: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanFileError(f"{path}: not a JSON plan file ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise PlanFileError(f"{path}: not a dtchat plan (write one with `dtchat plan --out {path}`)")
    if data.get("format_version") != FORMAT_VERSION:
        raise PlanFileError(f"{path}: plan format_version {data.get('format_version')!r} is not supported")
    config = data.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
        raise _fail(path, "config", 'must be {"files": [...], "digest": "..."}')
    changes = data.get("changes")
    if not isinstance(changes, list):
        raise _fail(path, "changes", "must be a list")
    state_file = data.get("state_file")
    return SavedPlan(
        plan=Plan(tuple(_change(path, i, c) for i, c in enumerate(changes))),
        config_files=_strings(path, "config.files", config.get("files", [])),
        config_digest=config["digest"],
        state_file=state_file if isinstance(state_file, str) else None,
        source=str(path),
    )


def to_verify(saved: SavedPlan) -> list[str]:
    """The chatids whose live state must be re-read before applying."""
    return sorted({c.chatid for c in saved.plan.of(Action.UPDATE) if c.chatid})


def staleness(saved: SavedPlan, live: Mapping[str, LiveResult], state: Mapping[str, Binding]) -> list[str]:
    """Why the saved plan may no longer be applied; [] when it still holds."""
    problems: list[str] = []
    if config_digest(saved.config_files) != saved.config_digest:
        problems.append("the configuration files changed since the plan was made")
    for c in saved.plan.changes:
        bound = state.get(c.key)
        if c.action is Action.UPDATE:
            current = live.get(c.chatid or "")
            if not isinstance(current, LiveChat):
                problems.append(f"{c.key}: chat {c.chatid} can no longer be read")
            elif live_fingerprint(current) != c.fingerprint:
                problems.append(f"{c.key}: chat {c.chatid} changed in DingTalk since the plan was made")
            if bound is not None and bound.chatid != c.chatid:  # unrecorded is fine: a pinned chat
                problems.append(f"{c.key}: the state file no longer maps it to {c.chatid}")
        elif c.action is Action.CREATE and bound is not None:
            problems.append(f"{c.key}: the state file already has a chat for it (created since the plan?)")
        elif c.action is Action.FORGET and (bound is None or bound.chatid != c.chatid):
            problems.append(f"{c.key}: the state file changed since the plan was made")
    return problems
