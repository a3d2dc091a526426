"""The container's health check: `python -m app.healthcheck` asks this container's own
Gunicorn for `/health` and exits 0 (healthy) or 1 (unhealthy, with one line saying why).

Used by the Dockerfile's HEALTHCHECK and compose's `api` healthcheck. The image has no
curl or wget (fewer binaries, fewer CVEs), so this is the standard library only. It
does not load `app.settings` on purpose: it runs every few seconds for the container's
whole life, and importing pydantic would multiply its cost. It reads the variables it
needs: `INTERNAL_BIND` (the probes' listener) when set, else `GUNICORN_BIND`, with
the same defaults as `Settings`.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys

from app.probe_paths import HEALTH_PATH

DEFAULT_BIND = "0.0.0.0:8000"
PATH = HEALTH_PATH
TIMEOUT_SECONDS = 3.0
# A wildcard bind listens everywhere; ask over loopback, which is always there.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket, for `GUNICORN_BIND=unix:/path`."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def connection_for(bind: str, timeout: float = TIMEOUT_SECONDS) -> http.client.HTTPConnection:
    """A connection to the address Gunicorn listens on (`HOST:PORT` or `unix:PATH`)."""
    if bind.startswith("unix:"):
        return UnixHTTPConnection(bind.removeprefix("unix:"), timeout)
    host, _, port = bind.rpartition(":")
    host = WILDCARDS.get(host, host).strip("[]")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def check(bind: str) -> str | None:
    """None if `GET /health` answers 200, else what went wrong."""
    try:
        connection = connection_for(bind)
        try:
            connection.request("GET", PATH, headers={"User-Agent": "parity-healthcheck"})
            status = connection.getresponse().status
        finally:
            connection.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"GET {PATH} on {bind} failed: {exc!r}"
    if status != 200:
        return f"GET {PATH} on {bind} answered {status}"
    return None


def main() -> int:
    # The probes' own listener when there is one (app/listeners.py), as the kubelet's.
    bind = os.environ.get("INTERNAL_BIND") or os.environ.get("GUNICORN_BIND", DEFAULT_BIND)
    problem = check(bind)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
