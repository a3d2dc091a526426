"""Limits at the connection level, against a real Gunicorn over raw sockets: header size
(431), header read timeout (408), the per-worker connection limit (503 problem; idle
connections under pressure: tests/test_idle_connections.py), the body limit without
reading the body, the handler timeout cancelling a real database statement, and 50
slowloris sockets that must not starve normal traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import asyncpg
import httpx
import pytest

from parity.harness.stack import GunicornProcess, NativeStack, _asyncpg_dsn
from tests.conftest import unique_name
from tests.helpers import create_product_sync

pytestmark = pytest.mark.gunicorn

Start = Callable[..., GunicornProcess]


def connect(server: GunicornProcess, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_problem(raw: bytes, status: int) -> dict[str, object]:
    code, headers, body = parse_response(raw)
    assert code == status, raw[:300]
    assert headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = json.loads(body)
    assert problem["status"] == status
    return problem


def test_headers_beyond_the_limit_are_a_431_problem(gunicorn: Start) -> None:
    """httptools alone serves a request with 20 MB of headers; ours stops at
    MAX_REQUEST_HEADER_BYTES and closes the connection."""
    server = gunicorn(workers=1, env={"MAX_REQUEST_HEADER_BYTES": "4096"})
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
        assert parse_response(sock.recv(65536))[0] == 200
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        problem = assert_problem(read_until_closed(sock), 431)
    assert "4096 bytes" in str(problem["detail"])
    many_small = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n" + many_small + b"\r\n")
        assert_problem(read_until_closed(sock), 431)
    assert server.process.poll() is None


def test_headers_must_arrive_within_the_header_read_timeout(gunicorn: Start) -> None:
    """1. a socket sends half a request line and stops  2. a socket sends nothing
    -> both get a 408 problem and are closed after HEADER_READ_TIMEOUT_SECONDS."""
    server = gunicorn(workers=1, env={"HEADER_READ_TIMEOUT_SECONDS": "1"})
    with connect(server) as partial, connect(server) as silent:
        partial.sendall(b"GET /health HTTP/1.1\r\nHo")
        started = time.monotonic()
        assert_problem(read_until_closed(partial), 408)
        assert_problem(read_until_closed(silent), 408)
        waited = time.monotonic() - started
    assert 0.5 < waited < 8, waited  # functional: closed by the timeout, not at once
    # A keep-alive connection that completes its request in time is not affected.
    with httpx.Client(base_url=server.base_url) as client:
        assert client.get("/health").status_code == 200
        time.sleep(1.5)
        assert client.get("/health").status_code == 200


def test_beyond_worker_connections_the_answer_is_a_503_problem(gunicorn: Start) -> None:
    """1. one worker, GUNICORN_WORKER_CONNECTIONS=4  2. four connections held in the
    middle of a request (idle ones would be closed to make room: tests/
    test_idle_connections.py) -> a new request gets a 503 problem with Retry-After
    3. they close -> 200."""
    server = gunicorn(workers=1, env={"GUNICORN_WORKER_CONNECTIONS": "4"})
    busy = [connect(server) for _ in range(4)]
    for sock in busy:
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
    try:
        deadline = time.monotonic() + 10
        while True:  # the worker accepts the idle sockets asynchronously
            response = httpx.get(server.base_url + "/health")
            if response.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert "connection limit" in response.json()["detail"]
    finally:
        for sock in busy:
            sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(server.base_url + "/health").status_code != 200:
        assert time.monotonic() < deadline, "the connection slots were not released"
        time.sleep(0.05)


def test_oversized_body_is_refused_without_being_read(gunicorn: Start) -> None:
    """1. headers announce 50 MB, no body sent -> 413 problem at once (the server did
    not wait for the body)  2. a chunked body without length -> 413 after about the
    limit, not after the 50 MB the client would send."""
    server = gunicorn(workers=1, env={"MAX_REQUEST_BODY_BYTES": "65536"})
    head = b"POST /api/v1/products HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    with connect(server) as sock:
        sock.sendall(head + b"Content-Length: 52428800\r\n\r\n")
        assert_problem(read_until_closed(sock), 413)

    sent = 0
    with connect(server) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
        try:
            while sent < 50 * 1024 * 1024:
                sock.sendall(chunk)
                sent += 16384
        except OSError:
            pass  # the server answered and closed while we were still sending
        raw = read_until_closed(sock)
    assert_problem(raw, 413)
    assert sent < 10 * 1024 * 1024, f"the server read {sent} bytes before refusing"


def test_handler_timeout_cancels_the_database_statement(
    gunicorn: Start, native_stack: NativeStack
) -> None:
    """1. the test holds a row lock on a product  2. PATCH that product: its UPDATE
    waits on the lock  3. REQUEST_TIMEOUT_SECONDS=1 passes -> 504 problem, and the
    UPDATE no longer runs on the server while the lock is still held  4. the product
    is unchanged."""
    service = unique_name("timeout")
    server = gunicorn(
        workers=1,
        env={
            "REQUEST_TIMEOUT_SECONDS": "1",
            "DB_STATEMENT_TIMEOUT_MS": "60000",
            "SERVICE_NAME": service,
        },
    )
    product = create_product_sync(server.base_url, stock=5)

    async def scenario() -> tuple[httpx.Response, list[str]]:
        dsn = _asyncpg_dsn(native_stack.database_url)
        locker = await asyncpg.connect(dsn)
        observer = await asyncpg.connect(dsn)
        try:
            async with locker.transaction():
                await locker.execute(
                    "SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product["id"]
                )
                async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                    response = await client.patch(
                        f"/api/v1/products/{product['id']}", json={"stock": 99}
                    )
                still_running = await _statements_of(observer, service)
                return response, still_running
        finally:
            await locker.close()
            await observer.close()

    response, still_running = asyncio.run(scenario())
    assert response.status_code == 504
    assert response.json()["type"] == "urn:parity:problem:timeout"
    assert still_running == [], f"statements still running after the 504: {still_running}"
    after = httpx.get(f"{server.base_url}/api/v1/products/{product['id']}").json()
    assert after["stock"] == 5


async def _statements_of(observer: asyncpg.Connection, service: str) -> list[str]:
    """Active statements of `service`, polled for up to 3 s (the cancel request travels
    on its own connection)."""
    deadline = time.monotonic() + 3
    while True:
        rows = await observer.fetch(
            "SELECT query FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
            service,
        )
        if not rows or time.monotonic() > deadline:
            return [row["query"] for row in rows]
        await asyncio.sleep(0.05)


# --- slowloris ---------------------------------------------------------------------


@contextmanager
def slowloris(server: GunicornProcess, count: int) -> Iterator[list[socket.socket]]:
    """`count` sockets sending an endless header one byte every 0.2 s from a thread."""
    socks = [connect(server) for _ in range(count)]
    for sock in socks:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        sock.setblocking(False)
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.2):
            for sock in socks:
                with contextlib.suppress(OSError):  # closed by the server: the point
                    sock.send(b"a")

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        yield socks
    finally:
        stop.set()
        thread.join()
        for sock in socks:
            sock.close()


def timed_requests(client: httpx.Client, path: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return latencies


def test_slowloris_sockets_do_not_starve_normal_traffic(gunicorn: Start) -> None:
    """1. baseline: 40 product reads, their median latency  2. 50 sockets send headers a
    byte at a time  3. 40 more reads: all 200, median within a generous factor of the
    baseline (functional, not a benchmark)  4. after HEADER_READ_TIMEOUT_SECONDS every
    slow socket has been answered 408 and closed."""
    server = gunicorn(workers=2, env={"HEADER_READ_TIMEOUT_SECONDS": "6"})
    product = create_product_sync(server.base_url)
    path = f"/api/v1/products/{product['id']}"
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        timed_requests(client, path, 5)  # warm-up: connections, cache
        baseline = statistics.median(timed_requests(client, path, 40))
        with slowloris(server, 50) as socks:
            time.sleep(0.5)  # all 50 accepted and dripping
            during = timed_requests(client, path, 40)
            traffic_done = time.monotonic()
            evicted, first_eviction = _wait_all_answered(socks, timeout=20)
    assert statistics.median(during) < max(10 * baseline, 0.25), (baseline, during)
    assert max(during) < 5, "a request hung behind the slow sockets"
    assert first_eviction > traffic_done, "the slow sockets were not all open during the test"
    assert evicted == {408: 50}


def _wait_all_answered(socks: list[socket.socket], timeout: float) -> tuple[dict[int, int], float]:
    """Status codes the server sent on the slow sockets before closing them, and when
    the first one was closed."""
    answers: dict[socket.socket, bytes] = dict.fromkeys(socks, b"")
    closed: set[socket.socket] = set()
    first_close = float("inf")
    deadline = time.monotonic() + timeout
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for sock in socks:
            if sock in closed:
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                answers[sock] += data
            else:
                closed.add(sock)
                first_close = min(first_close, time.monotonic())
        time.sleep(0.05)
    counts: dict[int, int] = {}
    for sock in closed:
        status = parse_response(answers[sock])[0] if answers[sock] else 0
        counts[status] = counts.get(status, 0) + 1
    return counts, first_close
