"""Alembic builds the schema (no create_all), tears it down, and matches the models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import Base
from parity.harness.repo import REPO_ROOT
from parity.harness.stack import drop_database, ensure_database
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


async def _execute(url: str, *statements: str) -> list[tuple[object, ...]]:
    """Run `statements` in one transaction; the rows of the last."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                result = await connection.execute(text(statement))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        await engine.dispose()


def test_idempotency_keys_per_client_downgrade_keeps_the_oldest_order_of_a_shared_key(
    empty_database: str,
) -> None:
    """0002 makes a key unique per client, so two clients may hold one key; 0001 wants it
    unique: the downgrade keeps the key on the oldest of those orders and releases it
    from the others (which stay), and the upgrade gives existing orders no client."""
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    asyncio.run(
        _execute(
            empty_database,
            "INSERT INTO orders "
            "(idempotency_key, client_identity, request_fingerprint, status, total_cents) "
            "VALUES ('k', 'ip:192.0.2.1', 'f', 'confirmed', 1), "
            "('k', 'ip:192.0.2.2', 'f', 'confirmed', 2), "
            "('other', 'ip:192.0.2.2', 'f', 'confirmed', 3)",
        )
    )
    command.downgrade(config, "0001")
    rows = asyncio.run(
        _execute(empty_database, "SELECT total_cents, idempotency_key FROM orders ORDER BY id")
    )
    assert rows == [(1, "k"), (2, None), (3, "other")]
    command.upgrade(config, "head")
    owners = asyncio.run(_execute(empty_database, "SELECT DISTINCT client_identity FROM orders"))
    assert owners == [(None,)]
