"""Every 4xx/5xx is RFC 9457 problem+json; a database outage is a fast 503."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import asyncpg
import httpx
from sqlalchemy import text

from app.deps import SessionDep
from app.main import create_app
from app.settings import Settings
from parity.harness.stack import _asyncpg_dsn, free_port
from tests.helpers import app_client, asgi_client

PROBLEM = "application/problem+json"


async def test_malformed_json_is_a_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/products", content=b'{"sku": "x",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "urn:parity:problem:validation-error"
    assert body["errors"][0]["type"] == "json_invalid"


async def test_validation_errors_do_not_echo_the_input(client: httpx.AsyncClient) -> None:
    secret = "sk_live_do_not_echo"
    response = await client.post(
        "/api/v1/products", json={"sku": secret, "name": 5, "price_cents": 1, "stock": 1}
    )
    assert response.status_code == 422
    assert secret not in response.text


async def test_many_invalid_fields_answer_a_small_problem(client: httpx.AsyncClient) -> None:
    """Amplification (issue 18): an order body with 2,000 unknown keys, each 80 characters,
    within MAX_REQUEST_BODY_BYTES -> a 422 that lists 20 errors, counts them all, cuts the
    echoed keys short, and stays a few KB."""
    body = {"items": [{"product_id": 1, "quantity": 1}]}
    body |= {f"{index:05d}" + "k" * 75: 1 for index in range(2_000)}
    response = await client.post("/api/v1/orders", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert len(problem["errors"]) == 20
    assert problem["errors_total"] == 2_000
    assert "the first 20 of 2000" in problem["detail"]
    assert all(len(part) <= 64 for error in problem["errors"] for part in error["loc"])
    assert len(response.content) < 8_000


async def test_a_body_far_beyond_the_largest_valid_one_is_refused_unread(
    client: httpx.AsyncClient,
) -> None:
    """Half a megabyte of keys (the reproduction sent 0.89 MB) is a 413: the largest valid
    body is ~122 KB."""
    body = {f"key{index}": index for index in range(40_000)}
    response = await client.post("/api/v1/orders", json=body)
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
    wrong_method = await client.delete("/api/v1/products")
    assert (wrong_method.status_code, wrong_method.headers["content-type"]) == (405, PROBLEM)
    assert "GET" in wrong_method.headers["allow"]


async def test_405_allow_lists_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    """Found by schemathesis: GET and POST live on two routes, and Starlette's 405 named
    only the first one."""
    for path, allowed in (
        ("/api/v1/products", "GET, POST"),
        ("/api/v1/products/1", "GET, PATCH"),
        ("/api/v1/orders", "POST"),
    ):
        response = await client.request("PUT", path)
        assert response.status_code == 405
        assert response.headers["allow"] == allowed, path


async def test_database_outage_is_a_fast_503_with_retry_after(
    make_settings: Callable[..., Settings], redis_prefix: str
) -> None:
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/app"
    # A cache of its own: product 1 cached by an earlier test would be served from it.
    own_cache = f"{redis_prefix}{uuid.uuid4().hex}:"
    settings = make_settings(DATABASE_URL=dead, REDIS_KEY_PREFIX=own_cache)
    async with app_client(settings) as client:
        started = time.monotonic()
        responses = [
            await client.get("/api/v1/products"),
            await client.get("/api/v1/products/1"),
            await client.post("/api/v1/orders", json={"items": [{"product_id": 1, "quantity": 1}]}),
        ]
        elapsed = time.monotonic() - started
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["retry-after"] == "2"
        assert response.json()["type"] == "urn:parity:problem:dependency-unavailable"
        assert "Traceback" not in response.text
    # A functional bound, not a benchmark: "fail fast" means no 30 s connect hang.
    assert elapsed < 10


async def test_openapi_documents_problem_responses_for_every_error(
    client: httpx.AsyncClient,
) -> None:
    openapi = (await client.get("/openapi.json")).json()
    documented = 0
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert list(response["content"]) == [PROBLEM], (method, path, status)
                    documented += 1
    assert documented >= 10
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


async def test_a_connection_lost_after_the_work_is_done_does_not_spoil_the_answer(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """Found by parity chaos: Postgres stopped right after a route had read its
    rows; closing the session (a rollback) then failed on the dead connection and the
    client got a dropped connection instead of the 200 already computed."""
    app = create_app(make_settings())

    async def work_then_lose_the_connection(session: SessionDep) -> dict[str, int]:
        pid: int = await session.scalar(text("SELECT pg_backend_pid()"))
        killer = await asyncpg.connect(_asyncpg_dsn(database_url))
        try:
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
        return {"pid": pid}

    app.add_api_route("/lose-connection-for-test", work_then_lose_the_connection)
    async with asgi_client(app) as client:
        response = await client.get("/lose-connection-for-test")
        after = await client.get("/api/v1/products?limit=1")
    assert response.status_code == 200
    assert after.status_code == 200, "the pool kept the dead connection"
