"""What each telemetry feature costs per request, in CPU time.

    parity bench telemetry [--rounds 7] [--requests 3000] [--json] [--plot PATH]

Builds the same trivial FastAPI route six times, each with one more feature of
TelemetryMiddleware switched on (request id + metrics, the JSON access log, tracing with
no request sampled, which is what 90 % of requests cost at the default ratio, tracing at
the default 10 % sampling, tracing at 100 %), drives each through its ASGI interface in
this process, interleaved in rounds, and reports the median CPU microseconds per request
(`time.process_time`, so other processes on the machine do not count) and how much of
the bare route's throughput each variant keeps.

In-process on purpose: it isolates the middleware from the HTTP server and the network.
A served request also pays for HTTP parsing in Uvicorn (about as much again as the
bare route here), so served throughput ratios are milder than these; the load tests
(docs/loadtest.md) measure those. No database, Redis or network is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.config
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# No export: the cost measured is making spans, not sending them (a thread does that).
os.environ["OTEL_TRACES_EXPORTER"] = "none"
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.middleware import Middleware

from app.settings import Settings
from app.telemetry.logging import logging_config
from app.telemetry.middleware import TelemetryMiddleware
from app.telemetry.tracing import start_tracing
from parity.harness.report import figure


@dataclass(frozen=True)
class Variant:
    name: str
    middleware: bool
    access_log: bool
    sample_ratio: float | None  # None: tracing off


VARIANTS = (
    Variant("bare route", middleware=False, access_log=False, sample_ratio=None),
    Variant("+ request id, metrics", middleware=True, access_log=False, sample_ratio=None),
    Variant("+ JSON access log", middleware=True, access_log=True, sample_ratio=None),
    Variant("+ tracing, none sampled", middleware=True, access_log=True, sample_ratio=0.0),
    Variant("+ tracing, 10% sampled", middleware=True, access_log=True, sample_ratio=0.1),
    Variant("+ tracing, 100% sampled", middleware=True, access_log=True, sample_ratio=1.0),
)

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/items/7",
    "raw_path": b"/items/7",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"localhost"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


def build_app(variant: Variant) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        tracing = None
        if variant.sample_ratio is not None:
            os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(variant.sample_ratio)
            tracing = start_tracing(Settings())
        yield {"tracing": tracing}
        if tracing is not None:
            await tracing.shutdown(within=1.0)

    middleware = [Middleware(TelemetryMiddleware)] if variant.middleware else []
    app = FastAPI(
        lifespan=lifespan,
        middleware=middleware,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    return app


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    pass


async def cpu_per_request(app: Callable[..., Any], requests: int) -> float:
    for _ in range(requests // 10):  # warm up caches and label children
        await app(dict(SCOPE), _receive, _send)
    started = time.process_time()
    for _ in range(requests):
        await app(dict(SCOPE), _receive, _send)
    return (time.process_time() - started) / requests * 1e6


async def run(rounds: int, requests: int) -> dict[str, float]:
    access_log = logging.getLogger("app.access")
    apps = {}
    for variant in VARIANTS:
        manager = LifespanManager(build_app(variant))
        await manager.__aenter__()
        apps[variant.name] = manager.app
    samples: dict[str, list[float]] = {variant.name: [] for variant in VARIANTS}
    for number in range(1, rounds + 1):
        for variant in VARIANTS:
            access_log.setLevel(logging.INFO if variant.access_log else logging.WARNING)
            samples[variant.name].append(await cpu_per_request(apps[variant.name], requests))
        done = ", ".join(f"{name} {values[-1]:.0f}" for name, values in samples.items())
        print(f"round {number}/{rounds}: µs/request {done}", file=sys.stderr)
    return {name: statistics.median(values) for name, values in samples.items()}


def configure_logging() -> None:
    """The service's own JSON logging, written to /dev/null (writing is cheap; building
    and formatting the line is what is measured)."""
    config = logging_config(Settings())
    config["handlers"]["stderr"]["stream"] = open(os.devnull, "w")  # noqa: SIM115
    logging.config.dictConfig(config)


def conclusion(medians: dict[str, float]) -> str:
    bare, full = medians[VARIANTS[0].name], medians[VARIANTS[-1].name]
    return (
        f"Every feature on, every request traced: {full:.0f} µs of CPU per request against "
        f"{bare:.0f} µs bare ({100 * bare / full:.0f}% of its throughput)."
    )


def plot(medians: dict[str, float], path: Path) -> None:
    names = list(medians)
    with figure(
        path,
        title="TelemetryMiddleware: cost of each feature",
        conclusion=conclusion(medians),
        size=(8, 3.6),
        dpi=120,
    ) as fig:
        axes = fig.subplots()
        bars = axes.barh(names[::-1], [medians[n] for n in names[::-1]], color="#4c72b0")
        axes.bar_label(bars, fmt="%.0f µs", padding=3)
        axes.set_xlabel("CPU µs per request (median, in-process)")
        axes.set_ylabel("variant (each adds one feature)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="parity bench telemetry", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--requests", type=int, default=3000, help="per variant per round")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < 100:
        parser.error("--rounds must be >= 1 and --requests >= 100")
    configure_logging()
    medians = asyncio.run(run(args.rounds, args.requests))
    bare = medians[VARIANTS[0].name]
    rows = [
        {
            "variant": name,
            "cpu_us_per_request": round(value, 1),
            "added_us": round(value - bare, 1),
            "throughput_vs_bare": round(bare / value, 3),
        }
        for name, value in medians.items()
    ]
    if args.plot:
        plot(medians, args.plot)
    if args.json:
        print(json.dumps({"rounds": args.rounds, "requests": args.requests, "results": rows}))
    else:
        print(f"\n{'variant':26s} {'µs/request':>10s} {'added':>8s} {'vs bare':>8s}")
        for row in rows:
            print(
                f"{row['variant']:26s} {row['cpu_us_per_request']:10.1f} "
                f"{row['added_us']:+8.1f} {row['throughput_vs_bare']:8.2f}"
            )
        print("\nmedians of interleaved rounds, CPU time of this process only")
        if args.plot:
            print(f"chart: {args.plot}")
    return 0
