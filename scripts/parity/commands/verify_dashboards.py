"""Prove that the dashboards and rules have data: drive mixed traffic (with a Redis outage
and a burst) through the API, then query every PromQL expression of every Grafana
dashboard, the Grafana datasources and every Prometheus rule file through a real
Prometheus, and check that the request counters it scraped equal the requests sent.

    parity verify dashboards --native     # Gunicorn + Prometheus on free ports
    parity verify dashboards --compose    # compose: Prometheus :9090, API :8000
    parity verify dashboards --compose --only-job lb   # the lb panels, no traffic
    parity verify dashboards --prometheus-url URL --url URL

--native starts everything itself (needs prometheus/promtool, Postgres, redis-server):
Gunicorn with 2 workers on this machine's Postgres, a throwaway Redis it can stop, and
Prometheus with a config derived from observability/prometheus/prometheus.yml (1 s
intervals). --compose finds the stack the way `docker compose` does (COMPOSE_FILE,
COMPOSE_PROJECT_NAME) and its ports in PROMETHEUS_PORT and API_PORT (defaults 9090,
8000). --only-job JOB checks just the expressions that select that scrape job, over
what Prometheus already holds (the last 5 minutes): no traffic, no outage, a second or
two.

An expression that needs a scrape job this Prometheus does not have (natively: the
collector, Locust and the load balancer; in compose.offline.yaml: the collector) is
reported SKIPPED with the reason, never silently dropped nor failed. Exit status 1 when
any other expression has no data, a rule is unhealthy or a counter is off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from parity.harness.load import Phase
from parity.harness.prometheus_native import (
    NATIVE_DROPPED,
    NATIVE_DROPPED_JOBS,
    NO_COLLECTOR,
    NativePrometheus,
    PrometheusAPI,
    native_config,
)
from parity.harness.promql_inventory import (
    Expression,
    GrafanaContext,
    duration,
    inventory,
    recorded_rules,
    required_jobs,
    source_metrics,
)
from parity.harness.stack import (
    ComposeStack,
    GunicornProcess,
    NativeStack,
    StackError,
    compose_api_url,
    free_port,
    scratch_database,
)
from parity.harness.target import TargetChoice, add_target_options, target_choice
from parity.harness.traffic import TrafficReport, run_traffic, seeded_product_ids

# Jobs that a supported compose stack may lack -> why. compose.offline.yaml (what CI
# runs) has no collector: Prometheus keeps its targets, down; `locust` (profile
# loadtest) has no target unless a load test runs. With --compose, an expression that
# selects one of these is checked when the job has a target up, and skipped with the
# reason otherwise. Every other job (api, lb, prometheus) is in every variant: an
# expression of theirs without data fails.
OPTIONAL_JOBS: dict[str, str] = {
    "otel-collector": NO_COLLECTOR,
    "spanmetrics": NO_COLLECTOR,
    "locust": "Locust runs only during a load test (compose profile loadtest)",
}

# --only-job: how far back the expressions are queried (what Prometheus already holds).
ONLY_JOB_LOOKBACK = 300.0

# Settings of the API for the traffic: reads practically unlimited (so the read panels
# see steady traffic), writes keep the default policy (20/min per client), which the
# traffic's clients exceed: the rate-limit panels see both allowed and limited. (The
# test suite's fixtures switch the limiter off by default; these runs have a Redis of
# their own and want it on.)
TRAFFIC_APP_ENV = {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_DEFAULT": "100000/60s"}


@dataclass(frozen=True)
class Check:
    expression: Expression
    status: str  # ok | no data | error | pending | skipped (its job is not scraped here)
    detail: str


@dataclass
class Verification:
    traffic: TrafficReport
    checks: list[Check] = field(default_factory=list)
    rule_problems: list[str] = field(default_factory=list)
    counter_mismatches: list[str] = field(default_factory=list)
    pending_problems: list[str] = field(default_factory=list)
    unavailable_jobs: dict[str, str] = field(default_factory=dict)

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
            "unavailable_jobs": self.unavailable_jobs,
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
    *,
    unavailable: Mapping[str, str] = {},
) -> list[Check]:
    """Check every expression. One without data that selects a scrape job listed in
    `unavailable` (job -> why this Prometheus does not scrape it) is reported as
    skipped; one that depends on a metric listed in `pending` (metric -> why it is not
    exported yet) as pending; neither fails. `pending_problems` makes sure a pending
    metric really is absent. Every expression is still queried: a PromQL error is an
    error wherever it is evaluated."""
    recorded = recorded_rules()
    checks = []
    for expression in expressions:
        check = check_expression(api, expression, start, end, step)
        if check.status == "no data":
            missing = sorted(required_jobs(expression.query, recorded) & set(unavailable))
            waiting = sorted(source_metrics(expression.query, recorded) & set(pending))
            if missing:
                reasons = "; ".join(f"job {job}: {unavailable[job]}" for job in missing)
                check = Check(expression, "skipped", reasons)
            elif waiting:
                reasons = "; ".join(f"{m}: {pending[m]}" for m in waiting)
                check = Check(expression, "pending", reasons)
        checks.append(check)
    return checks


def unavailable_jobs(
    api: PrometheusAPI, optional: Mapping[str, str] = OPTIONAL_JOBS
) -> dict[str, str]:
    """The `optional` jobs (job -> why a stack may lack it) that this Prometheus has no
    target up for, with the reason and what Prometheus says."""
    targets = api.targets()
    found = {}
    for job, why in optional.items():
        mine = [t for t in targets if t["labels"].get("job") == job]
        if not mine:
            found[job] = f"{why} (Prometheus has no target for it)"
        elif not any(t["health"] == "up" for t in mine):
            error = mine[0].get("lastError") or mine[0]["health"]
            found[job] = f"{why} (no target up: {error})"
    return found


def require_up(api: PrometheusAPI, job: str, lookback: float, timeout: float = 45.0) -> None:
    """Every target of `job` is up in Prometheus (its last scrape succeeded) and was
    scraped at least twice in the last `lookback` seconds, so that rate() has two samples
    (waits up to `timeout` for a stack that has just started)."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [t for t in api.targets() if t["labels"].get("job") == job]
        if not mine:
            raise StackError(f"Prometheus has no target of job {job!r}")
        down = [
            f"{t['scrapeUrl']}: {t.get('lastError') or t['health']}"
            for t in mine
            if t["health"] != "up"
        ]
        if down:
            raise StackError(f"job {job!r} is not scraped: " + "; ".join(down))
        scrapes = api.query(f'min(count_over_time(up{{job="{job}"}}[{duration(lookback)}]))')
        if scrapes and float(scrapes[0]["value"][1]) >= 2:
            return
        if time.monotonic() > deadline:
            raise StackError(f"job {job!r}: fewer than 2 scrapes in the last {lookback:.0f}s")
        time.sleep(1.0)


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
    unavailable: Mapping[str, str] = {},
    expressions: Sequence[Expression] | None = None,
    check_counters: bool = True,
    progress: Callable[[str], None] = lambda message: None,
) -> Verification:
    """Traffic, then every check. `api` must already scrape the API at `base_url`.
    `unavailable`: scrape jobs this Prometheus does not have -> why (their expressions
    are skipped). `check_counters=False` when other clients use the API meanwhile (then
    the counters grow by more than this traffic sent)."""
    found = list(expressions) if expressions is not None else inventory(context)
    recorded = recorded_rules()
    scraped_jobs = set().union(*(required_jobs(e.query, recorded) for e in found))
    scraped_jobs = (scraped_jobs | {"api"}) - set(unavailable)
    product_ids = seeded_product_ids(base_url)
    api.wait_for_scrape("api", after=time.time())
    before = scraped_request_counts(api, at=time.time())
    traffic = run_traffic(base_url, phases, product_ids=product_ids, progress=progress)
    progress("waiting for Prometheus to scrape and evaluate the rules after the traffic")
    for job in sorted(scraped_jobs):
        api.wait_for_scrape(job, after=traffic.finished)
    api.wait_for_rule_evaluation(after=time.time())
    end = time.time()
    result = Verification(traffic, unavailable_jobs=dict(unavailable))
    if check_counters:
        result.counter_mismatches = counter_mismatches(
            traffic.by_route(), before, scraped_request_counts(api, at=end)
        )
    progress(f"querying {len(found)} expressions over the {end - traffic.started:.0f}s window")
    result.checks = check_all(
        api, found, traffic.started, end, context.step, pending, unavailable=unavailable
    )
    result.rule_problems = rule_problems(api)
    result.pending_problems = pending_problems(api, pending)
    return result


