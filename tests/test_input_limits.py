"""Input limits in the app: the body size limit (413) and the handler timeout (504).
The same limits against a real Gunicorn, over raw sockets: tests/test_http_limits.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.helpers import app_client, asgi_client

PROBLEM = "application/problem+json"
LIMIT = 2048


@pytest.fixture
async def small_body_client(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(MAX_REQUEST_BODY_BYTES=LIMIT)) as client:
        yield client


def product_body(description_length: int) -> bytes:
    body = {"sku": "BODY-1", "name": "n", "price_cents": 1, "stock": 1}
    return json.dumps({**body, "description": "d" * description_length}).encode()


async def test_declared_oversized_body_is_a_413_problem_before_the_app_runs(
    small_body_client: httpx.AsyncClient,
) -> None:
    response = await small_body_client.post(
        "/api/v1/products",
        content=product_body(LIMIT),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["connection"] == "close"
    assert response.json()["detail"] == f"the request body exceeds {LIMIT} bytes"


async def test_streamed_body_without_length_is_counted_chunk_by_chunk(
    small_body_client: httpx.AsyncClient,
) -> None:
    chunks_sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        for _ in range(100):
            chunks_sent += 1
            yield b" " * 512

    response = await small_body_client.post(
        "/api/v1/products", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 413
    assert chunks_sent < 100, "the whole body was read before refusing it"


async def test_body_at_the_limit_is_served(small_body_client: httpx.AsyncClient) -> None:
    body = product_body(0)
    body = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(body) == LIMIT
    response = await small_body_client.post(
        "/api/v1/products", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (201, 409), response.text  # 409: the sku exists


async def test_handler_timeout_is_a_504_problem(make_settings: Callable[..., Settings]) -> None:
    """A route that outlives REQUEST_TIMEOUT_SECONDS is cancelled: 504 problem. (The
    real-route version, with the database statement cancelled on the server, runs
    against Gunicorn in tests/test_http_limits.py.)"""
    app = create_app(make_settings(REQUEST_TIMEOUT_SECONDS=0.3))
    cancelled = asyncio.Event()

    async def slow() -> dict[str, str]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    app.add_api_route("/slow-for-test", slow)
    async with asgi_client(app) as client:
        response = await client.get("/slow-for-test")
    assert response.status_code == 504
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:parity:problem:timeout"
    assert cancelled.is_set()


async def test_timeouts_raised_inside_a_route_are_not_mistaken_for_ours(
    make_settings: Callable[..., Settings],
) -> None:
    """A TimeoutError of the route's own (e.g. a dependency's) keeps its own mapping
    (503 dependency-unavailable), not the handler timeout's 504."""
    app = create_app(make_settings(REQUEST_TIMEOUT_SECONDS=5))

    async def own_timeout() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    app.add_api_route("/own-timeout-for-test", own_timeout)
    async with asgi_client(app) as client:
        response = await client.get("/own-timeout-for-test")
    assert response.status_code == 503
    assert response.json()["type"] == "urn:parity:problem:dependency-unavailable"
