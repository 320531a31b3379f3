"""The token bucket and the adaptive per-endpoint rate (fake clock, no real sleeping)."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.backends.ratelimit import AdaptiveRate, TokenBucket


class FakeClock:
    """A clock that only moves when someone sleeps (optionally), recording every sleep."""

    def __init__(self, advance_on_sleep: bool = True) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.advance_on_sleep = advance_on_sleep
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if self.advance_on_sleep:
                self.now += seconds


def test_first_call_is_free_then_calls_are_spaced_by_one_over_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=20, capacity=1, clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(5):
        bucket.acquire()
        stamps.append(clock.now)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert stamps[0] == 100.0
    assert gaps == pytest.approx([0.05] * 4)


def test_idle_time_refills_only_up_to_capacity():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, capacity=3, clock=clock, sleep=clock.sleep)
    clock.now += 60.0  # a long idle period must not allow a 600-call burst
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.1])


def test_a_partly_elapsed_interval_is_only_waited_out():
    clock = FakeClock()
    bucket = TokenBucket(rate=4, capacity=1, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    clock.now += 0.1
    assert bucket.acquire() == pytest.approx(0.15)


def test_concurrent_callers_each_reserve_a_distinct_slot():
    # Sleeping does not advance this clock: every thread asks at the same instant,
    # so a correct bucket hands out waits 0, 1/r, 2/r, ... exactly once each.
    clock = FakeClock(advance_on_sleep=False)
    bucket = TokenBucket(rate=50, capacity=1, clock=clock, sleep=clock.sleep)
    n = 40
    barrier = threading.Barrier(n)
    waits: list[float] = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        w = bucket.acquire()
        with lock:
            waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([i / 50 for i in range(n)])
    assert len(clock.sleeps) == n - 1


def test_real_threads_are_spaced_in_real_time():
    bucket = TokenBucket(rate=100, capacity=1)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(5):
            bucket.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stamps) == 20
    # 20 calls at 100/s: the last can leave no earlier than 19 intervals after the first.
    assert max(stamps) - start >= 0.19 - 0.005


@pytest.mark.parametrize("rate", [0, -1])
def test_non_positive_rate_means_unlimited(rate):
    clock = FakeClock()
    bucket = TokenBucket(rate=rate, capacity=1, clock=clock, sleep=clock.sleep)
    assert [bucket.acquire() for _ in range(1000)] == [0.0] * 1000
    assert clock.sleeps == []


def test_capacity_below_one_is_refused():
    with pytest.raises(ValueError):
        TokenBucket(rate=1, capacity=0.5)


# ------------------------------------------------------------ adaptive rate (AIMD)


def test_set_rate_spaces_later_calls_at_the_new_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=20, capacity=1, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    bucket.set_rate(4)
    assert bucket.acquire() == pytest.approx(0.25)


def test_a_throttling_answer_halves_the_rate_once_per_round():
    clock = FakeClock()
    limiter = AdaptiveRate(40, clock=clock, sleep=clock.sleep)
    tickets = [limiter.acquire() for _ in range(5)]  # five calls in flight at 40/s
    assert limiter.throttled(tickets[0]) == 20
    # The other four were sent before the cut: the same overload, seen late. No second halving.
    assert [limiter.throttled(t) for t in tickets[1:]] == [None] * 4
    assert limiter.rate == 20
    assert limiter.throttled(limiter.acquire()) == 10  # a call sent at the new rate still refused


def test_the_rate_never_drops_below_the_floor():
    limiter = AdaptiveRate(8, floor=1.0, clock=FakeClock(), sleep=lambda s: None)
    for _ in range(10):
        limiter.throttled(limiter.acquire())
    assert limiter.rate == 1.0
    assert limiter.throttled(limiter.acquire()) is None


def test_successes_bring_the_rate_back_gradually_to_the_maximum():
    limiter = AdaptiveRate(20, clock=FakeClock(), sleep=lambda s: None)
    limiter.throttled(limiter.acquire())
    assert limiter.rate == 10
    limiter.succeeded()
    assert 10 < limiter.rate < 10.2  # one success: +1/rate calls/s, about +1 call/s per second
    steps = 0
    while limiter.rate < 20:
        limiter.succeeded()
        steps += 1
    assert limiter.rate == 20 and 100 < steps < 400  # back to the maximum, never above it
    limiter.succeeded()
    assert limiter.rate == 20


def test_unlimited_never_adapts():
    limiter = AdaptiveRate(0, clock=FakeClock(), sleep=lambda s: pytest.fail("slept"))
    assert limiter.throttled(limiter.acquire()) is None
    limiter.succeeded()
    assert limiter.rate == 0
