"""Throughput and latency of the API's real routes at 2 workers, with every production
feature at its defaults: a cached product read, an uncached read, a list page and an
order, each measured with wrk in rounds; medians.

    parity bench routes                     # 3 rounds × 10 s per route and load
    parity bench routes --write-docs        # update docs/benchmarks.md

The API runs natively (parity stack) on a database of its own seeded with
--products products, dropped afterwards. Per route and round:

- saturated: wrk -t2 -c64, so requests/s is the capacity of 2 workers for that route
  (its p99 is mostly queueing);
- light: wrk -t1 -c4, p50 / p99 of a request when the workers are not saturated.

Routes:
- cached read: GET /api/v1/products/{id}, ids 1..100, read before the run (X-Cache HIT);
- uncached read: GET /api/v1/products/{id}, each wrk thread walking its own stride of
  1..--products, the product cache emptied before every measure; the share of MISS
  answers is counted and reported (it must be ~100%);
- list page: GET /api/v1/products?limit=20&cursor=... at 1,000 random positions;
- order: POST /api/v1/orders, one line of one random product, a fresh Idempotency-Key
  per request.

Every request carries an API key of its own, so the rate limiter checks each one
against Redis and refuses none (0 non-2xx answers is checked). Needs wrk. Traffic goes
to 127.0.0.1 only and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from sqlalchemy.engine import make_url

from app.catalog.schemas import encode_cursor
from parity.harness.benchdocs import machine_sentence, replace_section
from parity.harness.options import add_measurement_options, positive_int
from parity.harness.repo import REPO_ROOT
from parity.harness.report import markdown_table, progress, write_json
from parity.harness.stack import (
    DEFAULT_DATABASE_URL,
    NativeStack,
    StackError,
    delete_redis_prefix,
    drop_database,
)
from parity.harness.target import add_target_options, target_choice
from parity.harness.wrk import LUA_COMMON, OtlpSink, machine, measured, rate_and_latency, wrk

HOT_IDS = 100
LOADS = {"saturated": (2, 64), "light": (1, 4)}  # name -> (wrk threads, connections)


ROUTES = {
    "cached read": """
request = function()
  local path = "/api/v1/products/" .. math.random(1, %(hot)d)
  return wrk.format("GET", path, {["X-Forwarded-For"] = client()})
end
""",
    "uncached read": """
request = function()
  local product = ((counter * nthreads + id + %(offset)d) %% %(products)d) + 1
  return wrk.format("GET", "/api/v1/products/" .. product, {["X-Forwarded-For"] = client()})
end
""",
    "list page": """
