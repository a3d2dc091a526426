"""Traces and correlated logs, end to end: a real Gunicorn (2 workers) exports to a real
OTLP/HTTP receiver running in the test (tests/otlp_receiver.py), decoded with
opentelemetry-proto, and writes its JSON log to a file we read back.

One scenario runs once for the module (`traced_run`); each test states one property
of it. The batch processor is told to wait ten minutes before sending, so every span
is still queued when SIGTERM arrives: whatever the receiver has after the master exits
was sent by the lifespan's shutdown flush.
"""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from sqlalchemy.engine import make_url

from app import __version__
from app.main import create_app
from app.settings import Settings
from app.telemetry.logging import RequestContextFilter
from app.telemetry.middleware import redacted_query, server_address
from app.telemetry.tracing import Tracing, opt_in_to_stable_database_conventions, start_tracing
from parity.harness.repo import REPO_ROOT
from parity.harness.stack import GunicornProcess, NativeStack, free_port
from tests.conftest import REDIS_URL
from tests.helpers import (
    app_client,
    asgi_client,
    create_product_sync,
    parse_metrics,
    sample_sum,
)
from tests.otlp_receiver import CLIENT, SERVER, OtlpReceiver, ReceivedSpan

# Planted where a careless service would log or trace them; they must appear nowhere.
DB_PASSWORD = "db-s3cret-pw"
SECRETS = (DB_PASSWORD, "bearer-s3cret", "apikey-s3cret", "query-s3cret")
PRODUCT_ROUTE = "/api/v1/products/{product_id}"
EXCLUDED = ("/health", "/ready", "/metrics")


def traceparent(trace_id: str, parent_id: str, sampled: bool) -> str:
    return f"00-{trace_id}-{parent_id}-{'01' if sampled else '00'}"


@dataclass
class TracedRun:
    service_name: str
    worker_pids: list[int]
    read: httpx.Response
    trace_id: str  # of the product read
    caller_span_id: str  # the span id our `traceparent` claimed as the caller's
    unsampled_trace_id: str
    excluded_trace_ids: dict[str, str]
    received_before_sigterm: list[ReceivedSpan]
    spans: list[ReceivedSpan]
    exit_code: int
    log_text: str
    log_records: list[dict[str, Any]]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def server_span(self) -> ReceivedSpan:
        [server] = [span for span in self.trace(self.trace_id) if span.kind == SERVER]
        return server

    def access_line(self, trace_id: str) -> dict[str, Any]:
        [line] = [
            r
            for r in self.log_records
            if r.get("logger") == "app.access" and r.get("trace_id") == trace_id
        ]
        return line


