from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str, Field(max_length=10_000)]
# Upper bounds keep a typo (or a fuzzer) from storing absurd values.
PriceCents = Annotated[int, Field(ge=0, le=100_000_000)]
Stock = Annotated[int, Field(ge=0, le=1_000_000_000)]


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sku: Sku
    name: Name
    description: Description = ""
    price_cents: PriceCents
    stock: Stock


class ProductUpdate(BaseModel):
    """Fields left out are not changed; `null` is not a value for any of them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name | None = None
    description: Description | None = None
    price_cents: PriceCents | None = None
    stock: Stock | None = None

    @model_validator(mode="after")
    def _no_explicit_nulls(self) -> Self:
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"null is not allowed for: {', '.join(nulls)}")
        return self

    def changes(self) -> dict[str, object]:
        return self.model_dump(exclude_unset=True)


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    sku: str
    name: str
    description: str
    price_cents: int
    stock: int
    created_at: datetime
    updated_at: datetime


class ProductPage(BaseModel):
    items: list[ProductOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class InvalidCursor(ValueError):
    pass


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id after which the page starts. Opaque to clients, so it can change shape."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("cursor is not valid") from exc
    kind, _, value = raw.partition(":")
    if kind != "id" or not value.isdigit() or len(value) > 19:
        raise InvalidCursor("cursor is not valid")
    return int(value)
