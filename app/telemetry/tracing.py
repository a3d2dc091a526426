"""OpenTelemetry tracing, set up in each worker's lifespan, after Gunicorn forks.

Never in the master: a BatchSpanProcessor's export thread does not survive a fork
(open-telemetry/opentelemetry-python#1567, #3307). Configuration is the standard
OTEL_* environment, read by the SDK (endpoint, headers, timeout, batch sizes), with
two project defaults (docs/observability.md):

- sampler: parent-based trace-id ratio at DEFAULT_SAMPLE_RATIO when
  OTEL_TRACES_SAMPLER is unset (OTEL_TRACES_SAMPLER_ARG still sets the ratio). An
  incoming `traceparent` from a TRACE_CONTEXT_TRUSTED_CALLERS caller decides for its
  trace; anyone else's request is a new root (`Tracing.parent_of`); our own roots are
  sampled at 10%.
  Creating spans is where tracing costs throughput, so this is the knob that keeps
  the service fast; set OTEL_TRACES_SAMPLER=parentbased_always_on for demos.
- exporter: OTLP over HTTP/protobuf (`OTEL_EXPORTER_OTLP_ENDPOINT`, default
  http://localhost:4318); `OTEL_TRACES_EXPORTER=none` keeps the spans in-process
  (trace ids in logs, nothing sent).

Spans: the HTTP server span (app/telemetry/middleware.py), SQL statements
(opentelemetry-instrumentation-sqlalchemy, on our engine only) and Redis commands
(opentelemetry-instrumentation-redis, on our client only): no process-wide patching, so
two apps in one process (tests) do not trace into each other's provider.

Failsafe: nothing here may stop a worker from booting (a worker whose lifespan fails
makes Gunicorn halt the whole server); a collector that is down costs a log line a
minute and a counter, never a request's time: spans are queued and sent by a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.probe_paths import PROBE_AND_SCRAPE_PATHS
from app.proxy_trust import Network, is_trusted, trusted_networks
from app.settings import Settings
from app.telemetry.logging import ThrottledLog
from app.telemetry.metrics import DEPENDENCY_ERRORS, count
from app.telemetry.otel_internals import (
    UNSAMPLED_ROOT_FLAGS,
    ratio_bound,
    ratio_sampler_keeps,
    trace_engine,
)

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_RATIO = 0.1
# The share of the lifespan shutdown budget (SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS, 3 s by
# default) the last spans may take to leave; closing the pool and Redis gets the rest.
FLUSH_SHARE_OF_LIFESPAN_SHUTDOWN = 2 / 3
# Probes and scrapes: frequent, uninteresting, and they would crowd out real traces.
EXCLUDED_PATHS = PROBE_AND_SCRAPE_PATHS
_ROOT_CONTEXT = Context()  # a server span never inherits ambient context
# On the link from a new root to the trace context an untrusted caller sent.
UNTRUSTED_LINK_ATTRIBUTES = {"parity.trace_context": "untrusted_caller"}
# Read by the instrumentations (opentelemetry.instrumentation._semconv).
SEMCONV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"


@dataclass(frozen=True, slots=True)
class Tracing:
    """One worker's tracer provider, and what the middleware needs per request."""

    provider: TracerProvider
    tracer: trace.Tracer
    propagator: TextMapPropagator
    # The propagator's headers as raw ASGI header names (b"traceparent", ...).
    header_names: frozenset[bytes]
    exporter: _ReportingExporter | None = None
    # TRACE_CONTEXT_TRUSTED_CALLERS: () trusts no caller, None every caller.
    trusted_callers: tuple[Network, ...] | None = ()
    # With our default sampler, the ratio sampler's bound on a new root's trace id
    # (`start_server_span` decides roots itself); None: the SDK's sampler decides all.
    root_sampling_bound: int | None = None
    ids: ChosenRootIds | None = None

    def start_server_span(
        self, name: str, carrier: dict[str, str] | None, client: str | None
    ) -> tuple[trace.Span, Context]:
        """The request's SERVER span and the context it is current in.

        A new root that the ratio sampler drops (90% of requests at the default ratio)
        is made here, as the SDK would make it (same ids from the same random source,
        same flags, a NonRecordingSpan) but without its sampler, its SamplingResult and
        its checks: most of an unsampled request's tracing cost. A root it keeps gets
        the trace id drawn here, so the SDK's own sampler, deciding on that id, agrees."""
        parent, links = self.parent_of(carrier, client)
        if parent is _ROOT_CONTEXT and self.root_sampling_bound is not None and self.ids:
            span = self._start_root(name, links, self.root_sampling_bound, self.ids)
        else:
            span = self._start_span(name, parent, links)
        return span, trace.set_span_in_context(span, parent)

    def _start_root(
        self, name: str, links: list[trace.Link] | None, bound: int, ids: ChosenRootIds
    ) -> trace.Span:
        trace_id = ids.draw_trace_id()
        if not ratio_sampler_keeps(trace_id, bound):
            context = trace.SpanContext(
                trace_id, ids.generate_span_id(), False, UNSAMPLED_ROOT_FLAGS
            )
            return trace.NonRecordingSpan(context)
        ids.choose(trace_id)
        try:
            return self._start_span(name, _ROOT_CONTEXT, links)
        finally:
            ids.choose(0)  # taken by the SDK; never left for another root

    def _start_span(self, name: str, parent: Context, links: list[trace.Link] | None) -> trace.Span:
        return self.tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER, links=links)

    def parent_of(
        self, carrier: dict[str, str] | None, client: str | None
    ) -> tuple[Context, list[trace.Link] | None]:
        """The context a server span starts in, and its links.

        A trusted caller's trace context is continued, its sampled flag included. Anyone
        else's is only linked: the span is a new root, so the sampler decides on a
        trace id of ours. Keeping the caller's trace id would not do, as the ratio
        sampler decides on the trace id alone and the caller could pick one it keeps."""
        if not carrier:
            return _ROOT_CONTEXT, None
        inbound = self.propagator.extract(carrier, _ROOT_CONTEXT)
        if is_trusted(client, self.trusted_callers):
            return inbound, None
        claimed = trace.get_current_span(inbound).get_span_context()
        if not claimed.is_valid:
            return _ROOT_CONTEXT, None
        return _ROOT_CONTEXT, [trace.Link(claimed, UNTRUSTED_LINK_ATTRIBUTES)]

    def instrument_engine(self, engine: AsyncEngine) -> None:
        """SQL spans for statements sent through `engine` (and no other engine)."""
        trace_engine(self.provider, engine.sync_engine)

    def instrument_redis(self, redis: Redis) -> None:
        """Redis spans for commands sent through `redis` (arguments are masked)."""
        RedisInstrumentor.instrument_client(redis, tracer_provider=self.provider)

    async def shutdown(self, within: float) -> bool:
        """Send the spans still queued, then stop; False if that took longer than
        `within` seconds.

        The lifespan calls this last: atexit handlers do not run when the Uvicorn worker
        re-raises SIGTERM, so spans queued at shutdown would otherwise be lost. The SDK
        waits up to 30 s for an unreachable collector; we wait `within` for a daemon
        thread doing it, then let the process go.
        """
        if self.exporter is not None and not self.exporter.reachable:
            # The last export failed: do not spend the budget on retries to a collector
            # that is down (natively there is none); the queued spans are dropped.
            self.exporter.shutdown()
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def shut_down() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: we gave up
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shut_down, name="otel-shutdown", daemon=True).start()
        try:
            async with asyncio.timeout(within):
                await done.wait()
        except TimeoutError:
            logger.warning("spans not exported within %.1fs of shutdown were dropped", within)
            return False
        return True