@pytest.fixture(scope="module")
def traced_run(database_url: str, redis_prefix: str) -> Iterator[TracedRun]:
    """1. Gunicorn, 2 workers, exporting to our receiver, default sampler, DATABASE_URL
    with a password  2. a product is created  3. it is read once (a cache miss: Redis,
    then Postgres, then Redis) with a sampled `traceparent`, a request id and secrets in
    headers and query  4. read again under an unsampled `traceparent`  5. /health,
    /ready, /metrics with sampled `traceparent`s  6. SIGTERM."""
    service_name = f"parity-trace-test-{uuid.uuid4().hex[:8]}"
    with_password = make_url(database_url).set(password=DB_PASSWORD)
    stack = NativeStack(
        database_url=with_password.render_as_string(hide_password=False),
        env={"REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": redis_prefix, "LOG_LEVEL": "info"},
    )
    trace_id, caller_span_id = secrets.token_hex(16), secrets.token_hex(8)
    unsampled_trace_id = secrets.token_hex(16)
    excluded_trace_ids = {path: secrets.token_hex(16) for path in EXCLUDED}
    with OtlpReceiver() as receiver:
        server = stack.start_gunicorn(
            workers=2,
            env={
                "SERVICE_NAME": service_name,
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "600000",
                # The test is the traced upstream whose trace context is continued.
                "TRACE_CONTEXT_TRUSTED_CALLERS": "127.0.0.1,::1",
            },
        )
        try:
            workers = server.worker_pids()
            # An unsampled read first: on a fresh Redis it loads the cache's script
            # (NOSCRIPT, SCRIPT LOAD), so the traced read's spans are the same whatever
            # ran before.
            warm_up = create_product_sync(server.base_url)
            httpx.get(
                f"{server.base_url}/api/v1/products/{warm_up['id']}",
                headers={"traceparent": traceparent(secrets.token_hex(16), "ab" * 8, False)},
            )
            product = create_product_sync(server.base_url)
            read = httpx.get(
                f"{server.base_url}/api/v1/products/{product['id']}",
                params={"token": "query-s3cret"},
                headers={
                    "traceparent": traceparent(trace_id, caller_span_id, sampled=True),
                    "X-Request-ID": "trace-test-read-1",
                    "Authorization": "Bearer bearer-s3cret",
                    "X-API-Key": "apikey-s3cret",
                },
            )
            httpx.get(
                f"{server.base_url}/api/v1/products/{product['id']}",
                headers={"traceparent": traceparent(unsampled_trace_id, "ab" * 8, False)},
            )
            for path, excluded_id in excluded_trace_ids.items():
                httpx.get(
                    server.base_url + path,
                    headers={"traceparent": traceparent(excluded_id, "cd" * 8, True)},
                )
            received_before_sigterm = receiver.snapshot()
        finally:
            exit_code = server.stop()
        yield TracedRun(
            service_name=service_name,
            worker_pids=workers,
            read=read,
            trace_id=trace_id,
            caller_span_id=caller_span_id,
            unsampled_trace_id=unsampled_trace_id,
            excluded_trace_ids=excluded_trace_ids,
            received_before_sigterm=received_before_sigterm,
            spans=receiver.snapshot(),
            exit_code=exit_code,
            log_text=server.log_text(),
            log_records=server.log_records(),
        )


pytestmark = pytest.mark.gunicorn


def test_one_product_read_is_one_trace_with_server_sql_and_redis_spans(
    traced_run: TracedRun,
) -> None:
    """The read's trace: exactly one SERVER span named after the route template, SQL
    and Redis CLIENT spans, every one of them a child of the server span."""
    assert traced_run.read.status_code == 200
    assert traced_run.read.headers["x-cache"] == "MISS"
    server = traced_run.server_span()
    assert server.name == f"GET {PRODUCT_ROUTE}"
    assert server.attributes["http.route"] == PRODUCT_ROUTE
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"].startswith("/api/v1/products/")
    children = [span for span in traced_run.trace(traced_run.trace_id) if span is not server]
    assert children
    assert all(span.kind == CLIENT for span in children)
    assert all(span.parent_span_id == server.span_id for span in children)
    systems = {_db_system(span) for span in children}
    assert systems == {"postgresql", "redis"}, [(s.name, s.attributes) for s in children]
    sql = [span for span in children if _db_system(span) == "postgresql"]
    assert any("SELECT" in _statement(span) for span in sql)
    redis_commands = sorted(span.name for span in children if _db_system(span) == "redis")
    # The rate limiter's script (a sampled request's goes through the traced client,
    # not the untraced pipeline), the cache lookup and the cache store after the miss.
    # Before storing, a worker looks at Redis's memory at most once a second
    # (app/cache.py): an INFO span when this worker's last look (the warm-up read's, if
    # it served that too) is older than that.
    assert [command for command in redis_commands if command != "INFO"] == [
        "EVALSHA",
        "EVALSHA",
        "MGET",
    ]
    assert redis_commands.count("INFO") <= 1


