from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.catalog import service
from app.catalog.schemas import (
    InvalidCursor,
    ProductCreate,
    ProductOut,
    ProductPage,
    ProductUpdate,
    decode_cursor,
    encode_cursor,
)
from app.deps import ResourcesDep, SessionDep
from app.errors import UnprocessableRequest, problem_responses

router = APIRouter(prefix="/api/v1/products", tags=["products"])

ProductId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Product id")]
CACHE_HEADER = "X-Cache"
MAX_PAGE_SIZE = 100


@router.get(
    "",
    response_model=ProductPage,
    responses=problem_responses(422, 503),
    summary="List products, oldest first, one keyset page at a time",
)
async def list_products(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page")
    ] = None,
) -> ProductPage:
    """Keyset pagination: each page costs the same however deep you go, and rows inserted
    meanwhile never shift a page (unlike `OFFSET`)."""
    try:
        after_id = decode_cursor(cursor) if cursor else 0
    except InvalidCursor as exc:
        raise UnprocessableRequest(f"{exc}: pass back a `next_cursor` unchanged") from exc
    rows = await service.list_products(session, after_id=after_id, limit=limit + 1)
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return ProductPage(
        items=[ProductOut.model_validate(row) for row in rows[:limit]], next_cursor=next_cursor
    )


@router.get(
    "/{product_id}",
    response_model=ProductOut,
    responses=problem_responses(404, 422, 503),
    summary="Read one product (cached in Redis; `X-Cache` says HIT, MISS or BYPASS)",
)
async def get_product(
    product_id: ProductId, session: SessionDep, resources: ResourcesDep
) -> Response:
    payload, outcome = await service.read_product_json(session, resources.product_cache, product_id)
    # The cached bytes are already the response body: no ORM, no re-serialisation.
    return Response(payload, media_type="application/json", headers={CACHE_HEADER: outcome.value})


@router.post(
    "",
    response_model=ProductOut,
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409, 422, 503),
    summary="Create a product",
)
async def create_product(
    data: ProductCreate, session: SessionDep, response: Response
) -> ProductOut:
    product = await service.create_product(session, data)
    response.headers["Location"] = f"{router.prefix}/{product.id}"
    return ProductOut.model_validate(product)


@router.patch(
    "/{product_id}",
    response_model=ProductOut,
    responses=problem_responses(404, 422, 503),
    summary="Change some fields of a product (its cache entry is invalidated)",
)
async def update_product(
    product_id: ProductId, data: ProductUpdate, session: SessionDep, resources: ResourcesDep
) -> ProductOut:
    product = await service.update_product(session, resources.product_cache, product_id, data)
    return ProductOut.model_validate(product)
