"""Gunicorn configuration: `gunicorn app.main:app -c gunicorn.conf.py`.

Every value comes from app/settings.py (environment variables), validated before the
master starts: a bad value stops it with one line naming the variable.
"""

import os
import sys

from app import __version__
from app.proxy_trust import Listener, shared_identity_warning
from app.settings import load_settings
from app.telemetry.logging import logging_config
from app.telemetry.multiprocess import (
    MultiprocessDirectory,
    MultiprocessDirectoryError,
    prepare_directory,
)
from app.worker import default_workers

settings = load_settings()

# Prometheus multiprocess mode: this master's own, empty directory, exported before
# anything imports prometheus_client (it picks its mode once, at import, and the
# workers inherit the choice through fork). Kept on HUP, removed or emptied at exit.
_metrics_dir: MultiprocessDirectory | None = None
if settings.METRICS_ENABLED:
    try:
        _metrics_dir = prepare_directory()
    except MultiprocessDirectoryError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

wsgi_app = "app.main:app"
worker_class = "app.worker.UvicornWorker"
# The public listener, and the probes-and-metrics one when INTERNAL_BIND sets it
# (app/listeners.py): the same workers serve both.
bind = [settings.GUNICORN_BIND, *([settings.INTERNAL_BIND] if settings.INTERNAL_BIND else [])]
workers = settings.GUNICORN_WORKERS or default_workers()

# A worker whose event loop has not checked in for this long is blocked (a sync call
# in an async route, an endless loop) and is killed and replaced. Not a request timeout.
timeout = settings.GUNICORN_TIMEOUT
# After SIGTERM the master waits this long for workers to drain before SIGKILL. The
# drain timeout inside each worker must finish well inside it (docs/shutdown.md).
graceful_timeout = settings.GUNICORN_GRACEFUL_TIMEOUT
# Idle keep-alive: must exceed the idle timeout of whatever proxies to us (AWS ALB and
# nginx default to 60 s), else the proxy reuses a connection we are closing -> 502s.
# For peers in FORWARDED_ALLOW_IPS only: a direct client's idle connection closes after
# DIRECT_CLIENT_KEEPALIVE_SECONDS (app/http_protocol.py).
keepalive = settings.GUNICORN_KEEPALIVE
# Recycle a worker after this many requests (plus jitter, so workers do not all
# restart together): a bound on slow leaks in dependencies. Large enough that a worker
# at 1,000 req/s lives for minutes; 0 turns recycling off.
max_requests = settings.GUNICORN_MAX_REQUESTS
max_requests_jitter = settings.GUNICORN_MAX_REQUESTS_JITTER
forwarded_allow_ips = settings.FORWARDED_ALLOW_IPS
# Open connections per worker; our worker class makes it Uvicorn's limit_concurrency.
# Beyond it the longest-idle connections are closed to make room, and a request gets a
# 503 problem only when none is idle (app/connections.py, docs/reliability.md).
worker_connections = settings.GUNICORN_WORKER_CONNECTIONS
# Kernel accept queue. A small one does not shed load faster: a full queue drops SYNs
# and clients retransmit after 1 s, 3 s, ... Fast refusal is worker_connections' job.
backlog = settings.GUNICORN_BACKLOG
# Workers import the app after the fork: nothing (pools, threads, OpenTelemetry) is
# shared across processes, and HUP reloads code.
preload_app = False
# The heartbeat file lives in memory: a read-only or slow disk must not stall it.
SHM = "/dev/shm"  # noqa: S108 (tmpfs; Gunicorn only writes its heartbeat file there)
worker_tmp_dir = SHM if os.path.isdir(SHM) else None

# Gunicorn 25+ opens a control socket at one default path per user; several masters on
# one machine (tests, the worker-count sweep) would fight over it. Signals are our
# control interface (docs/shutdown.md).
control_socket_disable = True

proc_name = settings.SERVICE_NAME
accesslog = None
errorlog = "-"
loglevel = settings.LOG_LEVEL
logconfig_dict = logging_config(settings)


# --- Hooks -------------------------------------------------------------------------
# Metrics are imported inside the hooks: by then PROMETHEUS_MULTIPROC_DIR is set.


def when_ready(server):  # master, listening, before the first fork
    if _metrics_dir is not None:
        server.log.info("prometheus multiprocess directory: %s", _metrics_dir.path)
    # Once per server, from the sockets actually bound (app/proxy_trust.py).
    listeners = [Listener.of(listener.sock) for listener in server.LISTENERS]
    if warning := shared_identity_warning(listeners, settings.FORWARDED_ALLOW_IPS):
        server.log.warning(warning)


def pre_fork(server, worker):  # master, before each fork
    if _metrics_dir is not None:
        from app.telemetry.metrics import WORKERS_STARTED

        WORKERS_STARTED.inc()


def post_fork(server, worker):  # the new worker, before it imports the app
    if _metrics_dir is not None:
        from app.telemetry.metrics import APP_INFO

        APP_INFO.labels(__version__, str(server.num_workers)).set(1)


def child_exit(server, worker):  # master, after a worker exited (any reason)
    if _metrics_dir is not None:
        from prometheus_client import multiprocess

        from app.telemetry.metric_files import compact_dead_workers
        from app.telemetry.metrics import WORKERS_EXITED

        WORKERS_EXITED.inc()
        # Drop the dead worker's live gauges (in-flight requests, pool connections);
        # its counters and histograms keep the totals exact, summed into one archive
        # file per type, so files and scrape time stay bounded however many workers
        # recycle (app/telemetry/metric_files.py).
        multiprocess.mark_process_dead(worker.pid)
        try:
            compact_dead_workers(_metrics_dir.path, [os.getpid(), *server.WORKERS])
        except Exception:  # never the master's reaping loop: the files just stay
            server.log.exception("could not compact the metric files of dead workers")


def on_exit(server):  # master, last thing before it exits
    if _metrics_dir is not None:
        _metrics_dir.clean_up()
