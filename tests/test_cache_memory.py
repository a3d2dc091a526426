"""The rate limiter's keys are never evicted by cache pressure, and a Redis that refuses
writes for lack of memory costs the cache a miss, never an error (issue 18).

On a throwaway redis-server with a small maxmemory (4 MB; an empty Redis already uses
~0.9 MB) and compose.yaml's maxmemory-policy: the cache is filled with ten times that,
and the limiter still counts exactly. (Before: `allkeys-lru` evicted the limiter's key
to make room for cache entries, and its client started a fresh quota.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from app.cache import VersionedCache
from app.ratelimit.policy import RateLimitPolicy
from app.ratelimit.sliding_window import acquire
from app.settings import Settings
from parity.harness.throwaway import TemporaryRedis
from tests.helpers import app_client, create_product
from tests.test_deploy_lb import services

MAXMEMORY = 4 * 1024 * 1024
SHARE = 0.5  # CACHE_REDIS_MEMORY_SHARE's default
ENTRY = b"x" * 4096  # a cached product is ~0.3-10 KB
QUOTA = 50
POLICY = RateLimitPolicy("default", QUOTA, 600)
LIMITER_KEY = "parity:rl:default:ip:198.51.100.7"


def compose_redis_policy() -> str:
    command: list[str] = services()["redis"]["command"]
    return command[command.index("--maxmemory-policy") + 1]


@pytest.fixture
def small_redis() -> Iterator[TemporaryRedis]:
    """Our own redis-server (never the shared one's config), 4 MB, compose's policy."""
    with TemporaryRedis() as server:
        yield server


@pytest.fixture
async def redis(small_redis: TemporaryRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(small_redis.url)
    await client.config_set("maxmemory", MAXMEMORY)
    await client.config_set("maxmemory-policy", compose_redis_policy())
    yield client
    await client.aclose()


def product_cache(redis: Redis, share: float = SHARE) -> VersionedCache:
    return VersionedCache(
        redis,
        prefix="parity:",
        namespace="product",
        ttl_seconds=600,
        timeout=2.0,
        max_timeout=4.0,
        memory_share=share,
    )


async def allowed(redis: Redis, requests: int) -> int:
    return sum([(await acquire(redis, LIMITER_KEY, POLICY)).allowed for _ in range(requests)])


async def test_cache_pressure_never_evicts_the_limiters_keys(redis: Redis) -> None:
    """1. a client spends 20 of its 50 requests  2. the cache is offered 40 MB of entries
    (ten times maxmemory)  -> it stores until Redis is at its share, then skips; nothing
    is evicted  3. the client asks 40 more times  -> exactly 30 allowed."""
    assert await allowed(redis, 20) == 20
    cache = product_cache(redis)
    stored = [await cache.store(entry_id, ENTRY, "0") for entry_id in range(10_000)]
    memory = await redis.info("memory")
    stats = await redis.info("stats")
    assert stats["evicted_keys"] == 0
    assert any(stored), "the cache stored nothing at all"
    assert not all(stored), "the cache never stopped"
    # Its bound: SHARE of maxmemory, overshot by at most 1% of maxmemory (the re-read
    # step) plus one entry.
    assert memory["used_memory"] < (SHARE + 0.01) * MAXMEMORY + 2 * len(ENTRY)
    assert await redis.exists(LIMITER_KEY)
    assert await allowed(redis, 40) == QUOTA - 20


async def test_a_stored_entry_is_a_hit_and_a_skipped_one_a_miss(redis: Redis) -> None:
    cache = product_cache(redis)
    stored = [await cache.store(entry_id, ENTRY, "0") for entry_id in range(2_000)]
    first_skipped = stored.index(False)
    assert (await cache.lookup(0)).value == ENTRY
    assert (await cache.lookup(first_skipped)).value is None


async def fill_until_out_of_memory(redis: Redis) -> None:
    """Keys that are not the cache's, until Redis refuses writes (noeviction)."""
    await redis.config_set("maxmemory-policy", "noeviction")
    for index in range(10_000):
        try:
            await redis.set(f"other-tenant:{index}", ENTRY)
        except OutOfMemoryError:
            return
    pytest.fail("Redis never refused a write")


async def test_redis_refusing_writes_costs_misses_never_errors(
    make_settings: Callable[..., Settings], small_redis: TemporaryRedis, redis: Redis
) -> None:
    """The cache bound off (CACHE_REDIS_MEMORY_SHARE=1.0), Redis full of other keys:
    1. a product cached before, then updated  -> 200, and the next read is the new
    version, not the cached one (the invalidation Redis refused fell back to DEL)
    2. reads  -> 200, X-Cache MISS each time (never BYPASS: a refused write is not a
    Redis failure, so the breaker the limiter shares stays closed)."""
    settings = make_settings(REDIS_URL=small_redis.url, CACHE_REDIS_MEMORY_SHARE=1.0)
    async with app_client(settings) as client:
        product = await create_product(client)
        url = f"/api/v1/products/{product['id']}"
        assert (await client.get(url)).headers["x-cache"] == "MISS"
        assert (await client.get(url)).headers["x-cache"] == "HIT"
        await fill_until_out_of_memory(redis)
        updated = await client.patch(url, json={"name": "renamed under OOM"})
        assert updated.status_code == 200, updated.text
        reads = [await client.get(url) for _ in range(6)]
    assert [r.status_code for r in reads] == [200] * 6
    assert [r.headers["x-cache"] for r in reads] == ["MISS"] * 6
    assert {r.json()["name"] for r in reads} == {"renamed under OOM"}


def test_compose_redis_never_evicts() -> None:
    """Eviction is per instance: under any allkeys-* or volatile-* policy (the limiter's
    keys have TTLs) Redis could drop quota state for cache entries."""
    assert compose_redis_policy() == "noeviction"


async def test_an_evicting_policy_is_warned_about_once(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    cache = product_cache(redis)
    for entry_id in range(3):
        await cache.store(entry_id, ENTRY, "0")
    warnings = [r for r in caplog.records if "maxmemory-policy allkeys-lru" in r.getMessage()]
    assert len(warnings) == 1
