"""Demo endpoints for the shutdown and load tests, mounted only when
DEMO_ENDPOINTS_ENABLED=true (404 otherwise): never on in production by accident."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

from fastapi import APIRouter, Query

router = APIRouter(prefix="/api/v1/demo", tags=["demo"])

MAX_SLOW_MS = 60_000


@router.get("/slow", summary="Answer after `ms` milliseconds")
async def slow(
    ms: Annotated[int, Query(ge=0, le=MAX_SLOW_MS, description="How long to wait")] = 1000,
) -> dict[str, int]:
    """Holds the request in flight for `ms` milliseconds, then answers with the pid of the
    worker that served it. The wait is `asyncio.sleep`: it blocks nothing else (a
    `time.sleep` would stall the whole worker and its heartbeat)."""
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms, "pid": os.getpid()}
