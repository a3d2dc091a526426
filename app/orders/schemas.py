from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.fields import IntegralFloat

MAX_QUANTITY = 1_000
MAX_LINES = 50


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    product_id: Annotated[int, Field(ge=1, le=2**63 - 1), IntegralFloat]
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY), IntegralFloat]


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[OrderLine] = Field(min_length=1, max_length=MAX_LINES)

    @model_validator(mode="after")
    def _one_line_per_product(self) -> Self:
        ids = [line.product_id for line in self.items]
        if len(ids) != len(set(ids)):
            raise ValueError("each product may appear in one line only")
        return self

    def fingerprint(self) -> str:
        """Equal for equal orders, whatever the line order or JSON formatting."""
        lines = sorted((line.product_id, line.quantity) for line in self.items)
        return hashlib.sha256(repr(lines).encode()).hexdigest()


class OrderItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    product_id: int
    quantity: int
    unit_price_cents: int


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    status: str
    total_cents: int
    items: list[OrderItemOut]
    created_at: datetime
