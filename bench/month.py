"""A month of a 1,000-chat organisation against the emulator: metered calls, today's flow vs the default.

The organisation: 1,000 chats of 20-60 members (100 of them built from directory selectors), in 10 YAML
files, converged before the month starts. The month, day by day:

* 20 pull requests, each changing 5 chats: ``plan`` when opened, ``plan`` again on a push that changes
  them once more, ``apply`` on merge;
* 4 people leave the company (their departments feed the selector-built chats);
* a nightly audit.

Two flows run the same month on two fresh emulators and report the metered calls (the emulator's meter):
*before*: every command reads every chat (``--refresh all``, a full nightly ``drift``), as dtchat did;
*default*: ``--refresh changed`` and ``drift --rotate 30``. It checks the default flow stays within 2,000
metered calls and that every chat was read at least once in the month (design §11).

    python bench/month.py [--chats 1000] [--api v1|legacy]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from reconciler.cli import cli  # noqa: E402
from reconciler.emulator import EmulatorServer, Org  # noqa: E402

APP_KEY, APP_SECRET = "bench-app", "bench-secret-0000"
QUOTA = 5_000
TARGET = 2_000
DAYS = 30
START = dt.date(2026, 12, 1)
DEPTS = list(range(100, 110))  # the departments selector chats draw from, 30 people each
FILES = 10


def org_and_chats(n_chats: int, rng: random.Random) -> tuple[dict, dict[str, dict]]:
    people = [f"u{i:05d}" for i in range(3_000)]
    by_dept = {d: [f"d{d}-{i:02d}" for i in range(30)] for d in DEPTS}
    org = {
        "departments": [{"id": 1, "name": "公司"}, *({"id": d, "name": f"部门{d}", "parent": 1} for d in DEPTS)],
        "users": [
            *({"userid": u, "departments": [1]} for u in people),
            *({"userid": u, "departments": [d]} for d, us in by_dept.items() for u in us),
        ],
    }
    chats: dict[str, dict] = {}
    for i in range(n_chats):
        key = f"chat-{i:04d}"
        if i < n_chats // 10:
            dept = DEPTS[i % len(DEPTS)]
            chats[key] = {"name": f"部门群{i}", "owner": by_dept[dept][0], "members": [{"dept": dept}]}
        else:
            members = rng.sample(people, rng.randint(20, 60))
            chats[key] = {"name": f"群{i}", "owner": members[0], "members": members[1:]}
    return org, chats


def write(folder: Path, chats: dict[str, dict]) -> None:
    keys = sorted(chats)
    for f in range(FILES):
        part = {k: chats[k] for k in keys[f::FILES]}
        text = yaml.safe_dump({"version": 1, "chats": part}, allow_unicode=True, sort_keys=False)
        (folder / f"chats-{f}.yaml").write_text(text, encoding="utf-8")


class Month:
    """One flow's run: its own emulator, YAML folder and state, and the meter between phases."""

    def __init__(self, org: dict, chats: dict[str, dict], api: str, default_flow: bool) -> None:
        self.server = EmulatorServer(app_key=APP_KEY, app_secret=APP_SECRET, org=Org.from_data(org))
        self.server.faults.ip_limit_calls = 0  # one machine plays a whole month in minutes: no per-IP ban
        self.server.start()
        self.folder = Path(tempfile.mkdtemp(prefix="dtchat-month-"))
        self.chats = {k: dict(v) for k, v in chats.items()}
        self.api = api
        self.default_flow = default_flow
        self.runner = CliRunner()
        self.spent = {"plan": 0, "apply": 0, "drift": 0}
        self.read_chatids: set[str] = set()

    def dtchat(self, *args: str, date: str | None = None) -> int:
        env = {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "NO_COLOR": "1"}
        if date:
            env["DTCHAT_TODAY"] = date
        base = ["--api", self.api, "--api-base", self.server.url, "--openapi-base", self.server.url]
        result = self.runner.invoke(cli, [*base, "--max-qps", "100000", *args], env=env, catch_exceptions=False)
        if result.exit_code not in (0, 2):
            raise SystemExit(f"dtchat {' '.join(args)} failed ({result.exit_code}):\n{result.output}")
        return result.exit_code

    def metered(self, phase: str, action) -> None:
        before, calls = self.server.meter()["metered"], len(self.server.calls)
        action()
        self.spent[phase] += self.server.meter()["metered"] - before
        for call in self.server.calls[calls:]:
            if call.endpoint == "/chat/get" and call.metered:
                self.read_chatids.add(call.params["chatid"])

    def setup(self) -> None:
        write(self.folder, self.chats)
        self.dtchat("init", str(self.folder))
        self.dtchat("apply", str(self.folder), "--auto-approve", "--parallelism", "32")
        self.read_chatids.clear()

    def refresh(self) -> list[str]:
        return [] if self.default_flow else ["--refresh", "all"]

    def pull_request(self, rng: random.Random) -> None:
        keys = rng.sample(sorted(k for k, c in self.chats.items() if "name" in c and c["name"].startswith("群")), 5)
        for key in keys:  # opened: one more member in each
            self.chats[key]["members"] = [*self.chats[key]["members"], f"u{rng.randrange(3_000):05d}"]
        write(self.folder, self.chats)
        self.metered("plan", lambda: self.dtchat("plan", str(self.folder), *self.refresh(), "--parallelism", "32"))
        for key in keys:  # a push: each of them renamed
            self.chats[key]["name"] = self.chats[key]["name"][:16] + "·改"
        write(self.folder, self.chats)
        self.metered("plan", lambda: self.dtchat("plan", str(self.folder), *self.refresh(), "--parallelism", "32"))
        self.metered(
            "apply",
            lambda: self.dtchat(
                "apply", str(self.folder), "--auto-approve", "--force", *self.refresh(), "--parallelism", "32"
            ),
        )

    def nightly(self, day: dt.date) -> None:
        rotate = ["--rotate", "30"] if self.default_flow else []
        self.metered(
            "drift",
            lambda: self.dtchat("drift", str(self.folder), *rotate, "--parallelism", "32", date=day.isoformat()),
        )

    def close(self) -> None:
        self.server.stop()


