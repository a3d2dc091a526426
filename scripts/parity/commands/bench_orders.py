"""The order path against its physical limit: POST /api/v1/orders (one line) served by
Gunicorn, side by side with pgbench running the order's own SQL on the same Postgres;
the app's overhead is the ratio of their latencies.

    parity bench orders                          # 3 rounds × 5 s, 1/4/16 connections
    parity bench orders --out results/orders     # report.json, report.md, orders.png

A database of its own (`parity_bench_orders_...`, --products products with ample stock,
dropped afterwards) and a Redis prefix of its own (deleted afterwards); the API runs
natively (parity stack) with every production feature at its defaults, spans sent
to a stand-in OTLP collector. For each round and connection count, in alternating
order:

- pgbench, the order's transaction as the route sent it when this tool was written
  (BEGIN; INSERT the order row with its key, ON CONFLICT DO NOTHING RETURNING id;
  the conditional stock UPDATE ... RETURNING price; INSERT the line; UPDATE the order's
  status and total; COMMIT), prepared statements (-M prepared) like asyncpg's, a random
  product and a fresh key per transaction (`PGBENCH_SCRIPTS`);
- pgbench, the same order as the route sends it now (BEGIN; the key's INSERT; one
  statement that reserves the stock, records the line and confirms the order; COMMIT);
- the route under wrk: one line of one random product, a fresh Idempotency-Key and a
  client address of its own per request (the rate limiter checks each and refuses
  none), and the same without a key.

Reported per connection count: p50 / p99 latency and transactions (requests) per
second of each, and the overhead ratio, route p50 ÷ pgbench p50, for the SQL the route
sends now. Needs wrk and pgbench (postgresql-client). Load goes to 127.0.0.1 only and
every run stops by itself.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.orders import service as service_sql
from parity.harness.benchdocs import machine_sentence
from parity.harness.options import add_measurement_options, positive_int
from parity.harness.repo import REPO_ROOT
from parity.harness.report import figure, markdown_table, progress, write_json
from parity.harness.stack import NativeStack, StackError, delete_redis_prefix, scratch_database
from parity.harness.throwaway import postgres_bindir
from parity.harness.wrk import LUA_COMMON, OtlpSink, machine, measured, rate_and_latency, wrk

FIRST_PRODUCT = 101  # products 1..100 are bench_routes' hot set; orders leave them alone

# What the route sends for a one-line order, as logged by Postgres (log_statement=all),
# minus the pool's pre-ping (BEGIN; ";"; ROLLBACK, SQLAlchemy's asyncpg ping) and the
# session's own bookkeeping: the work itself. `:client_id` is pgbench's client number,
# so each client has its own identity, as each request of the route has.
_CLAIM = (
    "INSERT INTO orders (idempotency_key, client_identity, request_fingerprint, status, "
    "total_cents) VALUES ('pgbench-' || CAST(:key AS text), "
    "'pgbench-' || CAST(:client_id AS text), "
    "'0000000000000000000000000000000000000000000000000000000000000000', "
    "'pending', 0) ON CONFLICT (client_identity, idempotency_key) "
    "DO NOTHING RETURNING id AS order_id \\gset\n"
)
_HEADER = (
    "\\set product random(:first, :products)\n\\set key random(1, 9000000000000000000)\nBEGIN;\n"
)


def _one_line_confirm() -> str:
    """app/orders/service.py's confirming statement, as it runs for a one-line order
    (no earlier lines; quantity 1), with pgbench's variables."""
    values = {
        ":product_ids": "'{}'",
        ":quantities": "'{}'",
        ":prices": "'{}'",
        ":earlier_total": "0",
        ":quantity": "1",
        ":product_id": ":product",
    }
    sql = " ".join(service_sql.CONFIRM.text.split())
    for name, value in values.items():
        sql = sql.replace(name, value)
    return sql + ";\n"


