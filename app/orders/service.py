"""Placing an order: reserve stock and record the order in one transaction.

No oversell under concurrency, without SELECT ... FOR UPDATE in Python: each line is a
conditional `UPDATE products SET stock = stock - q WHERE id = :id AND stock >= q`.
Postgres takes the row lock, and a waiting transaction re-checks `stock >= q` against
the row as the winner left it, so two buyers of the last item cannot both succeed.
Lines are reserved in product-id order so that two multi-line orders cannot deadlock.
The `stock >= 0` CHECK constraint backs this up in the schema.

Idempotency: the order row with its `Idempotency-Key` is inserted first, with
`ON CONFLICT DO NOTHING`. A concurrent request with the same key blocks on the unique
index until the first transaction ends; if that one committed, this one finds its order
and replays it; if it rolled back (e.g. out of stock), this one proceeds as new.
A failed order therefore never consumes its key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.cache import VersionedCache
from app.catalog.models import Product
from app.errors import Conflict, NotFound, UnprocessableRequest
from app.orders.models import Order, OrderItem
from app.orders.schemas import OrderCreate, OrderLine


class InsufficientStock(Conflict):
    slug = "insufficient-stock"


class IdempotencyKeyReused(UnprocessableRequest):
    slug = "idempotency-key-reused"


class UnknownProduct(UnprocessableRequest):
    slug = "unknown-product"


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: Order
    replayed: bool  # True when an earlier request with the same key created it


async def place_order(
    session: AsyncSession, cache: VersionedCache, request: OrderCreate, idempotency_key: str | None
) -> PlacedOrder:
    fingerprint = request.fingerprint()
    async with session.begin():
        order_id = await _insert_order_row(session, idempotency_key, fingerprint)
        if order_id is None:
            assert idempotency_key is not None
            return PlacedOrder(await _replay(session, idempotency_key, fingerprint), replayed=True)
        lines = sorted(request.items, key=lambda line: line.product_id)
        items = [await _reserve(session, order_id, line) for line in lines]
        session.add_all(items)
        await session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(
                status="confirmed", total_cents=sum(i.quantity * i.unit_price_cents for i in items)
            )
        )
    # Stock is part of the cached product, so the entries are stale now.
    await cache.invalidate(*(line.product_id for line in lines))
    return PlacedOrder(await get_order(session, order_id), replayed=False)


async def _insert_order_row(session: AsyncSession, key: str | None, fingerprint: str) -> int | None:
    """The new order's id, or None if an order with this key exists already."""
    statement = (
        insert(Order)
        .values(
            idempotency_key=key, request_fingerprint=fingerprint, status="pending", total_cents=0
        )
        .on_conflict_do_nothing(index_elements=[Order.idempotency_key])
        .returning(Order.id)
    )
    order_id: int | None = await session.scalar(statement)
    return order_id


async def _replay(session: AsyncSession, key: str, fingerprint: str) -> Order:
    order = await session.scalar(select(Order).where(Order.idempotency_key == key))
    assert order is not None, "a conflicting key belongs to a committed order"
    if order.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different order; use a new key per order"
        )
    return order


async def _reserve(session: AsyncSession, order_id: int, line: OrderLine) -> OrderItem:
    price = await session.scalar(
        update(Product)
        .where(Product.id == line.product_id, Product.stock >= line.quantity)
        .values(stock=Product.stock - line.quantity)
        .returning(Product.price_cents)
    )
    if price is None:
        stock = await session.scalar(select(Product.stock).where(Product.id == line.product_id))
        if stock is None:
            raise UnknownProduct(f"product {line.product_id} does not exist")
        raise InsufficientStock(
            f"product {line.product_id} has {stock} in stock, {line.quantity} requested"
        )
    return OrderItem(
        order_id=order_id,
        product_id=line.product_id,
        quantity=line.quantity,
        unit_price_cents=price,
    )


async def get_order(session: AsyncSession, order_id: int) -> Order:
    order = await session.scalar(
        select(Order).where(Order.id == order_id).execution_options(populate_existing=True)
    )
    if order is None:
        raise NotFound(f"order {order_id} does not exist")
    return order
