"""The HTTP/1.1 protocol our workers speak: Uvicorn's httptools protocol plus the limits
it lacks (checked against uvicorn 0.54 / httptools 0.9; `tests/test_http_limits.py`
runs each against a real Gunicorn).

1. **Header read timeout.** Uvicorn starts no timer until a response has been sent: a
   client that connects and sends nothing, or sends its headers a byte at a time
   (slowloris), holds its connection forever, and with it one of the worker's
   `limit_concurrency` slots. Here the request line and headers must be complete within
   `header_read_timeout` seconds of the connection (or of the first byte of a
   keep-alive request), else the answer is 408 and the connection is closed. A slow
   *body* is bounded by the handler timeout (app/input_limits.py), which covers reading it.
2. **Header size.** httptools accepts any amount of header data (we sent 20 MB of one
   header and 100,000 headers: both were served). Here the request line plus headers
   may total `max_header_bytes`, else the answer is 431.
3. **Overload answers in our format.** Beyond `limit_concurrency` Uvicorn answers a
   plain-text 503; here it is a problem+json 503 with `Retry-After`, like every other
   error of the service.
4. **Idle connections make room; one address cannot take them all.** Uvicorn counts
   idle keep-alive connections against `limit_concurrency`, so held idle connections
   lock everyone else out. Here the worker's connections are tracked
   (app/connections.py): under pressure the longest-idle are closed before a request is
   refused, a direct client may hold `connections_per_address` connections per worker,
   and its idle keep-alive connections close after `direct_client_keepalive` seconds
   (a trusted proxy's after Uvicorn's `timeout_keep_alive`, GUNICORN_KEEPALIVE).

Uvicorn API this leans on beyond the documented `http=` class: the protocol's
attributes `limit_concurrency`, `timeout_keep_alive`, `tasks`, `cycle`, `client`,
`transport`, `server_state`, and its methods `on_message_begin`,
`on_headers_complete`, `on_response_complete`, `_start_asgi_task`,
`handle_websocket_upgrade`, `send_400_response` (all in httptools_impl.py).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.connections import ConnectionRegistry, PeerTrust, Refusal
from app.problem import PROBLEM_MEDIA_TYPE, problem_bytes

logger = logging.getLogger(__name__)

OVERLOAD_RETRY_AFTER_SECONDS = 1


class _RequestRejected(Exception):
    """Raised inside a parser callback to stop parsing a request we have answered."""


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a header read timeout, a header size limit, connection
    admission that closes idle connections first and a problem+json overload answer.
    Configure with `configured(...)`."""

    header_read_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 32 * 1024
    connections_per_address: ClassVar[int] = 128
    direct_client_keepalive: ClassVar[int] = 20
    peer_trust: ClassVar[PeerTrust] = PeerTrust("127.0.0.1,::1")

    @classmethod
    def configured(
        cls,
        *,
        header_read_timeout: float,
        max_header_bytes: int,
        connections_per_address: int,
        direct_client_keepalive: int,
        forwarded_allow_ips: str,
    ) -> type[HardenedHttpToolsProtocol]:
        """A subclass with these limits (Uvicorn's `http=` takes a class, not an instance)."""
        limits = {
            "header_read_timeout": header_read_timeout,
            "max_header_bytes": max_header_bytes,
            "connections_per_address": connections_per_address,
            "direct_client_keepalive": direct_client_keepalive,
            "peer_trust": PeerTrust(forwarded_allow_ips),
        }
        return type(cls.__name__, (cls,), limits)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._rejected = False
        # Admission is ours (`_start_asgi_task`): Uvicorn's own check would count the
        # idle connections we are about to close.
        self._registry = registry_for(
            self.server_state,
            max_connections=self.limit_concurrency,
            per_address=self.connections_per_address,
        )
        self.limit_concurrency = None
        self._requests_begun = 0
        self._responses_sent = 0

    # --- connection life, header read timeout --------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.peer_trust.capped_address(self.client[0] if self.client else None)
        if address is not None:  # a direct client: a shorter idle keep-alive
            self.timeout_keep_alive = min(self.timeout_keep_alive, self.direct_client_keepalive)
        self._registry.opened(transport, address)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._registry.closed(self.transport)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The transport goes to the WebSocket protocol: this one never sees it close.
        self._registry.closed(self.transport)
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._requests_begun += 1
        self._registry.busy(self.transport)
        self._header_bytes = 0
        # A new connection's timer already runs since connect; a keep-alive request's
        # starts with its first byte (the idle time before it is Uvicorn's keep-alive).
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.header_read_timeout, self._header_read_timed_out
            )

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_read_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is being written: the slow bytes are a pipelined request
        self._reject(
            HTTPStatus.REQUEST_TIMEOUT,
            f"the request headers did not arrive within {self.header_read_timeout:g} s",
        )

    # --- header size limit ------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._reject(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"the request line and headers exceed {self.max_header_bytes} bytes",
            )
            raise _RequestRejected  # httptools stops parsing and re-raises it wrapped

    def send_400_response(self, msg: str) -> None:
        # Uvicorn answers 400 to any parser error, including the one we raised above.
        if not self._rejected:
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        if not self._rejected:
            super().data_received(data)

    # --- answering without the app ------------------------------------------------

    def _reject(self, status: HTTPStatus, detail: str) -> None:
        """Answer `status` with a problem body and close the connection."""
        self._rejected = True
        self._disarm_header_timer()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        logger.warning("%s: %d %s", client, status.value, detail)
        body = problem_bytes(status, detail=detail)
        head = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head += [
            b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    # --- admission ------------------------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._responses_sent += 1
        if self._responses_sent == self._requests_begun:  # no pipelined request begun
            self._registry.idle(self.transport)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if app is self.app:
            refusal = self._registry.admit(self.transport, in_flight=len(self.tasks))
            if refusal is not None:
                app = self._refused(refusal)
        super()._start_asgi_task(cycle, app)

    def _refused(self, refusal: Refusal) -> ASGI3Application:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        if refusal is Refusal.ADDRESS_FULL:
            logger.warning(
                "%s: 503, this address holds %d connections to this worker",
                client,
                self.connections_per_address,
            )
            return address_overloaded
        logger.warning("%s: 503, this worker is at its connection limit", client)
        return overloaded


def registry_for(
    server_state: ServerState, *, max_connections: int | None, per_address: int
) -> ConnectionRegistry:
    """The connection registry of this server (one per worker process)."""
    registry = _registries.get(server_state)
    if registry is None:
        registry = ConnectionRegistry(max_connections=max_connections, per_address=per_address)
        _registries[server_state] = registry
    return registry


_registries: weakref.WeakKeyDictionary[ServerState, ConnectionRegistry] = (
    weakref.WeakKeyDictionary()
)


def overload_answer(detail: str) -> ASGI3Application:
    """An ASGI app answering 503 problem+json with `Retry-After`. It closes the
    connection: open connections are what the limits count."""
    body = problem_bytes(HTTPStatus.SERVICE_UNAVAILABLE, detail=detail)
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(OVERLOAD_RETRY_AFTER_SECONDS).encode()),
        (b"cache-control", b"no-store"),
        (b"connection", b"close"),
    ]

    async def answer(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return answer


# Beyond GUNICORN_WORKER_CONNECTIONS with no idle connection left to close.
overloaded = overload_answer("this worker is at its connection limit; retry shortly")
# A direct client holding WORKER_CONNECTIONS_PER_ADDRESS busy connections to this worker.
address_overloaded = overload_answer(
    "this client address already holds as many busy connections to this worker as one "
    "address may; reuse them, or retry shortly"
)
