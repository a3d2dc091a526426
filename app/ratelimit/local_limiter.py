"""What the rate limiter does when Redis cannot decide: each worker limits on its own.

Failing open used to mean "unlimited": while Redis was down, hung, or merely skipped by
the circuit breaker, every request of every client went through, and a client able to
make Redis *look* slow (issue 18, item 2) switched the limiter off for everyone. Now a
policy that fails open falls back to this limiter, kept in the worker's memory: a
sliding-window log per (policy, client), exactly like the shared one, admitting
`quota // workers` (at least 1) per window in each worker. A client spread over every
worker of a replica gets about its quota per replica, however long Redis is away; a
client whose requests all land on one worker gets less. The shared counts are not
consulted, so in the window an outage begins a client can get its quota from Redis and
this share again (docs/rate-limiting.md, "When Redis is down or slow").

Nothing here runs while Redis answers. Memory is bounded: at most `max_entries` logged
times in all; past that the least recently seen clients are forgotten first (their next
request starts afresh), never the client being decided.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from app.ratelimit.policy import RateLimitPolicy

# About 3 MB of floats per worker at most (a few hundred thousand requests' worth of
# logs): an outage must not turn into a memory leak under an address-rotating flood.
MAX_ENTRIES = 100_000


class LocalLimiter:
    def __init__(
        self,
        workers: int,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = max(1, workers)
        self._max_entries = max_entries
        self._clock = clock
        # key -> times of the requests admitted in the window, oldest first. The dict's
        # order is recency: a key is moved to the end each time it is decided.
        self._logs: dict[str, deque[float]] = {}
        self._entries = 0

    def share(self, policy: RateLimitPolicy) -> int:
        """This worker's part of the policy's quota."""
        return max(1, policy.quota // self.workers)

    def acquire(self, key: str, policy: RateLimitPolicy) -> tuple[bool, int]:
        """Count one request of `key`: (admitted, seconds until this worker admits
        another, rounded up)."""
        now = self._clock()
        window = policy.window_seconds
        log = self._logs.pop(key, None) or deque()
        while log and log[0] <= now - window:
            log.popleft()
            self._entries -= 1
        admitted = len(log) < self.share(policy)
        if admitted:
            log.append(now)
            self._entries += 1
        self._logs[key] = log
        self._forget_least_recent()
        return admitted, max(1, math.ceil(log[0] + window - now))

    def _forget_least_recent(self) -> None:
        while self._entries > self._max_entries and len(self._logs) > 1:
            oldest = next(iter(self._logs))
            self._entries -= len(self._logs.pop(oldest))