def test_database_and_redis_spans_use_the_stable_semantic_conventions(
    traced_run: TracedRun,
) -> None:
    """SQL and Redis spans carry the stable database attribute names (semconv 1.26+:
    db.system.name, db.namespace, db.query.text, server.address), not the old ones
    (db.system, db.name, db.statement, net.peer.name)."""
    server = traced_run.server_span()
    children = [span for span in traced_run.trace(traced_run.trace_id) if span is not server]
    for span in children:
        assert span.attributes.get("db.system.name") in ("postgresql", "redis"), span
        assert span.attributes.get("server.address") == "127.0.0.1", span
        old = {"db.system", "db.name", "db.statement", "net.peer.name"} & set(span.attributes)
        assert not old, (span.name, old)
    sql = [s for s in children if s.attributes["db.system.name"] == "postgresql"]
    assert all(s.attributes.get("db.namespace") for s in sql), [s.attributes for s in sql]
    assert any("SELECT" in str(s.attributes.get("db.query.text")) for s in sql)


def test_the_server_span_names_the_server_and_its_scheme(traced_run: TracedRun) -> None:
    """server.address and server.port from the Host header, url.scheme, the protocol."""
    attributes = traced_run.server_span().attributes
    assert attributes["server.address"] == "127.0.0.1"
    assert isinstance(attributes["server.port"], int)
    assert attributes["url.scheme"] == "http"
    assert attributes["network.protocol.version"] == "1.1"


def test_only_the_paging_parameters_keep_their_values_in_url_query() -> None:
    """Signed URLs' credentials (the conventions' list) and anything else a client sends
    (a token, say) are REDACTED; the API's own paging parameters are kept."""
    query = "limit=5&X-Goog-Signature=abc&sig=s3cr3t&token=t0k&cursor=aWQ6MQ&flag"
    assert redacted_query(query) == (
        "limit=5&X-Goog-Signature=REDACTED&sig=REDACTED&token=REDACTED&cursor=aWQ6MQ&flag"
    )


@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("shop.example:8443", "https", ("shop.example", 8443)),
        ("shop.example", "https", ("shop.example", 443)),
        ("[::1]:8000", "http", ("::1", 8000)),
        ("[::1]", "http", ("::1", 80)),
        ("host:99999999", "http", ("host", 80)),
        (None, "http", ("10.0.0.5", 8000)),
    ],
)
def test_server_address_comes_from_the_host_header_else_the_socket(
    host: str | None, scheme: str, expected: tuple[str, int]
) -> None:
    scope = {"scheme": scheme, "server": ("10.0.0.5", 8000)}
    attributes = server_address(host, scope)
    assert (attributes["server.address"], attributes["server.port"]) == expected


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "database,http"),
        ("http", "http,database"),
        ("database/dup", "database/dup,http"),
        ("http/dup, database", "http/dup,database"),
        ("gen_ai_latest_experimental", "gen_ai_latest_experimental,database,http"),
    ],
)
def test_the_stable_conventions_are_opted_in_unless_the_user_chose(
    before: str | None, after: str
) -> None:
    environ = {} if before is None else {"OTEL_SEMCONV_STABILITY_OPT_IN": before}
    opt_in_to_stable_database_conventions(environ)
    assert environ["OTEL_SEMCONV_STABILITY_OPT_IN"] == after


def test_incoming_traceparent_is_continued_and_returned_in_traceresponse(
    traced_run: TracedRun,
) -> None:
    """W3C trace context in, from a TRACE_CONTEXT_TRUSTED_CALLERS caller: the server
    span belongs to the caller's trace, its parent is the caller's span, the caller's
    "sampled" decision is kept (the default sampler samples only 10% of new traces).
    Out: `traceresponse` names our span. (Untrusted callers:
    tests/test_trace_context_trust.py.)"""
    server = traced_run.server_span()
    assert server.trace_id == traced_run.trace_id
    assert server.parent_span_id == traced_run.caller_span_id
    assert traced_run.read.headers["traceresponse"] == (
        f"00-{traced_run.trace_id}-{server.span_id}-01"
    )


