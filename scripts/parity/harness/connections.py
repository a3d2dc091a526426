"""Connections pinned to Gunicorn workers: open keep-alive connections one at a time
until every worker holds some, and know which worker holds each (Linux /proc), so that
a run of requests over them reaches every worker. What the rate-limit proof stands on
(exact across workers) and the tests of the limiter under lag.

    connections = await open_connections(server.base_url, count=8, server=server)
    {c.worker for c in connections}     # every worker's pid
    await close_connections(connections)
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from parity.harness.stack import GunicornProcess

# --- Which worker holds a connection (Linux /proc) -----------------------------------


def _hex_address(host: str, port: int) -> str:
    """An IPv4 address and port as /proc/net/tcp writes them (little-endian hex)."""
    octets = [int(part) for part in host.split(".")]
    return "".join(f"{octet:02X}" for octet in reversed(octets)) + f":{port:04X}"


def _socket_inode(server: tuple[str, int], client: tuple[str, int]) -> str | None:
    """The inode of the server side of the TCP connection `client` -> `server`."""
    local, remote = _hex_address(*server), _hex_address(*client)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9]
    return None


def worker_holding(server: GunicornProcess, client: tuple[str, int]) -> int | None:
    """The pid of the worker whose socket is the server end of `client`'s connection."""
    inode = _socket_inode((server.host, server.port), client)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in server.worker_pids():
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            if any(os.readlink(fd_dir / fd) == target for fd in os.listdir(fd_dir)):
                return pid
        except OSError:  # the worker exited meanwhile
            continue
    return None


# --- Connections spread over the workers ---------------------------------------------


@dataclass
class Connection:
    """One keep-alive connection (an httpx client limited to a single connection)."""

    client: httpx.AsyncClient
    worker: int | None = None


async def open_connection(base_url: str, local_address: str | None) -> tuple[Connection, Any]:
    transport = httpx.AsyncHTTPTransport(
        local_address=local_address,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )
    client = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=30)
    # /health is exempt from the limiter: opening connections costs no quota.
    response = await client.get("/health")
    response.raise_for_status()
    client_addr = response.extensions["network_stream"].get_extra_info("client_addr")
    return Connection(client), client_addr


async def open_connections(
    base_url: str,
    *,
    count: int,
    server: GunicornProcess | None = None,
    local_address: str | None = None,
    per_worker: int = 2,
    max_count: int = 128,
) -> list[Connection]:
    """Open `count` connections one at a time. With a local `server`, keep opening
    (up to `max_count`) until every worker holds at least `per_worker` of them: a
    worker that wins the accept race tends to take a whole burst of connections."""
    connections: list[Connection] = []
    workers = server.worker_pids() if server else []
    while len(connections) < max_count:
        connection, client_addr = await open_connection(base_url, local_address)
        if server is not None:
            connection.worker = worker_holding(server, tuple(client_addr))
        connections.append(connection)
        held = Counter(c.worker for c in connections)
        spread = all(held[pid] >= per_worker for pid in workers)
        if len(connections) >= count and spread:
            break
        # Let every worker go back to waiting on the listening socket, so the next
        # connection is not simply taken by the one still awake.
        await asyncio.sleep(0.005)
    return interleave_by_worker(connections)


def interleave_by_worker(connections: list[Connection]) -> list[Connection]:
    """Reorder so that consecutive connections belong to different workers: then any
    run of requests over consecutive connections reaches every worker."""
    groups: dict[int | None, list[Connection]] = {}
    for connection in connections:
        groups.setdefault(connection.worker, []).append(connection)
    rounds = itertools.zip_longest(*groups.values())
    return [connection for row in rounds for connection in row if connection is not None]


async def close_connections(connections: Sequence[Connection]) -> None:
    await asyncio.gather(*(c.client.aclose() for c in connections))
