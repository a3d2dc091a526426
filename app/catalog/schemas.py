from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from app.fields import IntegralFloat, Text

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Name = Annotated[Text, Field(min_length=1, max_length=200)]
Description = Annotated[Text, Field(max_length=10_000)]
# Upper bounds keep a typo (or a fuzzer) from storing absurd values; both fit the
# `integer` columns (2**31 - 1) with room to spare.
PriceCents = Annotated[int, Field(ge=0, le=100_000_000), IntegralFloat]
Stock = Annotated[int, Field(ge=0, le=1_000_000_000), IntegralFloat]
# `None` is the "not sent" default; SkipJsonSchema keeps `null` out of the OpenAPI
# document, because an explicit null is refused (see `_no_explicit_nulls`).
NotSent = SkipJsonSchema[None]


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sku: Sku
    name: Name
    description: Description = ""
    price_cents: PriceCents
    stock: Stock


def _without_null_defaults(schema: dict[str, Any]) -> None:
    # "default": null would invite clients (and fuzzers) to send the null we refuse.
    for field_schema in schema.get("properties", {}).values():
        if field_schema.get("default", ...) is None:
            del field_schema["default"]


class ProductUpdate(BaseModel):
    """Fields left out are not changed; `null` is not a value for any of them."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_without_null_defaults)

    name: Name | NotSent = None
    description: Description | NotSent = None
    price_cents: PriceCents | NotSent = None
    stock: Stock | NotSent = None

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


MAX_ID = 2**63 - 1  # Postgres bigint


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
    # isascii(): str.isdigit() also accepts "²" and other digits int() refuses; the
    # bound keeps the id a Postgres bigint.
    if kind != "id" or not (value.isascii() and value.isdigit()) or int(value) > MAX_ID:
        raise InvalidCursor("cursor is not valid")
    return int(value)
