"""The "Dependencies" dashboard: the Postgres pool and statements, the Redis cache and
every dependency error, as the API sees them (no exporter needed)."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from parity.dashboards.common import (
    API,
    dashboard_link,
    graph,
    parity_dashboard,
    per_second,
    prom,
    quantile,
    ratio_or_zero,
    thresholds,
    trace_links,
    with_rows,
)

UID = "parity-dependencies"

WAIT_BUCKET = "db_client_connection_wait_time_seconds_bucket"
QUERY_BUCKET = "db_client_operation_duration_seconds_bucket"


# The pool gauge's state label, named after db.client.connection.state.
STATE = "db_client_connection_state"


def pool_row() -> list[object]:
    return [
        graph(
            "Connections by state",
            "Pooled Postgres connections checked out (used) and idle, summed over the "
            "workers of each instance; max = workers × (DB_POOL_SIZE + DB_MAX_OVERFLOW).",
            "short",
            prom(
                f"sum by (instance, {STATE}) (db_client_connection_count{{{API}}})",
                f"{{{{{STATE}}}}} {{{{instance}}}}",
            ),
            prom(
                f"sum by (instance) (db_client_connection_max{{{API}}})",
                "max {{instance}}",
                "B",
            ),
        ).span(8),
        graph(
            "Pool usage",
            "Used / max per instance. Above 90 % for 5 minutes fires DbPoolSaturated; "
            "at 100 % requests wait, then get 503 after DB_POOL_TIMEOUT_SECONDS.",
            "percentunit",
            prom(
                f'sum by (instance) (db_client_connection_count{{{API}, {STATE}="used"}}) '
                f"/ sum by (instance) (db_client_connection_max{{{API}}})",
                "{{instance}}",
            ),
        )
        .max(1)
        .span(8)
        .thresholds(thresholds((None, "green"), (0.7, "orange"), (0.9, "red"))),
        graph(
            "Overflow connections",
            "Connections opened beyond DB_POOL_SIZE (up to DB_MAX_OVERFLOW per worker).",
            "short",
            prom(f"sum by (instance) (db_client_connection_overflow{{{API}}})", "{{instance}}"),
        ).span(8),
        graph(
            "Pool timeouts/s",
            "Requests that gave up waiting for a connection after DB_POOL_TIMEOUT_SECONDS "
            "and were answered 503.",
            "ops",
            prom(
                f"sum by (instance) ({per_second('db_client_connection_timeouts_total')})",
                "{{instance}}",
            ),
        ),
        graph(
            "Wait for a connection",
            "Time a request waited to check out a pooled connection.",
            "s",
            prom(quantile(0.5, WAIT_BUCKET, API), "p50"),
            prom(quantile(0.99, WAIT_BUCKET, API), "p99", "B"),
        ).data_links(
            trace_links(
                "requests slower than the clicked wait", tags={}, min_duration="${__value.raw}s"
            )
        ),
    ]


def statements_row() -> list[object]:
    slow_traces = trace_links(
        "requests slower than the clicked value", tags={}, min_duration="${__value.raw}s"
    )
    return [
        graph(
            "Query latency",
            "Duration of SQL statements. Click a line for traces slower than the value.",
            "s",
            prom(quantile(0.5, QUERY_BUCKET, API), "p50"),
            prom(quantile(0.95, QUERY_BUCKET, API), "p95", "B"),
            prom(quantile(0.99, QUERY_BUCKET, API), "p99", "C"),
        )
        .span(8)
        .data_links(slow_traces),
        graph(
            "Query latency p99 by operation",
            "p99 per statement kind (SELECT, INSERT, UPDATE, ...).",
            "s",
            prom(quantile(0.99, QUERY_BUCKET, API, "db_operation_name"), "{{db_operation_name}}"),
        )
        .span(8)
        .data_links(slow_traces),
        graph(
            "Statements/s by operation",
            "SQL statements executed per second, by statement kind.",
            "ops",
            prom(
                "sum by (db_operation_name) "
                f"({per_second('db_client_operation_duration_seconds_count')})",
                "{{db_operation_name}}",
            ),
        ).span(8),
    ]


def cache_row() -> list[object]:
    lookups = f"rate(cache_lookups_total{{{API}}}[$__rate_interval])"
    hits = f'rate(cache_lookups_total{{{API}, result="hit"}}[$__rate_interval])'
    return [
        graph(
            "Cache hit ratio",
            "Share of cache lookups served from Redis, per cache.",
            "percentunit",
            prom(ratio_or_zero(hits, lookups, "cache"), "{{cache}}"),
        ).max(1),
        graph(
            "Cache lookups/s by result",
            "hit, miss, or bypass (Redis unavailable: read from Postgres instead).",
            "ops",
            prom(f"sum by (cache, result) ({lookups})", "{{cache}} {{result}}"),
        ),
        graph(
            "Redis errors/s by operation",
            "Failed Redis calls the service survived (cache bypassed, limiter failed "
            "open or closed). Never visible as request errors: watch them here.",
            "ops",
            prom(
                "sum by (operation) (rate(dependency_errors_total"
                f'{{{API}, dependency="redis"}}[$__rate_interval]))',
                "{{operation}}",
            ),
        ),
        graph(
            "Dependency errors/s",
            "Every dependency error counted by the service, by dependency.",
            "ops",
            prom(
                f"sum by (dependency) (rate(dependency_errors_total{{{API}}}[$__rate_interval]))",
                "{{dependency}}",
            ),
        ),
    ]


def build() -> Dashboard:
    board = parity_dashboard(
        "Dependencies",
        uid=UID,
        description="Postgres pool and statements, Redis cache and errors, seen from the API.",
        tag="dependencies",
        refresh="10s",
        since="now-30m",
    ).link(dashboard_link("API overview", "api"))
    return with_rows(
        board,
        (
            ("Postgres connection pool", pool_row()),
            ("Postgres statements", statements_row()),
            ("Redis cache", cache_row()),
        ),
    )
