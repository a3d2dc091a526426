"""The Redis circuit breaker: its state machine, and what it buys with a really hung
Redis (SIGSTOP on a throwaway redis-server): one timeout per interval, not per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from app.breaker import CircuitBreaker
from app.settings import Settings
from parity.harness.throwaway import TemporaryRedis
from tests.helpers import app_client, create_product


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_lets_one_trial_through_per_interval() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", failure_threshold=3, reset_after=5, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.is_open
    assert not breaker.allow()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow(), "the trial call after reset_after"
    assert not breaker.allow(), "only one trial per interval"
    breaker.record_failure()  # the trial failed: rest another full interval
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()
    breaker.record_success()
    assert not breaker.is_open
    assert breaker.allow()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def redis_server() -> Iterator[TemporaryRedis]:
    with TemporaryRedis() as server:
        yield server


async def test_a_hung_redis_costs_one_timeout_per_interval_not_per_request(
    make_settings: Callable[..., Settings], redis_server: TemporaryRedis
) -> None:
    """1. product cached  2. Redis hung (SIGSTOP)  3. 20 reads -> all 200 BYPASS from
    Postgres; only the first 3 wait REDIS_TIMEOUT_SECONDS, the rest skip Redis; counted
    as bypass lookups and 3 dependency errors  4. Redis resumed -> after
    REDIS_BREAKER_RESET_SECONDS a read uses the cache again."""
    settings = make_settings(
        REDIS_URL=redis_server.url,
        REDIS_TIMEOUT_SECONDS=0.3,
        REDIS_BREAKER_FAILURES=3,
        REDIS_BREAKER_RESET_SECONDS=1,
    )
    async with app_client(settings) as client:
        product = await create_product(client)
        path = f"/api/v1/products/{product['id']}"
        await client.get(path)
        assert (await client.get(path)).headers["x-cache"] == "HIT"
        bypass_before = counter("cache_lookups_total", cache="product", result="bypass")
        errors_before = counter(
            "dependency_errors_total", dependency="redis", operation="cache_lookup"
        )
        redis_server.pause()
        try:
            latencies, caches = [], set()
            for _ in range(20):
                started = time.monotonic()
                response = await client.get(path)
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200
                caches.add(response.headers["x-cache"])
        finally:
            redis_server.resume()
        bypassed = counter("cache_lookups_total", cache="product", result="bypass") - bypass_before
        errors = (
            counter("dependency_errors_total", dependency="redis", operation="cache_lookup")
            - errors_before
        )
        await asyncio.sleep(1.1)  # the breaker's rest: the next read is the trial
        await client.get(path)
        recovered = await client.get(path)
    assert caches == {"BYPASS"}
    assert (bypassed, errors) == (20, 3)
    assert sum(latency >= 0.25 for latency in latencies) == 3, latencies
    assert recovered.headers["x-cache"] == "HIT"