PGBENCH_SCRIPTS = {
    # BEGIN, 4 statements, COMMIT: the transaction as first written (app/orders/service.py
    # before issue 16): the claim, the stock UPDATE, the line's INSERT, the order's UPDATE.
    "pgbench, 6 statements": _HEADER  # noqa: S608 (constants: a pgbench script)
    + _CLAIM
    + "UPDATE products SET stock = stock - 1, updated_at = now() WHERE id = :product "
    "AND stock >= 1 RETURNING price_cents \\gset\n"
    "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
    "VALUES (:order_id, :product, 1, :price_cents);\n"
    "UPDATE orders SET status = 'confirmed', total_cents = :price_cents "
    "WHERE id = :order_id;\n"
    "COMMIT;\n",
    # BEGIN, 2 statements, COMMIT: as the route sends it now, the last three in one.
    "pgbench, 4 statements": _HEADER + _CLAIM + _one_line_confirm() + "COMMIT;\n",
}
ROUTE_SCRIPT = """
request = function()
  local key = identity()
  local product = math.random(%(first)d, %(products)d)
  local body = '{"items": [{"product_id": ' .. product .. ', "quantity": 1}]}'
  local headers = {["X-Forwarded-For"] = address(), ["Content-Type"] = "application/json"}
  if %(keyed)s then headers["Idempotency-Key"] = key end
  return wrk.format("POST", "/api/v1/orders", headers, body)
end
"""
ROUTES = {"route, with key": True, "route, no key": False}


@dataclass
class Sample:
    load: str  # a PGBENCH_SCRIPTS or ROUTES name
    connections: int
    round: int
    per_second: float  # transactions (pgbench) or requests (route) per second
    p50_ms: float
    p99_ms: float
    errors: int  # failed transactions, or non-2xx answers and socket errors


def pgbench_binary() -> str:
    bindir = postgres_bindir()
    for candidate in ([str(bindir / "pgbench")] if bindir else []) + [shutil.which("pgbench")]:
        if candidate and Path(candidate).exists():
            return candidate
    raise StackError("pgbench not found (apt-get install postgresql-client)")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_pgbench(
    database_url: str, name: str, connections: int, seconds: int, products: int, work: Path
) -> tuple[float, float, float, int]:
    """tps, p50 ms, p99 ms (from the per-transaction log) and failed transactions."""
    url = make_url(database_url)
    script = work / "order.sql"
    script.write_text(PGBENCH_SCRIPTS[name])
    prefix = work / f"log-{uuid.uuid4().hex[:8]}"
    command = [
        pgbench_binary(), "-n", "-M", "prepared", "-f", str(script),
        "-c", str(connections), "-j", str(min(connections, 2)), "-T", str(seconds),
        "-D", f"first={FIRST_PRODUCT}", "-D", f"products={products}",
        "-l", f"--log-prefix={prefix}",
        "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432),
        "-U", url.username or "postgres", url.database or "",
    ]  # fmt: skip
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = url.password
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False, env=env
    )
    latencies = []
    for path in glob.glob(f"{prefix}.*"):
        for line in Path(path).read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]) / 1000)
        Path(path).unlink()
    tps = failed = None
    for line in result.stdout.splitlines():
        if line.startswith("tps = "):
            tps = float(line.split()[2])
        if line.startswith("number of failed transactions:"):
            failed = int(line.split(":")[1].split()[0])
    if result.returncode != 0 or tps is None or not latencies:
        raise StackError(f"pgbench failed ({result.returncode}): {result.stderr[-2000:]}")
    return tps, percentile(latencies, 0.5), percentile(latencies, 0.99), failed or 0


def run_route(
    base_url: str, name: str, connections: int, seconds: int, products: int, work: Path
) -> tuple[float, float, float, int]:
    """req/s, p50 ms, p99 ms and errors (non-2xx answers, socket errors) from wrk."""
    threads = min(connections, 2)
    header = f'run = "{uuid.uuid4().hex[:8]}"\nnthreads = {threads}\n'
    body = ROUTE_SCRIPT % {
        "first": FIRST_PRODUCT,
        "products": products,
        "keyed": "true" if ROUTES[name] else "false",
    }
    script = work / "order.lua"
    script.write_text(header + LUA_COMMON + body)
    raw = wrk(base_url, connections=connections, threads=threads, seconds=seconds, script=script)
    rate, p50, p99 = rate_and_latency(raw)
    return rate, p50, p99, raw["non_2xx"] + raw["socket_errors"]


