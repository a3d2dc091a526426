"""Where this service leans on OpenTelemetry below its public API: in one place, checked
against opentelemetry-api and opentelemetry-sdk 1.45 and the SQLAlchemy instrumentation
0.66b (pyproject.toml bounds them; widen a bound only after tests/test_tracing.py passes
on the new minor).

- The context key that tells instrumentations not to record (`_SUPPRESS_INSTRUMENTATION_KEY`,
  private): `suppress_instrumentation()` is its public form, but a context manager;
  the telemetry middleware attaches the context for a whole request and the Redis
  pipeline runs its flush task in it.
- What the SDK makes of a new root its ratio sampler drops, so that
  `Tracing.start_server_span` can make the same span without the sampler: the
  sampler's rule (`TraceIdRatioBased`: keep when the trace id's low 64 bits are below
  the ratio's bound) and the flags of the unsampled root (not sampled, trace id random,
  W3C Trace Context Level 2). tests/test_tracing.py compares both with the SDK's own.
- The SQLAlchemy instrumentation's `EngineTracer`, which traces one engine:
  `SQLAlchemyInstrumentor` is a process-wide singleton that also patches
  `create_engine`, and the app wants SQL spans from its own engine only.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, Context
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.instrumentation.sqlalchemy.version import __version__ as sqlalchemy_version
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from sqlalchemy.engine import Engine

UNSAMPLED_ROOT_FLAGS = trace.TraceFlags(trace.TraceFlags.DEFAULT | trace.TraceFlags.RANDOM_TRACE_ID)


def suppressed(parent: Context | None = None) -> Context:
    """`parent` (the current context when None) with instrumentation suppressed."""
    return otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True, parent)


def ratio_bound(ratio: float) -> int:
    """TraceIdRatioBased's bound for `ratio`."""
    return TraceIdRatioBased.get_bound_for_rate(ratio)


def ratio_sampler_keeps(trace_id: int, bound: int) -> bool:
    """Whether TraceIdRatioBased with `bound` samples a root of `trace_id`."""
    return trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound


def trace_engine(provider: TracerProvider, engine: Engine) -> None:
    """SQL spans, from `provider`'s tracer, for statements sent through `engine` alone."""
    usage = NoOpMeterProvider().get_meter("parity").create_up_down_counter("unused")
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", sqlalchemy_version)
    EngineTracer(tracer, engine, usage)  # type: ignore[no-untyped-call]