def test_every_span_names_the_service_and_the_worker_that_made_it(
    traced_run: TracedRun,
) -> None:
    """Resource: service.name = SERVICE_NAME, the version, and the worker's pid (the
    provider is created in each worker after the fork, not in the master)."""
    read_spans = traced_run.trace(traced_run.trace_id)
    assert {span.resource["service.name"] for span in read_spans} == {traced_run.service_name}
    assert {span.resource["service.version"] for span in read_spans} == {__version__}
    [pid] = {span.resource["process.pid"] for span in read_spans}
    assert pid in traced_run.worker_pids


def test_spans_queued_at_sigterm_are_sent_before_the_master_exits(traced_run: TracedRun) -> None:
    """Nothing had been sent when SIGTERM arrived (the batch delay is ten minutes); after
    the master exited 0, every span of the read was there: the lifespan flushed them."""
    assert traced_run.received_before_sigterm == []
    assert traced_run.exit_code == 0
    assert len(traced_run.trace(traced_run.trace_id)) >= 4
    assert "dropped" not in traced_run.log_text


def test_unsampled_callers_and_probes_make_no_spans(traced_run: TracedRun) -> None:
    """A caller that did not sample -> no span of its trace. /health, /ready, /metrics ->
    no span of theirs, and none of the Postgres/Redis pings /ready makes. Every CLIENT
    span that arrived has its parent among the received spans (no orphans)."""
    assert traced_run.trace(traced_run.unsampled_trace_id) == []
    for path, trace_id in traced_run.excluded_trace_ids.items():
        assert traced_run.trace(trace_id) == [], path
    assert not [s for s in traced_run.spans if s.attributes.get("url.path") in EXCLUDED]
    span_ids = {span.span_id for span in traced_run.spans}
    orphans = [s for s in traced_run.spans if s.kind == CLIENT and s.parent_span_id not in span_ids]
    assert orphans == []


def test_access_log_line_leads_to_the_exported_trace(traced_run: TracedRun) -> None:
    """The read's access line is JSON with method, route template, path (without the
    query string), status, duration, client, the request id we sent (echoed in the
    response header) and the exported server span's trace and span ids."""
    line = traced_run.access_line(traced_run.trace_id)
    server = traced_run.server_span()
    assert line["span_id"] == server.span_id
    assert line["trace_sampled"] is True
    assert line["request_id"] == "trace-test-read-1"
    assert traced_run.read.headers["x-request-id"] == "trace-test-read-1"
    assert line["method"] == "GET"
    assert line["route"] == PRODUCT_ROUTE
    assert line["path"] == server.attributes["url.path"]
    assert line["status"] == 200
    assert line["duration_ms"] > 0
    assert line["client"] == "127.0.0.1"
    assert line["pid"] == server.resource["process.pid"]
    unsampled = traced_run.access_line(traced_run.unsampled_trace_id)
    assert unsampled["trace_sampled"] is False
    probes = [r for r in traced_run.log_records if r.get("path") in EXCLUDED]
    assert probes == [], "successful probes and scrapes are not access-logged"


def test_secrets_reach_neither_logs_nor_spans(traced_run: TracedRun) -> None:
    """The DATABASE_URL password, Authorization and X-API-Key values and a query-string
    token appear in no log line and no span or resource attribute."""
    exported = json.dumps([(s.attributes, s.resource) for s in traced_run.spans])
    for secret in SECRETS:
        assert secret not in traced_run.log_text, secret
        assert secret not in exported, secret


def _db_system(span: ReceivedSpan) -> str:
    return str(span.attributes.get("db.system.name") or span.attributes.get("db.system"))


def _statement(span: ReceivedSpan) -> str:
    return str(span.attributes.get("db.query.text") or span.attributes.get("db.statement"))


# --- without a collector ------------------------------------------------------------


