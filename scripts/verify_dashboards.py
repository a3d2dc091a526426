"""Prove that the dashboards and rules have data: drive mixed traffic (with a Redis outage
and a burst) through the API, then query every PromQL expression of every Grafana
dashboard, the Grafana datasources and every Prometheus rule file through a real
Prometheus, and check that the request counters it scraped equal the requests sent.

    python scripts/verify_dashboards.py --native     # Gunicorn + Prometheus on free ports
    python scripts/verify_dashboards.py --compose    # compose: Prometheus :9090, API :8000
    python scripts/verify_dashboards.py --prometheus-url URL --api-url URL

--native starts everything itself (needs prometheus/promtool, Postgres, redis-server):
Gunicorn with 2 workers on this machine's Postgres, a throwaway Redis it can stop, and
Prometheus with a config derived from observability/prometheus/prometheus.yml (1 s
intervals). Exit status 1 when any expression has no data, a rule is unhealthy or a
counter is off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/verify_dashboards.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.prometheus_native import NativePrometheus, PrometheusAPI, native_config
from scripts.promql_inventory import (
    Expression,
    GrafanaContext,
    inventory,
    recorded_rules,
    source_metrics,
)
from scripts.stack import ComposeStack, GunicornProcess, NativeStack, StackError, free_port
from scripts.traffic import Phase, TrafficReport, run_traffic, seeded_product_ids

# Jobs of prometheus.yml that have no native counterpart: no OpenTelemetry Collector
# binary is packaged for Debian, so --native cannot scrape it (compose does). `locust`
# exists only while a load test runs; tests/test_loadtest.py targets it. `lb` is
# compose's load balancer; the compose e2e checks its panels (scripts/compose_e2e.py).
NATIVE_DROPPED_JOBS = ("otel-collector", "spanmetrics", "locust", "lb")

# Settings of the API for the traffic: reads practically unlimited (so the read panels
# see steady traffic), writes keep the default policy (20/min per client), which the
# traffic's clients exceed: the rate-limit panels see both allowed and limited. (The
# test suite's fixtures switch the limiter off by default; these runs have a Redis of
# their own and want it on.)
TRAFFIC_APP_ENV = {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_DEFAULT": "100000/60s"}


@dataclass(frozen=True)
class Check:
    expression: Expression
    status: str  # ok | no data | error | pending
    detail: str


@dataclass
class Verification:
    traffic: TrafficReport
    checks: list[Check] = field(default_factory=list)
    rule_problems: list[str] = field(default_factory=list)
    counter_mismatches: list[str] = field(default_factory=list)
    pending_problems: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        bad = [
            f"{c.expression}: {c.status}: {c.detail}"
            for c in self.checks
            if c.status in ("no data", "error")
        ]
        return bad + self.rule_problems + self.counter_mismatches + self.pending_problems

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "traffic": {
                "answers": self.traffic.total,
                "by_status_class": dict(self.traffic.by_status_class()),
                "transport_errors": dict(self.traffic.transport_errors),
            },
            "checks": [
                {
                    "source": c.expression.source,
                    "where": c.expression.where,
                    "kind": c.expression.kind,
                    "query": c.expression.query,
                    "status": c.status,
                    "detail": c.detail,
                }
                for c in self.checks
            ],
            "rule_problems": self.rule_problems,
            "counter_mismatches": self.counter_mismatches,
            "pending_problems": self.pending_problems,
        }


# --- Checks ------------------------------------------------------------------------------


def check_expression(
    api: PrometheusAPI, expression: Expression, start: float, end: float, step: float
) -> Check:
    """Range-query the expression over the traffic window, like a dashboard panel does:
    data = at least one series with at least one finite value."""
    try:
        series = api.query_range(expression.query, start, end, step)
    except StackError as exc:
        return Check(expression, "error", str(exc))
    finite = [
        s for s in series if any(math.isfinite(float(value)) for _, value in s.get("values", []))
    ]
    if finite:
        points = sum(len(s["values"]) for s in finite)
        return Check(expression, "ok", f"{len(finite)} series, {points} points")
    return Check(expression, "no data", f"{len(series)} series, none with a finite value")


def check_all(
    api: PrometheusAPI,
    expressions: Sequence[Expression],
    start: float,
    end: float,
    step: float,
    pending: Mapping[str, str] = {},
) -> list[Check]:
    """Check every expression. One without data that depends on a metric listed in
    `pending` (metric -> why it is not exported yet) is reported as pending, not
    failed; `pending_problems` makes sure such a metric really is absent."""
    recorded = recorded_rules()
    checks = []
    for expression in expressions:
        check = check_expression(api, expression, start, end, step)
        waiting = sorted(source_metrics(expression.query, recorded) & set(pending))
        if check.status == "no data" and waiting:
            reasons = "; ".join(f"{m}: {pending[m]}" for m in waiting)
            check = Check(expression, "pending", reasons)
        checks.append(check)
    return checks


def pending_problems(api: PrometheusAPI, pending: Mapping[str, str]) -> list[str]:
    """A metric declared pending that Prometheus does have: the declaration is stale."""
    return [
        f"{metric} is exported now: remove it from the pending list and check its panels"
        for metric in pending
        if api.query(f'count({{__name__="{metric}"}})')
    ]


def rule_problems(api: PrometheusAPI) -> list[str]:
    """Rules whose last evaluation failed (a typo, a many-to-many match, ...)."""
    return [
        f"rule {rule['name']}: health {rule.get('health')}: {rule.get('lastError', '')}"
        for rule in api.rules()
        if rule.get("health") != "ok" or rule.get("lastError")
    ]


def scraped_request_counts(api: PrometheusAPI, at: float) -> dict[tuple[str, str], float]:
    """http_server_request_duration_seconds_count summed per method and route, as
    Prometheus had scraped it at `at`."""
    result = api.query(
        "sum by (http_request_method, http_route) "
        '(http_server_request_duration_seconds_count{job="api"})',
        at=at,
    )
    return {
        (s["metric"].get("http_request_method", ""), s["metric"].get("http_route", "")): float(
            s["value"][1]
        )
        for s in result
    }


def counter_mismatches(
    sent: Mapping[tuple[str, str], int],
    before: Mapping[tuple[str, str], float],
    after: Mapping[tuple[str, str], float],
) -> list[str]:
    """The counter grew by exactly the number of requests sent, route by route, whichever
    worker served them."""
    problems = []
    for key, count in sorted(sent.items()):
        grown = after.get(key, 0.0) - before.get(key, 0.0)
        if grown != count:
            problems.append(
                f"{key[0]} {key[1]}: sent {count} requests, the scraped counter grew by {grown:g}"
            )
    return problems


# --- The run -----------------------------------------------------------------------------


def default_phases(
    redis_down: Callable[[], Any] | None = None, redis_up: Callable[[], Any] | None = None
) -> list[Phase]:
    """Steady traffic, a burst that queues on the connection pool, a Redis outage (when
    the caller can cause one: cache bypasses, Redis errors, limiter fail-open), then
    recovery."""
    phases = [
        Phase("steady", seconds=5, concurrency=4),
        Phase("burst", seconds=3, concurrency=24),
    ]
    if redis_down and redis_up:
        phases.append(
            Phase("redis down", seconds=3, concurrency=4, before=redis_down, after=redis_up)
        )
    phases.append(Phase("recovery", seconds=3, concurrency=4))
    return phases


def verify(
    api: PrometheusAPI,
    base_url: str,
    *,
    phases: Sequence[Phase],
    context: GrafanaContext,
    pending: Mapping[str, str] = {},
    expressions: Sequence[Expression] | None = None,
    check_counters: bool = True,
    progress: Callable[[str], None] = lambda message: None,
) -> Verification:
    """Traffic, then every check. `api` must already scrape the API at `base_url`.
    `check_counters=False` when other clients use the API meanwhile (then the counters
    grow by more than this traffic sent)."""
    product_ids = seeded_product_ids(base_url)
    api.wait_for_scrape("api", after=time.time())
    before = scraped_request_counts(api, at=time.time())
    traffic = run_traffic(base_url, phases, product_ids=product_ids, progress=progress)
    progress("waiting for Prometheus to scrape and evaluate the rules after the traffic")
    api.wait_for_scrape("api", after=traffic.finished)
    api.wait_for_rule_evaluation(after=time.time())
    end = time.time()
    result = Verification(traffic)
    if check_counters:
        result.counter_mismatches = counter_mismatches(
            traffic.by_route(), before, scraped_request_counts(api, at=end)
        )
    found = list(expressions) if expressions is not None else inventory(context)
    progress(f"querying {len(found)} expressions over the {end - traffic.started:.0f}s window")
    result.checks = check_all(api, found, traffic.started, end, context.step, pending)
    result.rule_problems = rule_problems(api)
    result.pending_problems = pending_problems(api, pending)
    return result


@contextlib.contextmanager
def native_prometheus(server: GunicornProcess, interval: float = 1.0) -> Iterator[NativePrometheus]:
    """Prometheus scraping `server` (and itself) with our rules, on a free port."""
    port = free_port()  # chosen first: Prometheus scrapes itself
    config = native_config(
        {"api": [f"{server.host}:{server.port}"], "prometheus": [f"127.0.0.1:{port}"]},
        interval=interval,
        drop_jobs=NATIVE_DROPPED_JOBS,
    )
    with NativePrometheus(config, port=port) as prometheus:
        yield prometheus


# --- CLI ---------------------------------------------------------------------------------


def print_report(result: Verification, verbose: bool) -> None:
    print(f"\ntraffic: {result.traffic.summary()}")
    width = max((len(str(c.expression)) for c in result.checks), default=0)
    for check in result.checks:
        if verbose or check.status != "ok":
            print(f"  {check.status.upper():8} {check.expression!s:{width}}  {check.detail}")
    counts: dict[str, int] = {}
    for check in result.checks:
        counts[check.status] = counts.get(check.status, 0) + 1
    print("expressions: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for problem in result.rule_problems + result.counter_mismatches + result.pending_problems:
        print(f"  PROBLEM  {problem}")
    if not result.counter_mismatches:
        print(f"request counters: no mismatch over {len(result.traffic.by_route())} routes")
    print("OK: every expression has data" if result.ok else "FAILED")


def run_native(args: argparse.Namespace, progress: Callable[[str], None]) -> Verification:
    from scripts.throwaway import TemporaryRedis

    stack = NativeStack()
    progress(f"preparing the database ({args.products} products)")
    stack.prepare(products=args.products)
    with TemporaryRedis() as redis:
        env = {
            **TRAFFIC_APP_ENV,
            "REDIS_URL": redis.url,
            "REDIS_KEY_PREFIX": f"verify-dashboards-{time.time_ns()}:",
        }
        progress(f"starting Gunicorn with {args.workers} workers")
        server = stack.start_gunicorn(workers=args.workers, env=env)
        with server, native_prometheus(server) as prometheus:
            progress(f"prometheus on {prometheus.base_url}, API on {server.base_url}")
            return verify(
                prometheus,
                server.base_url,
                phases=default_phases(redis.stop, redis.start),
                context=GrafanaContext(scrape_interval=1.0, step=1.0),
                progress=progress,
            )


def run_remote(args: argparse.Namespace, progress: Callable[[str], None]) -> Verification:
    api = PrometheusAPI(args.prometheus_url)
    if not api.ready():
        raise StackError(f"Prometheus at {args.prometheus_url} is not ready")
    down = up = None
    if args.compose:
        compose = ComposeStack()
        down, up = (lambda: compose.stop_service("redis")), (lambda: compose.start_service("redis"))
    try:
        return verify(
            api,
            args.api_url,
            phases=default_phases(down, up),
            context=GrafanaContext(scrape_interval=15.0, step=15.0),
            check_counters=not args.other_traffic,
            progress=progress,
        )
    finally:
        api.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/verify_dashboards.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--native", action="store_true", help="start Gunicorn and Prometheus here")
    mode.add_argument("--compose", action="store_true", help="the running compose stack")
    mode.add_argument("--prometheus-url", help="a running Prometheus that scrapes --api-url")
    parser.add_argument("--api-url", default="http://127.0.0.1:8000", help="API base URL")
    parser.add_argument("--workers", type=int, default=2, help="--native: Gunicorn workers")
    parser.add_argument("--products", type=int, default=1000, help="--native: products to seed")
    parser.add_argument(
        "--other-traffic",
        action="store_true",
        help="others use the API meanwhile (e.g. Locust): skip the exact counter check",
    )
    parser.add_argument("--verbose", action="store_true", help="list passing expressions too")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.compose:
        args.prometheus_url = "http://127.0.0.1:9090"
    if args.workers < 1 or args.products < 1:
        parser.error("--workers and --products must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(message: str) -> None:
        print(f"[verify-dashboards] {message}", file=sys.stderr, flush=True)

    try:
        result = run_native(args, progress) if args.native else run_remote(args, progress)
    except (StackError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_report(result, args.verbose)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
