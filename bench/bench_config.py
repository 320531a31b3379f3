"""Time ``load_config`` on large generated configs (run by hand: ``python bench/bench_config.py``).

Generates, in a temporary folder, N chats x 200 members spread over 20
files (members as block lists, a few ``@group`` references, settings and
defaults), then loads each folder once in a fresh child process (``--measure
DIR``, internal) so the generator's memory is not counted, and prints wall
and CPU seconds and the child's peak RSS (``resource.getrusage``).

Targets: at most 2.3 s CPU for 10,000 chats, so that ``load_config`` +
``make_plan`` stay under 3 s (``bench_diff.py``); peak RSS at most 120 MiB
for 10,000 chats and 350 MiB for 50,000 (the file text is dropped as soon as
a file is read; only the values stay).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILES = 20
USERS = 50_000
TARGET_CHATS = 10_000
TARGET_CPU_S = 2.3
#: Peak RSS targets in MiB, by chat count (200 members each).
TARGET_RSS_MIB = {10_000: 120, 50_000: 350}


def generate(folder: Path, chats: int, members: int) -> None:
    """Write ``chats`` chats of ``members`` members each into ``FILES`` files under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = ["version: 1", "defaults:", "  settings:", "    searchable: false", "groups:"]
    for g in range(20):
        groups.append(f"  team-{g:02d}:")
        groups.extend(f"    - u{(g * 10 + i):06d}" for i in range(10))
    (folder / "00-groups.yaml").write_text("\n".join(groups) + "\n", encoding="utf-8")
    per_file = -(-chats // FILES)
    for f in range(FILES):
        lines = ["version: 1", "chats:"]
        for c in range(f * per_file, min(chats, (f + 1) * per_file)):
            lines += [f"  chat-{c:06d}:", f"    name: 群聊 {c}", f"    owner: u{c % USERS:06d}", "    members:"]
            lines.append(f'      - "@team-{c % 20:02d}"')
            lines.extend(f"      - u{(c * 37 + i) % USERS:06d}" for i in range(members - 11))
            lines += ["    settings:", "      muted: false", "      mention_all: owner"]
        (folder / f"chats-{f:02d}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def measure(folder: Path) -> None:
    """The child's job: load ``folder`` once; print chats, wall, CPU and peak RSS as JSON."""
    from reconciler.config import load_config

    wall, cpu = time.perf_counter(), time.process_time()
    config = load_config([folder])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"chats": len(config.chats), "wall": wall, "cpu": cpu, "rss": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000,50000", help="comma-separated chat counts")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    print(f"{'chats':>7} {'members':>8} {'files':>6} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for chats in (int(n) for n in args.sizes.split(",")):
            folder = Path(tmp) / str(chats)
            generate(folder, chats, args.members)
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(folder)], check=True, capture_output=True, text=True
            )
            result = json.loads(child.stdout)
            assert result["chats"] == chats, result
            wall, cpu, peak = result["wall"], result["cpu"], result["rss"]
            print(f"{chats:>7} {args.members:>8} {FILES + 1:>6} {wall:>8.2f} {cpu:>8.2f} {peak:>13.0f}")
            if args.members == 200 and chats == TARGET_CHATS:
                print(f"target: <= {TARGET_CPU_S:g} s CPU at {chats:,} x 200: {'yes' if cpu <= TARGET_CPU_S else 'NO'}")
            if args.members == 200 and chats in TARGET_RSS_MIB:
                limit = TARGET_RSS_MIB[chats]
                print(f"target: <= {limit} MiB peak RSS at {chats:,} x 200: {'yes' if peak <= limit else 'NO'}")


if __name__ == "__main__":
    main()