def test_an_absent_collector_costs_a_counter_and_a_few_lines_never_a_request(
    native_stack: NativeStack, gunicorn: Callable[..., GunicornProcess]
) -> None:
    """Every request traced, exported every 100 ms to a port nobody listens on:
    1. the workers boot  2. 60 requests all answer 200  3. the failures are counted in
    dependency_errors_total{dependency="otel-collector"} and logged a bounded number of
    times  4. SIGTERM -> exit 0 within the shutdown budget, the queued spans dropped."""
    server = gunicorn(workers=2, env={**no_collector_env(), "OTEL_BSP_SCHEDULE_DELAY": "100"})
    with httpx.Client(base_url=server.base_url) as client:
        statuses = [client.get("/api/v1/products", params={"limit": 1}).status_code]
        deadline = time.monotonic() + 30
        while len(statuses) < 60 or not _export_errors(client):
            assert time.monotonic() < deadline, "no export failure counted"
            statuses.append(client.get("/api/v1/products", params={"limit": 1}).status_code)
    assert set(statuses) == {200}
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 20
    telemetry_lines = [
        r
        for r in server.log_records()
        if r["logger"].startswith(("opentelemetry", "app.telemetry")) and r["level"] != "INFO"
    ]
    assert telemetry_lines, "the failure is not logged at all"
    assert len(telemetry_lines) <= 12, [r["message"][:100] for r in telemetry_lines]


def test_no_collector_is_said_once_at_start_and_costs_the_shutdown_nothing(
    native_stack: NativeStack, gunicorn: Callable[..., GunicornProcess]
) -> None:
    """The native stack has no collector (issue 17, item 4):
    1. two workers start with the OTLP endpoint on a port nobody listens on
    -> each says so once at start
    2. a few traced requests, SIGTERM before any export was tried
    -> the lifespan shutdown does not spend its flush share (2 s) on retries."""
    server = gunicorn(workers=2, env=no_collector_env())
    with httpx.Client(base_url=server.base_url) as client:
        for _ in range(5):
            assert client.get("/api/v1/products", params={"limit": 1}).status_code == 200
    assert server.stop() == 0
    records = server.log_records()
    said = [r for r in records if "no OpenTelemetry collector answers" in r["message"]]
    assert len(said) == 2, [r["message"] for r in said]
    shutdowns = [r for r in records if r.get("shutdown_phase") == "lifespan_shutdown"]
    assert len(shutdowns) == 2
    assert all(r["phase_seconds"] < 1.0 for r in shutdowns), shutdowns


def no_collector_env() -> dict[str, str]:
    """Every request traced, exported over OTLP to a port nobody listens on."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def _export_errors(client: httpx.Client) -> float:
    samples = parse_metrics(client.get("/metrics").text)
    return sample_sum(samples, "dependency_errors_total", dependency="otel-collector")


# --- in-process ---------------------------------------------------------------------


@pytest.fixture
def context_records() -> Iterator[list[logging.LogRecord]]:
    """Log records of the app, seen through the same RequestContextFilter as stderr."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield records
    root.removeHandler(handler)
    root.setLevel(previous)


async def test_log_lines_during_a_request_carry_its_request_and_trace_ids(
    make_settings: Callable[..., Settings], context_records: list[logging.LogRecord]
) -> None:
    """A route that logs a warning, called by a trusted caller with a sampled
    `traceparent` and a request id -> the warning record has that request id, the trace
    id and the server span's id (the ones in `traceresponse`); a line logged outside any
    request has none of them."""
    app = create_app(make_settings(TRACE_CONTEXT_TRUSTED_CALLERS="127.0.0.1"))

    @app.get("/test-logs")
    async def logs_something() -> dict[str, str]:
        logging.getLogger("app.test").warning("inside the request")
        return {}

    trace_id = secrets.token_hex(16)
    async with asgi_client(app) as client:
        response = await client.get(
            "/test-logs",
            headers={
                "traceparent": traceparent(trace_id, "12" * 8, True),
                "X-Request-ID": "ctx-test-1",
            },
        )
    logging.getLogger("app.test").warning("outside any request")
    _, returned_trace, span_id, _ = response.headers["traceresponse"].split("-")
    [inside] = [r for r in context_records if r.getMessage() == "inside the request"]
    assert (inside.request_id, inside.trace_id, inside.span_id) == (  # type: ignore[attr-defined]
        "ctx-test-1",
        trace_id,
        span_id,
    )
    assert returned_trace == trace_id
    [outside] = [r for r in context_records if r.getMessage() == "outside any request"]
    assert not hasattr(outside, "request_id")
    assert not hasattr(outside, "trace_id")