def start_tracing(settings: Settings) -> Tracing | None:
    """The tracer provider of this worker, or None when tracing is off or cannot start
    (then the reason is logged and the service runs untraced)."""
    if settings.OTEL_SDK_DISABLED:
        return None
    try:
        return _start(settings)
    except Exception:
        logger.exception("tracing could not start; serving without it")
        return None


def opt_in_to_stable_database_conventions(environ: MutableMapping[str, str] = os.environ) -> None:
    """Have the SQLAlchemy and Redis instrumentations name span attributes by the stable
    conventions (`db.system.name`, `db.namespace`, `db.query.text`, `db.operation.name`,
    and `server.address`/`server.port` for the peer) instead of the old ones (`db.system`,
    `db.name`, `db.statement`, `net.peer.name`): they do only when
    OTEL_SEMCONV_STABILITY_OPT_IN names `database` (the db.* names) and `http` (the
    network names, migrated with the HTTP conventions), and read it once per process, at
    their first use. What the user already chose for either (`database/dup` emits both
    names while a backend migrates) is kept. No HTTP instrumentation runs here: our
    server spans are TelemetryMiddleware's, on the stable names already."""
    modes = [mode.strip() for mode in environ.get(SEMCONV_OPT_IN, "").split(",") if mode.strip()]
    for signal in ("database", "http"):
        if not any(mode.split("/")[0] == signal for mode in modes):
            modes.append(signal)
    environ[SEMCONV_OPT_IN] = ",".join(modes)


