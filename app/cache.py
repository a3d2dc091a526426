"""Redis: the client, a readiness ping and a race-free cache-aside store.

Redis is an accelerator here, never a source of truth: every caller treats
`CacheUnavailable` as "go to Postgres", so a Redis outage costs latency, not errors.

Why a version key next to each cached value: plain cache-aside has a well-known race.
A reader misses, reads the old row from Postgres, a writer commits and deletes the key,
then the reader stores the old row, and the cache serves stale data until the TTL runs
out. Here the reader notes the key's version before it reads Postgres and stores only if
the version is unchanged (one Lua call); a writer bumps the version after its commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.breaker import CircuitBreaker, CircuitOpen
from app.deadline import LagTolerantDeadline, lag_tolerant_deadline
from app.settings import Settings
from app.telemetry.logging import RateLimitedLog
from app.telemetry.metrics import DEPENDENCY_ERRORS, count

logger = logging.getLogger(__name__)

# A version key outlives any reader by far (a Postgres read is bounded by the statement
# timeout), so an expired version can never let a stale value in.
VERSION_TTL_SECONDS = 86_400

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
    ) -> None:
        self._redis = redis
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
        self._errors = RateLimitedLog(logger)

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
        """Store `value` unless the entry was invalidated since `seen_version` was read."""
        if not self._breaker.allow():
            return False
        try:
            async with self._deadline():
                stored = await self._store(
                    keys=self._keys(entry_id), args=[seen_version, value, self._ttl]
                )
        except _FAILURES as exc:
            self._breaker.record_failure()
            count(DEPENDENCY_ERRORS, "redis", "cache_store")
            self._errors.warning("cache store failed: %r", exc)
            return False
        self._breaker.record_success()
        return bool(stored)

    async def invalidate(self, *entry_ids: object) -> None:
        """Call after the change is committed. On failure the entry stays until its TTL."""
        pipe = self._redis.pipeline(transaction=True)
        for entry_id in entry_ids:
            value_key, version_key = self._keys(entry_id)
            pipe.incr(version_key)
            pipe.expire(version_key, VERSION_TTL_SECONDS)
            pipe.delete(value_key)
        try:
            async with self._deadline():
                await pipe.execute()
        except _FAILURES as exc:
            self._breaker.record_failure()
            count(DEPENDENCY_ERRORS, "redis", "cache_invalidate")
            self._errors.warning(
                "cache invalidation failed; stale for up to %ss: %r", self._ttl, exc
            )
            return
        self._breaker.record_success()
