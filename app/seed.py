"""Load demo products: `python -m app.seed --products 10000`.

Idempotent: product n has sku `SKU-<n, 8 digits>`; running again inserts only the
missing ones and leaves existing rows (and their stock) alone. Prices and stock are
derived from n, so every machine gets the same catalogue. Postgres generates the rows
itself (`generate_series`), in batches that show progress.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.settings import load_settings

BATCH = 10_000
DEFAULT_STOCK = 1_000_000

_INSERT_MISSING = text(
    """
    INSERT INTO products (sku, name, description, price_cents, stock)
    SELECT 'SKU-' || lpad(n::text, 8, '0'),
           'Product ' || n,
           'Demo product number ' || n,
           100 + (n * 7919) % 99900,
           CAST(:stock AS integer)
    FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS n
    WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.sku = 'SKU-' || lpad(n::text, 8, '0'))
    ORDER BY n
    ON CONFLICT (sku) DO NOTHING
    """
)


async def seed_products(engine: AsyncEngine, count: int, *, quiet: bool = False) -> int:
    """Make sure products 1..count exist; returns how many rows were inserted."""
    inserted = 0
    for first in range(1, count + 1, BATCH):
        last = min(first + BATCH - 1, count)
        async with engine.begin() as connection:
            result = await connection.execute(
                _INSERT_MISSING, {"first": first, "last": last, "stock": DEFAULT_STOCK}
            )
        inserted += result.rowcount
        if not quiet:
            print(
                f"\rseeding products: {last}/{count} checked, {inserted} inserted",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if not quiet:
        print(file=sys.stderr)
    return inserted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.seed", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--products",
        type=_non_negative,
        default=10_000,
        metavar="N",
        help="make sure products 1..N exist (default: 10000)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--products must be a whole number, got {value!r}"
        ) from None
    if not 0 <= number <= 100_000_000:
        raise argparse.ArgumentTypeError(
            f"--products must be between 0 and 100000000, got {number}"
        )
    return number


async def _main(args: argparse.Namespace) -> None:
    engine = create_async_engine(load_settings().DATABASE_URL)
    try:
        inserted = await seed_products(engine, args.products, quiet=args.quiet)
    finally:
        await engine.dispose()
    print(f"{inserted} products inserted, {args.products - inserted} already present")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(_main(args))
    except (SQLAlchemyError, OSError) as exc:
        message = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise SystemExit(
            f"seed failed: {message} (is Postgres up and `alembic upgrade head` run?)"
        ) from None


if __name__ == "__main__":
    main()
