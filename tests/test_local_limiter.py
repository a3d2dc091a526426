"""The limiter's fallback while Redis cannot decide (app/local_limiter.py): each worker
admits its share of the quota, in a sliding window, in bounded memory."""

from __future__ import annotations

from app.ratelimit.local_limiter import LocalLimiter
from app.ratelimit.policy import RateLimitPolicy

DEFAULT = RateLimitPolicy("default", 100, 60)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_worker_admits_its_share_of_the_quota() -> None:
    assert LocalLimiter(2).share(DEFAULT) == 50
    assert LocalLimiter(3).share(DEFAULT) == 33  # rounded down: a replica stays <= quota
    assert LocalLimiter(1).share(DEFAULT) == 100
    assert LocalLimiter(8).share(RateLimitPolicy("tiny", 3, 60)) == 1  # never zero


def test_a_sliding_window_per_client_with_the_wait_until_the_next_admission() -> None:
    """1. 50 requests at t=0..49 s  -> all admitted  2. one more at 59 s  -> refused,
    retry in 1 s (the first leaves the window at 60 s)  3. at 60 s  -> admitted again
    4. another client is counted apart."""
    clock = FakeClock()
    limiter = LocalLimiter(2, clock=clock)
    start = clock.now
    for second in range(50):
        clock.now = start + second
        assert limiter.acquire("ip:a", DEFAULT) == (True, 60 - second)
    clock.now = start + 59
    assert limiter.acquire("ip:a", DEFAULT) == (False, 1)
    clock.now = start + 60
    assert limiter.acquire("ip:a", DEFAULT)[0] is True
    assert limiter.acquire("ip:b", DEFAULT)[0] is True


def test_memory_is_bounded_by_forgetting_the_least_recent_clients_first() -> None:
    """With room for 10 logged times: clients a..e take 2 each, then a is decided again
    (most recent now) and f arrives  -> b, the least recently seen, is forgotten (its
    next request starts afresh); a keeps its count; the client being decided is never
    the one forgotten, however large its log."""
    clock = FakeClock()
    limiter = LocalLimiter(1, max_entries=10, clock=clock)
    tiny = RateLimitPolicy("tiny", 3, 60)
    for client in "abcde":
        for _ in range(2):
            limiter.acquire(client, tiny)
    assert limiter.acquire("a", tiny) == (True, 60)  # a's third
    assert limiter.acquire("f", tiny)[0] is True
    assert limiter.acquire("a", tiny)[0] is False  # a remembered: still 3 in the window
    assert limiter._logs.keys() >= {"a", "f"}
    assert "b" not in limiter._logs
    assert sum(len(log) for log in limiter._logs.values()) <= 10

    big = RateLimitPolicy("big", 50, 60)
    for _ in range(50):
        assert limiter.acquire("g", big)[0] is True
    assert limiter.acquire("g", big)[0] is False
    assert list(limiter._logs) == ["g"]
