"""Dependency faults for real: a Gunicorn with 2 workers on its own throwaway Postgres
and Redis (parity.harness.throwaway), under a steady load (parity.harness.load.Load),
while the test stops, hangs and restarts them. Both URLs carry passwords, and the
last step of each test greps the server's log and the answers for them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from parity.commands.chaos import DB_ROUTES, wait_ready
from parity.harness.load import Load, Sample, cycle, default_requests
from parity.harness.stack import GunicornProcess, NativeStack
from parity.harness.throwaway import TemporaryPostgres, TemporaryRedis

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

PG_SECRET = "pg-Secret-4f9c1e"  # trust auth ignores it, but it is in DATABASE_URL
REDIS_SECRET = "redis-Secret-8b27d0"  # redis-server requires it
API_KEY = "api-Key-Secret-61ad93"  # sent by the clients as X-API-Key
READINESS_PERIOD = 5  # k8s/deployment.yaml: readinessProbe.periodSeconds


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[TemporaryPostgres, TemporaryRedis, NativeStack]]:
    with TemporaryPostgres() as postgres, TemporaryRedis(password=REDIS_SECRET) as redis:
        url = postgres.database_url("app").replace("postgres@", f"postgres:{PG_SECRET}@")
        stack = NativeStack(
            database_url=url,
            env={
                "REDIS_URL": redis.url,
                "REDIS_KEY_PREFIX": "outages:",
                "LOG_LEVEL": "info",
                # The whole service, limiter included, with quotas the load cannot reach.
                "RATE_LIMIT_ENABLED": "true",
                "RATE_LIMIT_DEFAULT": "1000000/60s",
                "RATE_LIMIT_ROUTES": "writes=1000000/60s POST,PUT,PATCH,DELETE /api/",
                "REDIS_BREAKER_RESET_SECONDS": "1",
            },
        )
        stack.prepare(products=20)
        yield postgres, redis, stack


@pytest.fixture
def stack(
    servers: tuple[TemporaryPostgres, TemporaryRedis, NativeStack],
) -> tuple[TemporaryPostgres, TemporaryRedis, NativeStack]:
    """The module's servers, running again whatever the previous test left stopped."""
    postgres, redis, native = servers
    if not postgres.is_running():
        postgres.start()
    if redis.process is None:
        redis.start()
    redis.resume()
    return postgres, redis, native


def load_for(server: GunicornProcess) -> Load:
    page = httpx.get(f"{server.base_url}/api/v1/products", params={"limit": 3}, timeout=10)
    ids = [item["id"] for item in page.json()["items"]]
    return Load(
        server.base_url,
        cycle(default_requests(ids)),
        concurrency=3,
        headers={"X-API-Key": API_KEY},
    )


def errors(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.status == 0 or s.status >= 500]


def assert_no_secrets(server: GunicornProcess, *bodies: str) -> None:
    """Neither the log of master and workers nor any answer we kept mentions a secret."""
    texts = {"log": server.log_text(), **{f"answer {i}": b for i, b in enumerate(bodies)}}
    for where, text in texts.items():
        for secret in (PG_SECRET, REDIS_SECRET, API_KEY):
            assert secret not in text, f"{secret} leaked into the {where}"


def test_postgres_stopped_mid_load_fails_fast_and_recovers_without_restart(
    stack: tuple[TemporaryPostgres, TemporaryRedis, NativeStack],
) -> None:
    """1. load on every route  2. Postgres stopped  -> /ready 503 within one probe
    period; database routes answer 503 problems with Retry-After, each in < 2 s, no
    hang, no connection error; /health 200; master and workers are the same processes
    3. Postgres started  -> ready again with no restart, and 0 errors from then on."""
    postgres, _, native = stack
    with native.start_gunicorn(workers=2) as server:
        processes = (server.pid, sorted(server.worker_pids()))
        with load_for(server) as load:
            time.sleep(2)
            stopped_at = time.monotonic()
            postgres.stop()
            not_ready = poll(server, "/ready", 503, timeout=READINESS_PERIOD + 5)
            not_ready_after = time.monotonic() - stopped_at
            time.sleep(3)
            health = httpx.get(server.base_url + "/health", timeout=5)
            problem = httpx.get(server.base_url + "/api/v1/products", timeout=5)
            restarted_at = time.monotonic()
            postgres.start()
            wait_ready(server.base_url, timeout=30)
            ready_at = time.monotonic()
            time.sleep(3)
        outage = load.between(stopped_at, restarted_at)
        after = load.between(ready_at, time.monotonic())
        assert (server.pid, sorted(server.worker_pids())) == processes
        assert server.process.poll() is None

    assert not_ready_after < READINESS_PERIOD, not_ready_after
    assert not_ready.json()["checks"]["database"]["status"] == "error"
    assert health.status_code == 200
    assert problem.status_code == 503
    assert problem.headers["retry-after"] == "2"
    assert problem.json()["type"] == "urn:parity:problem:dependency-unavailable"

    db_answers = [s for s in outage if s.label in DB_ROUTES]
    assert len([s for s in db_answers if s.status == 503]) >= 10, db_answers[:5]
    assert all(s.retry_after for s in outage if s.status == 503)
    assert not [s for s in outage if s.status == 0 or (s.status >= 500 and s.status != 503)]
    assert max(s.latency for s in outage) < 2, "a request hung on the stopped database"
    assert {s.status for s in outage if s.label == "health"} == {200}
    assert after, "no request after the recovery"
    assert errors(after) == [], errors(after)[:3]
    assert_no_secrets(server, not_ready.text, problem.text, health.text)