def verify_jobs(
    api: PrometheusAPI,
    jobs: Sequence[str],
    *,
    context: GrafanaContext,
    lookback: float = ONLY_JOB_LOOKBACK,
    progress: Callable[[str], None] = lambda message: None,
) -> Verification:
    """Only the expressions that select one of `jobs` (e.g. ["lb"]: the Load balancer
    dashboard), range-queried over the last `lookback` seconds of what Prometheus
    already holds: no traffic, no outage, no counter check. Every target of each job
    must be up (StackError otherwise), and at least one expression must select it."""
    recorded = recorded_rules()
    wanted = set(jobs)
    found = [
        e
        for e in inventory(context, include_load_test="locust" in wanted)
        if required_jobs(e.query, recorded) & wanted
    ]
    unknown = wanted - set().union(*(required_jobs(e.query, recorded) for e in found))
    if unknown:
        raise StackError(f"no dashboard or rule expression selects job {sorted(unknown)}")
    for job in sorted(wanted):
        require_up(api, job, lookback)
    end = time.time()
    progress(f"querying {len(found)} expressions of job {sorted(wanted)} over {lookback:.0f}s")
    result = Verification(TrafficReport(started=end - lookback, finished=end))
    result.checks = check_all(api, found, end - lookback, end, context.step)
    return result


