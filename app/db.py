"""Postgres: the engine, the session factory, the model base and a readiness ping.

The engine is created in the lifespan of each worker (after Gunicorn forks), never at
import time: a pool created before the fork would share its sockets between processes.
Creating it does not connect, so a worker boots while Postgres is down and reports
not-ready until it is back.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import MetaData, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import AsyncAdaptedQueuePool

from app.settings import Settings
from app.telemetry.database import MeteredPool

# Explicit constraint names, so Alembic migrations name things the same on every machine.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(settings: Settings) -> AsyncEngine:
    statement_timeout_s = settings.DB_STATEMENT_TIMEOUT_MS / 1000
    return create_async_engine(
        settings.DATABASE_URL,
        # The default asyncio pool, plus pool gauges and checkout wait times.
        poolclass=MeteredPool if settings.METRICS_ENABLED else AsyncAdaptedQueuePool,
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_timeout=settings.DB_POOL_TIMEOUT_SECONDS,
        pool_recycle=settings.DB_POOL_RECYCLE_SECONDS,
        # A connection that died while idle in the pool (Postgres restarted) is
        # replaced before use instead of failing the request that drew it.
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.DB_CONNECT_TIMEOUT_SECONDS,
            # The server cancels runaway statements; the client-side bound catches a
            # server that stopped answering altogether.
            "command_timeout": statement_timeout_s + 1,
            "server_settings": {
                "application_name": settings.SERVICE_NAME,
                "statement_timeout": str(settings.DB_STATEMENT_TIMEOUT_MS),
                "idle_in_transaction_session_timeout": str(settings.DB_STATEMENT_TIMEOUT_MS * 2),
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Round-trip `SELECT 1` through the pool; raises on any failure."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


# SQLSTATE classes that mean "the server cannot serve us now": 08 connection exception,
# 53 insufficient resources (too many connections), 57 operator intervention (shutdown,
# starting up, statement timeout), plus 3D000 (the database is missing, e.g. mid-restore).
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57", "3D000")


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means Postgres cannot serve us right now and a retry later may
    succeed, as opposed to a bug or a constraint violation."""
    if isinstance(exc, PoolTimeoutError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return exc.connection_invalidated or sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
    # Raised unwrapped when the TCP connect itself fails or times out.
    return isinstance(exc, OSError | asyncio.TimeoutError)
