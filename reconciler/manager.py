"""The library entry points the CLI calls: each returns values; none prints or exits.

Like octoDNS's Manager, this is where config, state, live reads, planner and
applier meet, so the click commands stay thin.
"""
from __future__ import annotations

import difflib
from typing import Callable, Collection, Optional, Sequence

from .adopt import desired_from_live
from .config import Config, dump_config, is_chat_key
from .dingtalk import DingTalkClient
from .errors import UsageError
from .live import read_live
from .model import LiveChat
from .plan import Plan
from .planfile import SavedPlan, staleness, to_verify
from .model import ReadFailure
from .planner import make_plan, resolve
from .state import StateFile


def check_targets(config: Config, state: StateFile, targets: Sequence[str]) -> Optional[frozenset[str]]:
    """None for "all chats"; otherwise the targets, each of which must be a known key."""
    if not targets:
        return None
    known = {c.key for c in config.chats} | set(state.bindings)
    for key in targets:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise UsageError(f"--target {key}: no chat with that key in the configuration or the state{hint}")
    return frozenset(targets)


def chats_to_read(config: Config, state: StateFile, targets: Optional[Collection[str]] = None) -> list[str]:
    """The chatids a plan reads: one per targeted key that a pin or the state resolves."""
    resolution = resolve(config.chats, state.bindings)
    return [cid for key, cid in resolution.chatids.items() if targets is None or key in targets]


def compute_plan(
    config: Config,
    state: StateFile,
    client: DingTalkClient,
    *,
    targets: Optional[Collection[str]] = None,
    parallelism: int = 8,
    on_read: Optional[Callable[[], None]] = None,
    chatids: Optional[Sequence[str]] = None,
) -> Plan:
    """Read every targeted chat once (concurrently) and diff it against the YAML.

    ``chatids`` is :func:`chats_to_read`'s answer when the caller already has it (to size a progress bar).
    """
    if chatids is None:
        chatids = chats_to_read(config, state, targets)
    live = read_live(client, chatids, parallelism=parallelism, on_done=on_read)
    return make_plan(config.chats, state.bindings, live, targets=targets)


def verify_saved_plan(saved: SavedPlan, client: DingTalkClient, state: StateFile, *, parallelism: int = 8) -> Plan:
    """The saved plan, if every chat it changes is as it was when planned; else UsageError naming them."""
    live = read_live(client, to_verify(saved), parallelism=parallelism)
    stale = staleness(saved, live, state.bindings)
    if stale:
        raise UsageError(f"{saved.source}: refusing the saved plan, nothing was changed: " + "; ".join(stale))
    return saved.plan


def dump_chats(client: DingTalkClient, chatids: Sequence[str], *, parallelism: int = 8) -> str:
    """Live chats as YAML that ``plan`` shows as no change; every chat must be readable."""
    live = read_live(client, chatids, parallelism=parallelism)
    failures = [f"{cid}: {r.message}" for cid, r in live.items() if isinstance(r, ReadFailure)]
    if failures:
        raise UsageError("cannot dump, nothing was written: " + "; ".join(failures))
    return dump_config(desired_from_live(r for r in live.values() if isinstance(r, LiveChat)))


def import_chat(client: DingTalkClient, state: StateFile, key: str, chatid: str) -> LiveChat:
    """Verify the chat exists (one ``get``), then bind ``key`` to it. Raises DingTalkError if not."""
    if not is_chat_key(key):
        raise UsageError(f"KEY {key!r}: must be a lowercase slug (a-z, 0-9 and '-', not at either end)")
    live = LiveChat.from_api(client.get_chat(chatid), chatid)
    other = next((k for k, b in state.bindings.items() if b.chatid == chatid and k != key), None)
    if other:
        raise UsageError(f"chatid {chatid} is already bound to `{other}`; run `dtchat forget {other}` first")
    state.record(key, chatid)
    return live
