"""Postgres metrics: pool state, time to get a connection, statement latency.

The pool is per worker (`app/db.py`), so its gauges are `livesum`: the total over the
live workers is what Postgres sees. Everything here is failsafe: a metrics error is
logged at a bounded rate and never reaches the query.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from app.telemetry.logging import ThrottledLog
from app.telemetry.metrics import (
    DB_CONNECTION_TIMEOUTS,
    DB_CONNECTION_WAIT,
    DB_CONNECTIONS,
    DB_CONNECTIONS_MAX,
    DB_CONNECTIONS_OVERFLOW,
    DB_OPERATION_DURATION,
    POOL_NAME,
)

logger = logging.getLogger(__name__)
_errors = ThrottledLog(logger, interval=60.0)

_USED = DB_CONNECTIONS.labels(POOL_NAME, "used")
_IDLE = DB_CONNECTIONS.labels(POOL_NAME, "idle")
_MAX = DB_CONNECTIONS_MAX.labels(POOL_NAME)

# Statement kinds worth their own latency series; anything else is OTHER, so the label
# stays bounded whatever SQL runs.
_OPERATIONS = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")
_OPERATION_SERIES: dict[str, Histogram] = {
    name: DB_OPERATION_DURATION.labels(name) for name in (*_OPERATIONS, "OTHER")
}
# Set on SQLAlchemy's per-statement execution context between the two cursor events.
_STARTED_ATTR = "_parity_statement_started"


class MeteredPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio queue pool, reporting its state after every checkout and
    checkin, and how long each checkout waited (`db.client.connection.wait_time`:
    waiting for a free connection plus opening a new one when the pool may grow).

    The one place the app leans on SQLAlchemy below its public API: `_do_get` and
    `_do_return_conn` are the hooks a Pool subclass implements, and
    `_sqla_logger_namespace` names its logger; checked against SQLAlchemy 2.1, which
    pyproject.toml bounds (widen it only after tests/test_metrics.py passes)."""

    # Log as the pool it extends, under SQLAlchemy's logger (quiet below WARNING).
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 10, **kw: Any):
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)
        self._report(capacity=pool_size + max(max_overflow, 0))

    def _do_get(self) -> ConnectionPoolEntry:
        started = perf_counter()
        try:
            return super()._do_get()
        except PoolTimeoutError:
            DB_CONNECTION_TIMEOUTS.inc()
            raise
        finally:
            self._report(waited=perf_counter() - started)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        self._report()

    def dispose(self) -> None:
        super().dispose()
        self._report()

    def _report(self, *, capacity: int | None = None, waited: float | None = None) -> None:
        """The pool's state now (and its capacity, or a checkout's wait). Never raises:
        a metrics failure must not fail a checkout."""
        try:
            if capacity is not None:
                _MAX.set(capacity)
            if waited is not None:
                DB_CONNECTION_WAIT.observe(waited)
            _USED.set(self.checkedout())
            _IDLE.set(self.checkedin())
            # overflow() counts from -pool_size up: negative while the pool is not full.
            DB_CONNECTIONS_OVERFLOW.set(max(self.overflow(), 0))
        except Exception as exc:
            _errors.warning("pool metrics failed: %r", exc)


def operation_name(statement: str) -> str:
    """The statement's first keyword if it is one we keep a series for, else OTHER."""
    head = statement[:24].split(None, 1)
    keyword = head[0].upper() if head else ""
    return keyword if keyword in _OPERATION_SERIES else "OTHER"


def _before_cursor_execute(*args: Any) -> None:
    context = args[4]
    if context is not None:
        setattr(context, _STARTED_ATTR, perf_counter())


def _after_cursor_execute(*args: Any) -> None:
    _observe_statement(args[2], args[4])


def _handle_error(exception_context: Any) -> None:
    _observe_statement(exception_context.statement, exception_context.execution_context)


def _observe_statement(statement: str | None, context: Any) -> None:
    try:
        started = getattr(context, _STARTED_ATTR, None)
        if started is None:
            return
        _OPERATION_SERIES[operation_name(statement or "")].observe(perf_counter() - started)
    except Exception as exc:
        _errors.warning("statement metrics failed: %r", exc)


def observe_statements(engine: Engine) -> None:
    """Time every statement `engine` sends (pass `async_engine.sync_engine`)."""
    event.listen(engine, "before_cursor_execute", _before_cursor_execute)
    event.listen(engine, "after_cursor_execute", _after_cursor_execute)
    event.listen(engine, "handle_error", _handle_error)
