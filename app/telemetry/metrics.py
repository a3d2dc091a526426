"""Prometheus metrics: every metric the service exports is declared here, once.

Names and labels follow the OpenTelemetry semantic conventions as exported to
Prometheus (dots become underscores, units become suffixes). Under Gunicorn,
prometheus_client runs in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
gunicorn.conf.py before anything imports prometheus_client): each worker writes its
values to its own memory-mapped file and `/metrics` adds them up. So each gauge
declares how the per-worker values are combined (`multiprocess_mode`):

- `livesum`: the value belongs to a running process and the total is what matters
  (requests in flight, pool connections). A dead worker's file is removed by
  `mark_process_dead` in Gunicorn's `child_exit`, so its last value is not summed.
- `livemax`: every live worker reports the same fact (`app_info`); one series, not
  one per pid, and it disappears with the last worker.

Counters and histograms need no mode: they are summed over every file, dead workers'
included, which is what keeps a total exact when a worker is recycled.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from app.telemetry.logging import ThrottledLog

logger = logging.getLogger(__name__)

# Multiprocess mode cannot export `_created` series; switch them off in single-process
# mode too, so a scrape looks the same with and without Gunicorn.
disable_created_metrics()  # type: ignore[no-untyped-call]

# --- HTTP server (app/telemetry/middleware.py) -------------------------------------

# OpenTelemetry's recommended boundaries for http.server.request.duration.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

# The attributes of OpenTelemetry's stable http.server.request.duration, as labels.
# http_route is the route template (`/api/v1/products/{product_id}`), never the raw
# path, and empty (absent, to Prometheus) when no route matched (404s); error_type is
# the status code of a 5xx or the exception's class, else empty.
HTTP_REQUEST_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP server requests, from the first byte seen to the last byte sent.",
    [
        "http_request_method",
        "http_route",
        "http_response_status_code",
        "url_scheme",
        "network_protocol_version",
        "error_type",
    ],
    buckets=HTTP_DURATION_BUCKETS,
)

HTTP_ACTIVE_REQUESTS = Gauge(
    "http_server_active_requests",
    "HTTP requests being served right now.",
    ["http_request_method", "url_scheme"],
    multiprocess_mode="livesum",
)

# --- Postgres connection pool (app/telemetry/database.py) ----------------------------

# Label names as the OpenTelemetry conventions name the attributes
# (db.client.connection.pool.name, db.client.connection.state). The app has one pool,
# POOL_NAME; its state is "used" (checked out) or "idle".
POOL_NAME = "postgres"
DB_CONNECTIONS = Gauge(
    "db_client_connection_count",
    "Open pooled Postgres connections by state: used (checked out) or idle.",
    ["db_client_connection_pool_name", "db_client_connection_state"],
    multiprocess_mode="livesum",
)

DB_CONNECTIONS_MAX = Gauge(
    "db_client_connection_max",
    "Most connections the pools may open (pool size + max overflow, summed over workers).",
    ["db_client_connection_pool_name"],
    multiprocess_mode="livesum",
)

DB_CONNECTIONS_OVERFLOW = Gauge(
    "db_client_connection_overflow",
    "Connections open beyond the pool size (they are closed when returned).",
    multiprocess_mode="livesum",
)

DB_CONNECTION_WAIT = Histogram(
    "db_client_connection_wait_time_seconds",
    "Time to get a connection from the pool, opening one if needed.",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)

DB_CONNECTION_TIMEOUTS = Counter(
    "db_client_connection_timeouts_total",
    "Requests that gave up waiting for a pooled connection (DB_POOL_TIMEOUT_SECONDS).",
)

# db_operation_name is the statement's first keyword (SELECT, INSERT, ...) or OTHER.
DB_OPERATION_DURATION = Histogram(
    "db_client_operation_duration_seconds",
    "Duration of SQL statements, from send to result.",
    ["db_operation_name"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# --- Cache, dependencies, rate limiting ----------------------------------------------

# Cache-aside outcomes: result is "hit", "miss" or "bypass" (Redis unavailable).
CACHE_LOOKUPS = Counter(
    "cache_lookups_total",
    "Cache lookups by cache and result.",
    ["cache", "result"],
)

# Cache entries not stored for lack of room in Redis (app/cache.py): reason is
# "over_memory_share" (Redis above CACHE_REDIS_MEMORY_SHARE of maxmemory: the cache
# leaves the rest to the rate limiter) or "redis_out_of_memory" (Redis refused the write).
CACHE_STORES_SKIPPED = Counter(
    "cache_stores_skipped_total",
    "Cache stores skipped because Redis had no room for them, by cache and reason.",
    ["cache", "reason"],
)

# Failed calls to a dependency that the service survived (fallback, fail-open, ...).
DEPENDENCY_ERRORS = Counter(
    "dependency_errors_total",
    "Errors talking to a dependency, by dependency and operation.",
    ["dependency", "operation"],
)

# Rate limiter decisions: outcome is "allowed", "limited" (429, from Redis or, while it
# is unavailable, from the worker's local bound), "fail_open" (Redis unavailable, request
# let through within the worker's local bound) or "fail_closed" (Redis unavailable,
# request refused with 503).
RATE_LIMIT_DECISIONS = Counter(
    "ratelimit_decisions_total",
    "Rate limiter decisions by policy and outcome.",
    ["policy", "outcome"],
)

# --- Process lifecycle (Gunicorn master hooks in gunicorn.conf.py) --------------------

WORKERS_STARTED = Counter(
    "gunicorn_workers_started_total",
    "Worker processes the Gunicorn master has forked (boot, recycling, crashes, HUP).",
)

WORKERS_EXITED = Counter(
    "gunicorn_workers_exited_total",
    "Worker processes that have exited, for whatever reason.",
)

APP_INFO = Gauge(
    "app_info",
    "Always 1; the labels say which version runs and how many workers were configured.",
    ["service_version", "workers"],
    multiprocess_mode="livemax",
)


# --- Counting from request paths ---------------------------------------------------

_children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
_failures = ThrottledLog(logger, interval=60.0)


def count(counter: Counter, *labels: str) -> None:
    """`counter.labels(*labels).inc()` for code on a request's path: the label child is
    created once (label values must be bounded, as for any Prometheus label), and a
    failure (a multiprocess file that cannot grow on a full disk, say) is logged at a
    bounded rate instead of failing the request that counts."""
    try:
        child = _children.get((counter, labels))
        if child is None:
            child = _children[counter, labels] = counter.labels(*labels)
        child.inc()
    except Exception as exc:
        _failures.warning("metric %s not counted: %r", counter._name, exc)
