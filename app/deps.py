"""What the lifespan opens, and the `Annotated` dependencies routes use to reach it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.breaker import CircuitBreaker
from app.cache import VersionedCache
from app.settings import Settings


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


def get_resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    async with resources.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
