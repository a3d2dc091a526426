"""Placing an order: reserve stock and record the order in one transaction.

No oversell under concurrency, without SELECT ... FOR UPDATE in Python: each line is a
conditional `UPDATE products SET stock = stock - q WHERE id = :id AND stock >= q`.
Postgres takes the row lock, and a waiting transaction re-checks `stock >= q` against
the row as the winner left it, so two buyers of the last item cannot both succeed.
Lines are reserved in product-id order so that two multi-line orders cannot deadlock.
The `stock >= 0` CHECK constraint backs this up in the schema.

Round trips (issue 16): the last line's UPDATE, the INSERT of every line and the
order's confirmation are one statement (CONFIRM), and the answer is built from what
the statements returned, not read back. A one-line order is BEGIN, the order row's
INSERT, CONFIRM, COMMIT, plus the pool's pre-ping, then one Redis call for the cache
(parity bench orders measures it against the same SQL in pgbench).

Idempotency (the IETF Idempotency-Key draft's model): a key belongs to the client that
sent it (`client_identity`: a verified API key, else the address) and lives for
IDEMPOTENCY_KEY_TTL_HOURS. Another client's identical key is another key: it neither
replays this client's order, nor learns that the key exists, nor squats it (issue 18).

The order row with its (client, key) is inserted first, with `ON CONFLICT DO NOTHING`
on the unique (client_identity, idempotency_key). A concurrent request with the same
key blocks on the unique index until the first transaction ends; if that one
committed, this one finds its order and replays it; if it rolled back (e.g. out of
stock), this one proceeds as new. A failed order therefore never consumes its key.

Expiry needs no cleanup job: when the conflicting order is older than the TTL, its key
is released (set to NULL on that order, which stays as it was) in the same transaction,
and the insert is tried again; keys never reused simply stay on their orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.cache import VersionedCache
from app.catalog.models import Product
from app.errors import Conflict, NotFound, UnprocessableRequest
from app.orders.models import Order
from app.orders.schemas import OrderCreate, OrderItemOut, OrderLine, OrderOut


class InsufficientStock(Conflict):
    slug = "insufficient-stock"


class IdempotencyKeyReused(UnprocessableRequest):
    slug = "idempotency-key-reused"


class UnknownProduct(UnprocessableRequest):
    slug = "unknown-product"


class IdempotencyKeyBusy(Conflict):
    slug = "idempotency-key-busy"


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    client: str  # the identity the key belongs to (app/client_identity.py)
    key: str
    ttl: timedelta


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: OrderOut
    replayed: bool  # True when an earlier request with the same key created it


# Attempts at claiming a key: the first finds an expired order and releases its key,
# the second inserts. A third is needed only if the key changed hands meanwhile.
_CLAIM_ATTEMPTS = 3


async def place_order(
    session: AsyncSession,
    cache: VersionedCache,
    request: OrderCreate,
    idempotency: IdempotencyKey | None,
) -> PlacedOrder:
    fingerprint = request.fingerprint()
    lines = sorted(request.items, key=lambda line: line.product_id)
    async with session.begin():
        claimed = await _claim(session, idempotency, fingerprint)
        if isinstance(claimed, Order):
            return PlacedOrder(OrderOut.model_validate(claimed), replayed=True)
        placed = await _reserve_and_confirm(session, claimed, lines)
    # Stock is part of the cached product, so the entries are stale now.
    await cache.invalidate(*(line.product_id for line in lines))
    return PlacedOrder(placed, replayed=False)


async def _claim(
    session: AsyncSession, idempotency: IdempotencyKey | None, fingerprint: str
) -> int | Order:
    """The new order's id, or the client's earlier order with this key (a replay)."""
    for _ in range(_CLAIM_ATTEMPTS):
        order_id = await _insert_order_row(session, idempotency, fingerprint)
        if order_id is not None:
            return order_id
        assert idempotency is not None, "only a keyed insert can conflict"
        found = await _keyed_order(session, idempotency)
        if found is None:  # released by a concurrent request since: claim it again
            continue
        order, expired = found
        if not expired:
            return _replay(order, fingerprint)
        await _release_key(session, order.id, idempotency)
    raise IdempotencyKeyBusy("this Idempotency-Key is being claimed concurrently; retry")


async def _insert_order_row(
    session: AsyncSession, idempotency: IdempotencyKey | None, fingerprint: str
) -> int | None:
    """The new order's id, or None if the client has an order with this key already."""
    owner = {}
    if idempotency is not None:
        owner = {"client_identity": idempotency.client, "idempotency_key": idempotency.key}
    statement = (
        insert(Order)
        .values(request_fingerprint=fingerprint, status="pending", total_cents=0, **owner)
        .on_conflict_do_nothing(index_elements=[Order.client_identity, Order.idempotency_key])
        .returning(Order.id)
    )
    order_id: int | None = await session.scalar(statement)
    return order_id


