"""The "Load test" dashboard: what Locust's simulated users experienced (its `locust_*`
exporter, loadtest/loadstats.py) next to what the server measured for the same requests
(`http_server_request_duration_seconds`).

The gap between client-side and server-side latency is time the server never sees: the
request waiting in the listen backlog and the kernel's socket buffers until a worker's
event loop accepts and reads it, and the network. It grows first when workers
saturate, before the server's own percentiles move.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models.dashboard import DashboardLink

from parity.dashboards.common import (
    API,
    HTTP,
    ROUTE_TAGS,
    big_number,
    dashboard_link,
    graph,
    note,
    parity_dashboard,
    prom,
    quantile,
    ratio_or_zero,
    thresholds,
    trace_links,
    with_rows,
)

UID = "parity-loadtest"

LOCUST = 'job="locust"'
CLIENT_BUCKET = "locust_request_duration_seconds_bucket"
CLIENT_RESPONSES = "locust_responses_total"
CLIENT_FAILURES = "locust_request_failures_total"
SERVER_BUCKET = "http_server_request_duration_seconds_bucket"
SERVER_COUNT = "http_server_request_duration_seconds_count"

HOW_TO = """\
**Client vs server.** *Client* = Locust's simulated users (job `locust`): the whole
round trip. *Server* = the API's own histogram (job `api`): from the first byte its
worker read to the last byte it sent. Both histograms have the same buckets, so their
quantiles are comparable. **The gap is queueing the server never sees**: requests waiting
to be accepted and read while every worker is busy. Start a run with `make demo` (or
`make loadtest` with `--prometheus-port`; the compose `locust` service exports on :9646).
Read it next to *Locust CPU*: a generator near 100% of a core measures itself.
"""


def slower_than_clicked() -> list[Builder[DashboardLink]]:
    """Traces of the API slower than the clicked latency: what the server did during
    the slow requests (their queueing before the server span is not in any trace)."""
    return trace_links("slower than the clicked value", tags={}, min_duration="${__value.raw}s")


def recent_traces() -> list[Builder[DashboardLink]]:
    return trace_links("of the API in this time range", tags={})


def client_rate(by: str = "") -> str:
    agg = f"sum by ({by})" if by else "sum"
    return f"{agg} (rate({CLIENT_RESPONSES}{{{LOCUST}}}[$__rate_interval]))"


def server_rate() -> str:
    return f"sum (rate({SERVER_COUNT}{{{HTTP}}}[$__rate_interval]))"


def gap(q: float) -> str:
    return f"{quantile(q, CLIENT_BUCKET, LOCUST)} - {quantile(q, SERVER_BUCKET, HTTP)}"


def client_failures(by: str = "") -> str:
    """Failures/s, 0 (not "no data") while nothing failed: the exporter only creates a
    failure series at the first failure."""
    agg = f"sum by ({by})" if by else "sum"
    return f"{agg} (rate({CLIENT_FAILURES}{{{LOCUST}}}[$__rate_interval])) or 0 * {client_rate(by)}"


def summary_row() -> list[object]:
    return [
        big_number(
            "Client requests/s",
            "Responses Locust received per second (all scenarios).",
            "reqps",
            prom(client_rate()),
        ),
        big_number(
            "Client failure ratio",
            "Share of requests that failed their scenario's checks. Expected 429s of the "
            "burst scenario are not failures.",
            "percentunit",
            prom(
                ratio_or_zero(
                    f"rate({CLIENT_FAILURES}{{{LOCUST}}}[$__rate_interval])",
                    f"rate({CLIENT_RESPONSES}{{{LOCUST}}}[$__rate_interval])",
                )
            ),
        ).thresholds(thresholds((None, "green"), (0.001, "orange"), (0.01, "red"))),
        big_number(
            "p95 gap (queueing)",
            "Client p95 minus server p95: time spent waiting before a worker read the "
            "request, which no server-side metric shows.",
            "s",
            prom(gap(0.95)),
        )
        .thresholds(thresholds((None, "green"), (0.01, "orange"), (0.05, "red")))
        .data_links(recent_traces()),
        big_number(
            "Simulated users",
            "Locust users running now.",
            "short",
            prom(f"sum (locust_users{{{LOCUST}}})"),
        ),
        big_number(
            "Locust CPU",
            "CPU of the load generator process (100% = one core). Near 100% the "
            "generator, not the server, limits the test: its latency includes its own delays.",
            "percent",
            prom(f"max (locust_process_cpu_percent{{{LOCUST}}})"),
        ).thresholds(thresholds((None, "green"), (70, "orange"), (90, "red"))),
        big_number(
            "In flight (server)",
            "Requests the API's workers are serving right now.",
            "short",
            prom(f"sum (http_server_active_requests{{{API}}})"),
        ),
    ]


def latency_row() -> list[object]:
    client_queries, server_queries = [], []
    for index, (q, label) in enumerate(((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))):
        client_queries.append(
            prom(quantile(q, CLIENT_BUCKET, LOCUST), f"client {label}", "ABC"[index])
        )
        server_queries.append(
            prom(quantile(q, SERVER_BUCKET, HTTP), f"server {label}", "DEF"[index])
        )
    return [
        graph(
            "Latency: client vs server",
            "Client-side and server-side percentiles over all requests (probes and "
            "scrapes excluded on the server side).",
            "s",
            *client_queries,
            *server_queries,
        )
        .span(16)
        .data_links(slower_than_clicked()),
        graph(
            "Queueing the server never sees",
            "Client percentile minus server percentile. Near zero while workers keep up; "
            "grows when requests wait for a busy worker.",
            "s",
            prom(gap(0.5), "p50 gap", "A"),
            prom(gap(0.95), "p95 gap", "B"),
            prom(gap(0.99), "p99 gap", "C"),
        )
        .span(8)
        .data_links(recent_traces()),
    ]


def detail_row() -> list[object]:
    return [
        graph(
            "Client p95 by request",
            "Locust's request names are the API's route templates, with a suffix for "
            "variants: (hot) and (cold) cache reads, (retry) idempotent replays, (burst).",
            "s",
            prom(quantile(0.95, CLIENT_BUCKET, LOCUST, "method, name"), "{{method}} {{name}}"),
        ).data_links(slower_than_clicked()),
        graph(
            "Server p95 by route",
            "The same percentile as the server measured it, per route template.",
            "s",
            prom(
                quantile(0.95, SERVER_BUCKET, HTTP, "http_request_method, http_route"),
                "{{http_request_method}} {{http_route}}",
            ),
        ).data_links(
            trace_links(
                "this route slower than the clicked p95",
                tags=ROUTE_TAGS,
                min_duration="${__value.raw}s",
            )
        ),
        graph(
            "Throughput: client vs server",
            "Requests/s as Locust counted them and as the API counted them. Server above "
            "client: other clients too; client above server: requests that never reached "
            "a worker (connection errors).",
            "reqps",
            prom(client_rate(), "client", "A"),
            prom(server_rate(), "server", "B"),
        ),
        graph(
            "Client responses/s by scenario and status",
            "429 in the burst scenario is the rate limiter doing its job; status 0 = no "
            "response (connection refused, reset, timeout).",
            "reqps",
            prom(client_rate("scenario, status_code"), "{{scenario}} {{status_code}}"),
        ),
        graph(
            "Client failures/s by request",
            "Requests that failed their scenario's checks (a wrong status, a replayed "
            "order that was placed twice, a 429 without Retry-After).",
            "reqps",
            prom(client_failures("method, name"), "{{method}} {{name}}"),
        ),
        graph(
            "Users and generator CPU",
            "Simulated users (left) and the load generator's CPU (100 = one core).",
            "short",
            prom(f"sum (locust_users{{{LOCUST}}})", "users", "A"),
            prom(f"max (locust_process_cpu_percent{{{LOCUST}}})", "Locust CPU %", "B"),
        ),
    ]


def build() -> Dashboard:
    board = (
        parity_dashboard(
            "Load test",
            uid=UID,
            description="Locust's client-side latency next to the API's server-side latency.",
            tag="loadtest",
            refresh="5s",
            since="now-15m",
        )
        .link(dashboard_link("API overview", "api"))
        .with_panel(note("How to read this dashboard", HOW_TO, height=5))
    )
    return with_rows(
        board,
        (
            ("Load test at a glance", summary_row()),
            ("Latency: client vs server", latency_row()),
            ("Per request", detail_row()),
        ),
    )
