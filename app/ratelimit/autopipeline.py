"""Implicit pipelining for a hot Redis command: while one batch is on the wire, the
commands that arrive meanwhile wait and then go together, as one pipeline.

Why: the rate limiter sends one EVALSHA per request, and under load a worker has dozens
of them at once. Sent one by one, each pays its own socket write, read and event-loop
wake-up in the worker and in Redis; sent as one pipeline, a batch pays them once.
`parity bench autopipeline` measures it side by side (docs/benchmarks.md).

At low load nothing waits: a command that finds nothing on the wire is sent at once,
alone, by its caller, so a lone request gets the latency of a plain call. The commands
that arrive meanwhile are sent by a task, batch after batch, until none wait. Replies
are matched to callers by position (Redis answers a pipeline in order), and an error
reply stays with its own command. A connection error fails every caller of that batch;
a caller that stops waiting (its timeout) does not disturb the others.

Nothing sent here creates spans (OpenTelemetry instrumentation is suppressed for it):
the rate limiter uses this path only for requests whose trace is not being recorded,
and sends the recorded ones through the traced client.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from opentelemetry import context as otel_context
from redis.asyncio import Redis

from app.telemetry.otel_internals import suppressed

_Waiter = tuple[tuple[Any, ...], asyncio.Future[Any]]


_UNTRACED = suppressed()


def _untraced_context() -> contextvars.Context:
    context = contextvars.Context()
    context.run(otel_context.attach, _UNTRACED)
    return context


class AutoPipeline:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # True while a command or a batch is on the wire.
        self._busy = False
        self._waiting: list[_Waiter] = []
        self._sender: asyncio.Task[None] | None = None  # a reference keeps it alive
        self._context = _untraced_context()

    async def execute_command(self, *args: Any) -> Any:
        """The reply to one command, as `Redis.execute_command` would return it; an
        error reply or a connection error is raised here."""
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiting.append((args, future))
            return await future
        # Nothing on the wire: send this one now, from the caller's own task.
        self._busy = True
        untraced = otel_context.attach(_UNTRACED)
        try:
            return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            otel_context.detach(untraced)
            self._send_waiting()

    def _send_waiting(self) -> None:
        if self._waiting:
            loop = asyncio.get_running_loop()
            self._sender = loop.create_task(self._send_while_waiting(), context=self._context)
        else:
            self._busy = False

    async def _send_while_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await _send(self._redis, batch)
        finally:
            self._busy = False
            if self._waiting:  # cancelled (shutdown): nobody would send these now
                batch, self._waiting = self._waiting, []
                _fail(batch, ConnectionError("the Redis pipeline was cancelled"))


async def _send(redis: Redis, batch: list[_Waiter]) -> None:
    try:
        if len(batch) == 1:
            command = batch[0][0]
            replies = [await redis.execute_command(*command)]  # type: ignore[no-untyped-call]
        else:
            pipeline = redis.pipeline(transaction=False)
            for args, _ in batch:
                pipeline.execute_command(*args)
            replies = await pipeline.execute(raise_on_error=False)
    except Exception as exc:
        _fail(batch, exc)
        return
    except BaseException:  # cancelled (shutdown): its callers must not wait forever
        _fail(batch, ConnectionError("the Redis pipeline was cancelled"))
        raise
    for (_, future), reply in zip(batch, replies, strict=True):
        if future.done():  # the caller gave up waiting
            continue
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)


def _fail(batch: list[_Waiter], error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
