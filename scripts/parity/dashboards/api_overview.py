"""The "API overview" dashboard: traffic, errors and latency per route and per replica,
in-flight requests, workers and rate limiting, with links from every per-route series to
the traces behind it."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from parity.dashboards.common import (
    API,
    HTTP,
    ROUTE_TAGS,
    big_number,
    dashboard_link,
    graph,
    latency_heatmap,
    note,
    parity_dashboard,
    per_second,
    prom,
    quantile,
    ratio_or_zero,
    slow_traces_table,
    slow_variable,
    thresholds,
    trace_links,
    with_rows,
)

UID = "parity-api-overview"

COUNT = "http_server_request_duration_seconds_count"
BUCKET = "http_server_request_duration_seconds_bucket"
BY_ROUTE = "http_request_method, http_route"
ROUTE_LEGEND = "{{http_request_method}} {{http_route}}"


def workers_alive(by: str = "") -> str:
    agg = f"sum by ({by})" if by else "sum"
    return (
        f"{agg} (gunicorn_workers_started_total{{{API}}})"
        f" - {agg} (gunicorn_workers_exited_total{{{API}}})"
    )


HOW_TO = """\
**From a symptom to its traces.** Click a line in any *by route* panel: *Traces … (Explore)*
opens the matching traces next to this dashboard, *(Jaeger UI)* opens Jaeger's search.
Latency links only list traces slower than the value you clicked; error links only
failed ones. *Slow traces* below lists the slowest recent requests; click a trace id.
From a log line, copy its `trace_id` into Jaeger's search box (or Explore → Jaeger →
TraceID). Probes and scrapes (`/health`, `/ready`, `/metrics`) are left out of every panel.
More: docs/observability.md.
"""


def requests_per_second(by: str = "") -> str:
    agg = f"sum by ({by})" if by else "sum"
    return f"{agg} (rate({COUNT}{{{HTTP}}}[$__rate_interval]))"


def error_ratio(by: str = "") -> str:
    return ratio_or_zero(
        f'rate({COUNT}{{{HTTP}, http_response_status_code=~"5.."}}[$__rate_interval])',
        f"rate({COUNT}{{{HTTP}}}[$__rate_interval])",
        by,
    )


def summary_row() -> list[object]:
    return [
        big_number(
            "Requests/s",
            "All routes except probes and /metrics, all selected instances.",
            "reqps",
            prom(requests_per_second()),
        ),
        big_number(
            "5xx ratio",
            "Share of requests answered with a 5xx status.",
            "percentunit",
            prom(error_ratio()),
        ).thresholds(thresholds((None, "green"), (0.01, "orange"), (0.05, "red"))),
        big_number(
            "p99 latency",
            "99th percentile of the server-side request duration, all routes.",
            "s",
            prom(quantile(0.99, BUCKET, HTTP)),
        )
        .thresholds(thresholds((None, "green"), (0.25, "orange"), (0.5, "red")))
        .data_links(trace_links("slower than this p99", tags={}, min_duration="${__value.raw}s")),
        big_number(
            "In flight",
            "Requests being served right now, all selected instances.",
            "short",
            prom(f"sum (http_server_active_requests{{{API}}})"),
        ),
        big_number(
            "Workers alive",
            "Gunicorn workers started minus exited, all selected instances.",
            "short",
            prom(workers_alive()),
        ),
        big_number(
            "Rate limited",
            "Share of rate limiter decisions that refused the request with 429.",
            "percentunit",
            prom(
                ratio_or_zero(
                    per_second("ratelimit_decisions_total", matchers='outcome="limited"'),
                    per_second("ratelimit_decisions_total"),
                )
            ),
        ).thresholds(thresholds((None, "green"), (0.05, "orange"), (0.2, "red"))),
    ]


def traffic_row() -> list[object]:
    return [
        graph(
            "Requests/s by route",
            "Route templates (never raw paths), so /products/1 and /products/2 are one line.",
            "reqps",
            prom(requests_per_second(BY_ROUTE), ROUTE_LEGEND),
        ).data_links(trace_links("this route", tags=ROUTE_TAGS)),
        graph(
            "Responses/s by status code",
            "429 = rate limited, 503 = a dependency or the pool is unavailable.",
            "reqps",
            prom(requests_per_second("http_response_status_code"), "{{http_response_status_code}}"),
        ),
        graph(
            "5xx ratio by route",
            "Click a line to list the failed traces of that route.",
            "percentunit",
            prom(error_ratio(BY_ROUTE), ROUTE_LEGEND),
        ).data_links(
            trace_links("failed requests of this route", tags=ROUTE_TAGS, errors_only=True)
        ),
        latency_heatmap(
            "Latency distribution (all routes)",
            "How many requests fell in each duration bucket per interval; darker = more.",
            prom(f"sum by (le) (increase({BUCKET}{{{HTTP}}}[$__rate_interval]))", "{{le}}"),
        ),
    ]


def latency_row() -> list[object]:
    panels: list[object] = []
    for q, label in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        panels.append(
            graph(
                f"Latency {label} by route",
                f"{label} of the server-side duration. Click a line for traces of that "
                "route slower than the clicked value.",
                "s",
                prom(quantile(q, BUCKET, HTTP, BY_ROUTE), ROUTE_LEGEND),
            )
            .span(8)
            .data_links(
                trace_links(
                    f"this route slower than the clicked {label}",
                    tags=ROUTE_TAGS,
                    min_duration="${__value.raw}s",
                )
            )
        )
    return panels


def capacity_row() -> list[object]:
    return [
        graph(
            "In-flight requests by instance",
            "Requests being served right now (all workers of the instance).",
            "short",
            prom(f"sum by (instance) (http_server_active_requests{{{API}}})", "{{instance}}"),
        ).span(8),
        graph(
            "Gunicorn workers by instance",
            "Workers alive (started - exited) and worker exits per interval: exits "
            "without a restart of the master mean crashes, timeouts or max_requests recycling.",
            "short",
            prom(workers_alive("instance"), "alive {{instance}}"),
            prom(
                "sum by (instance) (increase("
                f"gunicorn_workers_exited_total{{{API}}}[$__rate_interval]))",
                "exits {{instance}}",
                "B",
            ),
            prom(
                f"max by (instance, service_version, workers) (app_info{{{API}}})",
                "configured {{workers}} ({{instance}} v{{service_version}})",
                "C",
            ),
        ).span(8),
        graph(
            "Rate limiter decisions/s",
            "By policy and outcome: limited = answered 429; fail_open / fail_closed = "
            "Redis was unavailable and the policy let the request through / refused it.",
            "reqps",
            prom(
                f"sum by (policy, outcome) ({per_second('ratelimit_decisions_total')})",
                "{{policy}} {{outcome}}",
            ),
        ).span(8),
    ]


def replica_row() -> list[object]:
    """The same signals split by replica (`instance`, one Prometheus target each): one
    replica slower or failing while the others are fine points at that replica (a bad
    host, a stuck worker, a rollout's new version), not at the code or a dependency."""
    slower_than_clicked = trace_links(
        "slower than the clicked value", tags={}, min_duration="${__value.raw}s"
    )
    return [
        graph(
            "Requests/s by instance",
            "How the load balancer spreads traffic over the replicas (probes and "
            "/metrics left out). A replica at 0 while others serve is out of the pool.",
            "reqps",
            prom(requests_per_second("instance"), "{{instance}}"),
        ).span(8),
        graph(
            "5xx ratio by instance",
            "Share of 5xx per replica. Click a line to list failed traces.",
            "percentunit",
            prom(error_ratio("instance"), "{{instance}}"),
        )
        .span(8)
        .data_links(trace_links("failed requests", tags={}, errors_only=True)),
        graph(
            "Latency p95 and p99 by instance",
            "Server-side duration per replica, all routes. Click a line for traces "
            "slower than the clicked value.",
            "s",
            prom(quantile(0.95, BUCKET, HTTP, "instance"), "p95 {{instance}}"),
            prom(quantile(0.99, BUCKET, HTTP, "instance"), "p99 {{instance}}", "B"),
        )
        .span(8)
        .data_links(slower_than_clicked),
    ]


def build() -> Dashboard:
    board = (
        parity_dashboard(
            "API overview",
            uid=UID,
            description="RED metrics of the parity API per route, with links to traces.",
            tag="api",
            refresh="10s",
            since="now-30m",
        )
        .with_variable(slow_variable())
        .link(dashboard_link("Dependencies", "dependencies"))
        .link(dashboard_link("Load balancer", "lb"))
        .with_panel(note("How to read this dashboard", HOW_TO, height=4))
    )
    rows = (
        ("Service", summary_row()),
        ("Traffic and errors", traffic_row()),
        ("Latency by route", latency_row()),
        ("Capacity", capacity_row()),
        ("By replica", replica_row()),
        (
            "Traces",
            [
                slow_traces_table(
                    "Slow traces",
                    "The slowest recent traces of the service (Jaeger), over the 'Slow is "
                    "over' threshold. Click a trace id to open it.",
                ).span(24)
            ],
        ),
    )
    return with_rows(board, rows)
