"""Graceful shutdown, the worker's side: what a worker does between SIGTERM and its exit
(docs/shutdown.md; the app's side is app/lifecycle.py).

    SIGTERM
      1 signal          /ready answers 503 (unless only this worker is replaced), every
                        response carries `Connection: close`
      2 delay           keep serving SHUTDOWN_DELAY_SECONDS so load balancers stop routing
      3 stop accepting  close this worker's copy of the listening socket
      4 drain           in-flight requests finish, idle keep-alive connections close;
                        at SHUTDOWN_DRAIN_TIMEOUT_SECONDS the rest are cut off with a 503
      5 lifespan        the app's lifespan shutdown (DB pool, Redis, span flush), bounded
      6 exit            the worker process exits with status 0

Each phase logs one JSON line (`shutdown_phase`, `phase_seconds`, `since_signal_seconds`).

- `GracefulServer`: Uvicorn's `Server` with the sequence above; `app.worker.UvicornWorker`
  runs it. Uvicorn's own shutdown does phases 3-5 but has no delay, no readiness, no bound
  on the lifespan shutdown, closes idle keep-alive connections at once (racing clients that
  are about to reuse them) and answers cut-off requests with a bare text 500.

The app never installs a signal handler of its own (`signal.signal` in app code fights
Uvicorn's); the server's handler only records the signal and the event loop acts on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from app.lifecycle import Lifecycle
from app.settings import CUT_OFF_GRACE_SECONDS, Settings

logger = logging.getLogger(__name__)

# Drain step 4a: idle keep-alive connections stay open at least this long after the
# listener closes (and as long as requests are in flight). A client that sends its next
# request meanwhile gets it answered with `Connection: close`; closing at once would race
# clients whose request is already on its way, and they would see a reset for a request
# the server never read (RFC 9112 §9.6). Counted inside the drain timeout.
IDLE_KEEPALIVE_GRACE_SECONDS = 1.0
CUT_OFF_REASON = "cut off: the shutdown drain timeout passed"


def accept_waiting(listener: socket.socket) -> list[socket.socket]:
    """Accept every connection waiting in the listen backlog, without blocking."""
    accepted: list[socket.socket] = []
    try:
        listener.setblocking(False)
    except OSError:
        return accepted
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        except OSError:  # the socket is gone, or out of file descriptors
            return accepted
        conn.setblocking(False)
        accepted.append(conn)


def has_unread_bytes(transport: asyncio.BaseTransport) -> bool:
    """Whether the connection's socket has data (or an EOF) the event loop has not read."""
    sock = transport.get_extra_info("socket")
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (AttributeError, OSError, ValueError):  # no socket, or already closed
        return False
    return bool(readable)


def master_keeps_listening(listeners: Sequence[socket.socket]) -> bool:
    """Whether the parent (the Gunicorn master) still holds our listening socket.

    On TERM the master closes its copies *before* it signals the workers: the server is
    stopping. On HUP (and when it recycles a worker after max_requests, or on TTOU) it
    keeps them and starts replacements: the instance stays ready. Reads
    /proc/<ppid>/fd (Linux); False when that cannot be told, which errs on the safe side
    (/ready turns 503)."""
    inodes = set()
    for sock in listeners:
        try:
            inodes.add(f"socket:[{os.fstat(sock.fileno()).st_ino}]")
        except (OSError, ValueError):
            continue
    if not inodes:
        return False
    parent_fds = Path(f"/proc/{os.getppid()}/fd")
    try:
        entries = list(parent_fds.iterdir())
    except OSError:
        return False
    for entry in entries:
        try:
            if os.readlink(entry) in inodes:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


