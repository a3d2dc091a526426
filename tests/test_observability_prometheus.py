"""The dashboards and rules have data: a real Prometheus (config derived from
observability/prometheus/prometheus.yml, 1 s intervals) scrapes a real Gunicorn with 2
workers under mixed traffic, then every PromQL expression of every dashboard, datasource
and rule file is queried through Prometheus' HTTP API (extracted from the files by
scripts/parity/harness/promql_inventory.py, never copied here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from parity.commands.verify_dashboards import (
    NATIVE_DROPPED,
    TRAFFIC_APP_ENV,
    default_phases,
    native_prometheus,
    verify,
)
from parity.harness.prometheus_native import binaries, missing_reason
from parity.harness.promql_inventory import GrafanaContext, inventory, required_jobs
from parity.harness.stack import GunicornProcess, NativeStack, seed
from parity.harness.throwaway import TemporaryRedis
from parity.harness.traffic import ORDERS, PRODUCT, PRODUCTS
from tests.conftest import unique_name

pytestmark = [
    pytest.mark.gunicorn,
    pytest.mark.slow,
    pytest.mark.skipif(binaries() is None, reason=missing_reason()),
]

# Metrics the service does not export yet -> why. An expression that has no data only
# because of one of these is reported as pending instead of failing, and the test fails
# as soon as such a metric *is* exported (the entry is stale): this list only shrinks.
PENDING: dict[str, str] = {}

Start = Callable[..., GunicornProcess]


@pytest.fixture
def redis_server() -> Iterator[TemporaryRedis]:
    """A Redis of the test's own, which the traffic stops and restarts."""
    with TemporaryRedis() as redis:
        yield redis


def test_every_dashboard_and_rule_expression_returns_data_and_counters_are_exact(
    gunicorn: Start, native_stack: NativeStack, redis_server: TemporaryRedis
) -> None:
    """1. Gunicorn with 2 workers on a throwaway Redis; Prometheus scrapes it every second
    2. traffic from several clients (API keys): steady mix, a burst of 24 clients, 3 s
       with Redis stopped, recovery; writes exceed the rate limiter's writes policy
    -> every dashboard panel and variable, datasource query, recording rule, recorded
       series and alert signal returns data, except those of a job with no native
       counterpart (the load balancer's panels: job lb), reported skipped with the
       reason; every rule evaluates healthily; for every
       route, the scraped request counter grew by exactly the number of requests sent,
       served by both workers; the master is one target reporting 2 workers, and the
       "Workers alive" panel shows 2."""
    seed(native_stack.database_url, 200)
    server = gunicorn(
        workers=2,
        env={
            **TRAFFIC_APP_ENV,
            "REDIS_URL": redis_server.url,
            "REDIS_KEY_PREFIX": f"{unique_name('o11y')}:",
        },
    )
    context = GrafanaContext(scrape_interval=1.0, step=1.0)
    expressions = inventory(context)
    with native_prometheus(server) as prometheus:
        result = verify(
            prometheus,
            server.base_url,
            phases=default_phases(redis_server.stop, redis_server.start),
            context=context,
            pending=PENDING,
            unavailable=NATIVE_DROPPED,
            expressions=expressions,
        )
        up = prometheus.query('up{job="api"}')
        info = prometheus.query('app_info{job="api"}')
        workers_panel = next(e for e in expressions if "'Workers alive'" in e.where)
        workers_alive = prometheus.query(workers_panel.query)

    traffic = result.traffic
    assert traffic.by_status_class()["2xx"] > 100, traffic.summary()
    assert traffic.answers["POST", ORDERS, 429] > 0, "no client exceeded the writes policy"
    assert {(m, r) for m, r in traffic.by_route()} >= {
        ("GET", PRODUCT),
        ("GET", PRODUCTS),
        ("POST", ORDERS),
        ("PATCH", PRODUCT),
    }
    assert len(expressions) == len(result.checks) > 50
    assert result.failures == [], "\n".join(result.failures)
    skipped = [c for c in result.checks if c.status == "skipped"]
    assert skipped, "the load balancer's panels cannot have data natively"
    for check in skipped:
        assert required_jobs(check.expression.query, {}) == {"lb"}, check
        assert check.detail == f"job lb: {NATIVE_DROPPED['lb']}"
    by_instance = [c for c in result.checks if "by instance'" in c.expression.where]
    assert len(by_instance) >= 4
    assert {c.status for c in by_instance} == {"ok"}
    assert {c.expression.kind for c in result.checks if c.status == "ok"} >= {
        "panel",
        "variable",
        "datasource",
        "record",
        "recorded",
        "alert-signal",
    }
    serving = {
        record["pid"]
        for record in server.log_records()
        if record.get("logger") == "app.access" and "pid" in record
    }
    assert len(serving) >= 2, "the traffic did not reach both workers"
    # One target for the whole master: whichever worker answers a scrape returns the sum
    # over all workers, and a per-worker fact (app_info) comes once, not once per pid.
    assert [s["value"][1] for s in up] == ["1"]
    assert [s["metric"]["workers"] for s in info] == ["2"]
    assert [s["value"][1] for s in workers_alive] == ["2"], workers_panel.query
