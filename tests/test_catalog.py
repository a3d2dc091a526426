"""Products: create, read through the cache, change (invalidating it), list by keyset."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from app.cache import VersionedCache
from app.catalog.schemas import encode_cursor
from app.settings import Settings
from parity.harness.stack import free_port
from tests.conftest import REDIS_URL
from tests.helpers import app_client, create_product


async def test_created_product_is_returned_with_its_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/products",
        json={
            "sku": "LOC-1",
            "name": "Lamp",
            "description": "Warm light",
            "price_cents": 2599,
            "stock": 3,
        },
    )
    assert response.status_code == 201
    product = response.json()
    assert response.headers["location"] == f"/api/v1/products/{product['id']}"
    assert {k: product[k] for k in ("sku", "name", "description", "price_cents", "stock")} == {
        "sku": "LOC-1",
        "name": "Lamp",
        "description": "Warm light",
        "price_cents": 2599,
        "stock": 3,
    }


async def test_duplicate_sku_is_a_409_problem(client: httpx.AsyncClient) -> None:
    product = await create_product(client)
    response = await client.post(
        "/api/v1/products",
        json={"sku": product["sku"], "name": "Again", "price_cents": 1, "stock": 1},
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:parity:problem:conflict"
    assert product["sku"] in response.json()["detail"]


async def test_second_read_is_served_from_redis(client: httpx.AsyncClient) -> None:
    product = await create_product(client)
    first = await client.get(f"/api/v1/products/{product['id']}")
    second = await client.get(f"/api/v1/products/{product['id']}")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.json() == second.json() == product


async def test_patch_changes_fields_and_invalidates_the_cache(client: httpx.AsyncClient) -> None:
    product = await create_product(client, price_cents=1000)
    url = f"/api/v1/products/{product['id']}"
    await client.get(url)  # now cached
    response = await client.patch(url, json={"price_cents": 1500, "name": "Renamed"})
    assert response.status_code == 200
    assert (response.json()["price_cents"], response.json()["name"]) == (1500, "Renamed")
    after = await client.get(url)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["price_cents"] == 1500
    assert after.json()["updated_at"] >= product["updated_at"]


async def test_empty_patch_changes_nothing(client: httpx.AsyncClient) -> None:
    product = await create_product(client)
    response = await client.patch(f"/api/v1/products/{product['id']}", json={})
    assert response.status_code == 200
    assert response.json() == product


@pytest.mark.parametrize(
    "body",
    [
        {"name": None},
        {"stock": -1},
        {"price_cents": "12"},
        {"price_cents": True},
        {"price_cents": 12.5},
        {"colour": "red"},
        {"stock": 10**12},
        {"name": "nul\u0000inside"},
    ],
)
async def test_patch_refuses_bad_fields(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    product = await create_product(client)
    response = await client.patch(f"/api/v1/products/{product['id']}", json=body)
    assert response.status_code == 422
    assert response.json()["type"] == "urn:parity:problem:validation-error"
    assert (await client.get(f"/api/v1/products/{product['id']}")).json() == product


async def test_nul_characters_are_a_422_not_a_database_error(client: httpx.AsyncClient) -> None:
    """Found by schemathesis: Postgres cannot store U+0000 in text and the insert failed
    with a 500. The schema now says so (a pattern) and validation refuses it."""
    for field in ("name", "description"):
        body = {"sku": f"NUL-{field}", "name": "n", "price_cents": 1, "stock": 1, field: "a\x00b"}
        response = await client.post("/api/v1/products", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", field]


async def test_integral_floats_are_integers_as_in_json_schema(client: httpx.AsyncClient) -> None:
    """Found by schemathesis: JSON Schema's `integer` includes 3.0, so the API takes it."""
    product = await create_product(client, price_cents=250.0, stock=4.0)
    assert (product["price_cents"], product["stock"]) == (250, 4)
    patched = await client.patch(f"/api/v1/products/{product['id']}", json={"stock": 7.0})
    assert patched.json()["stock"] == 7


async def test_patch_schema_does_not_offer_null(client: httpx.AsyncClient) -> None:
    """Found by schemathesis: the document allowed `null` for PATCH fields, which the
    server refuses. Fields are optional, never nullable."""
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["ProductUpdate"]
    for name, field in schema["properties"].items():
        assert "anyOf" not in field, name
        assert field.get("type") != "null", name
        assert "default" not in field, name


async def test_unknown_product_is_a_404_problem(client: httpx.AsyncClient) -> None:
    for method, body in (("GET", None), ("PATCH", {"name": "x"})):
        response = await client.request(method, "/api/v1/products/999999999", json=body)
        assert response.status_code == 404
        assert response.json() == {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": "product 999999999 does not exist",
            "instance": "/api/v1/products/999999999",
        }


async def test_pages_cover_every_product_once_in_id_order(client: httpx.AsyncClient) -> None:
    created = [await create_product(client) for _ in range(7)]
    # Start just before our products, so other tests' rows do not matter.
    cursor: str | None = encode_cursor(created[0]["id"] - 1)
    seen: list[int] = []
    while cursor is not None and len(seen) < 7:
        page = (await client.get("/api/v1/products", params={"limit": 3, "cursor": cursor})).json()
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert seen[:7] == [product["id"] for product in created]


async def test_last_page_has_no_cursor(client: httpx.AsyncClient) -> None:
    product = await create_product(client)
    page = (
        await client.get("/api/v1/products", params={"cursor": encode_cursor(product["id"])})
    ).json()
    assert page == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "aWQ6LTE"},
        # Forged: "id:²" (a digit to str.isdigit(), not to int()) and an id beyond bigint.
        {"cursor": "aWQ6wrI"},
        {"cursor": "aWQ6OTIyMzM3MjAzNjg1NDc3NTgwOA"},
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
    ],
)
async def test_bad_paging_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, object]
) -> None:
    response = await client.get("/api/v1/products", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_reads_bypass_the_cache_when_redis_is_down(
    make_settings: Callable[..., Settings],
) -> None:
    async with app_client(make_settings()) as client:
        product = await create_product(client)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with app_client(make_settings(REDIS_URL=dead_redis)) as client:
        response = await client.get(f"/api/v1/products/{product['id']}")
        patched = await client.patch(f"/api/v1/products/{product['id']}", json={"stock": 5})
    assert response.status_code == 200
    assert response.headers["x-cache"] == "BYPASS"
    assert response.json() == product
    assert patched.status_code == 200


async def test_a_reader_cannot_cache_a_value_read_before_an_invalidation(redis_prefix: str) -> None:
    """The cache-aside race: 1. reader misses and notes the version 2. writer commits and
    invalidates 3. reader tries to store what it read before the write -> refused."""
    redis = Redis.from_url(REDIS_URL)
    cache = VersionedCache(
        redis, prefix=redis_prefix, namespace="race", ttl_seconds=60, timeout=1, max_timeout=3
    )
    try:
        before = await cache.lookup(1)
        await cache.invalidate(1)
        assert await cache.store(1, b"stale", before.version) is False
        assert (await cache.lookup(1)).value is None
        fresh = await cache.lookup(1)
        assert await cache.store(1, b"fresh", fresh.version) is True
        assert (await cache.lookup(1)).value == b"fresh"
    finally:
        await redis.aclose()
