"""Client-side rate limiting shaped like DingTalk's own limits.

DingTalk counts calls per API per app (20/s by default) and, separately, all
calls from one egress IP (10,000 in 20 s, then a 5-minute ban). The client
therefore keeps one :class:`AdaptiveRate` per endpoint (so directory lookups
and chat reads proceed side by side) in front of one per-IP
:class:`TokenBucket`.

A :class:`TokenBucket` with ``capacity=1`` lets calls leave at most ``rate``
per second and never in a burst, which is what a server counting calls in
1-second windows wants. Each caller reserves its slot under the lock and then
sleeps outside it, so waiting threads queue in order without polling.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

#: DingTalk's per-egress-IP ceiling over all APIs: this many calls ...
IP_LIMIT_CALLS = 10_000
#: ... within this many seconds (else the IP is banned for 5 minutes).
IP_LIMIT_WINDOW = 20.0
#: Calls the per-IP bucket may save up. ``capacity + rate * window`` stays under the ceiling.
IP_BURST = 100

#: After a throttling answer, an endpoint is paced at this share of the rate the server accepted ...
ACCEPTED_SHARE = 0.95
#: ... over the last this many seconds (counted over at least 1 s: DingTalk's windows are per second) ...
ACCEPTED_WINDOW = 2.0
#: ... once at least this many calls were answered (fewer tell nothing: the rate is halved instead).
ACCEPTED_MIN_CALLS = 5
#: Successes remembered at most (the window at the highest rate anyone sets, bounded).
ACCEPTED_KEEP = 1_000


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up; ``rate <= 0`` = unlimited."""

    def __init__(
        self,
        rate: float,
        capacity: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._stamp = clock()

    def acquire(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds waited."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1.0  # may go negative: a reservation the sleep below pays off
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (positive to positive); slots already reserved keep their time."""
        with self._lock:
            if self.rate > 0:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
            self.rate = float(rate)


class AdaptiveRate:
    """One endpoint's limiter: ``max_rate`` until the server says "too fast", then the rate it accepts.

    A throttling answer sets the rate to :data:`ACCEPTED_SHARE` of the rate the
    server was seen to accept (successes over the last :data:`ACCEPTED_WINDOW`
    seconds, counted over at least one second, since DingTalk counts calls per
    second), or halves it when too few calls have been answered to tell; never
    below ``floor``. Halving alone settled near three quarters of the server's
    real limit (it cuts from just above the limit to half of it, then climbs
    back). A cut happens once per round: answers to calls reserved before the
    last cut are the same overload seen late and are ignored, or a burst of
    refusals would collapse the rate to the floor. Each success then adds
    ``1 / rate`` calls/s, so the rate climbs back by about one call/s per second
    of clean traffic, up to ``max_rate``. ``max_rate <= 0`` is unlimited and
    never adapts.
    """

    def __init__(
        self,
        max_rate: float,
        *,
        floor: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_rate = float(max_rate)
        self.floor = min(float(floor), self.max_rate) if self.max_rate > 0 else 0.0
        self._clock = clock
        self._bucket = TokenBucket(self.max_rate, 1, clock=clock, sleep=sleep)
        self._lock = threading.Lock()
        self._round = 0
        #: When each recent success was answered (the last ACCEPTED_WINDOW seconds), and the first one ever.
        self._accepted: deque[float] = deque()
        self._first: float | None = None

    @property
    def rate(self) -> float:
        """The rate calls are paced at now."""
        return self._bucket.rate

    def acquire(self) -> int:
        """Wait for this endpoint's next slot; returns a ticket for :meth:`throttled`."""
        ticket = self._round
        self._bucket.acquire()
        return ticket

    def _accepted_rate(self, now: float) -> float | None:
        """Calls/s the server accepted lately (lock held); None when too few were answered to tell."""
        while self._accepted and self._accepted[0] <= now - ACCEPTED_WINDOW:
            self._accepted.popleft()
        if self._first is None or len(self._accepted) < ACCEPTED_MIN_CALLS:
            return None
        return len(self._accepted) / max(1.0, min(ACCEPTED_WINDOW, now - self._first))

    def throttled(self, ticket: int) -> float | None:
        """The server refused a call as too fast: the new (lower) rate, or None if unchanged."""
        if self.max_rate <= 0:
            return None
        with self._lock:
            if ticket != self._round:
                return None
            self._round += 1
            current = self._bucket.rate
            accepted = self._accepted_rate(self._clock())
            target = current / 2 if accepted is None else min(accepted, current) * ACCEPTED_SHARE
            rate = max(self.floor, target)
            if rate >= current:
                return None
            self._bucket.set_rate(rate)
            return rate

    def succeeded(self) -> None:
        """The server accepted a call at this rate: note it, and creep back towards ``max_rate``."""
        if self.max_rate <= 0:
            return
        with self._lock:
            now = self._clock()
            if self._first is None:
                self._first = now
            self._accepted.append(now)
            if len(self._accepted) > ACCEPTED_KEEP:
                self._accepted.popleft()
            rate = self._bucket.rate
            if rate < self.max_rate:
                self._bucket.set_rate(min(self.max_rate, rate + 1.0 / rate))
