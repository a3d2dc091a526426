"""`GET /metrics`: the Prometheus text exposition.

Under Gunicorn whichever worker answers the scrape reads every worker's files (the
live ones, and the archives the dead ones' counters were compacted into) and adds them
up, so successive scrapes agree and a recycled worker's counts are not lost. Without a
multiprocess directory (the app in an in-process test, a plain `uvicorn app.main:app`)
it serves the default registry.
"""

from __future__ import annotations

import os
from functools import cache

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)

from app.probe_paths import METRICS_PATH
from app.telemetry.metric_files import LockedMultiProcessCollector
from app.telemetry.multiprocess import ENV_VAR, is_multiprocess

router = APIRouter(tags=["telemetry"])


@cache
def _multiprocess_registry() -> CollectorRegistry:
    # A registry of its own: registering the collector on the default registry would
    # export this worker's in-memory values a second time. It reads the files anew on
    # every collect, so one instance serves every scrape; under a lock the master's
    # compaction of dead workers' files respects (app/telemetry/metric_files.py).
    registry = CollectorRegistry(auto_describe=False)
    LockedMultiProcessCollector(registry, os.environ[ENV_VAR])
    return registry


def scrape_registry() -> CollectorRegistry:
    return _multiprocess_registry() if is_multiprocess() else REGISTRY


# A plain `def`: FastAPI runs it in the thread pool, so reading the files (more of
# them as workers recycle) never stalls the event loop that serves requests.
@router.get(METRICS_PATH, include_in_schema=False)
def metrics() -> Response:
    """Every metric of every worker, in the Prometheus text format."""
    # Text format 0.0.4: what every Prometheus 2.x and 3.x scrapes; all our names are
    # plain ASCII, so the newer formats would add nothing (no exemplars here anyway).
    return Response(generate_latest(scrape_registry()), media_type=CONTENT_TYPE_PLAIN_0_0_4)
