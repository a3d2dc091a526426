"""A circuit breaker for Redis: a hung Redis costs one timeout per interval, not one
per request.

Why: Redis stopped by SIGSTOP (or a network partition that drops packets) is worse than
Redis down. A dead port refuses at once; a hung one accepts the TCP handshake and then
says nothing, so every call waits the full REDIS_TIMEOUT_SECONDS. The limiter and the
cache each make a call per request, so a product read waited 0.5 s and `parity chaos`
measured throughput falling from ~1,000 to ~10 requests/s with 4 clients. Behind this
breaker the same run stays at the baseline latency once the breaker has opened.

    closed ── `failure_threshold` failures in a row ──> open
    open   ── `reset_after` s later, one caller's call is the trial ──> success: closed
                                                                        failure: open again

Single-threaded by design: one breaker per worker, used from its event loop only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class CircuitOpen(Exception):
    """The call was not made: the dependency failed repeatedly and is resting."""


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        reset_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """May a call be made now? While open, one call per `reset_after` is let through
        as the trial; the others are refused without waiting."""
        if self._opened_at is None:
            return True
        now = self._clock()
        if now - self._opened_at < self.reset_after:
            return False
        self._opened_at = now  # this caller is the trial; the rest wait another interval
        return True

    def record_success(self) -> None:
        if self._opened_at is not None:
            logger.warning("%s answers again: circuit closed", self.name)
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self._opened_at is not None:
            self._opened_at = self._clock()  # a failed trial: rest another interval
        elif self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            logger.warning(
                "%s failed %d times in a row: circuit open, calls skipped for %gs",
                self.name,
                self._failures,
                self.reset_after,
            )
