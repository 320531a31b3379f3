"""A thread-safe token bucket that spaces calls evenly.

With ``capacity=1`` calls leave at most ``rate`` per second and never in a
burst, which is what a server counting calls in 1-second windows wants.
Each caller reserves its slot under the lock and then sleeps outside it, so
waiting threads queue in order without polling.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


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
