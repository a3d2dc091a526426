"""Every 4xx and 5xx of the routes as RFC 9457 `application/problem+json` (the format
itself: app/problem.py).

    AppError                      raised by services, mapped here once
     ├── NotFound                 404
     ├── Conflict                 409
     └── UnprocessableRequest     422 (well-formed, but semantically refused)

Library errors are translated at this boundary: a Postgres outage (however SQLAlchemy
or asyncpg phrase it) becomes a 503 with `Retry-After`; anything unexpected becomes a
500 whose body says nothing about the internals. Tracebacks go to the log, never to the
client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.db import is_unavailable
from app.problem import PROBLEM_MEDIA_TYPE, Problem, problem_response
from app.security import SECURITY_HEADERS
from app.telemetry.logging import REQUEST_ID

logger = logging.getLogger(__name__)


class AppError(Exception):
    status = HTTPStatus.INTERNAL_SERVER_ERROR
    slug: str | None = None  # None: the status alone says it all ("about:blank")

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class NotFound(AppError):
    status = HTTPStatus.NOT_FOUND


class Conflict(AppError):
    status = HTTPStatus.CONFLICT
    slug = "conflict"


class UnprocessableRequest(AppError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    slug = "unprocessable"


# A body of 90,000 unknown keys made a 422 of 90,001 errors (8 MB, each echoing a key):
# list the first few, count the rest, and cut every location part short.
MAX_VALIDATION_ERRORS_LISTED = 20
MAX_LOCATION_PART_CHARS = 64


def _validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # The offending input is left out on purpose: it can be huge or hold a secret.
    return [
        {"loc": [_location_part(part) for part in error["loc"]], "msg": error["msg"],
         "type": error["type"]}
        for error in errors[:MAX_VALIDATION_ERRORS_LISTED]
    ]  # fmt: skip


def _location_part(part: Any) -> str:
    text = str(part)
    if len(text) <= MAX_LOCATION_PART_CHARS:
        return text
    return text[: MAX_LOCATION_PART_CHARS - 1] + "…"


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem_response(
        exc.status,
        detail=exc.detail,
        slug=exc.slug,
        instance=request.url.path,
        headers=exc.headers,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's own 405 names only the
    first route that matched the path, so `GET /products` + `POST /products` answered
    `Allow: GET` (found by schemathesis). Asking each route "would you take this path
    with method M?" uses only the public `matches` API, whatever the router nesting."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    headers = dict(exc.headers or {})
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        headers["Allow"] = _allowed_methods(request)
    return problem_response(
        exc.status_code, detail=detail, instance=request.url.path, headers=headers
    )


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    listed = _validation_errors(found)
    detail = "the request is not valid: see `errors`"
    if len(found) > len(listed):
        detail += f" (the first {len(listed)} of {len(found)})"
    return problem_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        detail=detail,
        slug="validation-error",
        instance=request.url.path,
        errors=listed,
        errors_total=len(found),
    )


DB_RETRY_AFTER_SECONDS = 2


async def _dependency_error(request: Request, exc: Exception) -> JSONResponse:
    """SQLAlchemy and socket errors: 503 when Postgres is unreachable, else a plain 500."""
    if not is_unavailable(exc):
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(HTTPStatus.INTERNAL_SERVER_ERROR, instance=request.url.path)
    logger.warning("database unavailable on %s %s: %r", request.method, request.url.path, exc)
    return problem_response(
        HTTPStatus.SERVICE_UNAVAILABLE,
        detail="the database is unavailable; retry later",
        slug="dependency-unavailable",
        instance=request.url.path,
        headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Runs in Starlette's ServerErrorMiddleware (the traceback is logged by the server),
    # outside TelemetryMiddleware, which leaves the request id set for it: the client
    # gets the id to quote, as with every other answer.
    # The security headers are added by TelemetryMiddleware, inside ServerErrorMiddleware
    # too, so this answer gets them here (not HSTS: that needs the settings and the
    # scheme, and a 500 is no reason to pin a host).
    headers = {**dict(SECURITY_HEADERS), "Cache-Control": "no-store"}
    request_id = REQUEST_ID.get()
    if request_id:
        headers["X-Request-ID"] = request_id
    return problem_response(
        HTTPStatus.INTERNAL_SERVER_ERROR, instance=request.url.path, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    for error_class in (SQLAlchemyError, OSError, TimeoutError):
        app.add_exception_handler(error_class, _dependency_error)
    app.add_exception_handler(Exception, _unexpected_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the problem responses a route can return."""
    return {
        status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses
    }


# Problems any operation can answer, whatever its route does: the layers around it.
GLOBAL_PROBLEMS = {
    400: "The body could not be decoded (not UTF-8, or nested too deeply to parse)",
    413: "The body exceeds MAX_REQUEST_BODY_BYTES",
    503: "A dependency is unavailable, or this worker is at its connection limit "
    "(GUNICORN_WORKER_CONNECTIONS); see `Retry-After`",
    504: "The request did not complete within REQUEST_TIMEOUT_SECONDS and was cancelled",
}


def document_problem_responses(
    openapi: dict[str, Any],
    *,
    every_operation: Iterable[int] = (),
    with_body: Iterable[int] = (),
) -> dict[str, Any]:
    """Make the OpenAPI document say what the server sends: every 4xx/5xx response of
    every operation is `application/problem+json` with the `Problem` schema (FastAPI's
    generated 422 describes its default `HTTPValidationError` JSON, which we never send),
    and the statuses that middleware and the server add are listed on every operation
    (`every_operation`) or every operation with a request body (`with_body`)."""
    problem_schema = {"$ref": "#/components/schemas/Problem"}
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            added = [*every_operation, *(with_body if "requestBody" in operation else ())]
            for status in added:
                responses.setdefault(str(status), {"description": GLOBAL_PROBLEMS[status]})
            for status, response in responses.items():
                if status[:1] in {"4", "5"}:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": problem_schema}}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return openapi