@dataclass
class MeasuredApi:
    base_url: str
    database_url: str


@contextmanager
def target(args: argparse.Namespace) -> Iterator[MeasuredApi]:
    """A database of its own, seeded, and Gunicorn serving it; all removed on exit."""
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"parity-bench-orders-{uuid.uuid4().hex[:12]}:"
    sink = OtlpSink()  # sampled spans go to a (stand-in) collector, as in production
    try:
        progress(f"preparing a database of its own: migrate, seed {args.products} products")
        with scratch_database("bench_orders", args.products) as url:
            env = {
                "REDIS_KEY_PREFIX": prefix,
                "GUNICORN_MAX_REQUESTS": "0",
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
            }
            progress(f"starting Gunicorn ({args.workers} workers)")
            with NativeStack(database_url=url, env=env).start_gunicorn(
                workers=args.workers
            ) as server:
                yield MeasuredApi(server.base_url, url)
    finally:
        sink.close()
        delete_redis_prefix(redis_url, prefix)


def loads() -> list[str]:
    return [*PGBENCH_SCRIPTS, *ROUTES]


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="parity-bench-orders-") as tmp, target(args) as t:
        work = Path(tmp)

        def measure(name: str, connections: int, seconds: int) -> tuple[float, float, float, int]:
            if name in PGBENCH_SCRIPTS:
                return run_pgbench(t.database_url, name, connections, seconds, args.products, work)
            return run_route(t.base_url, name, connections, seconds, args.products, work)

        progress("warm-up: every load for 1 s at the highest connection count")
        for name in loads():
            measure(name, max(args.connections), 1)
        for round_ in range(1, args.rounds + 1):
            for connections in args.connections:
                order = loads() if round_ % 2 else loads()[::-1]
                for name in order:
                    sample = Sample(
                        name, connections, round_, *measure(name, connections, args.duration)
                    )
                    samples.append(sample)
                    progress(
                        f"round {round_}/{args.rounds} c={connections:<3} {name:<22} "
                        f"{sample.per_second:>7.0f}/s  p50 {sample.p50_ms:.2f} ms  "
                        f"p99 {sample.p99_ms:.2f} ms  errors {sample.errors}"
                    )
    return {
        "settings": {
            "rounds": args.rounds,
            "duration_seconds": args.duration,
            "connections": args.connections,
            "workers": args.workers,
            "products": args.products,
            "pgbench_scripts": PGBENCH_SCRIPTS,
        },
        "machine": machine(),
        "summary": summarise(samples, args.connections),
        "samples": [asdict(s) for s in samples],
    }


def reference() -> str:
    """The pgbench script of the SQL the route sends now: the last one listed."""
    return list(PGBENCH_SCRIPTS)[-1]


def summarise(samples: list[Sample], connections: list[int]) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    table: dict[str, Any] = {}
    for count in connections:
        row: dict[str, Any] = {}
        for name in loads():
            picked = [s for s in samples if s.load == name and s.connections == count]
            if picked:
                row[name] = {
                    "per_second": median([s.per_second for s in picked]),
                    "p50_ms": median([s.p50_ms for s in picked]),
                    "p99_ms": median([s.p99_ms for s in picked]),
                }
        base = row[reference()]["p50_ms"]
        row["ratio"] = {route: round(row[route]["p50_ms"] / base, 2) for route in ROUTES}
        table[str(count)] = row
    return {
        "reference": reference(),
        "by_connections": table,
        "errors": sum(s.errors for s in samples),
    }


