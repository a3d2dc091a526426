"""The access line's lean path (app/telemetry/logging.py `AccessLog`): the same line as
through the logging machinery, and the machinery whenever the configuration is not
this service's own JSON lines to one stream."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from typing import Any

import pytest

from app.settings import Settings
from app.telemetry.logging import (
    AccessLog,
    JsonFormatter,
    OpenTelemetryLogLimiter,
    RequestContextFilter,
    logging_config,
)

FIELDS: dict[str, Any] = {
    "method": "GET",
    "route": "/api/v1/products/{product_id}",
    "path": "/api/v1/products/7",
    "status": 200,
    "duration_ms": 1.234,
    "client": "127.0.0.1",
    "request_id": "req-1",
    "trace_id": "ab" * 16,
    "span_id": "cd" * 8,
    "trace_sampled": True,
}
ARGS = ("GET", "/api/v1/products/7", 200)


def configured_handler(log_json: bool) -> tuple[logging.StreamHandler[io.StringIO], io.StringIO]:
    """The stderr handler of `logging_config`, writing to a buffer."""
    config = logging_config(Settings(LOG_JSON=log_json))
    spec = dict(config["formatters"]["default"])
    factory = spec.pop("()", None)
    formatter = JsonFormatter(**spec) if factory else logging.Formatter(spec["format"])
    if factory:
        assert factory == "app.telemetry.logging.JsonFormatter"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RequestContextFilter())
    handler.addFilter(OpenTelemetryLogLimiter())
    return handler, stream


def access_logger(*handlers: logging.Handler) -> logging.Logger:
    logger = logging.Logger("app.access", logging.INFO)
    logger.propagate = False
    for handler in handlers:
        logger.addHandler(handler)
    return logger


def through_logging(handler: logging.Handler) -> str:
    """The line `logger.handle` writes for the same access record."""
    record = logging.LogRecord("app.access", logging.INFO, __file__, 0, "%s %s %d", ARGS, None)
    record.__dict__.update(FIELDS)
    return handler.format(record)


def test_the_lean_line_is_the_line_logging_writes() -> None:
    """Same keys in the same order, same values (the timestamp aside), one line."""
    handler, stream = configured_handler(log_json=True)
    AccessLog(access_logger(handler)).write("%s %s %d", ARGS, FIELDS)
    written = stream.getvalue()
    assert written.endswith("\n")
    assert written.count("\n") == 1
    lean = json.loads(written)
    expected = json.loads(through_logging(handler))
    assert list(lean) == list(expected)
    time_pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00"
    assert re.fullmatch(time_pattern, lean.pop("time"))
    assert re.fullmatch(time_pattern, expected.pop("time"))
    assert lean == expected
    assert lean["pid"] == os.getpid()
    assert lean["message"] == "GET /api/v1/products/7 200"
    assert (lean["level"], lean["logger"]) == ("INFO", "app.access")
    assert lean["service"] == Settings().SERVICE_NAME


def test_plain_text_lines_still_go_through_logging() -> None:
    """LOG_JSON=false: the plain formatter's line, via a LogRecord."""
    handler, stream = configured_handler(log_json=False)
    AccessLog(access_logger(handler)).write("%s %s %d", ARGS, FIELDS)
    assert re.fullmatch(
        rf".+ INFO \[{os.getpid()}\] app\.access: GET /api/v1/products/7 200\n",
        stream.getvalue(),
    )


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("extra", ["second handler", "logger filter", "handler level"])
def test_any_other_configuration_gets_a_log_record(extra: str) -> None:
    """Another handler (a test capturing records, a file), a filter on the logger or a
    handler above INFO: the record goes through `logger.handle`, which honours them."""
    handler, stream = configured_handler(log_json=True)
    collect = Collect()
    logger = access_logger(handler)
    if extra == "second handler":
        logger.addHandler(collect)
    elif extra == "logger filter":
        logger.addFilter(lambda record: record.__dict__["status"] != 200)
    else:
        handler.setLevel(logging.WARNING)
    AccessLog(logger).write("%s %s %d", ARGS, FIELDS)
    if extra == "second handler":
        [record] = collect.records
        assert record.getMessage() == "GET /api/v1/products/7 200"
        assert record.status == 200  # type: ignore[attr-defined]
        assert json.loads(stream.getvalue())["request_id"] == "req-1"
    else:
        assert stream.getvalue() == ""
