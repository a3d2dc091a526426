"""Orders: stock reserved atomically, never oversold, idempotent on Idempotency-Key."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.helpers import create_product


async def order(
    client: httpx.AsyncClient, lines: list[tuple[int, int]], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    body = {"items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}
    return await client.post("/api/v1/orders", json=body, headers=headers)


async def stock_of(client: httpx.AsyncClient, product: dict[str, Any]) -> int:
    stock: int = (await client.get(f"/api/v1/products/{product['id']}")).json()["stock"]
    return stock


async def test_order_reserves_stock_and_totals_the_lines(client: httpx.AsyncClient) -> None:
    lamp = await create_product(client, price_cents=1000, stock=5)
    bulb = await create_product(client, price_cents=250, stock=5)
    response = await order(client, [(bulb["id"], 4), (lamp["id"], 2)])
    assert response.status_code == 201
    placed = response.json()
    assert placed["status"] == "confirmed"
    assert placed["total_cents"] == 2 * 1000 + 4 * 250
    assert placed["items"] == sorted(
        [
            {"product_id": lamp["id"], "quantity": 2, "unit_price_cents": 1000},
            {"product_id": bulb["id"], "quantity": 4, "unit_price_cents": 250},
        ],
        key=lambda item: item["product_id"],
    )
    assert (await stock_of(client, lamp), await stock_of(client, bulb)) == (3, 1)
    fetched = await client.get(response.headers["location"])
    assert fetched.json() == placed


async def test_an_order_that_cannot_be_served_reserves_nothing(client: httpx.AsyncClient) -> None:
    plenty = await create_product(client, stock=10)
    scarce = await create_product(client, stock=1)
    response = await order(client, [(plenty["id"], 3), (scarce["id"], 2)])
    assert response.status_code == 409
    assert response.json()["type"] == "urn:parity:problem:insufficient-stock"
    assert response.json()["detail"] == f"product {scarce['id']} has 1 in stock, 2 requested"
    assert (await stock_of(client, plenty), await stock_of(client, scarce)) == (10, 1)


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ([{"product_id": 999_999_999, "quantity": 1}], "unknown-product"),
        ([], "validation-error"),
        ([{"product_id": 1, "quantity": 0}], "validation-error"),
        ([{"product_id": 1, "quantity": 1001}], "validation-error"),
        ([{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}], "validation-error"),
    ],
)
async def test_invalid_orders_are_422(
    client: httpx.AsyncClient, items: list[Any], problem: str
) -> None:
    response = await client.post("/api/v1/orders", json={"items": items})
    assert response.status_code == 422
    assert response.json()["type"] == f"urn:parity:problem:{problem}"


async def test_retried_post_with_the_same_key_returns_the_first_order(
    client: httpx.AsyncClient,
) -> None:
    product = await create_product(client, stock=10)
    key = str(uuid.uuid4())
    first = await order(client, [(product["id"], 3)], key)
    retry = await order(client, [(product["id"], 3)], key)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await stock_of(client, product) == 7


async def test_a_key_reused_for_another_order_is_refused(client: httpx.AsyncClient) -> None:
    product = await create_product(client, stock=10)
    key = str(uuid.uuid4())
    assert (await order(client, [(product["id"], 1)], key)).status_code == 201
    reused = await order(client, [(product["id"], 2)], key)
    assert reused.status_code == 422
    assert reused.json()["type"] == "urn:parity:problem:idempotency-key-reused"
    assert await stock_of(client, product) == 9


async def test_a_failed_order_does_not_consume_its_key(client: httpx.AsyncClient) -> None:
    product = await create_product(client, stock=1)
    key = str(uuid.uuid4())
    assert (await order(client, [(product["id"], 2)], key)).status_code == 409
    await client.patch(f"/api/v1/products/{product['id']}", json={"stock": 5})
    assert (await order(client, [(product["id"], 2)], key)).status_code == 201


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "naïve"])
async def test_malformed_idempotency_keys_are_422(client: httpx.AsyncClient, key: str) -> None:
    product = await create_product(client)
    response = await client.post(
        "/api/v1/orders",
        json={"items": [{"product_id": product["id"], "quantity": 1}]},
        headers={"Idempotency-Key": key.encode()},
    )
    assert response.status_code == 422


async def test_concurrent_orders_never_oversell(client: httpx.AsyncClient) -> None:
    """40 buyers of 1-3 units race for 25 units: stock ends >= 0 and every unit sold
    is backed by stock, i.e. sold + left == 25."""
    product = await create_product(client, stock=25)
    quantities = [1 + i % 3 for i in range(40)]
    responses = await asyncio.gather(*(order(client, [(product["id"], q)]) for q in quantities))
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) <= {201, 409}, statuses
    sold = sum(q for q, r in zip(quantities, responses, strict=True) if r.status_code == 201)
    left = await stock_of(client, product)
    assert left >= 0
    assert sold + left == 25
    assert left < 3  # the race was real: stock ran out before the buyers did
    assert statuses[409] > 0


async def test_concurrent_retries_with_one_key_create_one_order(client: httpx.AsyncClient) -> None:
    product = await create_product(client, stock=100)
    key = str(uuid.uuid4())
    responses = await asyncio.gather(*(order(client, [(product["id"], 2)], key) for _ in range(20)))
    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert await stock_of(client, product) == 98


async def test_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/orders/999999999")
    assert response.status_code == 404
    assert response.json()["detail"] == "order 999999999 does not exist"