def _start(settings: Settings) -> Tracing:
    opt_in_to_stable_database_conventions()
    ratio = _default_ratio()
    ids = ChosenRootIds()
    provider = TracerProvider(
        resource=Resource.create(_resource_attributes(settings)),
        sampler=None if ratio is None else ParentBased(TraceIdRatioBased(ratio)),
        shutdown_on_exit=False,
        id_generator=ids,
    )
    otlp = _exporter()
    exporter = _ReportingExporter(otlp) if otlp is not None else None
    if exporter is not None:
        exporter.reachable = _collector_answers(exporter.endpoint)
        if not exporter.reachable:
            logger.warning(
                "no OpenTelemetry collector answers at %s: spans are dropped until one "
                "does (OTEL_SDK_DISABLED=true turns tracing off)",
                exporter.endpoint,
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    # Global too, so `trace.get_tracer(__name__)` in application code joins our traces.
    # The first provider in a process wins (the only one, under Gunicorn).
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    propagator = propagate.get_global_textmap()
    return Tracing(
        provider=provider,
        tracer=provider.get_tracer("app.telemetry", __version__),
        propagator=propagator,
        header_names=frozenset(field.lower().encode("latin-1") for field in propagator.fields),
        exporter=exporter,
        trusted_callers=trusted_networks(settings.TRACE_CONTEXT_TRUSTED_CALLERS),
        root_sampling_bound=_root_sampling_bound(ratio),
        ids=ids,
    )


def _root_sampling_bound(ratio: float | None) -> int | None:
    """TraceIdRatioBased's bound for `ratio`, when `Tracing.start_server_span` may decide
    roots itself: our own sampler, and no SDK self-metrics (which count every span
    started, unsampled ones included)."""
    if ratio is None or os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, "").strip():
        return None
    return ratio_bound(ratio)


class ChosenRootIds(RandomIdGenerator):
    """The SDK's random ids, except that the trace id of the next root span started on
    this thread can be chosen beforehand (`Tracing.start_server_span` draws it, here, to
    decide sampling itself). Per thread: a span started meanwhile by another thread
    does not take it."""

    def __init__(self) -> None:
        self._chosen = threading.local()

    def choose(self, trace_id: int) -> None:
        self._chosen.trace_id = trace_id

    def draw_trace_id(self) -> int:
        """A new random trace id (never the chosen one)."""
        return super().generate_trace_id()

    def generate_trace_id(self) -> int:
        trace_id: int = getattr(self._chosen, "trace_id", 0)
        if trace_id:
            self._chosen.trace_id = 0
            return trace_id
        return super().generate_trace_id()


def _collector_answers(endpoint: str, timeout: float = 0.5) -> bool:
    """Whether anything accepts a TCP connection at the exporter's endpoint within
    `timeout`: said once at start, and what spares the shutdown a flush to nobody (a
    worker that has not yet exported would otherwise spend its flush share of the
    lifespan budget retrying). In a thread, because the name lookup has no timeout of
    its own (a compose service that is not running can take the resolver 5 s)."""
    url = urlsplit(endpoint)
    address = (url.hostname or "localhost", url.port or (443 if url.scheme == "https" else 80))
    answered = threading.Event()

    def connect() -> None:
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=timeout):
            answered.set()

    probe = threading.Thread(target=connect, name="otel-collector-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return answered.is_set()


def _resource_attributes(settings: Settings) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "service.version": __version__,
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        "process.pid": os.getpid(),
    }
    # OTEL_SERVICE_NAME (and service.name in OTEL_RESOURCE_ATTRIBUTES) win over ours.
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = settings.SERVICE_NAME
    return attributes


def _default_ratio() -> float | None:
    """None (the SDK reads OTEL_TRACES_SAMPLER) when the variable is set, else the ratio
    of our parent-based ratio sampling."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    ratio = DEFAULT_SAMPLE_RATIO
    argument = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if argument:
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            logger.warning(
                "OTEL_TRACES_SAMPLER_ARG=%r is not a ratio in [0, 1]; sampling %s",
                argument,
                DEFAULT_SAMPLE_RATIO,
            )
            ratio = DEFAULT_SAMPLE_RATIO
    return ratio


def _exporter() -> SpanExporter | None:
    choice = {
        name.strip().lower()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip()
    }
    if not choice or "none" in choice:
        return None
    if choice - {"otlp"}:
        logger.warning("OTEL_TRACES_EXPORTER=%s: only otlp and none are supported", choice)
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        logger.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting with http/protobuf "
            "(port 4318 on a collector)",
            protocol,
        )
    return OTLPSpanExporter()


class _ReportingExporter(SpanExporter):
    """Counts failed exports (`dependency_errors_total{dependency="otel-collector"}`) and
    says so at most once a minute; runs on the batch processor's thread."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self.endpoint: str = getattr(exporter, "_endpoint", "http://localhost:4318")
        self._failures = ThrottledLog(logger, interval=60.0)
        self._shut_down = False
        # Whether the collector answered the probe at start; then False after a failed
        # export, True again after a successful one.
        self.reachable = True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        except Exception as exc:
            result, reason = SpanExportResult.FAILURE, repr(exc)
        else:
            reason = "see the exporter's log line"
        self.reachable = result is SpanExportResult.SUCCESS
        if not self.reachable:
            count(DEPENDENCY_ERRORS, "otel-collector", "export_spans")
            self._failures.warning(
                "could not export %d spans to %s (%s); is the collector up? "
                "OTEL_SDK_DISABLED=true turns tracing off",
                len(spans),
                self.endpoint,
                reason,
            )
        return result

    def shutdown(self) -> None:
        if not self._shut_down:  # called early by Tracing.shutdown, then by the SDK
            self._shut_down = True
            self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)
