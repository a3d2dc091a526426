"""Logging as JSON lines, one configuration shared by Gunicorn's master, its workers and
the app, so `gunicorn.error`, `uvicorn.error`, `app.access` and `app.*` lines all parse
the same way.

Every line written while a request is being served also carries `request_id` and,
when tracing is on, `trace_id` and `span_id` (`RequestContextFilter`), so a log line
leads to its trace and to the other lines of the same request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from app.settings import Settings

# The id of the request being served (app/telemetry/middleware.py sets it).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def logging_config(settings: Settings) -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary (Gunicorn's `logconfig_dict`)."""
    formatter: dict[str, Any]
    if settings.LOG_JSON:
        formatter = {
            "()": "app.telemetry.logging.JsonFormatter",
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


class ThrottledLog:
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
        self._gates: dict[str, ThrottledLog] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.PREFIX):
            return True
        gate = self._gates.get(record.name)
        if gate is None:
            logger = logging.getLogger(record.name)
            gate = self._gates[record.name] = ThrottledLog(logger, self._interval)
        suppressed = gate.admit()
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} similar suppressed)"
        return True


# The fields a JsonFormatter can fill in without a LogRecord (`JsonFormatter.line`).
_LINE_FIELDS = frozenset({"levelname", "name", "message", "process"})
# Python 3.12+ gives every record the name of the asyncio task logging it.
_RECORDS_HAVE_TASK_NAME = sys.version_info >= (3, 12)


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter, which can also write a line from its fields
    alone (`line`): the access log's lean path (`AccessLog`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Whether `line` makes exactly what `format` would (its fields are known).
        self.writes_lines = (
            set(self._required_fields) <= _LINE_FIELDS
            and not self.defaults
            and not self.rename_fields_keep_missing
        )
        # What `add_fields` works out per record, worked out once for `line`.
        rename = self.rename_fields.get
        self._line_keys = [(rename(field, field), field) for field in self._required_fields]
        self._extra_renames = {
            name: new for name, new in self.rename_fields.items() if name not in _LINE_FIELDS
        }
        time_key = self.timestamp if isinstance(self.timestamp, str) else "timestamp"
        self._time_key = rename(time_key, time_key) if self.timestamp else None
        self._task_name = _RECORDS_HAVE_TASK_NAME and "taskName" not in self._skip_fields

    def line(self, logger: str, level: str, message: str, fields: dict[str, Any]) -> str:
        """What `format` makes of a record of `logger` at `level` with `message` and
        `fields` as its extra attributes, created now; same fields, same order."""
        standard = {"levelname": level, "name": logger, "message": message, "process": _PID}
        data = {key: standard[field] for key, field in self._line_keys}
        data.update(self.static_fields)
        if self._task_name:
            data["taskName"] = _task_name()
        if self._extra_renames:
            fields = {self._extra_renames.get(key, key): value for key, value in fields.items()}
        data.update(fields)
        if self._time_key is not None:
            data[self._time_key] = datetime.fromtimestamp(time.time(), tz=UTC)
        return self.serialize_log_record(self.process_log_record(data))


def _task_name() -> str | None:
    """LogRecord's taskName (Python 3.12+)."""
    if not getattr(logging, "logAsyncioTasks", True):
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    return task.get_name() if task is not None else None


# LogRecord asks the kernel each time; Gunicorn's workers are forked after logging is
# configured, hence the refresh.
_PID = os.getpid()


def _forked() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_forked)

# Handler filters that change nothing on an access line: it carries its own ids.
_NEUTRAL_FILTERS = (RequestContextFilter, OpenTelemetryLogLimiter)


class AccessLog:
    """Writes one access line per request, at INFO on `logger`.

    When the line would reach exactly one handler, a StreamHandler writing JSON lines
    (this service's own configuration), it is written straight to that handler's
    stream: the same text `logger.handle` would write, without a LogRecord, the
    logger's and handler's dispatch, and a formatter that walks the record's
    attributes (about three quarters of a line's cost). Anything else (plain text,
    another handler, a test capturing records, a logger filter) gets a LogRecord
    through `logger.handle`, as before.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def write(self, msg: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        """Log `msg % args` with `fields` as the record's extra attributes."""
        handler = self._lean_handler()
        if handler is None:
            self._log_record(msg, args, fields)
            return
        formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
        line = formatter.line(self._logger.name, "INFO", msg % args, fields)
        text = line + handler.terminator
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(text)
            handler.stream.flush()

    def _lean_handler(self) -> logging.StreamHandler[Any] | None:
        """The one handler an INFO record of the logger reaches, if it is a plain
        StreamHandler with a JsonFormatter and only neutral filters; else None."""
        logger: logging.Logger | None = self._logger
        if self._logger.filters:
            return None
        found: list[logging.Handler] = []
        while logger is not None:
            found += logger.handlers
            logger = logger.parent if logger.propagate else None
        if len(found) != 1:
            return None
        handler = found[0]
        if (
            type(handler) is not logging.StreamHandler
            or handler.level > logging.INFO
            or not isinstance(handler.formatter, JsonFormatter)
            or not handler.formatter.writes_lines
            or any(not isinstance(f, _NEUTRAL_FILTERS) for f in handler.filters)
        ):
            return None
        return handler

    def _log_record(self, msg: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        # A record built directly: Logger.info() would also walk the stack for a caller
        # we never print.
        record = logging.LogRecord(self._logger.name, logging.INFO, __file__, 0, msg, args, None)
        record.__dict__.update(fields)
        self._logger.handle(record)
