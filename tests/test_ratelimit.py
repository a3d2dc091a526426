"""RateLimitMiddleware in the app (in process, real Redis and Postgres): policies,
identities, the 429 and the RateLimit fields, exemptions, and Redis failing for real
(a throwaway redis-server stopped, started, and frozen with SIGSTOP)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import REGISTRY
from redis import Redis

from app.client_identity import client_identity, key_hash
from app.main import create_app
from app.settings import Settings
from parity.harness.throwaway import TemporaryRedis
from tests.conftest import REDIS_URL
from tests.helpers import run

PRODUCTS = "/api/v1/products?limit=1"
MakeSettings = Callable[..., Settings]


@pytest.fixture
def limited(make_settings: MakeSettings, redis_prefix: str) -> Callable[..., Settings]:
    """Settings with the limiter on, small policies and a key prefix of the test's own."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "RATE_LIMIT_ENABLED": True,
            "REDIS_KEY_PREFIX": f"{redis_prefix}{uuid.uuid4().hex[:8]}:",
            "RATE_LIMIT_DEFAULT": "3/60s",
            "RATE_LIMIT_ROUTES": "writes=2/60s POST,PATCH /api/",
            # The Redis circuit breaker would skip calls for REDIS_BREAKER_RESET_SECONDS
            # after 3 failures; these tests probe the limiter's own fail-open/closed
            # and recovery, tests/test_breaker.py and tests/test_outages.py the breaker.
            "REDIS_BREAKER_FAILURES": 1000,
        }
        return make_settings(**{**values, **overrides})

    return make


