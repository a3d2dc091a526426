"""What the Redis rate limiter costs: the same app with the limiter on and off, side by
side in one run, measured in alternating rounds with wrk; medians and ratios.

    parity bench rate-limit                      # 5 rounds of 5 s per measure
    parity bench rate-limit --rounds 7 --duration 10 --plot bench.png
    parity bench rate-limit --write-docs         # update docs/benchmarks.md

Two Gunicorn masters run at once (same workers, same settings) except
RATE_LIMIT_ENABLED, with a quota no request reaches, so every request of the "on"
server does the real work (one Lua call in Redis) and is allowed. Two routes:

- `/health`, the cheapest route there is (the run sets RATE_LIMIT_EXEMPT_PATHS so it is
  *not* exempt): the worst case, where the limiter's round-trip is most of the work;
- `/api/v1/products/1`, the cheapest real API route (a Redis cache hit).

Per route, round and server, in alternating order:

- latency: 1 connection, closed loop (`wrk -c1`): p50 / p99 of one request with no
  queueing, so "on minus off" is the time the limiter adds to a request;
- throughput: `--connections` connections (`wrk -c64`): requests per second at
  saturation, so "on / off" is the capacity the limiter costs.

Needs wrk (`apt-get install wrk`). Traffic goes to 127.0.0.1 only and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from parity.harness.benchdocs import DOCS, replace_section
from parity.harness.options import add_measurement_options
from parity.harness.repo import REPO_ROOT
from parity.harness.report import figure, markdown_table, progress
from parity.harness.stack import (
    GunicornProcess,
    NativeStack,
    StackError,
    delete_redis_prefix,
    scratch_database,
)
from parity.harness.wrk import WRK_REPORT, machine, rate_and_latency, wrk

PATHS = ("/health", "/api/v1/products/1")


@dataclass
class Sample:
    path: str
    server: str  # "on" | "off"
    round: int
    measure: str  # "latency" | "throughput"
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def measure(
    server: str,
    base_url: str,
    path: str,
    round_: int,
    measure_: str,
    args: argparse.Namespace,
    script: Path,
) -> Sample:
    url = base_url + path
    if measure_ == "latency":
        raw = wrk(url, connections=1, threads=1, seconds=args.duration, script=script)
    else:
        raw = wrk(
            url,
            connections=args.connections,
            threads=2,
            seconds=args.duration,
            script=script,
        )
    return Sample(
        path,
        server,
        round_,
        measure_,
        *rate_and_latency(raw),
        raw["non_2xx"],
        raw["socket_errors"],
    )


@contextmanager
def servers(args: argparse.Namespace) -> Iterator[dict[str, GunicornProcess]]:
    """The two masters, limiter on and off, identical otherwise."""
    prefix = f"parity-bench-{uuid.uuid4().hex[:12]}:"
    common = {
        "REDIS_KEY_PREFIX": prefix,
        "RATE_LIMIT_EXEMPT_PATHS": "/ready,/metrics",
        # Never reached: every request is checked and allowed. A 1 s window keeps the
        # log (one entry per allowed request) to about one second of traffic.
        "RATE_LIMIT_DEFAULT": "1000000/1s",
        "LOG_LEVEL": "info",
        "GUNICORN_MAX_REQUESTS": "0",
    }
    with ExitStack() as stack_of_servers:
        progress("preparing a database of its own (migrate, seed 10 products)")
        url = stack_of_servers.enter_context(scratch_database("bench_rl", 10))
        stack = NativeStack(database_url=url)
        started = {}
        for name, enabled in (("on", "true"), ("off", "false")):
            env = {**common, "RATE_LIMIT_ENABLED": enabled}
            progress(f"starting Gunicorn ({args.workers} workers), limiter {name}")
            server = stack.start_gunicorn(workers=args.workers, env=env, host="127.0.0.1")
            started[name] = stack_of_servers.enter_context(server)
        yield started
    delete_redis_prefix(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), prefix)


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp, servers(args) as started:
        script = Path(tmp) / "report.lua"
        script.write_text(WRK_REPORT)
        for path in PATHS:  # warm-up: connections, the product cache, the Lua script
            for server in started.values():
                wrk(server.base_url + path, connections=8, threads=2, seconds=2, script=script)
        for round_ in range(1, args.rounds + 1):
            order = ["on", "off"] if round_ % 2 else ["off", "on"]
            for path in PATHS:
                for measure_ in ("latency", "throughput"):
                    for name in order:
                        sample = measure(
                            name, started[name].base_url, path, round_, measure_, args, script
                        )
                        samples.append(sample)
                        progress(
                            f"round {round_}/{args.rounds} {path:<20} {measure_:<10} "
                            f"limiter {name:<3} {sample.requests_per_second:>7.0f} req/s  "
                            f"p50 {sample.p50_ms:.3f} ms  p99 {sample.p99_ms:.3f} ms"
                        )
    return {"settings": _settings(args), "machine": machine(), **summarise(samples)}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "rounds": args.rounds,
        "duration_seconds": args.duration,
        "workers": args.workers,
        "connections": args.connections,
        "load_generator": f"wrk 4 (latency: -t1 -c1; throughput: -t2 -c{args.connections})",
    }


def summarise(samples: list[Sample]) -> dict[str, Any]:
    """Per route: medians per server and measure, and the median of the per-round
    pairs (on and off measured back to back, so slow moments of a shared machine hit
    both)."""
    routes = {path: summarise_route([s for s in samples if s.path == path]) for path in PATHS}
    errors = sum(s.non_2xx + s.socket_errors for s in samples)
    target_met = errors == 0 and all(r["added_p50_ms"] < 1.0 for r in routes.values())
    return {
        "summary": {"routes": routes, "errors": errors, "target_met": target_met},
        "samples": [asdict(s) for s in samples],
    }


def summarise_route(samples: list[Sample]) -> dict[str, Any]:
    def pick(server: str, measure_: str) -> list[Sample]:
        return [s for s in samples if s.server == server and s.measure == measure_]

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 4)

    def both(measure_: str, field: str) -> dict[str, float]:
        return {
            name: median([getattr(s, field) for s in pick(name, measure_)])
            for name in ("on", "off")
        }

    lat = list(zip(pick("on", "latency"), pick("off", "latency"), strict=True))
    thr = list(zip(pick("on", "throughput"), pick("off", "throughput"), strict=True))
    return {
        "latency_p50_ms": both("latency", "p50_ms"),
        "latency_p99_ms": both("latency", "p99_ms"),
        "throughput_rps": both("throughput", "requests_per_second"),
        "added_p50_ms": median([on.p50_ms - off.p50_ms for on, off in lat]),
        "added_p99_ms": median([on.p99_ms - off.p99_ms for on, off in lat]),
        "throughput_ratio": median(
            [on.requests_per_second / off.requests_per_second for on, off in thr]
        ),
    }


def markdown(result: dict[str, Any], command: str) -> str:
    s, m, st = result["summary"], result["machine"], result["settings"]
    rows = []
    for path, r in s["routes"].items():
        p50, p99, rps = r["latency_p50_ms"], r["latency_p99_ms"], r["throughput_rps"]
        rows += [
            [f"`{path}`", "p50 latency, 1 connection", f"{p50['off']:.3f} ms",
             f"{p50['on']:.3f} ms", f"**{r['added_p50_ms']:+.3f} ms**"],
            ["", "p99 latency, 1 connection", f"{p99['off']:.3f} ms", f"{p99['on']:.3f} ms",
             f"{r['added_p99_ms']:+.3f} ms"],
            ["", f"throughput, {st['connections']} connections", f"{rps['off']:.0f} req/s",
             f"{rps['on']:.0f} req/s", f"**× {r['throughput_ratio']:.2f}**"],
        ]  # fmt: skip
    header = ["Route", "", "limiter off", "limiter on", "on − off / on ÷ off"]
    lines = [
        markdown_table(header, rows, align="--rrr"),
        "",
        f"Medians of {st['rounds']} rounds × {st['duration_seconds']} s per measure; the "
        "differences and ratios are medians of the per-round pairs. "
        f"Errors (non-2xx or socket): {s['errors']}. Target (< 1 ms p50 added): "
        f"{'met' if s['target_met'] else 'NOT met'}.",
        "",
        f"Machine: {m['cpus']} × {m['cpu_model']}, {m['os']}, Python {m['python']}, "
        f"Redis {m['redis']} on loopback, load average at the end {m['load_average']} "
        "(a machine shared with other work). "
        f"Load generator: {st['load_generator']}; {st['workers']} Gunicorn workers per "
        "server.",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def write_docs(section: str, path: Path = DOCS) -> None:
    """Replace this script's section of docs/benchmarks.md, leaving every other section
    as it is; append it if missing."""
    replace_section("bench_rate_limit", "Rate limiter overhead", section, path)


def conclusion(summary: dict[str, Any]) -> str:
    added = ", ".join(
        f"{r['added_p50_ms']:+.3f} ms on {path}" for path, r in summary["routes"].items()
    )
    met = "met" if summary["target_met"] else "NOT met"
    return f"p50 added by the limiter: {added}; target (< 1 ms p50 added) {met}."


def plot(result: dict[str, Any], path: Path) -> None:
    samples = result["samples"]
    panels = (
        ("latency", "p50_ms", "p50 latency, 1 connection", "ms"),
        ("latency", "p99_ms", "p99 latency, 1 connection", "ms"),
        ("throughput", "requests_per_second", "throughput", "req/s"),
    )
    with figure(
        path,
        title="Rate limiter cost: bars are medians, dots are rounds",
        conclusion=conclusion(result["summary"]),
        size=(12, 3.5 * len(PATHS)),
        dpi=100,
    ) as fig:
        axes = fig.subplots(len(PATHS), 3, squeeze=False)
        for row, route in zip(axes, PATHS, strict=True):
            for axis, (measure_, field, title, unit) in zip(row, panels, strict=True):
                for x, server in enumerate(("off", "on")):
                    values = [
                        s[field]
                        for s in samples
                        if (s["path"], s["server"], s["measure"]) == (route, server, measure_)
                    ]
                    color = ("#888888", "#d95f02")[x]
                    axis.bar(x, statistics.median(values), color=color, alpha=0.6)
                    axis.scatter([x] * len(values), values, color="black", s=12, zorder=3)
                axis.set_xticks([0, 1], ["limiter off", "limiter on"])
                axis.set_xlabel("server")
                axis.set_ylabel(unit)
                axis.set_title(f"{route}: {title}", fontsize=9)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity bench rate-limit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_measurement_options(parser, rounds=5, duration=5, workers=2, connections=64,
                            duration_means="seconds per measure")  # fmt: skip
    parser.add_argument("--plot", type=Path, help="write a PNG chart here")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if shutil.which("wrk") is None:
        progress("error: wrk is not installed (apt-get install wrk)")
        return 2
    try:
        result = run(args)
    except (StackError, OSError, subprocess.TimeoutExpired) as exc:
        progress(f"error: {exc}")
        return 2
    command = ".venv/bin/parity bench rate-limit " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    section = markdown(result, command.strip())
    if args.plot:
        plot(result, args.plot)
        progress(f"chart written to {args.plot}")
    if args.write_docs:
        write_docs(section)
        progress(f"section written to {DOCS.relative_to(REPO_ROOT)}")
    print(json.dumps(result, indent=2) if args.json else section)
    return 0 if result["summary"]["errors"] == 0 else 1
