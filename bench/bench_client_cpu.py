"""CPU the client spends per API call, through ``requests``, against an emulator in another process.

Design target (design.md §7): under 0.7 ms of CPU per API call. The emulator
runs in a subprocess so its CPU is not counted; this process only reads chats,
twice over: the raw call (``Transport.call`` of ``/chat/get``, its ``chat_info``
returned: what the target is for, and what the old client's ``get_chat`` was)
and then ``ChatBackend.read`` (the same call parsed into a ``LiveChat``, as
``plan`` reads). ``--api`` picks the token (default v1:
``/v1.0/oauth2/accessToken``'s; legacy: ``/gettoken``'s); the read is
``/chat/get`` in both generations.
Run from the repository root: ``python3 bench/bench_client_cpu.py [--api v1|legacy] [--calls N] [--threads T]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.backends import API_NAMES, DEFAULT_API, open_backends  # noqa: E402
from reconciler.backends.endpoints import CHAT_GET  # noqa: E402
from reconciler.backends.transport import Transport  # noqa: E402

APP_KEY = "bench-app-key"
APP_SECRET = "bench-app-secret-not-for-output"
TARGET_MS = 0.7

#: Started with ``python3 -c``: an emulator seeded with N chats; prints its URL and the chatids, then serves.
_SERVER = """
import json, sys, time
from reconciler.emulator import EmulatorServer
n = int(sys.argv[1])
server = EmulatorServer(host="127.0.0.1", port=0, app_key=%r, app_secret=%r).start()
ids = [server.seed_chat(f"chat {i}", "u0", [f"u{j}" for j in range(30)]) for i in range(n)]
print(json.dumps({"url": server.url, "chatids": ids}), flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
server.stop()
""" % (APP_KEY, APP_SECRET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="chats to read (one /chat/get each)")
    parser.add_argument("--threads", type=int, default=4, help="concurrent readers sharing one transport")
    parser.add_argument("--api", choices=API_NAMES, default=DEFAULT_API, help=f"API generation (default {DEFAULT_API})")
    args = parser.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(args.calls)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        transport, backend, _ = open_backends(
            args.api, APP_KEY, APP_SECRET, api_base=info["url"], openapi_base=info["url"], max_qps=0
        )
        with transport:
            backend.read(info["chatids"][0])  # token, connection pool and imports warmed up

            def raw(chatid: str) -> dict:
                return transport.call(CHAT_GET, params={"chatid": chatid})["chat_info"]

            rows = [
                ("Transport.call (/chat/get, raw chat_info)", *timed(transport, raw, info["chatids"], args.threads)),
                (
                    "ChatBackend.read (parsed into a LiveChat)",
                    *timed(transport, backend.read, info["chatids"], args.threads),
                ),
            ]
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
    for i, (what, calls, cpu, user, system, wall) in enumerate(rows):
        per_call = cpu / calls * 1000
        print(
            f"--api {args.api}, {what}: {calls} calls, {args.threads} threads: client CPU {cpu:.3f} s "
            f"(user {user:.3f} s, system {system:.3f} s: loopback TCP is charged to the sender), wall {wall:.3f} s"
        )
        verdict = f" (target < {TARGET_MS} ms): {'met' if per_call < TARGET_MS else 'NOT met'}" if i == 0 else ""
        print(f"  CPU per API call: {per_call:.3f} ms{verdict}")


def timed(transport: Transport, read, chatids: list[str], threads: int) -> tuple[int, float, float, float, float]:
    """Read every chat with ``read`` on ``threads`` threads: (calls, CPU s, user s, system s, wall s)."""
    before = sum(transport.stats["calls"].values())
    usage0, cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(read, chatids):
            pass
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    calls = sum(transport.stats["calls"].values()) - before
    return calls, cpu, usage.ru_utime - usage0.ru_utime, usage.ru_stime - usage0.ru_stime, wall


if __name__ == "__main__":
    main()
