"""Graceful shutdown, the app's side: the state the app reads and the middleware that
acts on it (docs/shutdown.md; the worker's side is app/graceful_server.py).

- `Lifecycle`: the state the app reads (/ready, `Connection: close`) and the worker sets.
- `DrainingMiddleware`: the pure ASGI part (response headers, the cut-off 503).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problem import problem_response


@dataclass
class Lifecycle:
    """Where this worker process is in its life. Changed only by `GracefulServer` (on the
    event loop), read by /ready and `DrainingMiddleware`."""

    signalled_at: float | None = None  # time.monotonic() when the shutdown began
    # True when only this worker is replaced (HUP, max_requests, TTOU): the master keeps
    # the listening socket and the instance as a whole stays ready.
    replacing_worker: bool = False
    cutting_off: bool = False  # the drain timeout passed; in-flight requests are cancelled

    @property
    def shutting_down(self) -> bool:
        return self.signalled_at is not None

    @property
    def ready(self) -> bool:
        return not self.shutting_down or self.replacing_worker

    def begin_shutdown(self, *, replacing_worker: bool) -> None:
        self.signalled_at = time.monotonic()
        self.replacing_worker = replacing_worker


def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


class DrainingMiddleware:
    """From the shutdown signal on, every response carries `Connection: close`, so
    keep-alive clients reconnect (to another instance, or to a new worker) instead of
    reusing a connection that is about to close. A request still running when the drain
    timeout cuts it off is answered with a 503 problem (instead of Uvicorn's text 500)."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_with_connection_close(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                if self.lifecycle.shutting_down:
                    headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_connection_close)
        except asyncio.CancelledError:
            if not self.lifecycle.cutting_off or response_started:
                raise
            # This task is about to end anyway: answer instead of propagating the cancel.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            response = problem_response(
                503,
                detail="the server shut down before this request completed; retry it",
                slug="shutting-down",
                instance=scope.get("path"),
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send_with_connection_close)
