"""Product reads and writes. Reads go through the cache; writes invalidate after commit."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.cache import CacheUnavailable, VersionedCache
from app.catalog.models import Product
from app.catalog.schemas import ProductCreate, ProductOut, ProductUpdate
from app.errors import Conflict, NotFound
from app.telemetry.metrics import CACHE_LOOKUPS, count


class CacheOutcome(StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"  # Redis unavailable: served from Postgres


def product_not_found(product_id: int) -> NotFound:
    return NotFound(f"product {product_id} does not exist")


async def list_products(session: AsyncSession, *, after_id: int, limit: int) -> list[Product]:
    """One keyset page: rows with id > after_id, in id order. One extra row is fetched by
    the caller's `limit` to learn whether another page follows."""
    rows = await session.scalars(
        select(Product).where(Product.id > after_id).order_by(Product.id).limit(limit)
    )
    return list(rows)


async def read_product_json(
    session: AsyncSession, cache: VersionedCache, product_id: int
) -> tuple[bytes, CacheOutcome]:
    """The product as JSON bytes, from Redis when cached, else from Postgres (cache-aside)."""
    payload, outcome = await _read_through(session, cache, product_id)
    count(CACHE_LOOKUPS, "product", outcome.lower())
    return payload, outcome


async def _read_through(
    session: AsyncSession, cache: VersionedCache, product_id: int
) -> tuple[bytes, CacheOutcome]:
    try:
        lookup = await cache.lookup(product_id)
    except CacheUnavailable:
        return await _product_json_from_db(session, product_id), CacheOutcome.BYPASS
    if lookup.value is not None:
        return lookup.value, CacheOutcome.HIT
    payload = await _product_json_from_db(session, product_id)
    await cache.store(product_id, payload, lookup.version)
    return payload, CacheOutcome.MISS


async def _product_json_from_db(session: AsyncSession, product_id: int) -> bytes:
    product = await session.get(Product, product_id)
    if product is None:
        raise product_not_found(product_id)
    return ProductOut.model_validate(product).model_dump_json().encode()


async def create_product(session: AsyncSession, data: ProductCreate) -> Product:
    product = Product(**data.model_dump())
    session.add(product)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(f"a product with sku {data.sku!r} already exists") from exc
    return product


async def update_product(
    session: AsyncSession, cache: VersionedCache, product_id: int, data: ProductUpdate
) -> Product:
    changes = data.changes()
    if not changes:
        product = await session.get(Product, product_id)
    else:
        product = await session.scalar(
            update(Product)
            .where(Product.id == product_id)
            .values(**changes)
            .returning(Product)
            .execution_options(populate_existing=True)
        )
        await session.commit()
        await cache.invalidate(product_id)
    if product is None:
        raise product_not_found(product_id)
    return product