def test_redis_stopped_or_hung_still_serves_everything_and_resumes(
    stack: tuple[TemporaryPostgres, TemporaryRedis, NativeStack],
) -> None:
    """1. load  2. Redis stopped  -> every request still served (reads from Postgres
    with X-Cache: BYPASS, the limiter fails open: no RateLimit field), /ready 200 with
    Redis reported down, nothing slower than 2 s  3. Redis started  -> cache and limiter
    resume by themselves  4. Redis hung (SIGSTOP)  -> the same, no hang  5. resumed."""
    _, redis, native = stack
    with native.start_gunicorn(workers=2) as server:
        with load_for(server) as load:
            time.sleep(1)
            redis.stop()
            stopped_at = time.monotonic()  # after the process is gone: no HIT in flight
            time.sleep(3)
            ready_without_redis = httpx.get(server.base_url + "/ready", timeout=5)
            bypass = httpx.get(server.base_url + "/api/v1/products/1", timeout=5)
            started_at = time.monotonic()
            redis.start()
            resumed = poll_until(server, lambda r: "ratelimit" in r.headers, timeout=10)
            back_at = time.monotonic()
            time.sleep(2)
            hung_at = time.monotonic()
            redis.pause()
            time.sleep(3)
            redis.resume()
            resumed_at = time.monotonic()
            after_hang = poll_until(server, lambda r: r.headers.get("x-cache") == "HIT", 10)
            time.sleep(1)
        down = load.between(stopped_at, started_at)
        back = load.between(back_at, hung_at)
        hung = load.between(hung_at, resumed_at)

    for phase in (down, back, hung):
        assert phase, "no request in a phase"
        assert errors(phase) == [], errors(phase)[:3]
        assert max(s.latency for s in phase) < 2
    assert {s.cache for s in down if s.label == "read"} == {"BYPASS"}
    assert any(s.cache == "BYPASS" for s in hung if s.label == "read")
    assert ready_without_redis.status_code == 200
    assert ready_without_redis.json()["checks"]["redis"]["status"] == "error"
    assert bypass.headers["x-cache"] == "BYPASS"
    assert "ratelimit" not in bypass.headers  # failed open
    assert resumed.headers["x-cache"] in {"MISS", "HIT"}
    assert after_hang.headers["x-cache"] == "HIT"
    assert_no_secrets(server, ready_without_redis.text, bypass.text)


def test_server_boots_with_postgres_down_and_becomes_ready_when_it_appears(
    stack: tuple[TemporaryPostgres, TemporaryRedis, NativeStack],
) -> None:
    """1. Postgres stopped  2. Gunicorn started  -> master and workers stay up, /health
    200, /ready 503 (a failing worker boot would halt the master)  3. Postgres started
    -> /ready 200 and the API works, same worker processes."""
    postgres, _, native = stack
    postgres.stop()
    with native.start_gunicorn(workers=2, ready_path="/health") as server:
        workers = sorted(server.worker_pids())
        not_ready = httpx.get(server.base_url + "/ready", timeout=5)
        postgres.start()
        wait_ready(server.base_url, timeout=30)
        products = httpx.get(server.base_url + "/api/v1/products", timeout=5)
        assert sorted(server.worker_pids()) == workers
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["database"]["status"] == "error"
    assert products.status_code == 200
    assert_no_secrets(server, not_ready.text)


def poll(server: GunicornProcess, path: str, status: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(server.base_url + path, timeout=5)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        time.sleep(0.1)


def poll_until(
    server: GunicornProcess, ok: Callable[[httpx.Response], bool], timeout: float
) -> httpx.Response:
    """GET a product until `ok(response)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(
            server.base_url + "/api/v1/products/1", headers={"X-API-Key": API_KEY}, timeout=5
        )
        if ok(response) or time.monotonic() > deadline:
            assert ok(response), (response.status_code, dict(response.headers))
            return response
        time.sleep(0.1)
