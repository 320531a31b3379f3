"""Does ``apply`` make the fewest write calls DingTalk's rules allow, in both API generations?

Run by hand: ``python bench/bench_apply_calls.py [--api v1|legacy|both]`` (default both). A mixed
change set (creates of 1, 40, 41, 300 and 1,000 members; updates of every kind) is planned and
applied against the emulator, once per generation on a fresh emulator. For each chat, the write
calls the backend planned (``len(backend.calls(change))``) and the ones the emulator logged
(``/v1.0/im/group/create`` + ``/v1.0/im/group/update`` for v1, ``/chat/create`` + ``/chat/update``
for legacy) are compared with ``packing.minimum_calls(change)``; the target is equality for every
chat. A second plan afterwards (every chat read) must show no changes (the calls were not only
few, but right).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from common import calls_since, client_for, emulator, print_table, write_fixture, write_paths

from reconciler.applier import apply_plan
from reconciler.backends import API_NAMES
from reconciler.backends.fields import to_api
from reconciler.backends.packing import minimum_calls
from reconciler.config import load_config
from reconciler.manager import REFRESH_ALL
from reconciler.plan import Action
from reconciler.state import StateFile

FAST_QPS = 1000.0


def people(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def build(server) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, str]]:
    """(YAML chats, state bindings, key -> scenario label): seeds the live side of every update."""
    chats: dict[str, dict[str, Any]] = {}
    bindings: dict[str, str] = {}
    labels: dict[str, str] = {}

    def create(key: str, size: int) -> None:
        members = people(f"{key}-", size)
        chats[key] = {"name": f"新 {size}", "owner": members[0], "members": members}
        labels[key] = f"create, {size} member{'s' if size != 1 else ''}"

    def update(key: str, label: str, live: dict[str, Any], desired: dict[str, Any]) -> None:
        settings = to_api(live.get("settings", {}))
        bindings[key] = server.seed_chat(live["name"], live["owner"], live["members"], **settings)
        chats[key] = desired
        labels[key] = label

    for size in (1, 40, 41, 300, 1000):
        create(f"c-{size:04d}", size)

    base = people("m", 30)
    plain = {"name": "群", "owner": base[0], "members": base}
    update("u-plus-1", "update +1", plain, {**plain, "members": base + ["new-0001"]})
    update("u-plus-41", "update +41", plain, {**plain, "members": base + people("new-", 41)})
    update("u-minus-1", "update -1", plain, {**plain, "members": base[:-1]})
    big = people("old-", 300)
    update(
        "u-churn",
        "update +200/-299 churn",
        {"name": "大群", "owner": big[0], "members": big},
        {"name": "大群", "owner": big[0], "members": [big[0], *people("fresh-", 200)]},
    )
    update(
        "u-owner",
        "owner -> non-member, old owner leaves",
        plain,
        {**plain, "owner": "boss", "members": ["boss", *base[1:]]},
    )
    with_settings = {**plain, "settings": {"muted": False, "searchable": True}}
    update("u-settings", "settings only", with_settings, {**plain, "settings": {"muted": True, "searchable": True}})
    update(
        "u-all",
        "name + settings + members (+5/-5)",
        with_settings,
        {
            **plain,
            "name": "改名",
            "settings": {"muted": True, "searchable": False},
            "members": base[:-5] + people("plus-", 5),
        },
    )
    update(
        "u-additive",
        "additive: +3, 10 extras kept",
        {**plain, "members": base + people("extra-", 10)},
        {**plain, "members": base + people("add-", 3), "members_policy": "additive"},
    )
    return chats, bindings, labels


def run(api: str) -> bool:
    """Plan and apply the change set through ``api`` on a fresh emulator; print its table; True if all equal."""
    create_path, update_path = write_paths(api)
    with emulator() as server, tempfile.TemporaryDirectory() as tmp:
        chats, bindings, labels = build(server)
        config_path, state_path = write_fixture(Path(tmp), chats, bindings)
        config = load_config([config_path])
        state = StateFile(state_path)
        with client_for(server, max_qps=FAST_QPS, api=api) as client:
            backend = client.backend
            plan = client.manager().plan(config, state)
            if any(c.action not in (Action.CREATE, Action.UPDATE) for c in plan.changes):
                raise SystemExit(f"bench fixture is wrong, every chat should change: {plan.summary()}")
            planned = {c.key: len(backend.calls(c)) for c in plan.changes}
            mark = len(server.calls)
            result = apply_plan(plan, backend, state)
            writes = [c for c in calls_since(server, mark) if c.endpoint in (create_path, update_path)]
            after = client.manager().plan(config, StateFile(state_path), refresh=REFRESH_ALL)

    key_of_chatid = {r.chatid: r.key for r in result.results if r.chatid}
    key_of_name = {chats[k]["name"]: k for k in chats if k.startswith("c-")}
    logged: Counter[str] = Counter()
    for call in writes:
        body = call.body or {}
        logged[key_of_name[body["name"]] if call.endpoint == create_path else key_of_chatid[body["chatid"]]] += 1

    rows = []
    for change, res in zip(plan.changes, result.results):
        minimum = minimum_calls(change)
        ok = res.ok and logged[change.key] == planned[change.key] == minimum
        rows.append(
            [
                change.key,
                labels[change.key],
                change.action.value,
                len(change.add),
                len(change.remove),
                planned[change.key],
                logged[change.key],
                minimum,
                "yes" if ok else f"NO {res.error or ''}".strip(),
            ]
        )
    total_min = sum(minimum_calls(c) for c in plan.changes)
    total_planned = sum(planned.values())
    all_equal = len(writes) == total_planned == total_min == plan.writes and result.ok
    rows.append(
        [
            "total",
            "",
            "",
            sum(len(c.add) for c in plan.changes),
            sum(len(c.remove) for c in plan.changes),
            total_planned,
            len(writes),
            total_min,
            "yes" if all_equal else "NO",
        ]
    )
    converged = not after.has_changes and not after.has_errors
    print_table(
        f"apply --api {api}: write calls per chat, planned (backend.calls) and logged by the emulator "
        f"({create_path} + {update_path}), vs packing.minimum_calls(change)",
        ["key", "scenario", "action", "+", "-", "planned", "logged", "minimum", "equal"],
        rows,
        note=f"{result.summary()}  Second plan after apply (every chat read): "
        f"{'no changes (converged)' if converged else after.summary()}",
    )
    return all_equal and all(r[-1] == "yes" for r in rows) and converged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--api", choices=(*API_NAMES, "both"), default="both", help="API generation(s) to apply through (default both)"
    )
    args = parser.parse_args()
    apis = API_NAMES if args.api == "both" else (args.api,)
    verdicts = {api: run(api) for api in apis}
    print(
        "\ntarget (calls == minimum_calls for every chat, re-plan clean): "
        + ", ".join(f"{api} {'met' if ok else 'NOT met'}" for api, ok in verdicts.items())
    )


if __name__ == "__main__":
    main()