local cursors = {%(cursors)s}
request = function()
  local path = "/api/v1/products?limit=20&cursor=" .. cursors[math.random(#cursors)]
  return wrk.format("GET", path, {["X-Forwarded-For"] = client()})
end
""",
    "order": """
request = function()
  local key = identity()
  local product = math.random(%(first_cold)d, %(products)d)
  local body = '{"items": [{"product_id": ' .. product .. ', "quantity": 1}]}'
  return wrk.format("POST", "/api/v1/orders", {
    ["X-Forwarded-For"] = address(), ["Idempotency-Key"] = key,
    ["Content-Type"] = "application/json"
  }, body)
end
""",
}


@dataclass
class Sample:
    route: str
    load: str  # saturated | light
    round: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    miss_share: float
    non_2xx: int
    socket_errors: int


def lua_script(route: str, directory: Path, products: int, round_: int, load: str) -> Path:
    """The wrk script of one route and load; `round_` shifts the uncached walk so that no
    round reads what an earlier one cached."""
    cursors = ", ".join(f'"{encode_cursor(random.randint(1, products - 20))}"' for _ in range(1000))
    body = ROUTES[route] % {
        "hot": HOT_IDS,
        "products": products,
        "offset": round_ * 7919 + (0 if load == "saturated" else 3989),
        "first_cold": HOT_IDS + 1,
        "cursors": cursors,
    }
    header = f'run = "{uuid.uuid4().hex[:8]}"\nnthreads = {LOADS[load][0]}\n'
    path = directory / f"{route.replace(' ', '-')}-{load}-{round_}.lua"
    path.write_text(header + LUA_COMMON + body)
    return path


def run_wrk(
    base_url: str, load: str, seconds: int, script: Path, saturated_connections: int = 64
) -> dict[str, Any]:
    threads, connections = LOADS[load]
    if load == "saturated":
        connections = saturated_connections
    return wrk(base_url, connections=connections, threads=threads, seconds=seconds, script=script)


def empty_product_cache(redis_url: str, prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        keys = list(redis.scan_iter(match=f"{prefix}*", count=5000))
        cache_keys = [k for k in keys if b"product" in k]
        for start in range(0, len(cache_keys), 5000):
            redis.delete(*cache_keys[start : start + 5000])
    finally:
        redis.close()


@dataclass
class MeasuredApi:
    base_url: str
    redis_url: str
    prefix: str | None  # the API's REDIS_KEY_PREFIX: None = cannot empty its cache


@contextmanager
def target(args: argparse.Namespace) -> Iterator[MeasuredApi]:
    """--url: the API given; else one started here on a database of its own."""
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if args.target.kind == "url":
        yield MeasuredApi(args.target.url, redis_url, args.redis_prefix)
        return
    prefix = f"parity-bench-routes-{uuid.uuid4().hex[:12]}:"
    name = f"parity_bench_routes_{uuid.uuid4().hex[:8]}"
    base = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    sink = OtlpSink()  # sampled spans go to a (stand-in) collector, as in production
    env = {
        "REDIS_KEY_PREFIX": prefix,
        "GUNICORN_MAX_REQUESTS": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
    }
    stack = NativeStack(database_url=url, env=env)
    progress(f"preparing {name}: migrate, seed {args.products} products")
    stack.prepare(products=args.products)
    try:
        progress(f"starting Gunicorn ({args.workers} workers)")
        with stack.start_gunicorn(workers=args.workers) as running:
            yield MeasuredApi(running.base_url, redis_url, prefix)
    finally:
        sink.close()
        drop_database(url)
        delete_redis_prefix(redis_url, prefix)


def warm_hot_products(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for product_id in range(1, HOT_IDS + 1):
            # a client of its own, like every benchmark request: never rate limited
            key = {"X-Forwarded-For": f"198.19.255.{product_id % 256}"}
            response = client.get(f"/api/v1/products/{product_id}", headers=key)
            if response.status_code != 200:
                raise StackError(f"warming product {product_id}: {response.status_code}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp, target(args) as running:
        directory = Path(tmp)
        if running.prefix is None:
            progress("no --redis-prefix: the cache is not emptied; uncached reads walk "
                     "from a new position each time and report their real MISS share")  # fmt: skip
        routes = list(ROUTES)
        for route in routes:  # warm-up: connections, pools, Lua scripts in Redis
            script = lua_script(route, directory, args.products, 0, "light")
            run_wrk(running.base_url, "light", min(2, args.duration), script)
        for round_ in range(1, args.rounds + 1):
            order = routes if round_ % 2 else routes[::-1]
            for route in order:
                for load in LOADS:
                    if route == "uncached read" and running.prefix is not None:
                        empty_product_cache(running.redis_url, running.prefix)
                    if route == "cached read":
                        warm_hot_products(running.base_url)
                    script = lua_script(route, directory, args.products, round_, load)
                    raw = run_wrk(running.base_url, load, args.duration, script, args.connections)
                    sample = Sample(
                        route,
                        load,
                        round_,
                        *rate_and_latency(raw),
                        round(raw["misses"] / max(raw["requests"], 1), 3),
                        raw["non_2xx"],
                        raw["socket_errors"],
                    )
                    samples.append(sample)
                    progress(
                        f"round {round_}/{args.rounds} {route:<14} {load:<9} "
                        f"{sample.requests_per_second:>7.0f} req/s  p50 {sample.p50_ms:.2f} ms"
                        f"  p99 {sample.p99_ms:.2f} ms  errors {sample.non_2xx}"
                    )
    return {
        "settings": {
            "rounds": args.rounds,
            "duration_seconds": args.duration,
            "workers": args.workers,
            "products": args.products,
            "loads": {
                "saturated": f"wrk -t{LOADS['saturated'][0]} -c{args.connections}",
                "light": f"wrk -t{LOADS['light'][0]} -c{LOADS['light'][1]}",
            },
            "connections": args.connections,
        },
        "machine": machine(),
        "summary": summarise(samples),
        "samples": [asdict(s) for s in samples],
    }


def summarise(samples: list[Sample]) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    routes: dict[str, Any] = {}
    for route in ROUTES:
        entry: dict[str, Any] = {}
        for load in LOADS:
            picked = [s for s in samples if s.route == route and s.load == load]
            entry[load] = {
                "requests_per_second": median([s.requests_per_second for s in picked]),
                "p50_ms": median([s.p50_ms for s in picked]),
                "p99_ms": median([s.p99_ms for s in picked]),
                "miss_share": median([s.miss_share for s in picked]),
            }
        routes[route] = entry
    non_2xx = sum(s.non_2xx for s in samples)
    socket_errors = sum(s.socket_errors for s in samples)
    return {
        "routes": routes,
        "errors": non_2xx + socket_errors,
        "non_2xx": non_2xx,
        "socket_errors": socket_errors,
    }


def markdown(result: dict[str, Any], command: str) -> str:
    s, m, st = result["summary"], result["machine"], result["settings"]
    rows = []
    for route, entry in s["routes"].items():
        sat, light = entry["saturated"], entry["light"]
        rows.append(
            [
                route,
                f"**{sat['requests_per_second']:,.0f}**",
                f"{sat['p50_ms']:.1f} / {sat['p99_ms']:.1f} ms",
                f"{light['p50_ms']:.1f} / **{light['p99_ms']:.1f}** ms",
                f"{100 * sat['miss_share']:.0f}%" if route != "order" else "–",
            ]
        )
    header = [
        "route",
        f"req/s, {st['connections']} connections",
        "p50 / p99 there",
        "p50 / p99, 4 connections",
        "X-Cache MISS",
    ]
    lines = [
        markdown_table(header, rows, align="-rrrr"),
        "",
        f"{st['workers']} Gunicorn workers, every production feature at its defaults; "
        f"{st['products']:,} products. Medians of {st['rounds']} rounds × "
        f"{st['duration_seconds']} s per route and load (wrk: {st['loads']['saturated']} "
        f"and {st['loads']['light']}, on the same machine). Errors: {s['non_2xx']} non-2xx "
        f"answers and {s['socket_errors']} socket errors (wrk counts a request with no "
        "answer within 2 s as a timeout).",
        "",
        machine_sentence(m, python=m["python"], postgres=True) + ".",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity bench routes", description=__doc__.split("\n\n")[0]
    )
    add_measurement_options(parser, rounds=3, duration=10, workers=2,
                            duration_means="seconds per route, load and round")  # fmt: skip
    parser.add_argument(
        "--products",
        type=positive_int,
        default=50_000,
        help="products seeded (the uncached reads walk them; default 50000)",
    )
    parser.add_argument("--connections", type=positive_int, default=64,
                        help="wrk connections of the saturated load (default 64)")  # fmt: skip
    add_target_options(parser, ("native", "url"), help={
        "native": "start the API here on a database of its own",
        "url": "measure an API already running at URL (loopback only; seeded with "
               "--products products)"})  # fmt: skip
    parser.add_argument("--redis-prefix", help="--url: its REDIS_KEY_PREFIX, to empty the "
                        "product cache before the uncached reads")  # fmt: skip
    parser.add_argument("--write-docs", action="store_true",
                        help="replace this benchmark's section of docs/benchmarks.md")  # fmt: skip
    parser.add_argument("--out", type=Path,
                        help="JSON result (default results/bench-routes-<time>.json)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    args.target = target_choice(parser, args)
    if args.products <= HOT_IDS + 20:
        parser.error(f"argument --products: {args.products} must be above {HOT_IDS + 20}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ".venv/bin/parity bench routes " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    result = measured(lambda: run(args))
    out = args.out or REPO_ROOT / "results" / time.strftime("bench-routes-%Y%m%d-%H%M%S.json")
    write_json(out, result)
    section = markdown(result, command.strip())
    if args.write_docs:
        replace_section("bench_routes", "Realistic routes", section)
    print(json.dumps(result, indent=2) if args.json else section)
    progress(f"done in {time.monotonic() - started:.0f}s; results: {out}")
    return 0 if result["summary"]["errors"] == 0 else 1
