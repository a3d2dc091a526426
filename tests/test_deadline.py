"""The deadline loop lag does not spend (app/deadline.py), on both event loops the
service runs (asyncio's and uvloop's, which Uvicorn picks): an answer that arrived while
the loop was busy is delivered; a call that never answers still ends, after `seconds` on
a responsive loop and at most `max_seconds` on a lagging one.

The "answer" is a real socket read from a tiny TCP server in a thread of its own (it
answers while the loop is busy, as Redis does), and the lag is a callback that spins on
the CPU, as an expensive request does. No assertion is an upper bound on time: the
machine is shared."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop

from app.cache import create_redis
from app.deadline import lag_tolerant_deadline, loop_lag
from app.settings import Settings


def spin(seconds: float) -> None:
    """Hold the event loop, as a CPU-heavy request does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """Run a coroutine on a fresh loop of each kind."""
    if request.param == "uvloop":
        yield uvloop.run
    else:
        yield asyncio.run


@dataclass
class EchoServer:
    """Echoes what it receives, `delay` seconds later, from a thread of its own: it
    answers while the event loop under test is busy, as Redis does. The default delay
    makes the answer arrive during a test's spin, not before it starts."""

    port: int
    delay: float = 0.02


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = EchoServer(listener.getsockname()[1])

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                while data := connection.recv(4096):
                    time.sleep(server.delay)
                    connection.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    listener.close()
    thread.join(timeout=10)


