"""Which listener serves what, once INTERNAL_BIND gives probes and metrics their own.

    public listener   (GUNICORN_BIND)   the API, /docs, /health
    internal listener (INTERNAL_BIND)   /health, /ready, /metrics, and nothing else

`/ready` and `/metrics` are for the load balancer, the kubelet and Prometheus, not for
clients: `/ready` costs a dependency check (200 connections flooding it made replies
time out and a load balancer pull healthy instances: issue 18), `/metrics` costs a
read of every worker's files, and both tell internals (dependency errors and latencies,
versions, pool sizes). Only the public listener is behind compose's load balancer, the
published ports and the Kubernetes Service. `/health` answers on both: it costs nothing
and says nothing, so a liveness check that knows only the public port keeps working.
Anything else on the internal listener is a 404, so it is no way around the limiter.

Without INTERNAL_BIND (natively, by default) both are the same listener: everything is
served there, as before.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.probe_paths import HEALTH_PATH, METRICS_PATH, READY_PATH
from app.problem import problem_response

INTERNAL_ONLY_PATHS = frozenset({READY_PATH, METRICS_PATH})
INTERNAL_PATHS = INTERNAL_ONLY_PATHS | {HEALTH_PATH}


def served_on(path: str, *, internal: bool) -> bool:
    """Whether `path` is answered on the internal listener, or on the public one."""
    return path in INTERNAL_PATHS if internal else path not in INTERNAL_ONLY_PATHS


class ListenerMiddleware:
    """Answers 404 (as for an unknown route) to a path asked on the wrong listener,
    told apart by the local port of the connection (`scope["server"]`)."""

    def __init__(self, app: ASGIApp, internal_port: int) -> None:
        self.app = app
        self.internal_port = internal_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            internal = server is not None and server[1] == self.internal_port
            if not served_on(scope["path"], internal=internal):
                await problem_response(404, instance=scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)