class GracefulServer(uvicorn.Server):
    """Uvicorn's server with the shutdown sequence of this module's docstring."""

    def __init__(self, config: uvicorn.Config, settings: Settings, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.settings = settings
        self.lifecycle = lifecycle
        self._listeners: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            self._listeners = list(sockets or [s for srv in self.servers for s in srv.sockets])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: Uvicorn records the signal (its main loop notices within
        # 0.1 s); we also ask the loop to run phase 1 right away, so /ready is 503 at once.
        super().handle_exit(sig, frame)
        if self._loop is not None and not self.lifecycle.shutting_down:
            self._loop.call_soon_threadsafe(self._phase_signal)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._phase_signal()  # a no-op if the signal handler already ran it
        # Keep the Date header fresh and Gunicorn's heartbeat going: on HUP the master is
        # still checking it and would kill a draining worker as "timed out".
        ticker = asyncio.create_task(self._keep_ticking())
        try:
            await self._phase_delay()
            await self._phase_stop_accepting(sockets)
            await self._phase_drain()
            await self._phase_lifespan_shutdown()
        finally:
            ticker.cancel()
        self._phase_exit()

    # --- the phases, in order -----------------------------------------------------------

    def _phase_signal(self) -> None:
        """1. Not ready: from now on /ready answers 503 and responses carry
        `Connection: close`. Readiness stays up when only this worker is replaced."""
        if self.lifecycle.shutting_down:
            return
        # No signal: Uvicorn stops by itself once max_requests is reached.
        captured = self._captured_signals
        cause = signal.Signals(captured[-1]).name if captured else "max_requests"
        replacing = master_keeps_listening(self._listeners)
        self.lifecycle.begin_shutdown(replacing_worker=replacing)
        self._log(
            "signal",
            0.0,
            "shutdown 1/6 signal: %s; %s; %d requests in flight on %d connections",
            cause,
            "worker replaced, /ready stays 200" if replacing else "/ready answers 503",
            len(self.server_state.tasks),
            len(self.server_state.connections),
            cause=cause,
            replacing_worker=replacing,
            in_flight=len(self.server_state.tasks),
            connections=len(self.server_state.connections),
        )

    async def _phase_delay(self) -> None:
        """2. Delay: keep accepting and serving while not ready, so load balancers see the
        503 and stop routing here before the listener goes. The master has closed its
        copy of the listening socket, but ours keeps the kernel socket open."""
        started = time.monotonic()
        answered_before = self.server_state.total_requests  # counts completed responses
        until = self._signalled_at() + self.settings.SHUTDOWN_DELAY_SECONDS
        while not self.force_exit:  # a second Ctrl-C skips the rest
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(0.1, remaining))
        self._log(
            "delay",
            started,
            "shutdown 2/6 delay: answered %d requests while not ready (delay %g s)",
            self.server_state.total_requests - answered_before,
            self.settings.SHUTDOWN_DELAY_SECONDS,
            delay_seconds=self.settings.SHUTDOWN_DELAY_SECONDS,
            answered=self.server_state.total_requests - answered_before,
        )

    async def _phase_stop_accepting(self, sockets: list[socket.socket] | None) -> None:
        """3. Stop accepting: take what waits in the listen backlog, then close our copy
        of the listening socket. Once every worker has closed its copy new connections
        are refused (on HUP the master keeps one: they wait for the new workers).

        The kernel completes handshakes on its own: a client can have connected and sent
        its request before any worker accepted it. Closing the last copy of the socket
        resets those connections, so they are accepted and served first (no await
        between the last accept and the close: nothing can slip in on this side)."""
        started = time.monotonic()
        waiting = [conn for sock in sockets or [] for conn in accept_waiting(sock)]
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # Registered before the drain starts counting connections.
        await asyncio.gather(*(self._serve_accepted(conn) for conn in waiting))
        self._log(
            "stop_accepting",
            started,
            "shutdown 3/6 stop accepting: listener closed, %d waiting connections taken "
            "from the backlog; %d connections open",
            len(waiting),
            len(self.server_state.connections),
            from_backlog=len(waiting),
            connections=len(self.server_state.connections),
        )

    async def _serve_accepted(self, conn: socket.socket) -> None:
        """Serve a connection accepted by hand, as the asyncio server would have."""

        def protocol() -> asyncio.Protocol:
            return self.config.http_protocol_class(  # type: ignore[call-arg]
                config=self.config, server_state=self.server_state, app_state=self.lifespan.state
            )

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol, conn, ssl=self.config.ssl
            )
        except OSError:
            conn.close()

    async def _phase_drain(self) -> None:
        """4. Drain, bounded by the drain timeout:
        a. while requests are in flight (and for at least IDLE_KEEPALIVE_GRACE_SECONDS)
           every connection stays open: each response says `Connection: close` and the
           connection closes after it. Closing idle ones earlier gains nothing (the worker
           cannot exit before its requests end) and races clients about to reuse them;
        b. then close the idle connections and wait for the rest;
        c. past the timeout, cut off what still runs: cancelled, answered 503."""
        started = time.monotonic()
        timeout = self._drain_timeout()
        deadline = started + timeout
        in_flight = len(self.server_state.tasks)
        answered_before = self.server_state.total_requests
        grace_until = min(deadline, started + IDLE_KEEPALIVE_GRACE_SECONDS)
        await self._wait_until_idle(deadline, close_idle_after=grace_until)
        cut_off = await self._cut_off_overdue_requests()
        self._log(
            "drain",
            started,
            "shutdown 4/6 drain: %d requests in flight, %d answered, %d cut off at the "
            "timeout (%g s)",
            in_flight,
            self.server_state.total_requests - answered_before,
            cut_off,
            timeout,
            in_flight=in_flight,
            answered=self.server_state.total_requests - answered_before,
            cut_off=cut_off,
            timeout_seconds=timeout,
            level=logging.ERROR if cut_off else logging.INFO,
        )

    async def _phase_lifespan_shutdown(self) -> None:
        """5. Lifespan shutdown: the app closes its pools and flushes its spans, bounded by
        SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS so the whole sequence stays within Gunicorn's
        graceful_timeout (past it the master SIGKILLs, and nothing is flushed)."""
        started = time.monotonic()
        budget = self.settings.SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS
        outcome = "completed"
        if self.force_exit:
            outcome = "skipped (forced exit)"
        else:
            try:
                async with asyncio.timeout(budget):
                    await self.lifespan.shutdown()
            except TimeoutError:
                outcome = "timed out"
        self._log(
            "lifespan_shutdown",
            started,
            "shutdown 5/6 lifespan shutdown: %s (budget %g s)",
            outcome,
            budget,
            outcome=outcome,
            budget_seconds=budget,
            level=logging.INFO if outcome == "completed" else logging.ERROR,
        )

    def _phase_exit(self) -> None:
        """6. Exit with status 0. Uvicorn re-raises the signal it caught so the process
        dies of it; under Gunicorn that skips the worker_exit hook and atexit handlers
        (the OpenTelemetry SDK flushes in one), and the master waits for us anyway."""
        self._captured_signals.clear()
        self._log("exit", time.monotonic(), "shutdown 6/6 exit: worker process exits")

    # --- helpers ----------------------------------------------------------------------------

    def _drain_timeout(self) -> float:
        # The one road of this setting (Uvicorn's timeout_graceful_shutdown stays unset).
        return float(self.settings.SHUTDOWN_DRAIN_TIMEOUT_SECONDS)

    def _signalled_at(self) -> float:
        return self.lifecycle.signalled_at or time.monotonic()

    async def _wait_until_idle(self, deadline: float, *, close_idle_after: float) -> None:
        """Until every connection has closed and every request task has ended (one whose
        client left may still be committing), the deadline passes, or a second Ctrl-C
        forces the exit. Idle connections are closed once no request is in flight and
        `close_idle_after` has passed."""
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit:
            now = time.monotonic()
            if now >= deadline:
                return
            if not state.tasks and now >= close_idle_after:
                self._close_connections()
            await asyncio.sleep(min(0.05, deadline - now))

    def _close_connections(self) -> None:
        """Uvicorn's `connection.shutdown()`: an idle connection closes now, a busy one
        after its response. Skipped for a connection with bytes waiting in its socket: a
        request the event loop has not read yet, which closing would turn into a reset.
        It is read on the next loop turn and answered with `Connection: close`."""
        for connection in list(self.server_state.connections):
            if not has_unread_bytes(connection.transport):
                connection.shutdown()

    async def _cut_off_overdue_requests(self) -> int:
        tasks = [task for task in self.server_state.tasks if not task.done()]
        if not tasks:
            return 0
        self.lifecycle.cutting_off = True
        for task in tasks:
            task.cancel(msg=CUT_OFF_REASON)
        # Let the cancelled requests send their 503 before the pools close under them.
        await asyncio.wait(tasks, timeout=CUT_OFF_GRACE_SECONDS)
        return len(tasks)

    async def _keep_ticking(self) -> None:
        while True:
            await self.on_tick(0)
            await asyncio.sleep(1.0)

    def _log(
        self,
        phase: str,
        started: float,
        message: str,
        *args: object,
        level: int = logging.INFO,
        **fields: Any,
    ) -> None:
        now = time.monotonic()
        extra = {
            "shutdown_phase": phase,
            "phase_seconds": round(now - started, 3) if started else 0.0,
            "since_signal_seconds": round(now - self._signalled_at(), 3),
            **fields,
        }
        logger.log(level, message, *args, extra=extra)
