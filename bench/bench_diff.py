"""CPU and memory of the offline part of ``plan``: load the YAML and diff it against live state.

Run by hand: ``python bench/bench_diff.py [--api v1|legacy] [--chats N] [--members M]``
(default 10,000 chats x 200 members in 20 files; 10 % of the chats drifted).

The parent process generates the YAML (with ``bench_config.generate``), a
state file and the recorded live state (``/chat/get`` answers, one JSON per line), then
runs the measured part in a fresh child process so neither the generation nor
the parent's memory is counted. The child times ``load_config`` and
``make_plan`` (no network; its ``backend`` is ``backend_for(api)`` with no
transport, which only plans the write calls each change needs) and reports
wall, CPU (``time.process_time``) and its peak RSS. The recorded answers are
parsed as the backend parses a ``/chat/get`` answer (``parse_chat``), before
the clock starts. Targets: < 3 s CPU and < 500 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_config import generate
from common import add_api_option, print_table

from reconciler.backends import backend_for
from reconciler.backends.backend import parse_chat
from reconciler.backends.fields import API_FIELDS, to_api
from reconciler.config import load_config
from reconciler.planner import make_plan
from reconciler.state import FORMAT as STATE_FORMAT
from reconciler.state import VERSION as STATE_VERSION
from reconciler.state import StateFile

CPU_TARGET_S = 3.0
RSS_TARGET_MB = 500.0
#: One chat in DRIFT_EVERY has drifted in DingTalk (10 %).
DRIFT_EVERY = 10


def chatid_of(index: int) -> str:
    return f"chat{index:032x}"


def record(folder: Path) -> tuple[int, int]:
    """Write the state file and the live state matching the YAML in ``folder``, drifting 10 % of chats.

    Returns (chats, drifted chats).
    """
    config = load_config([folder / "yaml"])
    infos = []
    drifted = 0
    for i, chat in enumerate(config.chats):
        # Every setting as DingTalk reports it: the declared ones as wanted, the others at 0.
        info = dict.fromkeys(API_FIELDS, 0)
        info.update(to_api(chat.settings))
        members = list(chat.members)
        name = chat.name
        if i % DRIFT_EVERY == 0:
            drifted += 1
            gone = [m for m in members if m != chat.owner][:3]
            members = [m for m in members if m not in gone] + [f"stranger{i}-{k}" for k in range(2)]
            info["chatBannedType"] = 1 - info["chatBannedType"]
            if i % (DRIFT_EVERY * 5) == 0:
                name = name + "旧"
        infos.append({"chatid": chatid_of(i), "name": name, "owner": chat.owner, "useridlist": members, **info})
    lines = (json.dumps(info, ensure_ascii=False) + "\n" for info in infos)
    (folder / "live.jsonl").write_text("".join(lines), encoding="utf-8")
    entries = {chat.key: {"chatid": chatid_of(i)} for i, chat in enumerate(config.chats)}
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "chats": entries}
    (folder / "dtchat.state.json").write_text(json.dumps(state), encoding="utf-8")
    return len(config.chats), drifted


def measure(folder: Path, api: str) -> dict:
    """The child's job: time load_config and make_plan on the recorded data; report RSS too."""
    state = StateFile(folder / "dtchat.state.json")
    backend = backend_for(api)  # no transport: it only plans calls
    with open(folder / "live.jsonl", encoding="utf-8") as fh:  # one answer at a time, as the reads arrive
        infos = (json.loads(line) for line in fh)
        live = {chat.chatid: chat for chat in (parse_chat(info["chatid"], {"chat_info": info}) for info in infos)}
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    wall, cpu = time.perf_counter(), time.process_time()
    config = load_config([folder / "yaml"])
    load_wall, load_cpu = time.perf_counter() - wall, time.process_time() - cpu

    wall, cpu = time.perf_counter(), time.process_time()
    plan = make_plan(config.chats, state.bindings, live, backend=backend)
    plan_wall, plan_cpu = time.perf_counter() - wall, time.process_time() - cpu

    counts = plan.counts()
    return {
        "load_wall": load_wall,
        "load_cpu": load_cpu,
        "plan_wall": plan_wall,
        "plan_cpu": plan_cpu,
        "updates": counts["update"],
        "noops": counts["noop"],
        "errors": counts["error"],
        "writes": plan.writes,
        "base_rss_kb": base_rss,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_api_option(parser, help="API generation whose write calls make_plan counts (default v1)")
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.api)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate(folder / "yaml", args.chats, args.members)
        chats, drifted = record(folder)
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder), "--api", args.api],
            capture_output=True,
            text=True,
            check=True,
        )
    m = json.loads(child.stdout)
    if m["updates"] != drifted or m["errors"]:
        raise SystemExit(f"unexpected plan: {m}")
    cpu = m["load_cpu"] + m["plan_cpu"]
    rss_mb = m["peak_rss_kb"] / 1024
    rows = [
        ["load_config", m["load_wall"], m["load_cpu"], ""],
        ["make_plan", m["plan_wall"], m["plan_cpu"], ""],
        ["total", m["load_wall"] + m["plan_wall"], cpu, "yes" if cpu < CPU_TARGET_S else "NO"],
    ]
    print_table(
        f"diff (--api {args.api}): {chats:,} chats x {args.members} members ({drifted:,} drifted), no network",
        ["step", "wall s", "CPU s", f"CPU < {CPU_TARGET_S:g} s"],
        rows,
        note=f"peak RSS {rss_mb:.0f} MiB (target < {RSS_TARGET_MB:g} MB: {'yes' if rss_mb < RSS_TARGET_MB else 'NO'}); "
        f"of which {m['base_rss_kb'] / 1024:.0f} MiB before load_config (interpreter + live state + state file). "
        f"Plan: {m['updates']:,} to update ({m['writes']:,} write calls), {m['noops']:,} unchanged.",
    )


if __name__ == "__main__":
    main()