def run(org: dict, chats: dict[str, dict], api: str, default_flow: bool, seed: int) -> Month:
    rng = random.Random(seed)
    month = Month(org, chats, api, default_flow)
    month.setup()
    pr_days = [round(i * DAYS / 20) for i in range(20)]
    leaver_days = {5: "d100-07", 12: "d103-11", 19: "d106-19", 26: "d109-23"}
    for day in range(DAYS):
        date = START + dt.timedelta(days=day)
        if day in leaver_days:
            month.server.remove_user(leaver_days[day])
        for _ in range(pr_days.count(day)):
            month.pull_request(rng)
        month.nightly(date)
    month.close()
    return month


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=1_000)
    parser.add_argument("--api", choices=("v1", "legacy"), default="v1")
    args = parser.parse_args()
    org, chats = org_and_chats(args.chats, random.Random(7))
    rows = []
    for label, default_flow in (("before: --refresh all, full nightly drift", False), ("default", True)):
        started = time.monotonic()
        month = run(org, chats, args.api, default_flow, seed=11)
        total = sum(month.spent.values())
        rows.append((label, month, total, time.monotonic() - started))
    print(f"A month of {args.chats:,} chats (--api {args.api}): 20 PRs x 5 chats, 4 leavers, a nightly audit")
    print(f"{'flow':44} {'PR plans':>9} {'applies':>8} {'drift':>7} {'total':>8} {'of quota':>9} {'chats read':>11}")
    for label, month, total, seconds in rows:
        read = len(month.read_chatids)
        print(
            f"{label:44} {month.spent['plan']:>9,} {month.spent['apply']:>8,} {month.spent['drift']:>7,} "
            f"{total:>8,} {total / QUOTA:>8.0%} {read:>6,}/{args.chats:,}  ({seconds:.0f} s)"
        )
    default_total, default_read = rows[1][2], len(rows[1][1].read_chatids)
    # the target is for the 1,000-chat month; the pull requests' cost does not shrink with fewer chats
    ok = default_total <= TARGET and default_read == args.chats
    print(
        f"default flow: {default_total:,} metered calls (target <= {TARGET:,}), "
        f"every chat read at least once: {'yes' if default_read == args.chats else 'NO'} -> {'met' if ok else 'NOT MET'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
