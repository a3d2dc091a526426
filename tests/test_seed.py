"""`python -m app.seed --products N` loads N products, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.helpers import run


def seed(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "app.seed", *args],
        env={**os.environ, "DATABASE_URL": database_url},
        timeout=60,
    )


async def seeded_skus(database_url: str) -> int:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM products WHERE sku LIKE 'SKU-%'"
        )
        return count
    finally:
        await connection.close()


async def test_seeding_twice_inserts_once(database_url: str) -> None:
    first = seed(database_url, "--products", "300")
    assert first.returncode == 0, first.stderr
    second = seed(database_url, "--products", "300")
    assert second.stdout.strip() == "0 products inserted, 300 already present"
    grown = seed(database_url, "--products", "350")
    assert grown.stdout.strip() == "50 products inserted, 300 already present"
    assert await seeded_skus(database_url) == 350


@pytest.mark.parametrize("value", ["lots", "-5"])
def test_bad_count_is_refused_with_a_message(database_url: str, value: str) -> None:
    result = seed(database_url, "--products", value)
    assert result.returncode == 2
    assert "--products must be" in result.stderr
    assert "Traceback" not in result.stderr