async def _keyed_order(
    session: AsyncSession, idempotency: IdempotencyKey
) -> tuple[Order, bool] | None:
    """The client's order with this key and whether the key has expired (by the
    database's clock, which also wrote `created_at`)."""
    expired = (Order.created_at <= func.now() - idempotency.ttl).label("expired")
    row = (
        await session.execute(
            select(Order, expired).where(
                Order.client_identity == idempotency.client,
                Order.idempotency_key == idempotency.key,
            )
        )
    ).one_or_none()
    return None if row is None else (row[0], bool(row[1]))


async def _release_key(session: AsyncSession, order_id: int, idempotency: IdempotencyKey) -> None:
    """The expired key leaves its order (which is kept), so the insert can take it.
    Two requests releasing at once: the second waits for the first's row lock, then
    finds the key gone and claims again (replaying the first's new order)."""
    await session.execute(
        update(Order)
        .where(Order.id == order_id, Order.idempotency_key == idempotency.key)
        .values(idempotency_key=None)
    )


def _replay(order: Order, fingerprint: str) -> Order:
    if order.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different order; use a new key per order"
        )
    return order


# The last line (the highest product id, so stock rows are still locked in id order)
# is reserved, every line recorded and the order confirmed in one statement: no row
# comes back when the last line cannot be served, and the caller raises, which rolls
# back the whole transaction. Earlier lines of a multi-line order were reserved one by
# one before it (_reserve) and come in as arrays.
CONFIRM = text(
    """
WITH reserved AS (
    UPDATE products
    SET stock = stock - CAST(:quantity AS integer), updated_at = now()
    WHERE id = CAST(:product_id AS bigint) AND stock >= CAST(:quantity AS integer)
    RETURNING price_cents
), recorded AS (
    INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
    SELECT CAST(:order_id AS bigint), CAST(:product_id AS bigint),
           CAST(:quantity AS integer), price_cents
    FROM reserved
    UNION ALL
    SELECT CAST(:order_id AS bigint), earlier.product_id, earlier.quantity, earlier.price
    FROM unnest(CAST(:product_ids AS bigint[]), CAST(:quantities AS integer[]),
                CAST(:prices AS integer[])) AS earlier(product_id, quantity, price)
)
UPDATE orders
SET status = 'confirmed',
    total_cents = CAST(:earlier_total AS bigint) + CAST(:quantity AS bigint) * reserved.price_cents
FROM reserved
WHERE orders.id = CAST(:order_id AS bigint)
RETURNING orders.created_at, reserved.price_cents
"""
)


async def _reserve_and_confirm(
    session: AsyncSession, order_id: int, lines: list[OrderLine]
) -> OrderOut:
    """Reserve every line's stock, record the lines and confirm the order; the order as
    the client sees it, built from what the statements returned (no second read)."""
    *earlier, last = lines
    items = [await _reserve(session, line) for line in earlier]
    earlier_total = sum(item.quantity * item.unit_price_cents for item in items)
    row = (
        await session.execute(
            CONFIRM,
            {
                "order_id": order_id,
                "product_id": last.product_id,
                "quantity": last.quantity,
                "product_ids": [item.product_id for item in items],
                "quantities": [item.quantity for item in items],
                "prices": [item.unit_price_cents for item in items],
                "earlier_total": earlier_total,
            },
        )
    ).one_or_none()
    if row is None:
        await _refuse(session, last)
    created_at, price = row
    items.append(
        OrderItemOut(product_id=last.product_id, quantity=last.quantity, unit_price_cents=price)
    )
    return OrderOut(
        id=order_id,
        status="confirmed",
        total_cents=earlier_total + last.quantity * price,
        items=items,
        created_at=created_at,
    )


async def _reserve(session: AsyncSession, line: OrderLine) -> OrderItemOut:
    price = await session.scalar(
        update(Product)
        .where(Product.id == line.product_id, Product.stock >= line.quantity)
        .values(stock=Product.stock - line.quantity)
        .returning(Product.price_cents)
    )
    if price is None:
        await _refuse(session, line)
    return OrderItemOut(product_id=line.product_id, quantity=line.quantity, unit_price_cents=price)


async def _refuse(session: AsyncSession, line: OrderLine) -> NoReturn:
    """Why `line` could not be reserved: the product is unknown, or short of stock."""
    stock = await session.scalar(select(Product.stock).where(Product.id == line.product_id))
    if stock is None:
        raise UnknownProduct(f"product {line.product_id} does not exist")
    raise InsufficientStock(
        f"product {line.product_id} has {stock} in stock, {line.quantity} requested"
    )


async def get_order(session: AsyncSession, order_id: int) -> Order:
    order = await session.scalar(
        select(Order).where(Order.id == order_id).execution_options(populate_existing=True)
    )
    if order is None:
        raise NotFound(f"order {order_id} does not exist")
    return order