async def test_an_unhandled_error_is_a_500_that_still_carries_the_request_id(
    settings: Settings, context_records: list[logging.LogRecord]
) -> None:
    """A route raises -> 500 problem+json with the request's X-Request-ID; the traceback
    the server logs after the app gave up (as Uvicorn does) carries the request and trace
    ids; the access line says 500."""
    app = create_app(settings)

    @app.get("/test-boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    async with LifespanManager(app) as manager:

        async def like_uvicorn(scope: Any, receive: Any, send: Any) -> None:
            # uvicorn's RequestResponseCycle.run_asgi: log what the app raised, same task.
            try:
                await manager.app(scope, receive, send)
            except Exception as exc:
                logging.getLogger("uvicorn.error").error(
                    "Exception in ASGI application", exc_info=exc
                )

        transport = httpx.ASGITransport(like_uvicorn)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/test-boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "boom-1"
    assert response.headers["x-content-type-options"] == "nosniff"  # as on every answer
    assert response.headers["cache-control"] == "no-store"
    [traceback] = [r for r in context_records if r.getMessage() == "Exception in ASGI application"]
    assert traceback.request_id == "boom-1"  # type: ignore[attr-defined]
    assert re.fullmatch(r"[0-9a-f]{32}", traceback.trace_id)  # type: ignore[attr-defined]
    [access] = [r for r in context_records if r.name == "app.access"]
    assert access.status == 500  # type: ignore[attr-defined]
    assert access.route == "/test-boom"  # type: ignore[attr-defined]


async def test_tracing_switched_off_makes_no_spans_and_no_trace_ids(
    make_settings: Callable[..., Settings], context_records: list[logging.LogRecord]
) -> None:
    """OTEL_SDK_DISABLED=true -> no `traceresponse`, access lines with null trace ids;
    request ids and metrics unaffected."""
    async with app_client(make_settings(OTEL_SDK_DISABLED=True)) as client:
        response = await client.get(
            "/api/v1/products", headers={"traceparent": traceparent("ef" * 16, "12" * 8, True)}
        )
    assert response.status_code == 200
    assert "traceresponse" not in response.headers
    assert response.headers["x-request-id"]
    [access] = [r for r in context_records if r.name == "app.access"]
    assert access.trace_id is None  # type: ignore[attr-defined]
    assert access.trace_sampled is False  # type: ignore[attr-defined]


# --- deployment -----------------------------------------------------------------------


def test_compose_and_kubernetes_send_spans_to_the_collectors_otlp_http_port() -> None:
    """The exporter speaks OTLP over HTTP: wherever the endpoint is configured it must be
    the collector's HTTP port 4318 (4317 is gRPC and would fail every export)."""
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    endpoints = [
        service.get("environment", {}).get("OTEL_EXPORTER_OTLP_ENDPOINT")
        for service in compose["services"].values()
        if isinstance(service.get("environment"), dict)
    ]
    kustomization = (REPO_ROOT / "k8s" / "kustomization.yaml").read_text()
    endpoints += re.findall(r"OTEL_EXPORTER_OTLP_ENDPOINT=(\S+)", kustomization)
    endpoints = [endpoint for endpoint in endpoints if endpoint]
    assert len(endpoints) >= 2, "no OTLP endpoint configured in compose.yaml or k8s/"
    assert all(endpoint.rstrip("/").endswith(":4318") for endpoint in endpoints), endpoints


async def test_access_log_can_be_switched_off(
    make_settings: Callable[..., Settings], context_records: list[logging.LogRecord]
) -> None:
    """ACCESS_LOG_ENABLED=false -> no app.access line; other lines and ids unaffected."""
    async with app_client(make_settings(ACCESS_LOG_ENABLED=False)) as client:
        response = await client.get("/api/v1/products")
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    assert not [r for r in context_records if r.name == "app.access"]


# --- the unsampled path --------------------------------------------------------------


def ratio_tracing(ratio: float, monkeypatch: pytest.MonkeyPatch) -> Tracing:
    """Tracing as a worker starts it with the default sampler at `ratio`, spans kept in
    memory."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", str(ratio))
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    tracing = start_tracing(Settings(OTEL_SDK_DISABLED=False))
    assert tracing is not None
    assert tracing.root_sampling_bound is not None
    return tracing


def sdk_server_span(tracing: Tracing) -> trace.Span:
    """The server span the SDK alone makes for a new root."""
    return tracing.tracer.start_span("GET", context=Context(), kind=trace.SpanKind.SERVER)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_a_new_root_is_the_span_the_sdk_would_make(
    ratio: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unsampled roots are made without the SDK's sampler: from the same random state
    they have the ids and flags the SDK gives (the trace id random: flag 0x02) and do
    not record; sampled ones are the SDK's own recording span, same ids."""
    tracing = ratio_tracing(ratio, monkeypatch)
    random.seed(1234)
    expected = sdk_server_span(tracing)
    random.seed(1234)
    span, context = tracing.start_server_span("GET", None, "127.0.0.1")
    assert span.get_span_context() == expected.get_span_context()
    assert span.is_recording() is expected.is_recording() is (ratio == 1.0)
    assert type(span) is type(expected)
    assert trace.get_current_span(context) is span
    assert span.get_span_context().trace_flags == (0x03 if ratio == 1.0 else 0x02)
    # The trace id chosen for a sampled root is not left behind for the next one.
    assert tracing.ids is not None
    assert tracing.ids.generate_trace_id() != span.get_span_context().trace_id


def test_the_ratio_decides_as_the_sdk_sampler_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the default 10%, over many roots: each one's decision is the SDK sampler's on
    its trace id, and children of an unsampled root are not recorded."""
    tracing = ratio_tracing(0.1, monkeypatch)
    sampler = TraceIdRatioBased(0.1)
    sampled = 0
    for _ in range(2000):
        span, context = tracing.start_server_span("GET", None, None)
        span_context = span.get_span_context()
        decision = sampler.should_sample(None, span_context.trace_id, "GET").decision
        keep = decision is Decision.RECORD_AND_SAMPLE
        assert span.is_recording() is keep
        assert span_context.trace_flags.sampled is keep
        child = tracing.tracer.start_span("SELECT", context=context)
        assert child.is_recording() is keep
        assert child.get_span_context().trace_id == span_context.trace_id
        sampled += keep
    assert 100 < sampled < 300


async def test_an_unsampled_request_returns_and_logs_its_trace_ids(
    make_settings: Callable[..., Settings],
    context_records: list[logging.LogRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ratio 0: every request unsampled, yet, as before, `traceresponse` names its trace
    (flags 02: not sampled, random trace id) and the access line carries the same ids."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    async with app_client(make_settings()) as client:
        response = await client.get("/api/v1/products")
    version, trace_id, span_id, flags = response.headers["traceresponse"].split("-")
    assert (version, flags) == ("00", "02")
    [access] = [r for r in context_records if r.name == "app.access"]
    assert (access.trace_id, access.span_id) == (trace_id, span_id)  # type: ignore[attr-defined]
    assert access.trace_sampled is False  # type: ignore[attr-defined]
