"""`python -m app.healthcheck`: the image's HEALTHCHECK, run against real servers."""

from __future__ import annotations

import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from app.healthcheck import connection_for
from parity.harness.stack import GunicornProcess, free_port
from tests.helpers import run


def run_healthcheck(bind: str) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "app.healthcheck"],
        env={**os.environ, "GUNICORN_BIND": bind},
        timeout=30,
    )


@pytest.mark.gunicorn
def test_healthy_when_gunicorn_answers(gunicorn: Callable[..., GunicornProcess]) -> None:
    """1. a real Gunicorn with the project config 2. the check -> exit 0, silent."""
    server = gunicorn(workers=1)
    result = run_healthcheck(f"{server.host}:{server.port}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("bind", "asked"),
    [("0.0.0.0:8000", "127.0.0.1"), ("[::]:8000", "::1"), ("127.0.0.2:8000", "127.0.0.2")],
)
def test_a_wildcard_bind_is_asked_over_loopback(bind: str, asked: str) -> None:
    """The container binds 0.0.0.0; the check connects to loopback, which always exists."""
    connection = connection_for(bind)
    assert (connection.host, connection.port) == (asked, 8000)


def test_unhealthy_when_nothing_listens() -> None:
    """A closed port -> exit 1 and one line naming the address and the error."""
    port = free_port()
    result = run_healthcheck(f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "ConnectionRefusedError" in result.stderr


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass

    # BaseHTTPRequestHandler expects a (host, port) client address.
    def address_string(self) -> str:
        return "unix"


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """An HTTP server on a Unix socket whose /health answers the given status."""
    servers: list[_UnixServer] = []

    def start(status: int) -> str:
        path = tmp_path / f"health-{status}.sock"
        handler = type("Handler", (_Handler,), {"status": status})
        server = _UnixServer(str(path), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"unix:{path}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_unix_socket_bind_is_checked_over_the_socket(unix_server: Callable[[int], str]) -> None:
    """GUNICORN_BIND=unix:PATH -> the check speaks HTTP over that socket."""
    result = run_healthcheck(unix_server(200))
    assert result.returncode == 0, result.stderr


def test_non_200_is_unhealthy(unix_server: Callable[[int], str]) -> None:
    """/health answering 503 -> exit 1, and the status is in the message."""
    result = run_healthcheck(unix_server(503))
    assert result.returncode == 1
    assert "answered 503" in result.stderr
