"""One worker's open connections: who holds them (by peer address) and which are idle,
so that connection pressure closes idle connections before it refuses a request.

Uvicorn's `limit_concurrency` counts an idle keep-alive connection like a busy one: one
address that opened ~2,000 connections, sent one `GET /health` on each and held them
locked every other client out with 503s for as long as it held them (issue 18). Here,
as in nginx:

1. **Idle connections make room.** A connection is idle before its first request and
   between requests (keep-alive). When a request arrives while the worker holds more
   than `max_connections` (GUNICORN_WORKER_CONNECTIONS), the longest-idle connections
   are closed until it does not; the request is refused (503) only when every other
   connection is busy, or `max_connections` requests are already in flight.
2. **A cap per client address.** A direct client (a peer not in FORWARDED_ALLOW_IPS) may
   hold `per_address` connections to a worker (WORKER_CONNECTIONS_PER_ADDRESS). Its next
   one closes its own longest-idle connection instead, or, when all of them are busy,
   is refused (503). A trusted proxy carries many clients over its connections and is
   not capped (its connections still count towards `max_connections`); neither is a
   Unix-socket peer, which has no address.

A connection counts towards its address once its first request has been admitted, so a
burst of new connections from one client gets `per_address` of them served and the
rest refused, rather than all refused. Connections that never send a request are idle
(closed first under pressure) and bounded by the header read timeout
(app/http_protocol.py).

The registry works on asyncio transports and is used from the event loop only.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from itertools import islice

from app.proxy_trust import parse_address, trusted_networks, within

logger = logging.getLogger(__name__)

# Idle connections looked at per eviction beyond the number to close: one with a request
# already waiting in its socket is skipped, and a flood of those must not make one
# admission scan every connection.
EXTRA_CANDIDATES = 32


class Refusal(Enum):
    """Why a request is answered 503 instead of being served."""

    WORKER_FULL = "worker"  # max_connections busy connections, or requests in flight
    ADDRESS_FULL = "address"  # the client's address holds per_address busy connections


class PeerTrust:
    """Which peers are proxies we trust (FORWARDED_ALLOW_IPS): they are not capped per
    address and keep the long keep-alive timeout (GUNICORN_KEEPALIVE)."""

    def __init__(self, forwarded_allow_ips: str) -> None:
        self.networks = trusted_networks(forwarded_allow_ips)  # None: `*`, every peer

    def capped_address(self, peer_host: str | None) -> str | None:
        """The address a direct client's connections are counted under, or None for a
        peer that is not capped (a trusted proxy, a Unix-socket peer)."""
        if peer_host is None or self.networks is None:
            return None
        # A dual-stack listener's IPv4 client (IPv4-mapped) counts as its IPv4 address.
        address = parse_address(peer_host)
        if address is None:
            return peer_host  # not an IP (never seen from a TCP socket): count it as is
        return None if within(address, self.networks) else str(address)


def has_unread_bytes(transport: asyncio.BaseTransport) -> bool:
    """Whether the connection's socket holds data (or an EOF) the event loop has not read
    yet: an idle connection whose next request is already on its way."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    # poll(), not select(): select() refuses descriptors above 1023, which a worker
    # holding a thousand connections has. An EOF counts as readable, and is news too.
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile: closing it again is harmless
        return False


@dataclass(slots=True)
class _Connection:
    address: str | None  # counted under this address (None: not capped)
    admitted: bool = False  # its first request passed admission


class ConnectionRegistry:
    """A worker's connections. The protocol reports each connection's life (`opened`,
    `busy`, `idle`, `closed`) and asks `admit` before it runs a request."""

    def __init__(
        self,
        *,
        max_connections: int | None,
        per_address: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        self._clock = clock
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        # Idle connections and since when, longest-idle first (insertion order: a
        # connection that turns idle is inserted anew, at the end).
        self._idle: dict[asyncio.BaseTransport, float] = {}
        self._admitted: dict[str, set[asyncio.BaseTransport]] = {}

    # --- a connection's life -------------------------------------------------------

    def opened(self, transport: asyncio.BaseTransport, address: str | None) -> None:
        self._open[transport] = _Connection(address)
        self._idle[transport] = self._clock()

    def busy(self, transport: asyncio.BaseTransport) -> None:
        """A request has begun on the connection."""
        self._idle.pop(transport, None)

    def idle(self, transport: asyncio.BaseTransport) -> None:
        """The connection waits for its next request."""
        if transport in self._open and not transport.is_closing():
            self._idle.pop(transport, None)
            self._idle[transport] = self._clock()

    def closed(self, transport: asyncio.BaseTransport) -> None:
        """Gone, or closing: it no longer counts. Called again when it is lost."""
        self._idle.pop(transport, None)
        connection = self._open.pop(transport, None)
        if connection is None or not connection.admitted or connection.address is None:
            return
        held = self._admitted.get(connection.address)
        if held is not None:
            held.discard(transport)
            if not held:
                del self._admitted[connection.address]

    # --- admission -----------------------------------------------------------------

    def admit(self, transport: asyncio.BaseTransport, *, in_flight: int) -> Refusal | None:
        """Whether a request that has just arrived on `transport` may run (None) or must
        be refused; closes idle connections first when that makes room. `in_flight`:
        requests of this worker already running."""
        connection = self._open.get(transport)
        if connection is None:
            return None  # not tracked (closing already): Uvicorn answers or drops it
        if connection.address is not None and not connection.admitted:
            if not self._make_room_for_address(connection.address):
                return Refusal.ADDRESS_FULL
            self._admitted.setdefault(connection.address, set()).add(transport)
            connection.admitted = True
        if self.max_connections is None:
            return None
        if not self._make_room_in_worker() or in_flight >= self.max_connections:
            return Refusal.WORKER_FULL
        return None

    def _make_room_for_address(self, address: str) -> bool:
        held = self._admitted.get(address, set())
        excess = len(held) - self.per_address + 1
        if excess > 0:
            idle = sorted((t for t in held if t in self._idle), key=self._idle.__getitem__)
            self._close_idle(idle, excess)
        return len(self._admitted.get(address, ())) < self.per_address

    def _make_room_in_worker(self) -> bool:
        assert self.max_connections is not None
        excess = len(self._open) - self.max_connections
        if excess > 0:
            self._close_idle(list(islice(self._idle, excess + EXTRA_CANDIDATES)), excess)
        if len(self._open) > self.max_connections:
            # Connections Uvicorn is closing (after a `Connection: close` response, a
            # keep-alive timeout) leave on the next loop turn: do not count them.
            for transport in [t for t in self._open if t.is_closing()]:
                self.closed(transport)
        return len(self._open) <= self.max_connections

    def _close_idle(self, candidates: list[asyncio.BaseTransport], count: int) -> None:
        """Close up to `count` of `candidates` (longest-idle first), skipping any whose
        next request already waits in its socket: closing it would reset a request the
        client has sent and the server never read (RFC 9112 §9.6)."""
        closed = 0
        for transport in candidates[: count + EXTRA_CANDIDATES]:
            if closed == count:
                break
            if has_unread_bytes(transport):
                continue
            idle_seconds = self._clock() - self._idle[transport]
            transport.close()
            self.closed(transport)
            closed += 1
            logger.debug("closed a connection idle for %.1f s to make room", idle_seconds)
