"""Logging as JSON lines, one configuration shared by Gunicorn's master, its workers and
the app, so `gunicorn.error`, `uvicorn.error`, `app.access` and `app.*` lines all parse
the same way.

Every line written while a request is being served also carries `request_id` and,
when tracing is on, `trace_id` and `span_id` (`RequestContextFilter`), so a log line
leads to its trace and to the other lines of the same request.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS

from app.settings import Settings

# The id of the request being served (app/telemetry/middleware.py sets it).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def logging_config(settings: Settings) -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary (Gunicorn's `logconfig_dict`)."""
    formatter: dict[str, Any]
    if settings.LOG_JSON:
        formatter = {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "fmt": ["levelname", "name", "message", "process"],
            "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
            "timestamp": "time",
            "static_fields": {"service": settings.SERVICE_NAME},
            # Uvicorn adds an ANSI-coloured duplicate of some messages.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
    else:
        formatter = {"format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"}
    level = settings.LOG_LEVEL.upper()
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
        "filters": ["request_context", "bounded_opentelemetry"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {
            "request_context": {"()": "app.telemetry.logging.RequestContextFilter"},
            "bounded_opentelemetry": {"()": "app.telemetry.logging.OpenTelemetryLogLimiter"},
        },
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            # Access lines come from our own middleware (with route and timings);
            # Gunicorn's and Uvicorn's access loggers stay silent.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


class RateLimitedLog:
    """Logs a warning at most once per `interval` seconds and says how many it swallowed,
    so an outage of a dependency yields a line every few seconds, not one per request."""

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self._interval = interval
        self._next_at = 0.0
        self._suppressed = 0

    def admit(self) -> int | None:
        """None while inside the quiet interval (the line is counted as suppressed);
        otherwise how many lines were suppressed since the last one, and a new interval
        starts."""
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return None
        suppressed, self._suppressed = self._suppressed, 0
        self._next_at = now + self._interval
        return suppressed

    def warning(self, message: str, *args: object) -> None:
        suppressed = self.admit()
        if suppressed is not None:
            self._log.warning(message + " (%d similar suppressed)", *args, suppressed)


class RequestContextFilter(logging.Filter):
    """Adds `request_id`, `trace_id` and `span_id` of the request being served to every
    record (values passed with `extra=` win). Outside a request it adds nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if "request_id" not in fields and (request_id := REQUEST_ID.get()) is not None:
            record.request_id = request_id
        if "trace_id" not in fields:
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                record.trace_id = format(span_context.trace_id, "032x")
                record.span_id = format(span_context.span_id, "016x")
        return True


class OpenTelemetryLogLimiter(logging.Filter):
    """At most one line per logger per minute from the OpenTelemetry SDK and exporter.

    With the collector down the exporter logs on every retry of every batch; its
    reason ("connection refused", "503") is worth a line, a thousand of them are not.
    """

    PREFIX = "opentelemetry."

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self._interval = interval
        self._gates: dict[str, RateLimitedLog] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.PREFIX):
            return True
        gate = self._gates.get(record.name)
        if gate is None:
            logger = logging.getLogger(record.name)
            gate = self._gates[record.name] = RateLimitedLog(logger, self._interval)
        suppressed = gate.admit()
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} similar suppressed)"
        return True
