"""The Gunicorn worker class (graceful shutdown, app/graceful_server.py) and the CPU arithmetic
behind the default worker count."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker as _UvicornWorker

from app.http_protocol import HardenedHttpToolsProtocol
from app.proxy_trust import ForwardedHeadersMiddleware
from app.settings import Settings, process_settings

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs granted by a cgroup v2 quota (`docker run --cpus`, a k8s CPU limit), rounded
    up; None when there is no quota."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cpus() -> int:
    """CPUs this process may actually use: the affinity mask (taskset, cpusets) capped by
    the cgroup quota. `os.cpu_count()` reports the host's cores, which inside a container
    limited to 2 CPUs on a 64-core host means 64 workers and an OOM kill."""
    counts = [
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ]
    if (limit := cgroup_cpu_limit()) is not None:
        counts.append(limit)
    return max(1, min(counts))


def default_workers() -> int:
    """One async worker per available CPU.

    `2 × CPU + 1` is Gunicorn's rule for *sync* workers, which block on I/O and need
    extra processes to keep a CPU busy. An asyncio worker already overlaps its I/O, so
    more processes than CPUs only add memory, DB connections and context switches.
    `parity tune` measures the best count for your own workload.
    """
    return available_cpus()


def limit_options(settings: Settings, worker_connections: int) -> dict[str, Any]:
    """Uvicorn options for the limits of docs/reliability.md.

    - `http`: Uvicorn's httptools protocol with a header read timeout, a header size
      limit, a cap per client address, a shorter idle keep-alive for direct clients
      and a problem+json 503 (app/http_protocol.py, app/connections.py).
    - `limit_concurrency`: Gunicorn's own `worker_connections` knob, which
      uvicorn-worker ignores; beyond it idle connections are closed to make room, and
      a request is answered 503 when none is idle.
    """
    protocol = HardenedHttpToolsProtocol.configured(
        header_read_timeout=settings.HEADER_READ_TIMEOUT_SECONDS,
        max_header_bytes=settings.MAX_REQUEST_HEADER_BYTES,
        connections_per_address=settings.WORKER_CONNECTIONS_PER_ADDRESS,
        direct_client_keepalive=settings.DIRECT_CLIENT_KEEPALIVE_SECONDS,
        forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
    )
    return {"http": protocol, "limit_concurrency": worker_connections}


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]  # untyped base
    """uvicorn-worker's class (`uvicorn.workers` is deprecated) with our Uvicorn options
    and our shutdown sequence (`GracefulServer`, app/graceful_server.py).

    - `lifespan="on"`: a broken lifespan is an error, not silently skipped.
    - `server_header=False`: do not advertise the server software.
    - the limits of `limit_options`, read from the settings in each worker.

    The drain is bounded by SHUTDOWN_DRAIN_TIMEOUT_SECONDS, which GracefulServer reads
    from the settings: Uvicorn's `timeout_graceful_shutdown` is left unset because
    Uvicorn's own shutdown, its only reader, never runs (uvicorn-worker does not pass
    Gunicorn's graceful_timeout on either, and Uvicorn alone would wait forever:
    Kludex/uvicorn PR #2094).
    """

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "lifespan": "on",
        "server_header": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Ours instead of Uvicorn's: it parses X-Forwarded-For (app/proxy_trust.py).
        self.config.proxy_headers = False

    def load_wsgi(self) -> None:
        # In the worker, after the fork and after Gunicorn applied `raw_env`: the one
        # Settings of this process, which app.main builds the app from as well. The
        # base class built Uvicorn's Config from the class-level CONFIG_KWARGS, which
        # cannot depend on settings; Uvicorn loads that Config only when it serves.
        self.settings = process_settings()
        options = limit_options(self.settings, self.cfg.worker_connections)
        for name, value in options.items():
            setattr(self.config, name, value)
        super().load_wsgi()

    async def _serve(self) -> None:
        # uvicorn-worker's `_serve`, with our server class in place of Uvicorn's.
        # Imported here, in the worker: gunicorn.conf.py imports this module before it
        # sets up Prometheus' multiprocess directory, and app.graceful_server pulls in the
        # app (and prometheus_client, which must come after).
        from app.graceful_server import GracefulServer
        from app.lifecycle import Lifecycle

        self.config.app = ForwardedHeadersMiddleware(self.wsgi, self.settings.FORWARDED_ALLOW_IPS)
        state = getattr(self.wsgi, "state", None)
        lifecycle = getattr(state, "lifecycle", None) or Lifecycle()
        server = GracefulServer(self.config, self.settings, lifecycle)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
