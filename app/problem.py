"""RFC 9457 problem details: the one shape of every error this service answers.

A leaf module: it imports nothing from the app, so the lowest layer (app/http_protocol.py,
which answers before there is a request or an app) and the middleware and routes above
it build the same bodies, with the same media type, from one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Problem types are URNs: stable identifiers a client can switch on, not links.
PROBLEM_TYPE_PREFIX = "urn:parity:problem:"


class Problem(BaseModel):
    """RFC 9457 problem details, as documented in the OpenAPI schema. Extension members
    (e.g. `errors`) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", examples=["urn:parity:problem:insufficient-stock"])
    title: str = Field(examples=["Conflict"])
    status: int = Field(ge=400, le=599, examples=[409])
    detail: str | None = Field(None, examples=["product 42 has 1 left, 3 requested"])
    instance: str | None = Field(None, examples=["/api/v1/orders"])


def problem_body(
    status: int,
    *,
    detail: str | None = None,
    slug: str | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    """The problem object: `type` is `urn:parity:problem:<slug>`, or `about:blank` when
    the status says it all; `title` is the status' standard phrase."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + slug if slug else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    body.update(extensions)
    return body


def problem_bytes(status: int, *, detail: str | None = None, **fields: Any) -> bytes:
    """The body as bytes, encoded as Starlette's JSONResponse encodes it: for answers
    written straight to a transport or as a raw ASGI message."""
    body = problem_body(status, detail=detail, **fields)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def problem_response(
    status: int,
    *,
    detail: str | None = None,
    slug: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem+json response (also usable as an ASGI app by middleware)."""
    body = problem_body(status, detail=detail, slug=slug, instance=instance, **extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)
