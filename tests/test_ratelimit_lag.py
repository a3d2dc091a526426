"""The limiter cannot be switched off by the traffic it limits (issue 18, item 2), on a
real Gunicorn with 2 workers, the real Postgres and Redis, from one loopback address.

Before the fix, the limiter bounded its Redis call with `asyncio.timeout`, which counts
the time the worker's event loop spends on *other* requests: a client sending
CPU-heavy requests made Redis look hung, the circuit breaker then skipped the limiter
for every client of that worker for 5 s, and failing open meant unlimited. The attack
below got 103 to 191 of 300 requests through a quota of 10 in five runs on the code
before the fix, and exactly 10 in five runs after it (docs/reliability.md).
Now loop lag is given back to the call (app/deadline.py), and when Redis really cannot
decide, failing open means each worker's share of the quota (app/local_limiter.py) and
writes fail closed."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from parity.harness.connections import close_connections, open_connections
from parity.harness.stack import GunicornProcess, free_port
from tests.conftest import REDIS_URL

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

WORKERS = 2
QUOTA = 10
SHARE = QUOTA // WORKERS  # what each worker admits of a client while Redis cannot decide
# The documented worst case (docs/rate-limiting.md, "When Redis is down or slow"): the
# quota, counted in Redis, plus each worker's share in the window Redis went away.
BOUND = QUOTA + WORKERS * SHARE
# Each expensive request holds its worker's event loop for 150 ms. It has a policy of its
# own that it never exhausts: the lag goes on for the whole run, whatever the limiter
# answers the cheap requests (it is the same client: the policy decides, not the address).
BUSY = "/api/v1/demo/busy?ms=150"
# The cheap request: the default policy, and nothing else that talks to Redis (a cached
# product read would too, and each of its successes resets the breaker's count).
CHEAP = "/api/v1/demo/slow?ms=0"
BUSY_ROUTES = "busy=1000000/60s GET /api/v1/demo/busy; writes=20/60s POST,PUT,PATCH,DELETE /api/"


def server_env(redis_prefix: str, **overrides: str) -> dict[str, str]:
    """The limiter on, 10/60s by default, the default route policies unless overridden."""
    return {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"{redis_prefix}{uuid.uuid4().hex[:8]}:",
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_DEFAULT": f"{QUOTA}/60s",
        "DEMO_ENDPOINTS_ENABLED": "true",
        "ACCESS_LOG_ENABLED": "false",
        **overrides,
    }


async def lag_attack(
    server: GunicornProcess, path: str, reads: int, connections: int = 16
) -> Counter[str]:
    """One address, `connections` keep-alive connections held by both workers, each
    sending a CPU-heavy request after every two reads of `path` until `reads` reads are
    answered. Tallies the reads: "200", "429", and "unchecked" (a 200 without RateLimit
    fields: decided without Redis)."""
    held = await open_connections(server.base_url, count=connections, server=server)
    tally: Counter[str] = Counter()
    left = reads

    async def drive(turn: int, client: httpx.AsyncClient) -> None:
        nonlocal left
        while left > 0:
            turn += 1
            if turn % 3 == 0:
                await client.get(BUSY)
                continue
            left -= 1
            response = await client.get(path)
            tally[str(response.status_code)] += 1
            if response.status_code == 200 and "ratelimit" not in response.headers:
                tally["unchecked"] += 1

    try:
        await asyncio.gather(*(drive(i, c.client) for i, c in enumerate(held)))
    finally:
        await close_connections(held)
    return tally


def test_loop_lag_from_one_address_cannot_switch_its_limit_off(
    gunicorn: Callable[..., GunicornProcess], redis_prefix: str
) -> None:
    """1. one address sends 300 cheap requests (default policy, 10/60s) over 16
    connections held by both workers, and a request that holds its worker's loop for
    150 ms after every two of them  -> at most the documented bound (20) admitted, however
    much the loops lag; every other one a 429. (Exactly 10 while the lag stays within
    REDIS_LAG_ALLOWANCE_SECONDS, as it does here; the bound covers a machine so busy that
    it does not.)"""
    server = gunicorn(workers=WORKERS, env=server_env(redis_prefix, RATE_LIMIT_ROUTES=BUSY_ROUTES))
    tally = asyncio.run(lag_attack(server, CHEAP, reads=300))
    figures = f"{dict(tally)} (quota {QUOTA}, bound {BOUND})"
    print(f"\nloop-lag attack, 2 workers: {figures}")  # shown with -s: the docs' figure
    assert tally["200"] <= BOUND, figures
    assert tally["200"] + tally["429"] == 300, figures


def test_with_redis_unreachable_each_worker_admits_its_share_and_writes_fail_closed(
    gunicorn: Callable[..., GunicornProcess], redis_prefix: str
) -> None:
    """Redis unreachable (nothing listens on its port) from the start, default route
    policies:
    1. one address sends 60 reads over connections held by both workers  -> each worker
    admits exactly its share (10 // 2 = 5), without RateLimit fields, and refuses the
    rest with 429 and Retry-After: 10 in all, never unlimited
    2. a write  -> 503 dependency-unavailable with Retry-After (writes fail closed)."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    server = gunicorn(workers=WORKERS, env=server_env(redis_prefix, REDIS_URL=dead_redis))

    async def reads() -> tuple[Counter[str], dict[int | None, Counter[int]]]:
        held = await open_connections(server.base_url, count=6, server=server)
        statuses: Counter[str] = Counter()
        by_worker: dict[int | None, Counter[int]] = {}
        try:
            for index in range(60):
                connection = held[index % len(held)]
                response = await connection.client.get("/api/v1/products?limit=1")
                statuses[str(response.status_code)] += 1
                by_worker.setdefault(connection.worker, Counter())[response.status_code] += 1
                if response.status_code == 429:
                    statuses["retry-after"] += "retry-after" in response.headers
                statuses["with fields"] += "ratelimit" in response.headers
        finally:
            await close_connections(held)
        return statuses, by_worker

    statuses, by_worker = asyncio.run(reads())
    write = httpx.post(
        f"{server.base_url}/api/v1/products",
        json={"sku": f"T-{uuid.uuid4().hex[:12]}", "name": "x", "price_cents": 1, "stock": 1},
        timeout=10,
    )
    assert (statuses["200"], statuses["429"]) == (QUOTA, 60 - QUOTA), statuses
    assert statuses["retry-after"] == 60 - QUOTA
    assert statuses["with fields"] == 0
    assert sorted(by_worker) == sorted(server.worker_pids())
    assert all(answers[200] == SHARE for answers in by_worker.values()), by_worker
    assert write.status_code == 503
    assert write.headers["retry-after"] == "1"
    assert write.json()["type"] == "urn:parity:problem:dependency-unavailable"
