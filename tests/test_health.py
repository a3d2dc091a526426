"""/health is liveness (no dependency calls); /ready checks Postgres (required) and
Redis (reported, not required)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from app.health import READY_CACHE_SECONDS
from app.settings import Settings
from parity.harness.stack import free_port
from tests.helpers import app_client


async def test_health_answers_without_dependencies(make_settings: Callable[..., Settings]) -> None:
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/app"
    async with app_client(make_settings(DATABASE_URL=dead)) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_each_dependency(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    database, redis = body["checks"]["database"], body["checks"]["redis"]
    assert (database["status"], database["required"]) == ("ok", True)
    assert (redis["status"], redis["required"]) == ("ok", False)
    assert database["latency_ms"] >= 0
    assert redis["latency_ms"] >= 0


async def test_ready_is_503_naming_postgres_when_it_is_unreachable(
    make_settings: Callable[..., Settings],
) -> None:
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/app"
    async with app_client(make_settings(DATABASE_URL=dead)) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["detail"] == "not ready: database"
    assert body["checks"]["database"]["status"] == "error"
    assert body["checks"]["redis"]["status"] == "ok"


async def test_ready_stays_200_when_only_redis_is_down(
    make_settings: Callable[..., Settings],
) -> None:
    async with app_client(make_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")) as client:
        response = await client.get("/ready")
    assert response.status_code == 200
    redis = response.json()["checks"]["redis"]
    assert (redis["status"], redis["required"]) == ("error", False)


async def test_ready_does_not_leak_the_database_password(
    make_settings: Callable[..., Settings],
) -> None:
    dead = f"postgresql+asyncpg://postgres:s3cret-pw@127.0.0.1:{free_port()}/app"
    async with app_client(make_settings(DATABASE_URL=dead)) as client:
        response = await client.get("/ready")
    assert "s3cret-pw" not in response.text


async def test_a_flood_of_ready_is_answered_by_one_check(client: httpx.AsyncClient) -> None:
    """50 /ready at once (a probe flood, issue 18) -> one dependency check answers them
    all (the same measured latencies in every body), instead of 50 pings queueing for the
    pool; a second later the next /ready checks again."""
    responses = await asyncio.gather(*(client.get("/ready") for _ in range(50)))
    assert {response.status_code for response in responses} == {200}
    bodies = {response.text for response in responses}
    assert len(bodies) == 1, f"{len(bodies)} different checks answered 50 probes"
    await asyncio.sleep(READY_CACHE_SECONDS + 0.2)
    assert (await client.get("/ready")).text not in bodies
