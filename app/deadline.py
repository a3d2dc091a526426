"""A deadline for a dependency call that event-loop lag does not spend.

`asyncio.timeout(0.25)` measures wall time. When the worker's event loop is busy with
other requests (a CPU-heavy route, a 422 listing thousands of errors, more workers than
CPUs), the call's answer sits in the socket while the loop runs something else, and the
time counts against the dependency anyway. Worse, the timer is usually due in the very
loop iteration that reads the answer: both loops we run (asyncio's and uvloop's) poll
I/O first and run due timers right after, before the task that would consume the
answer, so the timeout cancels a call that has just succeeded. And a pipelined answer
(app/ratelimit/autopipeline.py) needs several iterations to reach its caller, each of which a
busy loop stretches. Issue 18, item 2: a client sending CPU-heavy requests made a Redis
that answered in 1 ms look hung, the breaker skipped the rate limiter for every client,
and that client got 272-748 requests through a quota of 100.

`lag_tolerant_deadline(seconds, max_seconds)` gives the call `seconds` of time during
which the loop was responsive:

    on the deadline, lag = how late the loop ran its timers since the call started
    (or since the last check), from `LoopLag`, or this timer's own lateness if larger
      lag <= tolerance   the loop was responsive: the call is cancelled (TimeoutError)
      lag >  tolerance   the deadline moves to now + lag (the time the loop took from
                         the call is given back), and is checked again then; never
                         beyond `max_seconds` after the start

A hung dependency therefore still costs about `seconds` on a responsive loop, and at
most `max_seconds` on a saturated one. The fast path costs about what `asyncio.timeout`
costs (one timer scheduled and cancelled) plus two counter updates.

Semantics otherwise follow `asyncio.timeout`: TimeoutError out of the block when the
deadline cancelled it; a cancellation from elsewhere propagates as CancelledError.
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType
from typing import Self

# Lag up to this share of the budget is ordinary scheduling noise on a busy loop (epoll
# and libuv wait in whole milliseconds, a loop serving requests runs a few ms per
# iteration): not worth waiting for.
TOLERANCE_SHARE = 0.1

# Loop iterations between a deadline falling due and the cancellation. An answer read
# in the iteration where the deadline falls due reaches its task in the next one; a
# pipelined answer goes through the pipeline's task first, one more. Both loops run
# callbacks queued earlier first, so those iterations deliver what has already arrived.
GRACE_ITERATIONS = 2


class LoopLag:
    """A clock of one event loop's lag: the total lateness of a timer that re-arms itself
    every `interval` seconds, ticking only while some deadline is waiting (an idle worker
    is not woken up for it). Lateness is time in which the loop ran something else and
    could not have noticed an answer. Used from its loop only; it holds no reference to
    the loop (`loop_lag` keys them weakly by loop)."""

    __slots__ = ("_due", "_ticking", "_watchers", "interval", "total")

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.total = 0.0
        self._watchers = 0
        self._ticking = False
        self._due = 0.0

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchers += 1
        if not self._ticking:
            self._ticking = True
            self._due = loop.time() + self.interval
            loop.call_at(self._due, self._tick, loop)

    def unwatch(self) -> None:
        self._watchers -= 1  # the next tick stops the clock if nobody watches

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if now > self._due:
            self.total += now - self._due
        if self._watchers > 0:
            self._due = now + self.interval
            loop.call_at(self._due, self._tick, loop)
        else:
            self._ticking = False


_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag] = (
    weakref.WeakKeyDictionary()
)


def loop_lag(loop: asyncio.AbstractEventLoop) -> LoopLag:
    """The lag clock of `loop` (one per loop, made on first use)."""
    monitor = _monitors.get(loop)
    if monitor is None:
        monitor = _monitors[loop] = LoopLag()
    return monitor


class LagTolerantDeadline:
    __slots__ = (
        "_cancelling",
        "_expired",
        "_graces",
        "_handle",
        "_lag",
        "_lag_seen",
        "_last_when",
        "_loop",
        "_max_seconds",
        "_seconds",
        "_task",
        "_when",
        "extensions",
    )

    def __init__(self, seconds: float, max_seconds: float) -> None:
        if not 0 < seconds <= max_seconds:
            raise ValueError("need 0 < seconds <= max_seconds")
        self._seconds = seconds
        self._max_seconds = max_seconds
        self._handle: asyncio.Handle | None = None
        self._expired = False
        self._graces = 0
        # How many times lag moved the deadline (tests read it).
        self.extensions = 0

    async def __aenter__(self) -> Self:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a task")
        self._loop = loop = asyncio.get_running_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self._lag = lag = loop_lag(loop)
        lag.watch(loop)
        self._lag_seen = lag.total
        now = loop.time()
        self._last_when = now + self._max_seconds
        self._when = now + self._seconds
        self._handle = loop.call_at(self._when, self._on_deadline)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lag.unwatch()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _on_deadline(self) -> None:
        now = self._loop.time()
        lag = max(self._lag.total - self._lag_seen, now - self._when)
        self._lag_seen = self._lag.total
        if lag > self._seconds * TOLERANCE_SHARE and now < self._last_when:
            self.extensions += 1
            self._when = min(now + lag, self._last_when)
            self._handle = self._loop.call_at(self._when, self._on_deadline)
            return
        self._graces = GRACE_ITERATIONS
        self._handle = self._loop.call_soon(self._on_grace)

    def _on_grace(self) -> None:
        self._graces -= 1
        if self._graces > 0:
            self._handle = self._loop.call_soon(self._on_grace)
            return
        self._handle = None
        self._expired = True
        self._task.cancel()


def lag_tolerant_deadline(seconds: float, max_seconds: float) -> LagTolerantDeadline:
    """`async with lag_tolerant_deadline(0.25, 2.25): await call()`: see the module doc."""
    return LagTolerantDeadline(seconds, max_seconds)
