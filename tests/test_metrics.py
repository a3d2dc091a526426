"""Metrics in-process: the exposition, the route-template label, pool metrics, and the
promise that telemetry never fails a request. (Across Gunicorn workers:
test_metrics_gunicorn.py.)

The in-process registry is shared by the whole test session, so tests compare values
before and after what they do.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.samples import Sample
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app import __version__, db
from app.main import create_app
from app.settings import Settings
from app.telemetry import metrics
from app.telemetry.logging import ThrottledLog
from tests.helpers import app_client, create_product, parse_metrics, sample_sum

DURATION_COUNT = "http_server_request_duration_seconds_count"
PRODUCT_ROUTE = "/api/v1/products/{product_id}"

# The shared contract (BRIEF.md): the dashboards and alert rules are built on these.
CONTRACT_METRICS = {
    "http_server_request_duration_seconds": "histogram",
    "http_server_active_requests": "gauge",
    "db_client_connection_count": "gauge",
    "db_client_connection_max": "gauge",
    "db_client_connection_overflow": "gauge",
    "db_client_connection_wait_time_seconds": "histogram",
    "db_client_operation_duration_seconds": "histogram",
    "cache_lookups_total": "counter",
    "dependency_errors_total": "counter",
    "ratelimit_decisions_total": "counter",
    "gunicorn_workers_started_total": "counter",
    "gunicorn_workers_exited_total": "counter",
    "app_info": "gauge",
}


async def scrape(client: httpx.AsyncClient) -> list[Sample]:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)


async def test_metrics_endpoint_serves_every_contract_metric(client: httpx.AsyncClient) -> None:
    """1. one product read  2. GET /metrics -> Prometheus text format with every metric of
    the shared contract, of the right type, and app_info naming the version."""
    product = await create_product(client)
    await client.get(f"/api/v1/products/{product['id']}")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", response.text, flags=re.MULTILINE))
    for name, kind in CONTRACT_METRICS.items():
        assert types.get(name) == kind, f"{name} missing or not a {kind}"
    samples = parse_metrics(response.text)
    assert sample_sum(samples, "app_info", service_version=__version__) == 1
    assert not [s for s in samples if s.name.endswith("_created")], "_created series exported"


async def test_duration_is_labelled_with_the_route_template_never_the_raw_path(
    client: httpx.AsyncClient,
) -> None:
    """1. reads of three different products  2. scrape -> the template's count grew by
    three, status and method labelled; no label value contains a raw product id."""
    before = sample_sum(await scrape(client), DURATION_COUNT, http_route=PRODUCT_ROUTE)
    ids = [(await create_product(client))["id"] for _ in range(3)]
    for product_id in ids:
        assert (await client.get(f"/api/v1/products/{product_id}")).status_code == 200
    samples = await scrape(client)
    labels = {"http_route": PRODUCT_ROUTE, "http_request_method": "GET"}
    assert sample_sum(samples, DURATION_COUNT, **labels, http_response_status_code="200") >= 3
    assert sample_sum(samples, DURATION_COUNT, http_route=PRODUCT_ROUTE) == before + 3
    raw_paths = {f"/api/v1/products/{product_id}" for product_id in ids}
    assert not [s for s in samples if raw_paths & set(s.labels.values())]


async def test_every_route_is_labelled_with_its_own_template(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """For every operation in the OpenAPI document (so routes added later are covered
    too), plus the documentation pages: a request -> a sample labelled with exactly that
    path template, whatever the status (422s included)."""
    operations = [
        (method.upper(), path)
        for path, item in create_app(settings).openapi()["paths"].items()
        for method in item
    ]
    operations += [("GET", "/docs"), ("GET", "/redoc"), ("GET", "/docs-assets/{path}")]
    operations += [("GET", "/openapi.json"), ("GET", "/metrics")]
    assert len(operations) >= 8
    for method, template in operations:
        concrete = re.sub(r"\{[^}]+\}", "1", template)
        await client.request(method, concrete, json={} if method in {"POST", "PATCH"} else None)
    samples = await scrape(client)
    for method, template in operations:
        assert sample_sum(
            samples, DURATION_COUNT, http_request_method=method, http_route=template
        ), f"no sample for {method} {template}"


async def test_unmatched_paths_and_unknown_methods_cannot_create_series(
    client: httpx.AsyncClient,
) -> None:
    """1. 404s on ten different made-up paths and a trailing slash, a made-up method
    -> one series without a route (an empty `http_route`, absent to Prometheus, as the
    conventions omit http.route when there is none) and one `_OTHER` method series; the
    paths appear nowhere."""
    samples_before = await scrape(client)
    unmatched = {"http_route": "", "http_request_method": "GET"}
    before = sample_sum(samples_before, DURATION_COUNT, **unmatched)
    for n in range(10):
        assert (await client.get(f"/wp-admin/{n}/setup.php")).status_code == 404
    assert (await client.get("/api/v1/products/")).status_code == 404
    assert (await client.request("BREW", "/api/v1/products")).status_code == 405
    samples = await scrape(client)
    assert sample_sum(samples, DURATION_COUNT, **unmatched) == before + 11
    assert sample_sum(samples, DURATION_COUNT, http_request_method="_OTHER") >= 1
    assert not [s for s in samples if "BREW" in s.labels.values()]
    assert not [s for s in samples if any("wp-admin" in v for v in s.labels.values())]


async def test_request_durations_carry_the_stable_http_attributes(
    make_settings: Callable[..., Settings],
) -> None:
    """A read and a request that fails with an exception -> the duration samples carry
    url_scheme, network_protocol_version and, for the failure only, error_type (the
    exception's class): the stable http.server.request.duration's attributes."""
    app = create_app(make_settings())

    @app.get("/boom-for-metrics")
    async def boom() -> None:
        raise LookupError("boom")

    async with LifespanManager(app) as manager:
        # As Uvicorn, which logs what the app raised: the client gets the 500 answer.
        transport = httpx.ASGITransport(manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/boom-for-metrics")).status_code == 500
            samples = await scrape(client)
    ok = {"http_route": "/health", "url_scheme": "http", "network_protocol_version": "1.1"}
    assert sample_sum(samples, DURATION_COUNT, **ok, error_type="") >= 1
    failed = {"http_route": "/boom-for-metrics", "http_response_status_code": "500"}
    assert sample_sum(samples, DURATION_COUNT, **failed, error_type="LookupError") == 1


async def test_the_known_methods_can_be_replaced_as_the_conventions_require(
    make_settings: Callable[..., Settings],
) -> None:
    """OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS=GET,PURGE -> PURGE keeps its name, POST
    (no longer listed) is `_OTHER`; a value that is no method is refused at start."""
    settings = make_settings(OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS="GET,PURGE")
    async with app_client(settings) as client:
        before = await scrape(client)
        await client.request("PURGE", "/health")
        await client.post("/health")
        after = await scrape(client)

    def added(method: str) -> float:
        now = sample_sum(after, DURATION_COUNT, http_request_method=method)
        return now - sample_sum(before, DURATION_COUNT, http_request_method=method)

    assert (added("PURGE"), added("POST"), added("_OTHER")) == (1, 0, 1)
    with pytest.raises(ValidationError, match="not an HTTP method"):
        make_settings(OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS="GET,NOT A METHOD")


async def test_requests_refused_before_routing_count_under_their_route(
    make_settings: Callable[..., Settings],
) -> None:
    """1. the rate limiter allows one write a minute  2. two POST /api/v1/orders from one
    client -> 201 then 429, and both count under http_route=/api/v1/orders (the 429 is
    not `unmatched`, although the limiter answered before the router ran)."""
    # A policy of this test's own, on orders only: other tests of the session write
    # from the same client address, and their writes must not count against it.
    policy = f"orders-{time.time_ns()}=1/60s POST /api/v1/orders"
    settings = make_settings(RATE_LIMIT_ENABLED=True, RATE_LIMIT_ROUTES=policy)
    client_key = {"X-API-Key": f"metrics-route-{time.time_ns()}"}
    async with app_client(settings) as client:
        product = await create_product(client, stock=5)
        samples_before = await scrape(client)
        order = {"items": [{"product_id": product["id"], "quantity": 1}]}
        statuses = [
            (await client.post("/api/v1/orders", json=order, headers=client_key)).status_code
            for _ in range(2)
        ]
        samples = await scrape(client)
    assert statuses == [201, 429]
    for status in ("201", "429"):
        labels = {
            "http_route": "/api/v1/orders",
            "http_request_method": "POST",
            "http_response_status_code": status,
        }
        grown = sample_sum(samples, DURATION_COUNT, **labels) - sample_sum(
            samples_before, DURATION_COUNT, **labels
        )
        assert grown == 1, status


async def test_active_requests_counts_a_request_in_flight_and_returns_to_zero(
    client: httpx.AsyncClient,
) -> None:
    """1. a POST whose body is held back  2. scrape while it waits -> one POST in flight
    3. the body is sent, the request completes -> zero in flight."""
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"sku": "SLOW-%d", ' % time.monotonic_ns()
        await release.wait()
        yield b'"name": "slow", "price_cents": 1, "stock": 1}'

    request = asyncio.create_task(
        client.post(
            "/api/v1/products",
            content=slow_body(),
            headers={"content-type": "application/json"},
        )
    )
    active = {"http_request_method": "POST"}
    for _ in range(100):
        in_flight = sample_sum(await scrape(client), "http_server_active_requests", **active)
        if in_flight:
            break
        await asyncio.sleep(0.01)
    assert in_flight == 1
    release.set()
    assert (await request).status_code == 201
    assert sample_sum(await scrape(client), "http_server_active_requests", **active) == 0


async def test_pool_gauges_wait_time_and_statement_latency(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """1. a product read that misses the cache (a SELECT through the pool)  2. scrape ->
    SELECT latency and connection wait observed, the pool's max is pool size + overflow,
    nothing is left checked out."""
    product = await create_product(client)
    before = await scrape(client)
    assert (await client.get(f"/api/v1/products/{product['id']}")).status_code == 200
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return sample_sum(after, name, **labels) - sample_sum(before, name, **labels)

    assert grew("db_client_operation_duration_seconds_count", db_operation_name="SELECT") >= 1
    assert grew("db_client_connection_wait_time_seconds_count") >= 1
    assert sample_sum(after, "db_client_connection_max") == settings.db_connections_per_worker
    assert sample_sum(after, "db_client_connection_count", db_client_connection_state="used") == 0
    assert sample_sum(after, "db_client_connection_count", db_client_connection_state="idle") >= 1


async def test_pool_exhaustion_is_counted_and_shows_as_used(
    make_settings: Callable[..., Settings],
) -> None:
    """A pool of one connection, no overflow: 1. one connection held  -> used 1, idle 0
    2. a second checkout times out -> db_client_connection_timeouts_total +1 and the wait
    is observed  3. released -> used 0, idle 1."""
    settings = make_settings(DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT_SECONDS=0.2)
    engine = db.create_engine(settings)
    timeouts_before = metrics.DB_CONNECTION_TIMEOUTS._value.get()
    waits_before = metrics.DB_CONNECTION_WAIT._sum.get()
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            assert metrics.DB_CONNECTIONS.labels(metrics.POOL_NAME, "used")._value.get() == 1
            assert metrics.DB_CONNECTIONS.labels(metrics.POOL_NAME, "idle")._value.get() == 0
            with pytest.raises(PoolTimeoutError):
                async with engine.connect():
                    pass
        assert metrics.DB_CONNECTION_TIMEOUTS._value.get() == timeouts_before + 1
        assert metrics.DB_CONNECTION_WAIT._sum.get() - waits_before >= 0.2
        assert metrics.DB_CONNECTIONS.labels(metrics.POOL_NAME, "used")._value.get() == 0
        assert metrics.DB_CONNECTIONS.labels(metrics.POOL_NAME, "idle")._value.get() == 1
    finally:
        await engine.dispose()


class BrokenPropagator:
    """A trace-context propagator that fails on every call, as a buggy plug-in would."""

    fields = frozenset({"traceparent"})

    def extract(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("propagator exploded")

    def inject(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("propagator exploded")


def explode(*args: object, **kwargs: object) -> object:
    raise RuntimeError("metrics exploded")


async def test_telemetry_errors_never_fail_a_request(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Metric label lookups and the trace-context propagator raise on every call:
    1. a product read with a `traceparent`  -> 200 with the right body and a request id
    2. the failure is logged (a warning), not raised."""
    from opentelemetry import propagate

    monkeypatch.setattr(propagate, "get_global_textmap", BrokenPropagator)
    monkeypatch.setattr(metrics.HTTP_REQUEST_DURATION, "labels", explode)
    monkeypatch.setattr(metrics.HTTP_ACTIVE_REQUESTS, "labels", explode)
    caplog.set_level(logging.WARNING, logger="app.telemetry.middleware")
    async with app_client(settings) as client:
        product = await create_product(client)
        response = await client.get(
            f"/api/v1/products/{product['id']}",
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
    assert response.status_code == 200
    assert response.json()["sku"] == product["sku"]
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert "telemetry failed" in caplog.text


async def test_counters_on_request_paths_never_fail_a_request(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rate-limit and cache-lookup counters raise on every call (as on a full disk):
    a product read through the rate limiter -> 200 with its body; the failure is
    logged, not raised."""
    monkeypatch.setattr(metrics, "_children", {})
    monkeypatch.setattr(metrics, "_failures", ThrottledLog(metrics.logger, interval=60.0))
    monkeypatch.setattr(metrics.RATE_LIMIT_DECISIONS, "labels", explode)
    monkeypatch.setattr(metrics.CACHE_LOOKUPS, "labels", explode)
    caplog.set_level(logging.WARNING, logger="app.telemetry.metrics")
    async with app_client(make_settings(RATE_LIMIT_ENABLED=True)) as client:
        product = await create_product(client)
        response = await client.get(f"/api/v1/products/{product['id']}")
    assert response.status_code == 200
    assert response.json()["sku"] == product["sku"]
    assert "ratelimit" in response.headers  # the limiter did decide
    assert "not counted" in caplog.text


async def test_metrics_can_be_switched_off(make_settings: Callable[..., Settings]) -> None:
    """METRICS_ENABLED=false -> no /metrics route (404); the API and request ids work."""
    async with app_client(make_settings(METRICS_ENABLED=False)) as client:
        assert (await client.get("/metrics")).status_code == 404
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["x-request-id"]


async def test_request_id_is_taken_when_valid_and_generated_otherwise(
    client: httpx.AsyncClient,
) -> None:
    """A valid incoming X-Request-ID is echoed; one too long or with other characters
    (log injection, header smuggling) is replaced; none -> a new id per request."""
    echoed = await client.get("/health", headers={"X-Request-ID": "req-42.a:b_C"})
    assert echoed.headers["x-request-id"] == "req-42.a:b_C"
    for bad in ("x" * 129, "two words", 'quote"d', "caf\u00e9".encode()):
        replaced = await client.get("/health", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"]), bad
    first, second = await client.get("/health"), await client.get("/health")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
