"""The sliding-window log (app/ratelimit.py `acquire`) against the real Redis.

Window edges are stepped through with an explicit clock (the script's optional "now",
in ms), so they are exact to the millisecond and independent of this machine's load;
one test uses Redis' own clock end to end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.ratelimit.policy import RateLimitPolicy
from app.ratelimit.sliding_window import SLIDING_WINDOW_LOG_SHA, Decision, acquire
from parity.harness.throwaway import TemporaryRedis
from tests.conftest import REDIS_URL

T0 = 1_700_000_000_000  # an arbitrary "now" in ms


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def key(redis_prefix: str) -> str:
    return f"{redis_prefix}ratelimit:test:{uuid.uuid4().hex}"


def policy(quota: int, window_seconds: int) -> RateLimitPolicy:
    return RateLimitPolicy("test", quota, window_seconds)


async def test_a_burst_of_concurrent_requests_admits_exactly_the_quota(
    redis: Redis, key: str
) -> None:
    """1. 50 requests of one client at once, quota 7  -> exactly 7 allowed, and their
    remaining counts are 6..0, each once (no two requests saw the same count)."""
    decisions = await asyncio.gather(*(acquire(redis, key, policy(7, 60)) for _ in range(50)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 7
    assert sorted(d.remaining for d in allowed) == [0, 1, 2, 3, 4, 5, 6]
    refused = [d for d in decisions if not d.allowed]
    assert all(d.remaining == 0 and 1 <= d.reset_seconds <= 60 for d in refused)


async def test_window_edges_are_exact_to_the_millisecond(redis: Redis, key: str) -> None:
    """Quota 3 per 10 s; requests at 0 s, 1 s, 2 s fill it. The slot of the request at
    0 s frees exactly at 10.000 s: refused at 9.999 s, allowed at 10.000 s."""
    limit = policy(3, 10)
    for offset in (0, 1000, 2000):
        assert (await acquire(redis, key, limit, T0 + offset)).allowed
    assert await acquire(redis, key, limit, T0 + 9_999) == Decision(False, 0, 1)
    assert await acquire(redis, key, limit, T0 + 10_000) == Decision(True, 0, 1)
    assert not (await acquire(redis, key, limit, T0 + 10_999)).allowed
    assert (await acquire(redis, key, limit, T0 + 11_000)).allowed


async def test_the_window_slides_instead_of_resetting_on_a_boundary(redis: Redis, key: str) -> None:
    """A fixed window would allow 2 x quota around its boundary; a sliding one never
    allows more than the quota in any window-long interval."""
    limit = policy(5, 10)
    late = [await acquire(redis, key, limit, T0 + 9_000 + i) for i in range(5)]
    early = [await acquire(redis, key, limit, T0 + 10_000 + i) for i in range(5)]
    assert all(d.allowed for d in late)
    assert not any(d.allowed for d in early)
    assert early[0].reset_seconds == 9  # the first of `late` leaves at 19.000 s


async def test_refused_requests_do_not_extend_the_lockout(redis: Redis, key: str) -> None:
    """1. quota used at 0 s  2. hammering every 100 ms until 9.9 s  -> at 10 s the
    client is allowed again: refused requests are not recorded."""
    limit = policy(2, 10)
    await acquire(redis, key, limit, T0)
    await acquire(redis, key, limit, T0)
    for step in range(1, 100):
        assert not (await acquire(redis, key, limit, T0 + step * 100)).allowed
    assert (await acquire(redis, key, limit, T0 + 10_000)).allowed


async def test_reset_is_the_time_until_the_oldest_request_leaves(redis: Redis, key: str) -> None:
    """`t` (and Retry-After) is when more quota becomes available: the oldest allowed
    request's time + window - now, rounded up to whole seconds."""
    limit = policy(3, 60)
    assert await acquire(redis, key, limit, T0) == Decision(True, 2, 60)
    assert await acquire(redis, key, limit, T0 + 20_000) == Decision(True, 1, 40)
    assert await acquire(redis, key, limit, T0 + 30_500) == Decision(True, 0, 30)  # 29.5 s
    assert await acquire(redis, key, limit, T0 + 59_001) == Decision(False, 0, 1)
    # After the whole window, the full quota is back.
    assert await acquire(redis, key, limit, T0 + 200_000) == Decision(True, 2, 60)


async def test_the_log_expires_with_the_window_and_keeps_one_entry_per_allowed_request(
    redis: Redis, key: str
) -> None:
    limit = policy(4, 30)
    for _ in range(10):
        await acquire(redis, key, limit)
    assert await redis.llen(key) == 4
    assert 0 < await redis.pttl(key) <= 30_000


async def test_redis_clock_end_to_end(redis: Redis, key: str) -> None:
    """Without an explicit clock Redis' TIME decides: quota 2 per 1 s; the third
    request is refused; once a second has surely passed, it is allowed again."""
    limit = policy(2, 1)
    assert [(await acquire(redis, key, limit)).allowed for _ in range(3)] == [True, True, False]
    await asyncio.sleep(1.05)
    assert (await acquire(redis, key, limit)).allowed


async def test_clients_and_policies_have_separate_logs(redis: Redis, key: str) -> None:
    limit = policy(1, 60)
    assert (await acquire(redis, key + ":a", limit)).allowed
    assert (await acquire(redis, key + ":b", limit)).allowed
    assert not (await acquire(redis, key + ":a", limit)).allowed


async def test_a_redis_that_never_saw_the_script_gets_it_loaded(key: str) -> None:
    """A fresh (or restarted) Redis answers EVALSHA with NOSCRIPT; acquire falls back
    to EVAL once, which loads the script, and EVALSHA works from then on."""
    with TemporaryRedis() as server:
        client = Redis.from_url(server.url)
        try:
            assert await client.script_exists(SLIDING_WINDOW_LOG_SHA) == [False]
            assert (await acquire(client, key, policy(1, 60))).allowed
            assert await client.script_exists(SLIDING_WINDOW_LOG_SHA) == [True]
            assert not (await acquire(client, key, policy(1, 60))).allowed
        finally:
            await client.aclose()
