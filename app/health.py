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
import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app import cache, db
from app.deps import Resources, ResourcesDep
from app.lifecycle import Lifecycle, get_lifecycle
from app.probe_paths import HEALTH_PATH, READY_PATH
from app.problem import problem_response

router = APIRouter(tags=["health"])
# How long one worker reuses its last readiness check (a load balancer checks every
# second or more; staler would delay noticing an outage).
READY_CACHE_SECONDS = 1.0


@router.get(HEALTH_PATH, summary="Liveness: the process and its event loop answer")
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


async def _check_dependencies(resources: Resources) -> dict[str, dict[str, Any]]:
    settings = resources.settings
    timeout = settings.READY_TIMEOUT_SECONDS
    # Redis within its own bound, as requests use it: the client's socket timeout is only
    # a looser backstop (app/cache.py), and a hung Redis must not slow /ready down past a
    # load balancer's check timeout (HAProxy's is 1 s).
    redis_timeout = min(timeout, settings.REDIS_TIMEOUT_SECONDS)
    database, redis = await asyncio.gather(
        _check(lambda: db.ping(resources.engine), timeout, required=True),
        _check(lambda: cache.ping(resources.redis), redis_timeout, required=False),
    )
    return {"database": database, "redis": redis}


class ReadinessCache:
    """This worker's last dependency check, reused for READY_CACHE_SECONDS, with at most
    one check in flight: 200 connections flooding /ready cost Postgres one ping a second
    per worker, instead of a ping each that queued for the pool until some answered
    "database timeout" and a load balancer would have pulled a healthy instance."""

    def __init__(self) -> None:
        self._checks: dict[str, dict[str, Any]] | None = None
        self._checked_at = -math.inf
        self._in_flight: asyncio.Future[dict[str, dict[str, Any]]] | None = None

    async def get(
        self, check: Callable[[], Awaitable[dict[str, dict[str, Any]]]]
    ) -> dict[str, dict[str, Any]]:
        if self._checks is not None and time.monotonic() - self._checked_at < READY_CACHE_SECONDS:
            return self._checks
        if self._in_flight is None:
            self._in_flight = asyncio.ensure_future(check())
            self._in_flight.add_done_callback(self._remember)
        # shield: a caller that gives up (client gone) must not cancel the others' check.
        return await asyncio.shield(self._in_flight)

    def _remember(self, done: asyncio.Future[dict[str, dict[str, Any]]]) -> None:
        self._in_flight = None
        if not done.cancelled() and done.exception() is None:
            self._checks, self._checked_at = done.result(), time.monotonic()


@router.get(
    READY_PATH,
    summary="Readiness: Postgres answers (required); Redis is reported",
    responses={503: {"description": "Not ready; `checks` names what failed"}},
)
async def ready(
    request: Request,
    resources: ResourcesDep,
    lifecycle: Annotated[Lifecycle, Depends(get_lifecycle)],
) -> Response:
    if not lifecycle.ready:
        # Shutting down (docs/shutdown.md): answer at once, without probing anything, so
        # load balancers stop routing here while in-flight requests drain.
        return problem_response(
            503,
            detail="not ready: shutting down",
            slug="not-ready",
            instance=READY_PATH,
            checks={"shutdown": {"status": "draining", "required": True}},
        )
    readiness: ReadinessCache = request.app.state.readiness
    checks = await readiness.get(lambda: _check_dependencies(resources))
    failed = [
        name for name, check in checks.items() if check["required"] and check["status"] != "ok"
    ]
    if failed:
        return problem_response(
            503,
            detail=f"not ready: {', '.join(failed)}",
            slug="not-ready",
            instance=READY_PATH,
            checks=checks,
        )
    return JSONResponse({"status": "ready", "checks": checks})
