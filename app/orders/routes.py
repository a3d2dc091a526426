from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response, status

from app.deps import ResourcesDep, SessionDep
from app.errors import problem_responses
from app.orders import service
from app.orders.schemas import OrderCreate, OrderOut

router = APIRouter(prefix="/api/v1/orders", tags=["orders"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique printable string (a UUID is ideal). Retrying with the same "
        "key returns the first order instead of placing a second one. A key is yours alone "
        "(your API key's, else your address's) and expires after IDEMPOTENCY_KEY_TTL_HOURS "
        "(24 by default): the same key then places a new order.",
    ),
]


@router.post(
    "",
    response_model=OrderOut,
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409, 422, 503),
    summary="Place an order: stock is reserved atomically for every line, or for none",
)
async def place_order(
    data: OrderCreate,
    session: SessionDep,
    resources: ResourcesDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> OrderOut:
    """409 `insufficient-stock` when a line cannot be served (nothing is reserved then);
    422 `unknown-product` for a product id that does not exist; 422
    `idempotency-key-reused` when this client used the key before for a different order
    (within the key's lifetime). A replay answers 201 with the original order and
    `Idempotent-Replayed: true`."""
    idempotency = None
    if idempotency_key is not None:
        settings = resources.settings
        idempotency = service.IdempotencyKey(
            client=resources.clients.identify(request.scope),
            key=idempotency_key,
            ttl=timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS),
        )
    placed = await service.place_order(session, resources.product_cache, data, idempotency)
    response.headers["Location"] = f"{router.prefix}/{placed.order.id}"
    if placed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return placed.order


@router.get(
    "/{order_id}",
    response_model=OrderOut,
    responses=problem_responses(404, 422, 503),
    summary="Read one order",
)
async def get_order(
    order_id: Annotated[int, Path(ge=1, le=2**63 - 1)], session: SessionDep
) -> OrderOut:
    return OrderOut.model_validate(await service.get_order(session, order_id))
