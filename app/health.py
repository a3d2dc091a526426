"""Liveness and readiness, kept apart on purpose.

`/health` (liveness) answers from the event loop alone: if it fails, the process is
wedged and restarting it helps. It never calls a dependency, because restarting every
pod when Postgres blips turns an outage into a longer one.

`/ready` (readiness) decides whether this instance should get traffic. Postgres is
required: without it no API route works. Redis is reported but not required: it only
caches and rate-limits, the cache falls back to Postgres and the limiter fails open by
default, so taking every instance out of rotation because Redis is down would turn a
degraded service into no service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from app import cache, db
from app.deps import ResourcesDep
from app.errors import problem_response
from app.lifecycle import Lifecycle, get_lifecycle

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process and its event loop answer")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _check(
    probe: Callable[[], Awaitable[None]], seconds: float, required: bool
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            await probe()
    except Exception as exc:  # any failure means "not usable", whatever its type
        error = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return {"status": "error", "required": required, "error": error}
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return {"status": "ok", "required": required, "latency_ms": latency_ms}


@router.get(
    "/ready",
    summary="Readiness: Postgres answers (required); Redis is reported",
    responses={503: {"description": "Not ready; `checks` names what failed"}},
)
async def ready(
    resources: ResourcesDep, lifecycle: Annotated[Lifecycle, Depends(get_lifecycle)]
) -> Response:
    if not lifecycle.ready:
        # Shutting down (docs/shutdown.md): answer at once, without probing anything, so
        # load balancers stop routing here while in-flight requests drain.
        return problem_response(
            503,
            detail="not ready: shutting down",
            slug="not-ready",
            instance="/ready",
            checks={"shutdown": {"status": "draining", "required": True}},
        )
    timeout = resources.settings.READY_TIMEOUT_SECONDS
    database, redis = await asyncio.gather(
        _check(lambda: db.ping(resources.engine), timeout, required=True),
        _check(lambda: cache.ping(resources.redis), timeout, required=False),
    )
    checks = {"database": database, "redis": redis}
    failed = [
        name for name, check in checks.items() if check["required"] and check["status"] != "ok"
    ]
    if failed:
        return problem_response(
            503,
            detail=f"not ready: {', '.join(failed)}",
            slug="not-ready",
            instance="/ready",
            checks=checks,
        )
    return JSONResponse({"status": "ready", "checks": checks})
