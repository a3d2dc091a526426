"""Redis: the client, a readiness ping and a race-free cache-aside store.

Redis is an accelerator here, never a source of truth: every caller treats
`CacheUnavailable` as "go to Postgres", so a Redis outage costs latency, not errors.

Why a version key next to each cached value: plain cache-aside has a well-known race.
A reader misses, reads the old row from Postgres, a writer commits and deletes the key,
then the reader stores the old row, and the cache serves stale data until the TTL runs
out. Here the reader notes the key's version before it reads Postgres and stores only if
the version is unchanged (one Lua call); a writer bumps the version after its commit.

The cache shares Redis with the rate limiter, whose keys must never be evicted to make
room for cache entries (issue 18): a client whose quota state is evicted starts afresh.
Redis evicts per instance, whatever the database, so the cache bounds itself instead
(`MemoryBudget`): it stops storing while Redis's used_memory is above
CACHE_REDIS_MEMORY_SHARE of maxmemory, and Redis runs `noeviction` (compose.yaml), so
what is over maxmemory is refused with an OOM error, never silently evicted. A store
Redis refuses is a miss for the next reader, never an error (docs/rate-limiting.md).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, RedisError

from app.breaker import CircuitBreaker, CircuitOpen
from app.deadline import LagTolerantDeadline, lag_tolerant_deadline
from app.settings import Settings
from app.telemetry.logging import ThrottledLog
from app.telemetry.metrics import CACHE_STORES_SKIPPED, DEPENDENCY_ERRORS, count

logger = logging.getLogger(__name__)

# A version key outlives any reader by far (a Postgres read is bounded by the statement
# timeout), so an expired version can never let a stale value in.
VERSION_TTL_SECONDS = 86_400
# How often each worker reads Redis's memory use (one INFO call) at least; it also
# reads it after storing 1% of maxmemory (MemoryBudget).
MEMORY_CHECK_INTERVAL_SECONDS = 1.0
# maxmemory-policy values under which Redis may evict the limiter's keys: every allkeys-*
# policy, and every volatile-* one too (the limiter's keys have TTLs).
EVICTING_POLICIES = frozenset(
    {
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    }
)

# KEYS[1] value key, KEYS[2] version key; ARGV[1] version seen, ARGV[2] value, ARGV[3] TTL.
_STORE_IF_VERSION_UNCHANGED = """
local current = redis.call('GET', KEYS[2]) or '0'
if current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


class CacheUnavailable(Exception):
    """Redis could not answer in time; the caller falls back to the source of truth."""


# What a failed call raises: redis-py's errors, or TimeoutError from our deadline.
_FAILURES = (RedisError, TimeoutError)


def create_redis(settings: Settings) -> Redis:
    """The worker's client. Its own timeouts are only a backstop: every call on a
    request's path is bounded by a `lag_tolerant_deadline` of REDIS_TIMEOUT_SECONDS
    (app/deadline.py), which loop lag does not spend; redis-py's wall-clock timeouts at
    that value would turn loop lag into Redis failures (and dropped connections)."""
    return Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_socket_timeout_seconds,
        # No retries: a retry multiplies the time a request waits on a sick Redis, and
        # the caller has a fallback anyway.
        retry=Retry(NoBackoff(), retries=0),
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        health_check_interval=30,
        client_name=settings.SERVICE_NAME,
    )


async def ping(redis: Redis) -> None:
    await redis.ping()


def is_out_of_memory(exc: BaseException) -> bool:
    """Redis answered, but refused a write: it is at maxmemory under `noeviction`."""
    return isinstance(exc, OutOfMemoryError)