def conclusion(summary: dict[str, Any]) -> str:
    table = summary["by_connections"]
    parts = [
        f"{table[c]['ratio']['route, with key']:.1f}× at {c} connection{'s' if c != '1' else ''}"
        for c in table
    ]
    return (
        f"A keyed one-line order through the API takes {', '.join(parts)} the latency of "
        f"its own SQL in pgbench ({summary['reference']})."
    )


def markdown(result: dict[str, Any], command: str) -> str:
    s, m, st = result["summary"], result["machine"], result["settings"]
    rows = [
        [
            count,
            name,
            f"{row[name]['p50_ms']:.2f} / {row[name]['p99_ms']:.2f} ms",
            f"{row[name]['per_second']:,.0f}",
            f"**{row['ratio'][name]:.2f}×**" if name in ROUTES else "–",
        ]
        for count, row in s["by_connections"].items()
        for name in loads()
        if name in row
    ]
    header = ["connections", "load", "p50 / p99", "per second", "route p50 ÷ pgbench p50"]
    lines = [
        markdown_table(header, rows, align="r-rrr"),
        "",
        conclusion(s),
        "",
        f"Medians of {st['rounds']} rounds × {st['duration_seconds']} s per load and "
        f"connection count, loads alternating; {st['workers']} Gunicorn workers, every "
        f"production feature at its defaults; {st['products']:,} products; the ratio is "
        f"against `{s['reference']}`. Errors (failed transactions, non-2xx answers, socket "
        f"errors): {s['errors']}.",
        "",
        machine_sentence(m, python=m["python"], postgres=True) + ".",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    table = result["summary"]["by_connections"]
    counts = list(table)
    with figure(
        path,
        title="One-line order: the API route against its own SQL in pgbench",
        conclusion=conclusion(result["summary"]),
        size=(8, 4.8),
        dpi=100,
    ) as fig:
        axis = fig.subplots()
        for name in loads():
            values = [table[c][name]["p50_ms"] for c in counts if name in table[c]]
            if len(values) == len(counts):
                style = "--" if name in PGBENCH_SCRIPTS else "-"
                axis.plot([int(c) for c in counts], values, style, marker="o", label=name)
        axis.set_xscale("log", base=2)
        axis.set_xticks([int(c) for c in counts], counts)
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel("p50 latency per order (ms, log scale)")
        axis.set_yscale("log")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)


def connection_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,4,16") from None
    if not counts or min(counts) < 1 or max(counts) > 64:
        raise argparse.ArgumentTypeError(f"{text!r}: each count must be between 1 and 64")
    return sorted(set(counts))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity bench orders", description=__doc__.split("\n\n")[0]
    )
    add_measurement_options(parser, rounds=3, duration=5, workers=2,
                            duration_means="seconds per load, connections and round")  # fmt: skip
    parser.add_argument("--connections", type=connection_counts, default=[1, 4, 16],
                        help="connection counts, comma-separated (default 1,4,16)")  # fmt: skip
    parser.add_argument("--products", type=positive_int, default=10_000,
                        help="products seeded (default 10000)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="directory for report.json, report.md and "
                        "orders.png (default results/bench-orders-<time>)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.products <= FIRST_PRODUCT:
        parser.error(f"argument --products: {args.products} must be above {FIRST_PRODUCT}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ".venv/bin/parity bench orders " + " ".join(sys.argv[1:] if argv is None else argv)
    if shutil.which("wrk") is None:
        progress("error: wrk is not installed (apt-get install wrk)")
        return 2
    started = time.monotonic()
    measured(pgbench_binary)
    result = measured(lambda: run(args))
    out = args.out or REPO_ROOT / "results" / time.strftime("bench-orders-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    section = markdown(result, command.strip())
    write_json(out / "report.json", result)
    (out / "report.md").write_text(section + "\n")
    plot(result, out / "orders.png")
    print(json.dumps(result, indent=2) if args.json else section)
    progress(f"done in {time.monotonic() - started:.0f}s; report and plot in {out}")
    return 0 if result["summary"]["errors"] == 0 else 1
