"""Logging as JSON lines, one configuration shared by Gunicorn's master, its workers and
the app, so `gunicorn.error`, `uvicorn.error` and `app.*` lines all parse the same way."""

from __future__ import annotations

import logging
import time
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

from app.settings import Settings


def logging_config(settings: Settings) -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary (Gunicorn's `logconfig_dict`)."""
    formatter: dict[str, Any]
    if settings.LOG_JSON:
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
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
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
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

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._suppressed += 1
            return
        self._log.warning(message + " (%d similar suppressed)", *args, self._suppressed)
        self._suppressed = 0
        self._next_at = now + self._interval