class MemoryBudget:
    """Whether the cache may store: Redis's used_memory is below `share` of its
    maxmemory. Each worker reads it (one INFO call) when its last reading is a second
    old, or when it has stored 1% of maxmemory since: how far the cache can overshoot
    its share is that, per worker, however fast it stores. The store that finds the
    reading due makes it; concurrent ones go by the last. Redis without maxmemory (0,
    its own default) means no bound here."""

    def __init__(self, redis: Redis, share: float) -> None:
        self._redis = redis
        self._share = share
        self._checked_at = -MEMORY_CHECK_INTERVAL_SECONDS
        self._stored_since_check = 0
        self._recheck_after_bytes = sys.maxsize
        self._allows = True
        self._warned_policy = False

    async def allows_store(self, size: int) -> bool:
        if self._share >= 1.0:
            return True  # bounded by maxmemory alone
        now = time.monotonic()
        if (
            now - self._checked_at >= MEMORY_CHECK_INTERVAL_SECONDS
            or self._stored_since_check >= self._recheck_after_bytes
        ):
            self._checked_at, self._stored_since_check = now, 0
            await self._read_memory()
        if self._allows:
            self._stored_since_check += size
        return self._allows

    async def _read_memory(self) -> None:
        memory = await self._redis.info("memory")
        limit = int(memory.get("maxmemory", 0))
        self._allows = not limit or int(memory["used_memory"]) < self._share * limit
        self._recheck_after_bytes = max(limit // 100, 1) if limit else sys.maxsize
        self._warn_if_limiter_keys_are_evictable(str(memory.get("maxmemory_policy", "")))

    def _warn_if_limiter_keys_are_evictable(self, policy: str) -> None:
        if policy in EVICTING_POLICIES and not self._warned_policy:
            self._warned_policy = True
            logger.warning(
                "Redis runs maxmemory-policy %s: at maxmemory it may evict the rate "
                "limiter's keys (clients then start a fresh quota); run it with "
                "noeviction (docs/rate-limiting.md#redis-memory)",
                policy,
            )


@dataclass(frozen=True, slots=True)
class Lookup:
    value: bytes | None
    version: str


class VersionedCache:
    """Cache-aside entries `<prefix>{<namespace>:<id>}` guarded by a version key."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        namespace: str,
        ttl_seconds: int,
        timeout: float,
        max_timeout: float,
        breaker: CircuitBreaker | None = None,
        memory_share: float = 1.0,
    ) -> None:
        self._redis = redis
        self._budget = MemoryBudget(redis, memory_share)
        # Every call: `timeout` on a responsive loop, `max_timeout` at most while it lags.
        self._timeout = timeout
        self._max_timeout = max_timeout
        # Lookups and stores skip Redis while it is open; invalidations always try
        # (a write's correctness is worth a timeout, and a success closes the breaker).
        self._breaker = breaker or CircuitBreaker(f"redis cache {namespace}")
        self._prefix = prefix
        self._namespace = namespace
        self._ttl = ttl_seconds
        self._store = redis.register_script(_STORE_IF_VERSION_UNCHANGED)
        self._errors = ThrottledLog(logger)

    def _deadline(self) -> LagTolerantDeadline:
        return lag_tolerant_deadline(self._timeout, self._max_timeout)

    def _keys(self, entry_id: object) -> tuple[str, str]:
        # The hash tag keeps value and version in one cluster slot, as Lua requires.
        value_key = f"{self._prefix}{{{self._namespace}:{entry_id}}}"
        return value_key, value_key + ":v"

    async def lookup(self, entry_id: object) -> Lookup:
        if not self._breaker.allow():
            raise CacheUnavailable from CircuitOpen()
        value_key, version_key = self._keys(entry_id)
        try:
            async with self._deadline():
                value, version = await self._redis.mget(value_key, version_key)
        except _FAILURES as exc:
            self._breaker.record_failure()
            count(DEPENDENCY_ERRORS, "redis", "cache_lookup")
            self._errors.warning("cache lookup failed, reading from Postgres: %r", exc)
            raise CacheUnavailable from exc
        self._breaker.record_success()
        # decode_responses is off, so Redis hands back bytes (or None when absent).
        return Lookup(cast(bytes | None, value), cast(bytes, version).decode() if version else "0")

    async def store(self, entry_id: object, value: bytes, seen_version: str) -> bool:
        """Store `value` unless the entry was invalidated since `seen_version` was read,
        or Redis has no room for it (over the cache's memory share, or refusing writes)."""
        if not self._breaker.allow():
            return False
        try:
            async with self._deadline():
                # The key and Redis's own overhead per key (~100 bytes) count too.
                if not await self._budget.allows_store(len(value) + 128):
                    count(CACHE_STORES_SKIPPED, self._namespace, "over_memory_share")
                    return False
                stored = await self._store(
                    keys=self._keys(entry_id), args=[seen_version, value, self._ttl]
                )
        except _FAILURES as exc:
            if is_out_of_memory(exc):
                # Redis is up and answering: not a failure for the breaker, which the
                # rate limiter shares. The entry is simply not cached.
                self._breaker.record_success()
                count(CACHE_STORES_SKIPPED, self._namespace, "redis_out_of_memory")
                return False
            self._breaker.record_failure()
            count(DEPENDENCY_ERRORS, "redis", "cache_store")
            self._errors.warning("cache store failed: %r", exc)
            return False
        self._breaker.record_success()
        return bool(stored)

    async def invalidate(self, *entry_ids: object) -> None:
        """Call after the change is committed. On failure the entry stays until its TTL."""
        pipe = self._redis.pipeline(transaction=True)
        value_keys = []
        for entry_id in entry_ids:
            value_key, version_key = self._keys(entry_id)
            value_keys.append(value_key)
            pipe.incr(version_key)
            pipe.expire(version_key, VERSION_TTL_SECONDS)
            pipe.delete(value_key)
        try:
            async with self._deadline():
                await pipe.execute()
        except _FAILURES as exc:
            if is_out_of_memory(exc) and await self._delete_values(value_keys):
                return
            self._breaker.record_failure()
            count(DEPENDENCY_ERRORS, "redis", "cache_invalidate")
            self._errors.warning(
                "cache invalidation failed; stale for up to %ss: %r", self._ttl, exc
            )
            return
        self._breaker.record_success()

    async def _delete_values(self, value_keys: list[str]) -> bool:
        """After Redis refused an invalidation for lack of memory (it aborts the whole
        transaction): DEL, which Redis runs even then, so the old value is served no
        more. The version is not bumped, so a reader that read the row before the
        commit may still store it if Redis has room again by then: stale for at most
        the TTL, as after any failed invalidation."""
        try:
            async with self._deadline():
                await self._redis.delete(*value_keys)
        except _FAILURES:
            return False
        self._breaker.record_success()
        return True
