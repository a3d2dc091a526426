"""The throwaway servers that fault tests stop and start really stop and start."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from parity.harness.throwaway import TemporaryPostgres, TemporaryRedis


async def _select_one(port: int) -> int:
    connection = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", timeout=5)
    try:
        value: int = await connection.fetchval("SELECT 1")
        return value
    finally:
        await connection.close()


def test_temporary_postgres_stops_and_starts_on_the_same_port() -> None:
    with TemporaryPostgres() as postgres:
        assert asyncio.run(_select_one(postgres.port)) == 1
        postgres.stop()
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(_select_one(postgres.port))
        postgres.start()
        assert asyncio.run(_select_one(postgres.port)) == 1
    assert not postgres.root.exists()


def test_temporary_redis_stops_and_starts_on_the_same_port() -> None:
    with TemporaryRedis() as server:
        client = Redis.from_url(server.url, socket_timeout=1)
        assert client.ping()
        server.stop()
        with pytest.raises(RedisConnectionError):
            client.ping()
        server.start()
        assert client.ping()
        client.close()


def test_temporary_redis_can_hang_and_recover() -> None:
    """1. SIGSTOP -> a command times out (it is not refused)  2. SIGCONT -> it answers."""
    with TemporaryRedis(password="pw-for-test") as server:
        client = Redis.from_url(server.url, socket_timeout=0.3)
        assert client.ping()
        server.pause()
        with pytest.raises(RedisTimeoutError):
            client.ping()
        server.resume()
        client.close()
        client = Redis.from_url(server.url, socket_timeout=1)
        assert client.ping()
        client.close()
    with pytest.raises(RedisConnectionError):
        Redis.from_url(server.url, socket_timeout=0.3).ping()
