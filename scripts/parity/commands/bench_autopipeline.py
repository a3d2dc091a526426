"""What implicit pipelining (app/autopipeline.py) saves per rate-limit decision.

Concurrent callers run the limiter's `acquire()` against the real Redis, once through
the plain client (one round-trip each) and once through `AutoPipeline`, in alternating
rounds, at several concurrency levels. Per decision it reports the CPU time of this
process (the worker's side), Redis' own CPU time (`INFO cpu`), the part of it spent
running the Lua script itself (`INFO commandstats`: the rest is Redis reading, parsing
and answering commands, what batching saves) and the wall time.

    parity bench autopipeline                      # concurrency 1, 8, 32
    parity bench autopipeline --concurrency 1 64 --decisions 50000

The quota is never reached, so every decision runs the whole script and is allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.ratelimit.autopipeline import AutoPipeline
from app.ratelimit.policy import RateLimitPolicy
from app.ratelimit.sliding_window import SLIDING_WINDOW_LOG, acquire
from parity.harness.options import positive_int
from parity.harness.repo import REPO_ROOT
from parity.harness.report import markdown_table, write_json

POLICY = RateLimitPolicy("bench", 1_000_000_000, 60)
KEYS = 500  # distinct clients, so the lists stay short


@dataclass(frozen=True)
class Measure:
    client_cpu_us: float
    redis_cpu_us: float
    script_us: float
    wall_us: float


async def redis_cpu_seconds(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def script_time(redis: Redis) -> tuple[int, float]:
    """(calls, µs) Redis has spent in EVALSHA so far: the script's own run time."""
    stats = await redis.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {})
    return int(entry.get("calls", 0)), float(entry.get("usec", 0))


async def measure(redis: Redis, pipelined: bool, concurrency: int, decisions: int) -> Measure:
    client = AutoPipeline(redis) if pipelined else redis
    prefix = f"bench-autopipeline:{uuid.uuid4().hex}:"
    per_caller = max(decisions // concurrency, 1)

    async def caller(index: int) -> None:
        for i in range(per_caller):
            await acquire(client, f"{prefix}{(index * per_caller + i) % KEYS}", POLICY)

    redis_before, (calls_before, script_before) = (
        await redis_cpu_seconds(redis),
        await script_time(redis),
    )
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    redis_cpu = await redis_cpu_seconds(redis) - redis_before
    calls, script_usec = await script_time(redis)
    script_us = (script_usec - script_before) / max(calls - calls_before, 1)
    await redis.delete(*[key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)])
    total = per_caller * concurrency
    return Measure(1e6 * cpu / total, 1e6 * redis_cpu / total, script_us, 1e6 * wall / total)


def median(measures: list[Measure]) -> Measure:
    return Measure(
        statistics.median(m.client_cpu_us for m in measures),
        statistics.median(m.redis_cpu_us for m in measures),
        statistics.median(m.script_us for m in measures),
        statistics.median(m.wall_us for m in measures),
    )


async def run(args: argparse.Namespace) -> dict[str, dict[str, Measure]]:
    redis = Redis.from_url(args.redis_url, max_connections=max(args.concurrency) + 8)
    try:
        await redis.script_load(SLIDING_WINDOW_LOG)
        results: dict[str, dict[str, Measure]] = {}
        for concurrency in args.concurrency:
            rounds: dict[str, list[Measure]] = {"plain": [], "pipelined": []}
            for round_number in range(1, args.rounds + 1):
                for mode in ("plain", "pipelined") if round_number % 2 else ("pipelined", "plain"):
                    m = await measure(redis, mode == "pipelined", concurrency, args.decisions)
                    rounds[mode].append(m)
                    print(
                        f"concurrency {concurrency:3}  round {round_number}/{args.rounds}  "
                        f"{mode:9}  worker {m.client_cpu_us:6.1f} µs  "
                        f"redis {m.redis_cpu_us:5.1f} µs (script {m.script_us:4.1f})  "
                        f"wall {m.wall_us:6.1f} µs",
                        file=sys.stderr,
                        flush=True,
                    )
            results[str(concurrency)] = {mode: median(ms) for mode, ms in rounds.items()}
        return results
    finally:
        await redis.aclose()


def table(results: dict[str, dict[str, Measure]]) -> str:
    rows: list[list[str]] = []
    for concurrency, modes in results.items():
        plain, piped = modes["plain"], modes["pipelined"]
        rows += [
            [
                concurrency,
                "plain",
                f"{plain.client_cpu_us:.1f} µs",
                f"{plain.redis_cpu_us:.1f} µs",
                f"{plain.script_us:.1f} µs",
                f"{plain.wall_us:.1f} µs",
            ],
            [
                "",
                "pipelined",
                f"{piped.client_cpu_us:.1f} µs (× {piped.client_cpu_us / plain.client_cpu_us:.2f})",
                f"{piped.redis_cpu_us:.1f} µs (× {piped.redis_cpu_us / plain.redis_cpu_us:.2f})",
                f"{piped.script_us:.1f} µs",
                f"{piped.wall_us:.1f} µs (× {piped.wall_us / plain.wall_us:.2f})",
            ],
        ]
    header = [
        "concurrent callers",
        "",
        "worker CPU / decision",
        "Redis CPU / decision",
        "of which the script",
        "wall / decision",
    ]
    return markdown_table(header, rows, align="r-rrrr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity bench autopipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--concurrency", type=positive_int, nargs="+", default=[1, 8, 32],
        help="concurrent callers, one measure each (default 1 8 32)",
    )  # fmt: skip
    parser.add_argument(
        "--decisions", type=positive_int, default=20_000, help="per measure (20000)"
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except (OSError, RedisError) as exc:
        print(f"bench_autopipeline: cannot reach Redis at {args.redis_url}: {exc}")
        return 1
    report = table(results)
    print(report)
    print(f"\nMedians of {args.rounds} rounds × {args.decisions} decisions, alternating order.")
    out = REPO_ROOT / "results" / f"bench-autopipeline-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {c: {m: asdict(v) for m, v in modes.items()} for c, modes in results.items()}
    write_json(out, payload)
    print(f"results: {out}")
    return 0
