"""Reading live chats: one read per chatid, concurrently, through one backend (one token, one rate limiter).

Per-chat failures (dissolved chat, no permission) become :class:`ReadFailure`
values for the planner; failures that would hit every chat (bad credentials,
unreachable API, quota used up) stop the run with one error instead of a
thousand identical ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed

from .backends import ChatBackend, DingTalkError, NotFoundError, is_fatal
from .model import LiveChat, ReadFailure

LiveResult = LiveChat | ReadFailure


#: Seconds a slow DingTalk answer takes (real round trips are 50–500 ms); with ``max_qps`` it sizes the
#: default parallelism so that even at 500 ms per call the rate limit, not the latency, is the bound.
ASSUMED_LATENCY = 0.8
MAX_PARALLELISM = 64


def default_parallelism(max_qps: float) -> int:
    """Enough concurrent reads to keep ``max_qps`` busy when each call takes ASSUMED_LATENCY."""
    return max(1, min(MAX_PARALLELISM, math.ceil(max_qps * ASSUMED_LATENCY)))


def read_one(backend: ChatBackend, chatid: str) -> LiveResult:
    try:
        return backend.read(chatid)
    except DingTalkError as exc:
        if is_fatal(exc):
            raise
        if isinstance(exc, NotFoundError):
            return ReadFailure(f"chat {chatid} not found in DingTalk (dissolved, or not this app's): {exc}")
        return ReadFailure(f"cannot read chat {chatid}: {exc}")


def _stopped(exc: DingTalkError, read: int, total: int) -> DingTalkError:
    """The same error (its class still says what it is: the quota, the credentials, …), saying what was left."""
    exc.args = (f"{exc}; the reads stopped there: {total - read} of {total} chats were not read",)
    return exc


def read_live(
    backend: ChatBackend,
    chatids: Iterable[str],
    *,
    parallelism: int = 8,
    on_done: Callable[[], None] | None = None,
) -> dict[str, LiveResult]:
    """chatid -> LiveChat or ReadFailure, for each distinct chatid. Order-independent by construction.

    A fatal failure stops the reads at once and is raised saying how many chats were left unread."""
    ids = sorted(set(chatids))
    results: dict[str, LiveResult] = {}
    if parallelism <= 1 or len(ids) <= 1:
        for chatid in ids:
            try:
                results[chatid] = read_one(backend, chatid)
            except DingTalkError as exc:
                raise _stopped(exc, len(results), len(ids)) from None
            if on_done:
                on_done()
        return results
    with ThreadPoolExecutor(max_workers=min(parallelism, len(ids)), thread_name_prefix="dtchat-read") as pool:
        futures = {pool.submit(read_one, backend, chatid): chatid for chatid in ids}
        try:
            for future in as_completed(futures):  # tick as each read lands, not all at the end
                results[futures[future]] = future.result()
                if on_done:
                    on_done()
        except BaseException as exc:
            for other in futures:
                other.cancel()
            if isinstance(exc, DingTalkError):
                raise _stopped(exc, len(results), len(ids)) from None
            raise
    return dict(sorted(results.items()))
