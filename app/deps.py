"""What the lifespan opens, and the `Annotated` dependencies routes use to reach it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.breaker import CircuitBreaker
from app.cache import VersionedCache
from app.client_identity import ClientIdentifier
from app.db import is_unavailable
from app.ratelimit.autopipeline import AutoPipeline
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Resources:
    """Per-worker connections, created in the lifespan after Gunicorn forks."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    product_cache: VersionedCache
    # One per worker, shared by everything that calls Redis on a request's path.
    redis_breaker: CircuitBreaker
    # `redis` with implicit pipelining, for the rate limiter's per-request command.
    redis_pipeline: AutoPipeline
    # Who a request's client is (the settings' key header and key hashes, read once).
    clients: ClientIdentifier


def get_resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    session = resources.sessionmaker()
    try:
        yield session
    finally:
        await close_session(session)


async def close_session(session: AsyncSession) -> None:
    """Close (roll back) the session. If Postgres went away after the route had done
    its work, the rollback fails, but there is nothing left to undo (the server ended
    the transaction with the connection) and the answer may be on its way already:
    failing here turned a good 200 into a dropped connection (found by
    parity chaos stopping Postgres under load). The pool discards the connection."""
    try:
        await session.close()
    except (SQLAlchemyError, OSError) as exc:
        if not is_unavailable(exc):
            raise
        logger.warning("rollback on a connection Postgres closed: %r", exc)


SessionDep = Annotated[AsyncSession, Depends(get_session)]