@asynccontextmanager
async def client_at(
    settings: Settings, address: str = "203.0.113.7"
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app built from `settings`, connecting from `address`."""
    async with LifespanManager(create_app(settings)) as manager:
        transport = httpx.ASGITransport(manager.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def decisions(policy: str, outcome: str) -> float:
    labels = {"policy": policy, "outcome": outcome}
    return REGISTRY.get_sample_value("ratelimit_decisions_total", labels) or 0.0


# --- Policies, fields and the 429 -------------------------------------------------------


async def test_allowed_answers_carry_the_policy_and_the_remaining_quota(
    limited: MakeSettings,
) -> None:
    async with client_at(limited()) as client:
        responses = [await client.get(PRODUCTS) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert {r.headers["ratelimit-policy"] for r in responses} == {'"default";q=3;w=60'}
    assert [r.headers["ratelimit"] for r in responses] == [
        '"default";r=2;t=60',
        '"default";r=1;t=60',
        '"default";r=0;t=60',
    ]


async def test_over_the_quota_is_a_429_problem_with_retry_after(limited: MakeSettings) -> None:
    before = decisions("default", "limited")
    async with client_at(limited()) as client:
        for _ in range(3):
            await client.get(PRODUCTS)
        response = await client.get(PRODUCTS)
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "urn:parity:problem:rate-limited",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "more than 3 requests in 60 s (policy 'default'); retry in 60 s",
        "instance": "/api/v1/products",
    }
    assert response.headers["retry-after"] == "60"
    assert response.headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert response.headers["ratelimit"] == '"default";r=0;t=60'
    assert decisions("default", "limited") == before + 1


async def test_writes_have_their_own_stricter_policy_and_quota(limited: MakeSettings) -> None:
    """POST under /api/ counts against `writes` (2/60s), GET against `default` (3/60s):
    running out of one leaves the other untouched."""
    async with client_at(limited()) as client:
        writes = [await client.post("/api/v1/products", json={}) for _ in range(3)]
        read = await client.get(PRODUCTS)
    assert [r.status_code for r in writes] == [422, 422, 429]  # counted even when invalid
    assert writes[0].headers["ratelimit-policy"] == '"writes";q=2;w=60'
    assert writes[2].json()["detail"].startswith("more than 2 requests in 60 s (policy 'writes')")
    assert read.status_code == 200
    assert read.headers["ratelimit"] == '"default";r=2;t=60'


async def test_probe_and_scrape_paths_are_exempt_unless_configured_otherwise(
    limited: MakeSettings,
) -> None:
    async with client_at(limited()) as client:
        health = [await client.get("/health") for _ in range(10)]
    assert {r.status_code for r in health} == {200}
    assert not any("ratelimit" in r.headers for r in health)

    async with client_at(limited(RATE_LIMIT_EXEMPT_PATHS="/ready")) as client:
        statuses = [(await client.get("/health")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_switched_off_the_middleware_is_not_there(limited: MakeSettings) -> None:
    async with client_at(limited(RATE_LIMIT_ENABLED=False)) as client:
        responses = [await client.get(PRODUCTS) for _ in range(5)]
    assert {r.status_code for r in responses} == {200}
    assert not any("ratelimit" in r.headers for r in responses)


# --- Identity ---------------------------------------------------------------------------


ISSUED = ("alice-key", "bob-key")
ISSUED_HASHES = ",".join(key_hash(key.encode()) for key in ISSUED)


async def test_each_issued_api_key_has_its_own_quota_whatever_the_address(
    limited: MakeSettings,
) -> None:
    settings = limited(RATE_LIMIT_API_KEY_HASHES=ISSUED_HASHES)
    async with (
        client_at(settings, "203.0.113.1") as first,
        client_at(settings, "203.0.113.2") as second,
    ):
        alice = [
            (await client.get(PRODUCTS, headers={"X-API-Key": "alice-key"})).status_code
            for client in (first, second, first, second)
        ]
        bob = (await first.get(PRODUCTS, headers={"X-API-Key": "bob-key"})).status_code
        anonymous = (await first.get(PRODUCTS)).status_code
    assert alice == [200, 200, 200, 429]  # one quota across both addresses
    assert bob == 200
    assert anonymous == 200  # the address's own quota is untouched by the keyed requests


async def test_a_key_that_was_not_issued_counts_against_the_address(
    limited: MakeSettings,
) -> None:
    """Issue 18: a made-up key per request got 150 of 150 requests through a quota of
    100. 1. a new unknown key on each of 4 requests -> the address's quota, 3 allowed
    2. an issued key from the same address -> its own quota, allowed."""
    settings = limited(RATE_LIMIT_API_KEY_HASHES=ISSUED_HASHES)
    async with client_at(settings) as client:
        rotating = [
            (await client.get(PRODUCTS, headers={"X-API-Key": f"made-up-{i}"})).status_code
            for i in range(4)
        ]
        issued = await client.get(PRODUCTS, headers={"X-API-Key": "alice-key"})
    assert rotating == [200, 200, 200, 429]
    assert issued.status_code == 200


async def test_the_raw_api_key_is_never_written_to_redis(limited: MakeSettings) -> None:
    secret = f"sk-live-{uuid.uuid4().hex}"
    settings = limited(RATE_LIMIT_API_KEY_HASHES=key_hash(secret.encode()))
    async with client_at(settings) as client:
        await client.get(PRODUCTS, headers={"X-API-Key": secret})
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [k.decode() for k in redis.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*")]
        values = [v.decode() for k in keys for v in redis.lrange(k, 0, -1)]
    finally:
        redis.close()
    assert len(keys) == 1
    assert keys[0].startswith(f"{settings.REDIS_KEY_PREFIX}ratelimit:default:key:")
    assert not any(secret in text for text in [*keys, *values])


async def test_with_the_key_header_switched_off_clients_are_told_apart_by_address(
    limited: MakeSettings,
) -> None:
    settings = limited(RATE_LIMIT_KEY_HEADER="", RATE_LIMIT_API_KEY_HASHES=ISSUED_HASHES)
    async with client_at(settings) as client:
        statuses = [
            (await client.get(PRODUCTS, headers={"X-API-Key": "alice-key"})).status_code
            for _ in range(4)
        ]
        anonymous = (await client.get(PRODUCTS)).status_code
    assert statuses == [200, 200, 200, 429]
    assert anonymous == 429  # the same client: its address


def scope_from(host: str) -> dict[str, Any]:
    return {"type": "http", "headers": [], "client": (host, 1)}


def test_ipv6_clients_are_grouped_by_their_64_prefix() -> None:
    """One host usually owns a whole /64 and could rotate through it."""
    none: frozenset[str] = frozenset()
    first = client_identity(scope_from("2001:db8:1:2:aaaa::1"), None, none)
    assert first == client_identity(scope_from("2001:db8:1:2:ffff::9"), None, none)
    assert first == "ip:2001:db8:1:2::/64"
    assert first != client_identity(scope_from("2001:db8:1:3::1"), None, none)
    assert client_identity(scope_from("::ffff:198.51.100.4"), None, none) == "ip:198.51.100.4"
    unknown = {"type": "http", "headers": [], "client": None}
    assert client_identity(unknown, None, none) == "ip:unknown"


def test_an_issued_key_is_its_hash_and_an_unknown_or_empty_key_is_the_address() -> None:
    header = b"x-api-key"
    issued = frozenset({key_hash(b"abc")})

    def with_key(value: bytes) -> dict[str, Any]:
        return {"type": "http", "headers": [(header, value)], "client": ("192.0.2.1", 1)}

    assert client_identity(with_key(b"abc"), header, issued) == (
        "key:ba7816bf8f01cfea414140de5dae2223"
    )
    assert client_identity(with_key(b"abd"), header, issued) == "ip:192.0.2.1"
    assert client_identity(with_key(b""), header, issued) == "ip:192.0.2.1"
    assert client_identity(with_key(b"abc"), header, frozenset()) == "ip:192.0.2.1"


def test_issuing_a_key_prints_it_with_the_hash_the_server_accepts() -> None:
    """`python -m app.client_identity 2` -> two `KEY HASH` lines; the hashes configure a
    server, and each key then is its own client."""
    result = run(
        [sys.executable, "-m", "app.client_identity", "2"],
        timeout=30, check=True,
    )  # fmt: skip
    issued = [line.split() for line in result.stdout.splitlines()]
    assert len(issued) == 2
    assert issued[0][0] != issued[1][0]
    hashes = ",".join(digest for _, digest in issued)
    settings = Settings(RATE_LIMIT_API_KEY_HASHES=hashes)
    for key, digest in issued:
        scope = {"type": "http", "headers": [(b"x-api-key", key.encode())], "client": None}
        identity = client_identity(scope, b"x-api-key", settings.rate_limit_api_key_hashes)
        assert identity == "key:" + digest[:32]


def test_a_key_pasted_in_place_of_its_hash_is_refused_without_echoing_it() -> None:
    result = run(
        [sys.executable, "-c", "from app.settings import load_settings; load_settings()"],
        timeout=30, env={**os.environ, "RATE_LIMIT_API_KEY_HASHES": "pk_live-secret-key"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "RATE_LIMIT_API_KEY_HASHES: must be SHA-256 hex digests" in result.stderr
    assert "pk_live-secret-key" not in result.stderr


def test_a_host_that_is_no_address_still_makes_a_bounded_identity() -> None:
    identity = client_identity(scope_from("x" * 500), None, frozenset())
    assert identity.startswith("ip:sha256:")
    assert len(identity) <= 64


# --- Redis unavailable, slow, and back -------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[TemporaryRedis]:
    with TemporaryRedis() as server:
        yield server


async def test_fail_open_admits_this_workers_share_logs_once_and_recovers(
    limited: MakeSettings, redis_server: TemporaryRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Failing open is never unlimited (issue 18, item 2). With one worker its share is
    the whole quota (3/60s): 1. Redis stopped  2. 5 requests  -> 3 answered 200 without
    RateLimit fields (counted fail_open), then 429 problems with Retry-After (counted
    limited), one warning logged  3. Redis started again  -> limited by Redis again
    within a few requests, with no restart of the app."""
    settings = limited(REDIS_URL=redis_server.url, GUNICORN_WORKERS=1)
    open_before = decisions("default", "fail_open")
    limited_before = decisions("default", "limited")
    async with client_at(settings) as client:
        assert (await client.get(PRODUCTS)).headers["ratelimit"] == '"default";r=2;t=60'
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="app.ratelimit"):
            during = [await client.get(PRODUCTS) for _ in range(5)]
        counted_open = decisions("default", "fail_open") - open_before
        counted_limited = decisions("default", "limited") - limited_before
        redis_server.start()  # empty: the log of the first request is gone
        after = [await client.get(PRODUCTS) for _ in range(6)]
    assert [r.status_code for r in during] == [200, 200, 200, 429, 429]
    assert not any("ratelimit" in r.headers for r in during)
    refused = during[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:parity:problem:rate-limited"
    assert refused.json()["detail"] == (
        "more than 3 requests in 60 s on this worker while the shared limiter is "
        f"unavailable (policy 'default'); retry in {refused.headers['retry-after']} s"
    )
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert (counted_open, counted_limited) == (3, 2)
    warnings = [r for r in caplog.records if r.name == "app.ratelimit"]
    assert len(warnings) == 1
    assert "fail_open" in warnings[0].getMessage()
    checked = [r for r in after if "ratelimit" in r.headers]
    assert len(checked) >= 4, "the limiter did not come back by itself"
    assert checked[-1].status_code == 429


async def test_failing_open_each_worker_admits_quota_divided_by_workers(
    limited: MakeSettings, redis_server: TemporaryRedis
) -> None:
    """With GUNICORN_WORKERS=2 a worker's share of 3/60s is 1 (rounded down, so a
    replica never admits more than the quota): Redis stopped  -> 1 request admitted,
    the next refused. (tests/test_ratelimit_lag.py shows it across real workers.)"""
    settings = limited(REDIS_URL=redis_server.url, GUNICORN_WORKERS=2)
    async with client_at(settings) as client:
        redis_server.stop()
        statuses = [(await client.get(PRODUCTS)).status_code for _ in range(3)]
    assert statuses == [200, 429, 429]


async def test_a_policy_marked_fail_closed_answers_503_while_failing_open_elsewhere(
    limited: MakeSettings, redis_server: TemporaryRedis
) -> None:
    """The default routes mark writes `fail=closed` (an unchecked write costs a
    transaction): Redis stopped  -> POST /api/v1/products is a 503 problem with
    Retry-After before the route runs, while reads fail open within the local share."""
    settings = limited(
        REDIS_URL=redis_server.url,
        GUNICORN_WORKERS=1,
        RATE_LIMIT_ROUTES=Settings.model_fields["RATE_LIMIT_ROUTES"].default,
    )
    closed_before = decisions("writes", "fail_closed")
    async with client_at(settings) as client:
        redis_server.stop()
        write = await client.post("/api/v1/products", json={})
        read = await client.get(PRODUCTS)
    assert write.status_code == 503
    assert write.headers["retry-after"] == "1"
    assert write.json()["type"] == "urn:parity:problem:dependency-unavailable"
    assert decisions("writes", "fail_closed") == closed_before + 1
    assert read.status_code == 200


async def test_fail_closed_answers_503_problem_while_redis_is_down(
    limited: MakeSettings, redis_server: TemporaryRedis
) -> None:
    closed_before = decisions("default", "fail_closed")
    async with client_at(limited(REDIS_URL=redis_server.url, RATE_LIMIT_FAIL_OPEN=False)) as c:
        redis_server.stop()
        down = await c.get(PRODUCTS)
        redis_server.start()
        back = [await c.get(PRODUCTS) for _ in range(3)]
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/problem+json"
    assert down.headers["retry-after"] == "1"
    assert down.json()["type"] == "urn:parity:problem:dependency-unavailable"
    assert down.json()["detail"] == "the rate limiter is unavailable; retry later"
    assert decisions("default", "fail_closed") == closed_before + 1
    assert back[-1].status_code == 200
    assert "ratelimit" in back[-1].headers


async def test_a_frozen_redis_costs_a_request_no_more_than_the_timeout(
    limited: MakeSettings, redis_server: TemporaryRedis
) -> None:
    """1. redis-server frozen (SIGSTOP: connections accepted, nothing answered)
    2. requests  -> answered (fail-open, within the local share) after about
    REDIS_TIMEOUT_SECONDS, not hung (the client's own, looser socket timeout never
    comes into play)  3. SIGCONT  -> limited again."""
    assert redis_server.process is not None
    settings = limited(REDIS_URL=redis_server.url, REDIS_TIMEOUT_SECONDS=0.2, GUNICORN_WORKERS=1)
    async with client_at(settings) as client:
        await client.get(PRODUCTS)
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = [await client.get(PRODUCTS) for _ in range(3)]
            elapsed = time.monotonic() - started
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        thawed = [await client.get(PRODUCTS) for _ in range(4)]
    assert {r.status_code for r in frozen} == {200}
    assert not any("ratelimit" in r.headers for r in frozen)
    assert elapsed < 10, "requests waited on a frozen Redis far longer than the timeout"
    assert [r.status_code for r in thawed][-1] == 429


async def test_openapi_documents_the_429_on_every_limited_operation(limited: MakeSettings) -> None:
    async with client_at(limited(RATE_LIMIT_FAIL_OPEN=False)) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    products = paths["/api/v1/products"]["get"]["responses"]
    assert products["429"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert set(products["429"]["headers"]) == {"RateLimit-Policy", "RateLimit", "Retry-After"}
    assert "503" in paths["/api/v1/orders"]["post"]["responses"]  # failing closed
    assert "429" not in paths["/health"]["get"]["responses"]
