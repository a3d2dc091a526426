"""Alembic builds the schema (no create_all), tears it down, and matches the models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import Base
from scripts.stack import REPO_ROOT, drop_database, ensure_database
from tests.conftest import SERVER_URL, unique_name


@pytest.fixture
def empty_database() -> Iterator[str]:
    url = (
        make_url(SERVER_URL)
        .set(database=unique_name("parity_mig"))
        .render_as_string(hide_password=False)
    )
    ensure_database(url)
    yield url
    drop_database(url)


def alembic_config(url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


async def _inspect(url: str) -> tuple[set[str], list[object]]:
    engine = create_async_engine(url)

    def read(connection: Connection) -> tuple[set[str], list[object]]:
        tables = set(inspect(connection).get_table_names())
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        return tables, diff

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(read)
    finally:
        await engine.dispose()


def test_upgrade_builds_exactly_the_models_schema_and_downgrade_removes_it(
    empty_database: str,
) -> None:
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    tables, diff = asyncio.run(_inspect(empty_database))
    assert tables == {"alembic_version", "products", "orders", "order_items"}
    assert diff == [], "models and migrations disagree: run `alembic revision --autogenerate`"

    command.downgrade(config, "base")
    assert asyncio.run(_inspect(empty_database))[0] == {"alembic_version"}
    command.upgrade(config, "head")  # and back up again: downgrades are real
    assert asyncio.run(_inspect(empty_database))[1] == []