@contextlib.contextmanager
def native_prometheus(server: GunicornProcess, interval: float = 1.0) -> Iterator[NativePrometheus]:
    """Prometheus scraping `server` (and itself) with our rules, on a free port; the
    jobs of NATIVE_DROPPED are left out (pass `unavailable=NATIVE_DROPPED` to verify)."""
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
    if result.traffic.phases:
        print(f"\ntraffic: {result.traffic.summary()}")
    else:
        print("\ntraffic: none sent (--only-job: what Prometheus already holds)")
    for job, why in sorted(result.unavailable_jobs.items()):
        print(f"not scraped here: job {job}: {why}")
    width = max((len(str(c.expression)) for c in result.checks), default=0)
    recorded = recorded_rules()
    for check in result.checks:
        detail = check.detail
        if check.status == "skipped":  # the reason is printed above, once per job
            jobs = required_jobs(check.expression.query, recorded) & set(result.unavailable_jobs)
            detail = f"needs job {', '.join(sorted(jobs))}"
        if verbose or check.status != "ok":
            print(f"  {check.status.upper():8} {check.expression!s:{width}}  {detail}")
    counts: dict[str, int] = {}
    for check in result.checks:
        counts[check.status] = counts.get(check.status, 0) + 1
    print("expressions: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for problem in result.rule_problems + result.counter_mismatches + result.pending_problems:
        print(f"  PROBLEM  {problem}")
    if result.traffic.phases and not result.counter_mismatches:
        print(f"request counters: no mismatch over {len(result.traffic.by_route())} routes")
    skipped = counts.get("skipped", 0)
    if not result.ok:
        print("FAILED")
    elif skipped:
        print(f"OK: every expression has data, except {skipped} skipped (listed above, with why)")
    else:
        print("OK: every expression has data")


def run_native(args: argparse.Namespace, progress: Callable[[str], None]) -> Verification:
    from parity.harness.throwaway import TemporaryRedis

    progress(f"preparing a database of its own ({args.products} products)")
    with scratch_database("dashboards", args.products) as url, TemporaryRedis() as redis:
        stack = NativeStack(database_url=url)
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
                unavailable=NATIVE_DROPPED,
                progress=progress,
            )


def run_remote(args: argparse.Namespace, progress: Callable[[str], None]) -> Verification:
    api = PrometheusAPI(args.prometheus_url)
    if not api.ready():
        raise StackError(f"Prometheus at {args.prometheus_url} is not ready")
    context = GrafanaContext(scrape_interval=15.0, step=15.0)
    try:
        if args.only_job:
            return verify_jobs(api, args.only_job, context=context, progress=progress)
        unavailable = unavailable_jobs(api)
        if unavailable:
            progress(f"not scraped here (their expressions are skipped): {sorted(unavailable)}")
        down = up = None
        if args.target.kind == "compose":
            compose = ComposeStack()
            down, up = (
                (lambda: compose.stop_service("redis")),
                (lambda: compose.start_service("redis")),
            )
        return verify(
            api,
            args.api_url,
            phases=default_phases(down, up),
            context=context,
            unavailable=unavailable,
            check_counters=not args.other_traffic,
            progress=progress,
        )
    finally:
        api.close()


def compose_prometheus_url() -> str:
    """Where compose publishes Prometheus: compose.yaml's `${PROMETHEUS_PORT:-9090}`."""
    return f"http://127.0.0.1:{os.environ.get('PROMETHEUS_PORT') or 9090}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity verify dashboards",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = add_target_options(
        parser,
        ("native", "compose"),
        default=None,
        help={"native": "start Gunicorn and Prometheus here"},
    )
    mode.add_argument("--prometheus-url", help="a running Prometheus that scrapes --url")
    parser.add_argument("--workers", type=int, default=2, help="--native: Gunicorn workers")
    parser.add_argument("--products", type=int, default=1000, help="--native: products to seed")
    parser.add_argument(
        "--other-traffic",
        action="store_true",
        help="others use the API meanwhile (e.g. Locust): skip the exact counter check",
    )
    parser.add_argument(
        "--only-job",
        action="append",
        metavar="JOB",
        help="only the expressions that select this scrape job (e.g. lb; repeatable), over "
        "what Prometheus already holds: no traffic, no outage, no counter check",
    )
    parser.add_argument("--verbose", action="store_true", help="list passing expressions too")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    # --prometheus-url is this command's own mode: the API is wherever that one scrapes.
    args.target = (
        target_choice(parser, args) if args.prometheus_url is None else TargetChoice("url")
    )
    args.api_url = args.target.url or args.url or compose_api_url()
    if args.target.kind == "compose":
        args.prometheus_url = compose_prometheus_url()
    if args.target.native and args.only_job:
        parser.error("--only-job needs --compose or --prometheus-url (--native scrapes no lb)")
    if args.workers < 1 or args.products < 1:
        parser.error("--workers and --products must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(message: str) -> None:
        print(f"[verify-dashboards] {message}", file=sys.stderr, flush=True)

    try:
        result = run_native(args, progress) if args.target.native else run_remote(args, progress)
    except (StackError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_report(result, args.verbose)
    return 0 if result.ok else 1
