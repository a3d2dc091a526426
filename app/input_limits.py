"""Input limits, the innermost middleware: a request body size limit and a handler
timeout. Both are pure ASGI and answer with problem+json.

Why not FastAPI's `max_body_size`: it answers a text/plain 413 and, for a declared
Content-Length, only once the route has been matched and its dependencies (a database
session, say) resolved. Here an oversized Content-Length is refused before anything
runs, and a body without one is counted chunk by chunk as the app reads it: nothing is
buffered beyond what the app itself reads.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problem import problem_response

logger = logging.getLogger(__name__)

# The rest of a refused body is never read; closing is cheaper than draining it.
CLOSE = {"Connection": "close"}


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit. An HTTPException, because
    FastAPI turns any other error while reading the body into a 400; this one reaches
    the app's problem handler as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes", headers=CLOSE)


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        started = False

        async def send_tracking_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_tracking_start)
        except BodyTooLarge:
            # Only reached when the app read the body outside FastAPI's body parsing
            # (request.stream() in a route) and let the error escape.
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            detail=f"the request body exceeds {self.max_bytes} bytes",
            instance=scope["path"],
            headers=CLOSE,
        )
        await response(scope, receive, send)


class HandlerTimeoutMiddleware:
    """Cancel a request that runs longer than `seconds` and answer 504.

    Cancellation reaches whatever the handler awaits: a database statement is
    cancelled on the server too (asyncpg sends a cancel request) and its transaction
    rolled back. If the response has already started, its status cannot change any
    more: the connection is dropped, which the client sees as a truncated response.
    """

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.seconds) as deadline:
                await self.app(scope, receive, send_tracking_start)
        except TimeoutError:
            if not deadline.expired() or started:
                raise  # someone else's timeout, or too late for a 504
            logger.warning(
                "%s %s cancelled after %gs (REQUEST_TIMEOUT_SECONDS)",
                scope["method"],
                scope["path"],
                self.seconds,
            )
            response = problem_response(
                HTTPStatus.GATEWAY_TIMEOUT,
                detail=f"the request did not complete within {self.seconds:g} s",
                slug="timeout",
                instance=scope["path"],
            )
            await response(scope, receive, send)
