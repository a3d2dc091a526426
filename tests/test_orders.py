"""Orders: stock reserved atomically, never oversold, idempotent on Idempotency-Key (a key
per client, for IDEMPOTENCY_KEY_TTL_HOURS)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.client_identity import issue_key
from parity.harness.stack import GunicornProcess, NativeStack
from tests.conftest import REDIS_URL
from tests.helpers import create_product, create_product_sync


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


async def test_concurrent_retries_of_an_expired_key_create_one_new_order(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """An order whose key expired, then 20 concurrent POSTs with that key: each may find
    the expired key and release it, and exactly one new order is placed; the others
    replay it."""
    product = await create_product(client, stock=100)
    key = str(uuid.uuid4())
    old = (await order(client, [(product["id"], 1)], key)).json()["id"]
    await backdate_order(database_url, old, hours=25)
    responses = await asyncio.gather(*(order(client, [(product["id"], 1)], key) for _ in range(20)))
    assert {response.status_code for response in responses} == {201}
    new = {response.json()["id"] for response in responses}
    assert len(new) == 1
    assert old not in new
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert await stock_of(client, product) == 98


async def test_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/orders/999999999")
    assert response.status_code == 404
    assert response.json()["detail"] == "order 999999999 does not exist"


# --- Idempotency keys belong to a client, and expire (issue 18, item 5) ----------------
# On a real Gunicorn: clients are told apart by their connection's source address (the
# server trusts X-Forwarded-For from 127.0.0.1 only, so 127.0.0.2-4 are themselves) or
# by an API key it issued.

OWNER, INTRUDER, PROBER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
ISSUED_KEY, ISSUED_HASH = issue_key()


@pytest.fixture(scope="module")
def server(database_url: str, redis_prefix: str) -> Iterator[GunicornProcess]:
    """2 workers on the session database, the limiter off, ISSUED_KEY issued."""
    stack = NativeStack(database_url=database_url)
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"{redis_prefix}orders:",
        "RATE_LIMIT_ENABLED": "false",
        "RATE_LIMIT_API_KEY_HASHES": ISSUED_HASH,
        "LOG_LEVEL": "info",
    }
    with stack.start_gunicorn(workers=2, env=env, host="127.0.0.1") as started:
        yield started


def post_order(
    server: GunicornProcess,
    address: str,
    product: dict[str, Any],
    quantity: int,
    key: str,
    api_key: str | None = None,
) -> httpx.Response:
    """POST /api/v1/orders from `address` with Idempotency-Key `key`."""
    headers = {"Idempotency-Key": key} | ({"X-API-Key": api_key} if api_key else {})
    body = {"items": [{"product_id": product["id"], "quantity": quantity}]}
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=server.base_url, transport=transport, timeout=10) as client:
        return client.post("/api/v1/orders", json=body, headers=headers)


def new_order_id(response: httpx.Response) -> int:
    """The id of an order this response placed (201, not a replay)."""
    assert response.status_code == 201, response.text
    assert "idempotent-replayed" not in response.headers
    order_id: int = response.json()["id"]
    return order_id


def replayed_order_id(response: httpx.Response) -> int:
    assert response.status_code == 201, response.text
    assert response.headers["idempotent-replayed"] == "true"
    order_id: int = response.json()["id"]
    return order_id


@pytest.mark.gunicorn
def test_another_client_reusing_a_key_gets_its_own_order_not_a_replay_or_a_leak(
    server: GunicornProcess,
) -> None:
    """Issue 18: a second client sending the same key got the first client's order
    replayed, or a 422 on another body (the key exists). 1. the owner orders with key K
    2. another client sends K with the same body  -> a new order of its own
    3. a third sends K with another body  -> a new order, no 422 4. the owner retries
    -> its own order replayed."""
    product = create_product_sync(server.base_url, stock=10)
    key = f"order-{uuid.uuid4()}"
    owners = new_order_id(post_order(server, OWNER, product, 1, key))
    intruders = new_order_id(post_order(server, INTRUDER, product, 1, key))
    probers = new_order_id(post_order(server, PROBER, product, 2, key))
    assert len({owners, intruders, probers}) == 3
    assert replayed_order_id(post_order(server, OWNER, product, 1, key)) == owners
    assert post_order(server, OWNER, product, 2, key).status_code == 422  # own key reused


@pytest.mark.gunicorn
def test_a_squatted_key_does_not_fail_the_owners_order(server: GunicornProcess) -> None:
    """Another client uses a predictable key first, with another body  -> the owner's
    order with that key is placed all the same (was a 422 `idempotency-key-reused`)."""
    product = create_product_sync(server.base_url, stock=10)
    key = "checkout-cart-42-" + uuid.uuid4().hex[:6]
    new_order_id(post_order(server, INTRUDER, product, 3, key))
    owners = new_order_id(post_order(server, OWNER, product, 1, key))
    assert replayed_order_id(post_order(server, OWNER, product, 1, key)) == owners


@pytest.mark.gunicorn
def test_an_issued_api_key_owns_its_idempotency_keys_from_any_address(
    server: GunicornProcess,
) -> None:
    """A client identified by an issued API key retries from another address (a mobile
    client changing networks)  -> its order is replayed; the address alone is another
    client."""
    product = create_product_sync(server.base_url, stock=10)
    key = f"order-{uuid.uuid4()}"
    first = new_order_id(post_order(server, OWNER, product, 1, key, api_key=ISSUED_KEY))
    retried = post_order(server, INTRUDER, product, 1, key, api_key=ISSUED_KEY)
    assert replayed_order_id(retried) == first
    assert new_order_id(post_order(server, OWNER, product, 1, key)) != first


@pytest.mark.gunicorn
def test_an_expired_key_places_a_new_order_and_the_old_order_stays(
    server: GunicornProcess, database_url: str
) -> None:
    """1. an order with key K  2. its key older than IDEMPOTENCY_KEY_TTL_HOURS (24: the
    order's created_at moved back 25 h)  3. K again  -> a new order, not a replay; the
    old order is still there; a retry of the new one replays it."""
    product = create_product_sync(server.base_url, stock=10)
    key = f"order-{uuid.uuid4()}"
    old = new_order_id(post_order(server, OWNER, product, 1, key))
    asyncio.run(backdate_order(database_url, old, hours=25))
    new = new_order_id(post_order(server, OWNER, product, 1, key))
    assert new != old
    assert replayed_order_id(post_order(server, OWNER, product, 1, key)) == new
    assert httpx.get(f"{server.base_url}/api/v1/orders/{old}", timeout=10).status_code == 200


async def backdate_order(database_url: str, order_id: int, hours: int) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE orders SET created_at = created_at - make_interval(hours => :h) "
                    "WHERE id = :id"
                ),
                {"h": hours, "id": order_id},
            )
    finally:
        await engine.dispose()
