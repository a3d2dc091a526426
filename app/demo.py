"""Demo endpoints for the shutdown, load and loop-lag tests, mounted only when
DEMO_ENDPOINTS_ENABLED=true (404 otherwise): never on in production by accident."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated

from fastapi import APIRouter, Query

router = APIRouter(prefix="/api/v1/demo", tags=["demo"])

MAX_SLOW_MS = 60_000
# Well below GUNICORN_TIMEOUT (30 s): a worker that stops checking in is killed.
MAX_BUSY_MS = 1_000


@router.get("/slow", summary="Answer after `ms` milliseconds")
async def slow(
    ms: Annotated[int, Query(ge=0, le=MAX_SLOW_MS, description="How long to wait")] = 1000,
) -> dict[str, int]:
    """Holds the request in flight for `ms` milliseconds, then answers with the pid of the
    worker that served it. The wait is `asyncio.sleep`: it blocks nothing else (a
    `time.sleep` would stall the whole worker and its heartbeat)."""
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms, "pid": os.getpid()}


@router.get("/busy", summary="Hold the worker's event loop for `ms` milliseconds")
async def busy(
    ms: Annotated[int, Query(ge=0, le=MAX_BUSY_MS, description="How long to spin")] = 100,
) -> dict[str, int]:
    """Spins on the CPU for `ms` milliseconds without yielding, as an expensive request
    does (a large body parsed and validated, a large answer rendered): every other
    request of this worker waits meanwhile. The loop-lag tests use it to show that
    such lag does not count as a slow Redis (docs/reliability.md)."""
    deadline = time.perf_counter() + ms / 1000
    while time.perf_counter() < deadline:
        pass
    return {"busy_ms": ms, "pid": os.getpid()}
