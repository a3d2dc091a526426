"""The "Load balancer" dashboard: compose's HAProxy (`lb`, docker/haproxy/haproxy.cfg) as
its own exporter reports it (job `lb`): which replicas are in the pool, each server's
state and last health check, responses per server, the queue, retries and
redispatches, and the 5xx HAProxy answered itself rather than a replica.

A dashboard of its own rather than a row of the API overview: the load balancer exists
only in compose (natively there is one Gunicorn and no proxy; on Kubernetes a Service or
an ingress takes its place), so the API overview stays complete wherever the API runs,
and these panels are checked only where `lb` is scraped (parity verify dashboards).

Metric names are the ones both HAProxy 2.6 (Debian's package, the offline stand-in CI
runs) and 3.2 (the image compose.yaml pins) export; docs/observability.md lists them.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from parity.dashboards.common import (
    big_number,
    dashboard_link,
    graph,
    note,
    parity_dashboard,
    per_second,
    prom,
    snapshot_table,
    state_timeline,
    thresholds,
    with_rows,
)

UID = "parity-load-balancer"

# The frontend `api` and its backend `api` in haproxy.cfg: one checked server slot per
# replica (`server-template api 10 ... check`), UP while the replica's /ready passes.
LB = 'job="lb", proxy="api"'
# Panic routing: the frontend sends requests to backend `api_panic` (the same replicas,
# unchecked) while no server of `api` is UP.
PANIC = 'job="lb", proxy="api_panic"'
# Whatever the replicas answered or were sent, through either backend.
BACKENDS = 'job="lb", proxy=~"api|api_panic"'


def with_address() -> str:
    """Servers that hold a replica's address: every slot not in maintenance (an empty
    slot waits in MAINT until DNS gives it an address). `and on (server)` it keeps the
    lines of replicas that exist and drops the empty slots."""
    return f'(sum by (server) (haproxy_server_status{{{LB}, state="MAINT"}}) == 0)'


def server_state() -> str:
    """One number per slot for its state: 0 DOWN, 1 UP, 2 DRAIN, 3 NOLB, 4 MAINT (the
    exporter has one 0/1 series per state)."""
    parts = [
        f'{weight}sum by (server) (haproxy_server_status{{{LB}, state="{state}"}})'
        for weight, state in (("", "UP"), ("2 * ", "DRAIN"), ("3 * ", "NOLB"), ("4 * ", "MAINT"))
    ]
    return " + ".join(parts)


STATES = {
    0: ("DOWN", "red"),
    1: ("UP", "green"),
    2: ("DRAIN", "blue"),
    3: ("NOLB (stopping)", "orange"),
    4: ("MAINT (empty slot)", "#808080"),
}

SERVER_5XX = (
    f'rate(haproxy_server_http_responses_total{{{BACKENDS}, code="5xx"}}[$__rate_interval])'
)
CLIENT_5XX = f'rate(haproxy_frontend_http_responses_total{{{LB}, code="5xx"}}[$__rate_interval])'

HOW_TO = """\
**Pool membership.** Each api replica holds one slot `api1` … `api10` of backend `api`
(the address is on HAProxy's stats page, :8404/stats). A slot is UP (in the pool: gets
requests), DOWN (`/ready` failed twice: no requests), or MAINT (no replica at that slot).
With no slot UP, requests go to every replica unchecked (*panic routing*). **During a
rollout** a new replica's slot leaves MAINT as DOWN and turns UP after two passing
checks (about 2 s); a stopped replica turns DOWN within 2.5 s of SIGTERM (its `/ready`
says 503 while it still serves), then MAINT once its DNS record is gone. *In the pool*
must never reach 0; *known* above *in the pool* means a replica is starting or
leaving. More: docs/observability.md.
"""


def pool_row() -> list[object]:
    return [
        big_number(
            "Replicas in the pool",
            "Servers of backend api that are UP (their /ready passes): the replicas that "
            "get requests (haproxy_backend_active_servers).",
            "short",
            prom(f"haproxy_backend_active_servers{{{LB}}}"),
        )
        .span(6)
        .thresholds(thresholds((None, "red"), (1, "orange"), (2, "green"))),
        big_number(
            "Replicas known",
            "Slots holding a replica's address from DNS, whatever their health (UP, "
            "DOWN, draining): more than 'in the pool' while one starts or leaves.",
            "short",
            prom(f'sum (1 - haproxy_server_status{{{LB}, state="MAINT"}})'),
        ).span(6),
        big_number(
            "Panic fallback",
            "Servers of backend api_panic (the same replicas, unchecked): where requests "
            "go while no replica is in the pool. 0 = no fallback: HAProxy answers 503.",
            "short",
            prom(f"haproxy_backend_active_servers{{{PANIC}}}"),
        ).span(6),
        big_number(
            "Queued now",
            "Requests waiting in the backend for a server (none is free or UP); they are "
            "answered 503 after `timeout queue`.",
            "short",
            prom(f"sum (haproxy_backend_current_queue{{{BACKENDS}}})"),
        )
        .span(6)
        .thresholds(thresholds((None, "green"), (1, "orange"), (10, "red"))),
        state_timeline(
            "Server state by slot",
            "Each api slot over time: UP = in the pool, DOWN = failing /ready, DRAIN / "
            "NOLB = taken out by an operator or stopping, MAINT = no replica at this slot.",
            prom(server_state(), "{{server}}"),
            STATES,
        ),
        graph(
            "Slots by state",
            "How many api slots are in each state; MAINT = slots without a replica.",
            "short",
            prom(f"sum by (state) (haproxy_server_status{{{LB}}})", "{{state}}"),
        ),
        snapshot_table(
            "Health checks now",
            "Last health check (GET /ready) of every slot holding a replica: L7OK = "
            "200, L7STS = another status (503: not ready), L4CON = connection refused, "
            "L4TOUT / L7TOUT = no answer within `timeout check`.",
            prom(f"max by (server, state) (haproxy_server_check_status{{{LB}}} == 1)"),
            prom(f"max by (server) (haproxy_server_check_code{{{LB}}})", ref_id="B"),
            prom(f"max by (server) (haproxy_server_check_duration_seconds{{{LB}}})", ref_id="C"),
            hide=["Value #A"],
            rename={
                "state": "last check",
                "Value #B": "HTTP status",
                "Value #C": "duration (s)",
            },
        ),
    ]


def traffic_row() -> list[object]:
    return [
        graph(
            "Responses/s by server",
            "Responses each replica returned through the load balancer (any status), by "
            "slot; 'panic routing' = all replicas through api_panic while none was UP.",
            "reqps",
            prom(
                f"sum by (server) ({per_second('haproxy_server_http_responses_total', LB)})"
                f" and on (server) {with_address()}",
                "{{server}}",
            ),
            prom(
                f"sum ({per_second('haproxy_backend_http_responses_total', PANIC)})",
                "panic routing",
                "B",
            ),
        ),
        graph(
            "5xx/s: HAProxy itself vs the replicas",
            "5xx the replicas answered (passed through), and 5xx HAProxy answered without "
            "a replica's answer: no server available, connection failed, timeout, invalid "
            "response (every 5xx clients got minus the replicas' own).",
            "reqps",
            prom(f"sum ({SERVER_5XX})", "answered by a replica"),
            prom(
                f"clamp_min(sum ({CLIENT_5XX}) - sum ({SERVER_5XX}), 0)", "answered by HAProxy", "B"
            ),
        ),
        graph(
            "Queue and requests in flight",
            "Requests in flight to the replicas (backend sessions) and waiting in the "
            "queue for a server.",
            "short",
            prom(f"sum (haproxy_backend_current_sessions{{{BACKENDS}}})", "in flight"),
            prom(f"sum (haproxy_backend_current_queue{{{BACKENDS}}})", "queued", "B"),
        ),
        graph(
            "Retries, redispatches and errors/s",
            "Retries = a connection to a replica failed and was tried again; redispatches "
            "= retried on another replica (haproxy.cfg: retries 3, option redispatch); "
            "failed connections include 'no server available'; invalid responses = a "
            "replica closed or answered garbage.",
            "ops",
            prom(
                f"sum ({per_second('haproxy_backend_retry_warnings_total', BACKENDS)})",
                "retries",
            ),
            prom(
                f"sum ({per_second('haproxy_backend_redispatch_warnings_total', BACKENDS)})",
                "redispatches",
                "B",
            ),
            prom(
                f"sum ({per_second('haproxy_backend_connection_errors_total', BACKENDS)})",
                "failed connections",
                "C",
            ),
            prom(
                f"sum ({per_second('haproxy_backend_response_errors_total', BACKENDS)})",
                "invalid responses",
                "D",
            ),
        ),
    ]


def checks_row() -> list[object]:
    return [
        graph(
            "Failed health checks and servers taken out",
            "Failed /ready checks per interval by slot (two in a row take a server out: "
            "fall 2), UP to DOWN transitions of the slots, and of the whole backend (no "
            "server left).",
            "short",
            prom(
                "sum by (server) (increase("
                f"haproxy_server_check_failures_total{{{LB}}}[$__rate_interval]))"
                f" and on (server) {with_address()}",
                "failed checks {{server}}",
            ),
            prom(
                f"sum (increase(haproxy_server_check_up_down_total{{{LB}}}[$__rate_interval]))",
                "servers UP → DOWN",
                "B",
            ),
            prom(
                f"sum (increase(haproxy_backend_check_up_down_total{{{LB}}}[$__rate_interval]))",
                "backend UP → DOWN",
                "C",
            ),
        ),
        graph(
            "Health-check duration by server",
            "How long each slot's last /ready check took; `timeout check` (1 s) fails it.",
            "s",
            prom(
                f"max by (server) (haproxy_server_check_duration_seconds{{{LB}}})",
                "{{server}}",
            ),
        ),
    ]


def build() -> Dashboard:
    board = (
        parity_dashboard(
            "Load balancer",
            uid=UID,
            description="HAProxy in front of the api replicas: pool, server state, "
            "health checks, retries and the errors it answered itself.",
            tag="lb",
            refresh="10s",
            since="now-30m",
            api_variables=False,
        )
        .link(dashboard_link("API overview", "api"))
        .with_panel(note("How to read this dashboard", HOW_TO, height=5))
    )
    return with_rows(
        board,
        (
            ("Pool", pool_row()),
            ("Traffic and errors", traffic_row()),
            ("Health checks", checks_row()),
        ),
    )