@asynccontextmanager
async def connected(
    server: EchoServer,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


def test_asyncio_timeout_turns_loop_lag_into_a_timeout(
    run: Callable[..., Any], echo: EchoServer
) -> None:
    """Why the helper exists: the question is sent, another request holds the loop for
    0.3 s (the answer arrives meanwhile), and `asyncio.timeout(0.05)` still raises:
    the loop reads the answer, then runs the overdue timer, which cancels the task
    that was about to receive it."""

    async def scenario() -> None:
        async with connected(echo) as (reader, writer):
            writer.write(b"ping\n")
            asyncio.get_running_loop().call_soon(spin, 0.3)
            async with asyncio.timeout(0.05):
                await reader.readline()

    with pytest.raises(TimeoutError):
        run(scenario())


def test_an_answer_that_arrived_while_the_loop_lagged_is_delivered(
    run: Callable[..., Any], echo: EchoServer
) -> None:
    """The same, with lag_tolerant_deadline(0.05, 2): the answer is delivered, and the
    deadline moved at least once (by the loop's lateness)."""

    async def scenario() -> tuple[bytes, int]:
        async with connected(echo) as (reader, writer):
            writer.write(b"ping\n")
            asyncio.get_running_loop().call_soon(spin, 0.3)
            async with lag_tolerant_deadline(0.05, 2) as deadline:
                line = await reader.readline()
            return line, deadline.extensions

    line, extensions = run(scenario())
    assert line == b"ping\n"
    assert extensions >= 1


def test_lag_before_the_deadline_is_given_back_too(
    run: Callable[..., Any], echo: EchoServer
) -> None:
    """Lag that is over when the deadline falls due leaves no late timer behind, yet it
    took time from the call: 6 spins of 30 ms hold the loop first, and only then is the
    question sent (as a command queued behind a pipeline batch is), to a server that
    takes 50 ms. The deadline of 0.2 s falls due on time, while the answer is still on
    its way; the 0.18 s of lag are given back and the answer is delivered."""

    async def scenario() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        echo.delay = 0.05
        async with connected(echo) as (reader, writer):

            async def lag() -> None:
                for _ in range(6):
                    spin(0.03)
                    await asyncio.sleep(0)

            async def ask_after(lagging: asyncio.Task[None]) -> bytes:
                await lagging
                writer.write(b"ping\n")
                return await reader.readline()

            asking = loop.create_task(ask_after(loop.create_task(lag())))
            async with lag_tolerant_deadline(0.2, 2) as deadline:
                line = await asking
            return line, deadline.extensions

    line, extensions = run(scenario())
    assert line == b"ping\n"
    assert extensions >= 1


def test_an_answer_read_when_the_deadline_expires_is_still_delivered(
    run: Callable[..., Any], echo: EchoServer
) -> None:
    """Even when the deadline cannot move any more (max_seconds = seconds), an answer
    the loop has already read when it expires reaches the caller, also when a second
    task relays it (as the pipeline's task relays replies): the cancellation waits
    GRACE_ITERATIONS loop iterations, and both loops run the relay and then the caller
    first."""

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        async with connected(echo) as (reader, writer):

            async def relay() -> bytes:
                writer.write(b"ping\n")
                return await reader.readline()

            relaying = loop.create_task(relay())
            await asyncio.sleep(0)  # the question is on its way
            loop.call_soon(spin, 0.3)
            async with lag_tolerant_deadline(0.05, 0.05):
                return await relaying

    assert run(scenario()) == b"ping\n"


def test_a_call_that_never_answers_ends_after_its_budget(run: Callable[..., Any]) -> None:
    """A hung dependency on a responsive loop: TimeoutError once `seconds` have passed,
    not earlier, with the deadline never moved."""

    async def scenario() -> tuple[float, int]:
        started = time.monotonic()
        deadline = lag_tolerant_deadline(0.1, 2)
        with pytest.raises(TimeoutError):
            async with deadline:
                await asyncio.Event().wait()
        return time.monotonic() - started, deadline.extensions

    elapsed, extensions = run(scenario())
    assert elapsed >= 0.099
    assert extensions == 0


def test_a_call_that_never_answers_on_a_lagging_loop_ends_by_max_seconds(
    run: Callable[..., Any],
) -> None:
    """A hung dependency while the loop keeps lagging (a spin of 50 ms every iteration):
    the deadline moves (lag is given back) but stops moving at `max_seconds`, and the
    call ends with TimeoutError (the outer 10 s guard never fires)."""

    async def scenario() -> tuple[float, int]:
        async def keep_lagging() -> None:
            while True:
                spin(0.05)
                await asyncio.sleep(0)

        lagging = asyncio.get_running_loop().create_task(keep_lagging())
        started = time.monotonic()
        deadline = lag_tolerant_deadline(0.1, 0.6)
        try:
            async with asyncio.timeout(10):
                with pytest.raises(TimeoutError):
                    async with deadline:
                        await asyncio.Event().wait()
        finally:
            lagging.cancel()
        return time.monotonic() - started, deadline.extensions

    elapsed, extensions = run(scenario())
    assert extensions >= 1
    assert elapsed >= 0.6


def test_a_cancellation_from_elsewhere_stays_a_cancellation(run: Callable[..., Any]) -> None:
    """Only the deadline's own cancellation becomes TimeoutError; a request cancelled
    by its client or by shutdown propagates as CancelledError."""

    async def scenario() -> None:
        async def wait() -> None:
            async with lag_tolerant_deadline(5, 10):
                await asyncio.Event().wait()

        task = asyncio.get_running_loop().create_task(wait())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())


def test_the_lag_clock_ticks_only_while_a_deadline_waits(run: Callable[..., Any]) -> None:
    """An idle worker is not woken up: after the last deadline ends, the clock's next
    tick is its last."""

    async def scenario() -> tuple[bool, bool]:
        monitor = loop_lag(asyncio.get_running_loop())
        async with lag_tolerant_deadline(1, 2):
            await asyncio.sleep(0.03)
            ticking_while_waiting = monitor._ticking
        await asyncio.sleep(monitor.interval * 3)
        return ticking_while_waiting, monitor._ticking

    assert run(scenario()) == (True, False)


def test_max_seconds_below_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match="0 < seconds <= max_seconds"):
        lag_tolerant_deadline(1, 0.5)


def test_the_redis_clients_own_timeouts_are_a_looser_backstop() -> None:
    """redis-py times its reads and connects with the wall clock too (and drops the
    connection when one expires): at REDIS_TIMEOUT_SECONDS it would undo all of the
    above, so it sits behind the longest our deadline can last."""
    settings = Settings(REDIS_TIMEOUT_SECONDS=0.25)
    options = create_redis(settings).connection_pool.connection_kwargs
    assert settings.redis_call_max_seconds == 0.25 + 2.0
    assert options["socket_timeout"] > settings.redis_call_max_seconds
    assert options["socket_connect_timeout"] > settings.redis_call_max_seconds
