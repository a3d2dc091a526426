"""The application factory and its lifespan.

`gunicorn app.main:app -c gunicorn.conf.py` imports this module in every worker. Nothing
here connects at import time: the lifespan opens the engine and the Redis client after
the fork, in each worker, and closes them in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from opentelemetry.instrumentation.utils import suppress_instrumentation
from starlette.middleware import Middleware

from app import __version__, cache, db, demo
from app.breaker import CircuitBreaker
from app.cache import VersionedCache, create_redis
from app.catalog.routes import router as catalog_router
from app.client_identity import ClientIdentifier
from app.deps import Resources
from app.docs_ui import install_docs
from app.errors import document_problem_responses, install_error_handlers
from app.health import ReadinessCache
from app.health import router as health_router
from app.input_limits import BodySizeLimitMiddleware, HandlerTimeoutMiddleware
from app.lifecycle import DrainingMiddleware, Lifecycle
from app.listeners import ListenerMiddleware
from app.orders.routes import router as orders_router
from app.ratelimit.autopipeline import AutoPipeline
from app.ratelimit.middleware import RateLimitMiddleware, document_rate_limits
from app.security import SecurityHeaders, cors_middleware
from app.settings import Settings, load_settings, process_settings
from app.telemetry import database as database_telemetry
from app.telemetry.exposition import router as metrics_router
from app.telemetry.metrics import APP_INFO
from app.telemetry.middleware import KNOWN_METHODS, TelemetryMiddleware
from app.telemetry.multiprocess import is_multiprocess
from app.telemetry.tracing import FLUSH_SHARE_OF_LIFESPAN_SHUTDOWN, Tracing, start_tracing

logger = logging.getLogger(__name__)


async def open_resources(
    settings: Settings, stack: AsyncExitStack, tracing: Tracing | None = None
) -> Resources:
    """Create the per-worker clients; `stack` closes them in reverse order. Connects
    lazily, so a dependency that is down now does not stop the worker from booting."""
    engine = db.create_engine(settings)
    stack.push_async_callback(engine.dispose)
    redis = create_redis(settings)
    stack.push_async_callback(redis.aclose)
    if settings.METRICS_ENABLED:
        database_telemetry.observe_statements(engine.sync_engine)
    if tracing is not None:
        tracing.instrument_engine(engine)
        tracing.instrument_redis(redis)
    breaker = CircuitBreaker(
        "redis",
        failure_threshold=settings.REDIS_BREAKER_FAILURES,
        reset_after=settings.REDIS_BREAKER_RESET_SECONDS,
    )
    product_cache = VersionedCache(
        redis,
        prefix=settings.REDIS_KEY_PREFIX,
        namespace="product",
        ttl_seconds=settings.CACHE_TTL_SECONDS,
        timeout=settings.REDIS_TIMEOUT_SECONDS,
        max_timeout=settings.redis_call_max_seconds,
        breaker=breaker,
        memory_share=settings.CACHE_REDIS_MEMORY_SHARE,
    )
    sessionmaker = db.create_sessionmaker(engine)
    pipeline = AutoPipeline(redis)
    clients = ClientIdentifier(settings)
    return Resources(
        settings, engine, sessionmaker, redis, product_cache, breaker, pipeline, clients
    )


async def report_dependencies(resources: Resources) -> None:
    """Log at boot whether Postgres and Redis answer. Never raises: a worker whose
    lifespan fails makes Gunicorn halt the whole server, and /ready already tells a
    load balancer to wait."""
    timeout = resources.settings.READY_TIMEOUT_SECONDS
    # Redis within its own bound: the client's socket timeout is only a backstop.
    redis_timeout = min(timeout, resources.settings.REDIS_TIMEOUT_SECONDS)
    probes: dict[str, tuple[Callable[[], Awaitable[None]], float]] = {
        "postgres": (lambda: db.ping(resources.engine), timeout),
        "redis": (lambda: cache.ping(resources.redis), redis_timeout),
    }
    for name, (probe, seconds) in probes.items():
        try:
            # Not a request: no trace of its own for a ping.
            with suppress_instrumentation():
                async with asyncio.timeout(seconds):
                    await probe()
        except Exception as exc:
            logger.warning("%s is not reachable at startup (%r); /ready reports it", name, exc)


def make_lifespan(settings: Settings) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            # Per worker, after the fork; shut down last, so the spans of everything
            # closed before it are sent too, within its share of the shutdown budget.
            tracing = start_tracing(settings)
            if tracing is not None:
                flush_within = (
                    settings.SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS * FLUSH_SHARE_OF_LIFESPAN_SHUTDOWN
                )
                stack.push_async_callback(tracing.shutdown, flush_within)
            resources = await open_resources(settings, stack, tracing)
            await report_dependencies(resources)
            if settings.METRICS_ENABLED and not is_multiprocess():
                # Under Gunicorn the post_fork hook sets it, with the worker count.
                APP_INFO.labels(__version__, "1").set(1)
            logger.info(
                "worker ready to serve (pool %d+%d connections, tracing %s)",
                settings.DB_POOL_SIZE,
                settings.DB_MAX_OVERFLOW,
                "on" if tracing is not None else "off",
            )
            yield {"resources": resources, "tracing": tracing}
            logger.info("lifespan shutdown: closing Redis and the database pool")

    return lifespan


def build_middleware(settings: Settings, lifecycle: Lifecycle) -> list[Middleware]:
    """The middleware stack, outermost first. All of it is pure ASGI (no
    BaseHTTPMiddleware: it is slow, loses contextvars and turns exceptions raised in it
    into 500s). The order is deliberate:

    1. telemetry (request id, access log, metrics, tracing): outermost, so it sees and
       times every response, including the 429/413/503 produced further in; it also
       adds the security headers, in the same wrapper around `send` (one layer less);
    2. response headers that every answer carries (draining);
    3. admission control: the listener guard (probes and metrics only on INTERNAL_BIND),
       then rate limiting, before any work is done;
    4. input limits (body size, handler timeout) closest to the routes.
    """
    telemetry = [
        Middleware(
            TelemetryMiddleware,
            metrics_enabled=settings.METRICS_ENABLED,
            access_log_enabled=settings.ACCESS_LOG_ENABLED,
            known_methods=settings.http_known_methods or KNOWN_METHODS,
            security_headers=SecurityHeaders(settings.HSTS_MAX_AGE_SECONDS),
        )
    ]
    headers = [Middleware(DrainingMiddleware, lifecycle=lifecycle)]
    if settings.CORS_ALLOW_ORIGINS:
        headers.append(cors_middleware(settings))
    admission: list[Middleware] = []
    if settings.internal_port is not None:
        admission.append(Middleware(ListenerMiddleware, internal_port=settings.internal_port))
    if settings.RATE_LIMIT_ENABLED:
        admission.append(Middleware(RateLimitMiddleware, settings=settings))
    input_limits = [
        Middleware(BodySizeLimitMiddleware, max_bytes=settings.MAX_REQUEST_BODY_BYTES),
        Middleware(HandlerTimeoutMiddleware, seconds=settings.REQUEST_TIMEOUT_SECONDS),
    ]
    return [*telemetry, *headers, *admission, *input_limits]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    docs = settings.DOCS_ENABLED
    # Set by the worker on SIGTERM (app/lifecycle.py); read by /ready and the middleware.
    lifecycle = Lifecycle()
    app = FastAPI(
        title="parity API",
        version=__version__,
        summary="A FastAPI service run the way production runs it.",
        lifespan=make_lifespan(settings),
        middleware=build_middleware(settings, lifecycle),
        openapi_url="/openapi.json" if docs else None,
        # Our own /docs and /redoc (app/docs_ui.py): their assets come from us, not a CDN.
        docs_url=None,
        redoc_url=None,
        # No 307 from `/path/` to `/path`: Starlette builds that Location from the
        # request's Host header, which the client chooses (issue 18). A 404 problem.
        redirect_slashes=False,
        # FastAPI's built-in OpenTelemetry integration stays off: TelemetryMiddleware
        # makes the one server span per request (and keeps metrics in Prometheus).
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    app.state.settings = settings
    app.state.lifecycle = lifecycle
    app.state.readiness = ReadinessCache()
    install_error_handlers(app)
    app.include_router(health_router)
    if docs:
        install_docs(app, openapi_url="/openapi.json")
    if settings.METRICS_ENABLED:
        app.include_router(metrics_router)
    app.include_router(catalog_router)
    app.include_router(orders_router)
    if settings.DEMO_ENDPOINTS_ENABLED:
        app.include_router(demo.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            app.openapi_schema = document_problem_responses(
                document_rate_limits(schema, settings),
                every_operation=(503, 504),
                with_body=(400, 413),
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# What `gunicorn app.main:app` and `uvicorn app.main:app` serve: built from this process's
# settings, the ones a Gunicorn worker's server uses too (app/settings.py).
app = create_app(process_settings())
