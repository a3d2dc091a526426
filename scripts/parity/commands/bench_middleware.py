"""The middleware tax: the full production app against a bare FastAPI app, both served
by Gunicorn with the project's gunicorn.conf.py, side by side in one run, measured in
alternating rounds with wrk; medians and their ratio, and a profile of where the
production app's extra time goes.

    parity bench middleware                       # 5 rounds of 10 s, profile 10 s
    parity bench middleware --rounds 7 --plot docs/img/middleware-tax.png
    parity bench middleware --write-docs          # update docs/benchmarks.md

Both masters run at once with the same workers and Gunicorn settings
(parity.harness.bench_apps): `full` is the production app with every feature at its
defaults (metrics, tracing at the default sampler, the JSON access log, the Redis rate
limiter, security headers, input limits); `bare` is `FastAPI()`. Both serve the same
trivial route, which the limiter and tracing do not exempt. Every request carries an
API key from a pool of 10,000 per wrk thread, so the limiter does its full work (a
Redis round trip) and never refuses: 0 non-2xx answers is checked. Worker recycling is
off (GUNICORN_MAX_REQUESTS=0) everywhere, so no worker restarts inside a round.

Unless --no-ablation, four more masters serve the full app with one feature turned off
each (rate limiter, tracing, metrics, access log): what each feature costs.

Per round, each server in turn (the order rotates from round to round): wrk -t2 -c64
for --duration seconds; requests/s, p50/p99 under that load, and the server's CPU per
request (its master and workers, from /proc). Then py-spy samples each server's workers for
--profile seconds under the same load, and the samples are attributed to the
component whose code was running (tracing, metrics, access log, rate limiter, our other
middleware, FastAPI/Starlette, Uvicorn, the event loop).

Needs wrk (apt-get install wrk); py-spy (requirements-dev) for the profile. Traffic
goes to 127.0.0.1 only and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from parity.harness.bench_apps import TRIVIAL_PATH
from parity.harness.benchdocs import machine_sentence, replace_section
from parity.harness.options import add_measurement_options
from parity.harness.repo import REPO_ROOT
from parity.harness.report import figure, markdown_table, progress, write_json
from parity.harness.stack import (
    GunicornProcess,
    NativeStack,
    StackError,
    delete_redis_prefix,
    scratch_database,
)
from parity.harness.wrk import (
    IDENTITY_LUA,
    WRK_REPORT,
    CpuSample,
    OtlpSink,
    machine,
    measure_in_rotation,
    measured,
    round_progress,
    wrk,
)

FULL, BARE = "parity.harness.bench_apps:full", "parity.harness.bench_apps:bare"
# name -> (app, environment on top of the defaults, what it shows). The "without"
# variants turn one feature off in the full app: what each one costs, measured as
# throughput in the same rounds, which no profiler artefact can distort.
VARIANTS: dict[str, tuple[str, dict[str, str], str]] = {
    "full": (FULL, {}, "the production app, every feature at its defaults"),
    "bare": (BARE, {}, "FastAPI() with the same route"),
    "without rate limiter": (FULL, {"RATE_LIMIT_ENABLED": "false"}, "RATE_LIMIT_ENABLED=false"),
    "without tracing": (FULL, {"OTEL_SDK_DISABLED": "true"}, "OTEL_SDK_DISABLED=true"),
    "without metrics": (FULL, {"METRICS_ENABLED": "false"}, "METRICS_ENABLED=false"),
    # LOG_LEVEL=warning silences the access log (and the boot lines, so this variant is
    # waited for on its route instead of on its workers' startup lines).
    "without access log": (FULL, {"LOG_LEVEL": "warning"}, "LOG_LEVEL=warning"),
}
ABLATIONS = [name for name in VARIANTS if name.startswith("without")]
TARGET_RATIO = 0.45  # issue 16


@contextmanager
def servers(args: argparse.Namespace, sink: OtlpSink) -> Iterator[dict[str, GunicornProcess]]:
    prefix = f"parity-bench-mw-{uuid.uuid4().hex[:12]}:"
    env = {
        "REDIS_KEY_PREFIX": prefix,
        "GUNICORN_MAX_REQUESTS": "0",
        # Where the spans go; the sampler and everything else stay at their defaults.
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
    }
    names = ["full", "bare", *(ABLATIONS if args.ablation else [])]
    with ExitStack() as running:
        # A database and Redis prefix of this run's own, removed on the way out.
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        running.callback(delete_redis_prefix, redis_url, prefix)
        progress("preparing a database of its own (migrate, seed 10 products)")
        stack = NativeStack(database_url=running.enter_context(scratch_database("bench_mw", 10)))
        started = {}
        for name in names:
            app, extra, _ = VARIANTS[name]
            progress(f"starting Gunicorn ({args.workers} workers): {name} ({app})")
            started[name] = running.enter_context(start_variant(stack, app, {**env, **extra}, args))
        yield started


def start_variant(stack: NativeStack, app: str, env: dict[str, str],
                  args: argparse.Namespace) -> GunicornProcess:  # fmt: skip
    if app == FULL and env.get("LOG_LEVEL") != "warning":
        return stack.start_gunicorn(workers=args.workers, env=env, app=app)
    # No /ready (bare) or no boot lines in the log (access log off): ready when the
    # route answers.
    return stack.start_gunicorn(
        workers=args.workers, env=env, app=app,
        ready_path=TRIVIAL_PATH, ready_timeout=60, wait_booted=False,
    )  # fmt: skip


# --- profile -----------------------------------------------------------------------------

# Where a sample's time goes: the innermost frame of the stack whose file contains one
# of these markers, checked in order (py-spy runs with --full-filenames: it would drop
# the first directory of a namespace package such as opentelemetry). The standard
# library and glue (json, hashlib, contextvars, ...) are skipped: they work on behalf
# of whoever called them. The event loop and Gunicorn count only when nothing else is
# on the stack.
APP = f"{REPO_ROOT}/app/"
COMPONENTS = (
    ("tracing (OpenTelemetry)", ("/opentelemetry/", f"{APP}telemetry/tracing")),
    ("metrics (prometheus_client)", ("/prometheus_client/", f"{APP}telemetry/metrics")),
    ("access log (logging, JSON)", ("/pythonjsonlogger/", "/logging/", f"{APP}telemetry/logging")),
    ("rate limiter (Redis client)", ("/redis/", f"{APP}ratelimit", f"{APP}client_identity")),
    ("our telemetry middleware", (f"{APP}telemetry/",)),
    ("HTTP protocol (Uvicorn, socket writes)", ("/uvicorn/", "/h11/", f"{APP}http_protocol")),
    ("our other middleware (headers, limits)", (APP,)),
    ("FastAPI / Starlette / pydantic", ("/fastapi/", "/starlette/", "/pydantic", "/anyio/")),
    ("event loop (asyncio)", ("/asyncio/", "/selectors.py", "/uvloop/")),
    ("Gunicorn worker", ("/gunicorn/", "/uvicorn_worker/")),
)
FALLBACK = 2  # the last two only when no other component is on the stack


def frame_path(frame: str) -> str:
    """`func (/path/to/file.py:123)` -> `/path/to/file.py`."""
    inside = frame.rpartition(" (")[2]
    return inside.rstrip(")").rpartition(":")[0]


def component(stack: list[str]) -> str:
    paths = [frame_path(frame) for frame in reversed(stack)]  # innermost first
    for group in (COMPONENTS[:-FALLBACK], COMPONENTS[-FALLBACK:]):
        for path in paths:
            for name, markers in group:
                if any(marker in path for marker in markers):
                    return name
    return "other"


def attribute(raw_profile: str) -> dict[str, float]:
    """py-spy's raw (collapsed) output -> share of the samples per component."""
    counts: Counter[str] = Counter()
    for line in raw_profile.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        frames = [f for f in stack_text.split(";") if not f.startswith("process ")]
        counts[component(frames)] += int(count)
    total = sum(counts.values()) or 1
    return {name: round(100 * n / total, 1) for name, n in counts.most_common()}


def profile(name: str, server: GunicornProcess, args: argparse.Namespace, script: Path,
            out: Path) -> dict[str, Any]:  # fmt: skip
    """py-spy on the server's workers for args.profile seconds under the wrk load."""
    raw_path = out / f"profile-{name}.txt"
    load = subprocess.Popen(
        ["wrk", "-t2", f"-c{args.connections}", f"-d{args.profile + 2}s", "-s", str(script),
         server.base_url + TRIVIAL_PATH],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1)
        spy = subprocess.run(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.pid),
             "--subprocesses", "--nonblocking", "--full-filenames", "--format", "raw",
             "--rate", "250",
             "--duration", str(args.profile), "--output", str(raw_path)],
            capture_output=True, text=True, timeout=args.profile + 60, check=False,
        )  # fmt: skip
    finally:
        load.wait(timeout=args.profile + 30)
    if spy.returncode != 0 or not raw_path.exists():
        raise StackError(f"py-spy failed: {spy.stderr.strip()[-500:]}")
    text = raw_path.read_text()
    samples = sum(int(line.rpartition(" ")[2]) for line in text.splitlines() if line.strip())
    return {"samples": samples, "components": attribute(text), "raw": str(raw_path)}


# --- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    samples: list[CpuSample] = []
    profiles: dict[str, Any] = {}
    with ExitStack() as resources:
        sink = OtlpSink()
        resources.callback(sink.close)
        tmp = resources.enter_context(tempfile.TemporaryDirectory())
        started = resources.enter_context(servers(args, sink))
        script = Path(tmp) / "bench.lua"
        script.write_text(IDENTITY_LUA + WRK_REPORT)
        warmup = min(3, args.duration)
        for server in started.values():  # warm-up: connections, Redis script, imports
            wrk(
                server.base_url + TRIVIAL_PATH, connections=8, threads=2, seconds=warmup,
                script=script,
            )  # fmt: skip

        samples += measure_in_rotation(
            started,
            rounds=args.rounds,
            connections=args.connections,
            seconds=args.duration,
            script=script,
            report=round_progress(args.rounds, name_width=4, rate_width=8, percentiles=True),
        )
        if args.profile:
            for name in ("full", "bare"):
                progress(f"profiling {name} for {args.profile}s with py-spy")
                profiles[name] = profile(name, started[name], args, script, out)
    return {
        "settings": {
            "rounds": args.rounds,
            "duration_seconds": args.duration,
            "workers": args.workers,
            "connections": args.connections,
            "load_generator": f"wrk 4 -t2 -c{args.connections}",
            "profile_seconds": args.profile,
        },
        "machine": machine(),
        "summary": {**summarise(samples), "otlp_exports": sink.exports},
        "profiles": profiles,
        "samples": [asdict(s) for s in samples],
    }


def summarise(samples: list[CpuSample]) -> dict[str, Any]:
    """Medians per server; full ÷ bare and each ablation ÷ full as the median of the
    per-round ratios (servers measured back to back in a round, so a slow moment of a
    shared machine hits them alike)."""

    def pick(name: str) -> list[CpuSample]:
        return sorted((s for s in samples if s.server == name), key=lambda s: s.round)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    def ratios(top: str, bottom: str) -> list[float]:
        pairs = zip(pick(top), pick(bottom), strict=True)
        return [a.requests_per_second / b.requests_per_second for a, b in pairs]

    names = list(dict.fromkeys(s.server for s in samples))
    per_server = {
        name: {
            "requests_per_second": median([s.requests_per_second for s in pick(name)]),
            "p50_ms": median([s.p50_ms for s in pick(name)]),
            "p99_ms": median([s.p99_ms for s in pick(name)]),
            "cpu_us_per_request": median([s.cpu_us_per_request for s in pick(name)]),
        }
        for name in names
    }
    main = ratios("full", "bare")
    ablations = {
        name: {
            "gain_over_full": median(ratios(name, "full")),
            "share_of_bare": median(ratios(name, "bare")),
            "cpu_us_saved": round(
                per_server["full"]["cpu_us_per_request"] - per_server[name]["cpu_us_per_request"], 1
            ),
        }
        for name in names
        if name in ABLATIONS
    }
    ratio = median(main)
    errors = sum(s.non_2xx + s.socket_errors for s in samples)
    return {
        **per_server,
        "ratio": ratio,
        "ratio_min": round(min(main), 3),
        "ratio_max": round(max(main), 3),
        "ablations": ablations,
        "errors": errors,
        "target": TARGET_RATIO,
        "target_met": errors == 0 and ratio >= TARGET_RATIO,
    }


# --- reports -----------------------------------------------------------------------------


def markdown(result: dict[str, Any], command: str) -> str:
    s, m, st = result["summary"], result["machine"], result["settings"]
    full, bare = s["full"], s["bare"]
    rows = [
        [
            f"throughput, {st['connections']} connections",
            f"{bare['requests_per_second']:,.0f} req/s",
            f"{full['requests_per_second']:,.0f} req/s",
            f"**{100 * s['ratio']:.0f}%** "
            f"(rounds: {100 * s['ratio_min']:.0f}–{100 * s['ratio_max']:.0f}%)",
        ],
        [
            "server CPU per request",
            f"{bare['cpu_us_per_request']:.0f} µs",
            f"{full['cpu_us_per_request']:.0f} µs",
            f"× {full['cpu_us_per_request'] / max(bare['cpu_us_per_request'], 1e-9):.2f}",
        ],
        [
            "p50 / p99 under that load",
            f"{bare['p50_ms']:.1f} / {bare['p99_ms']:.1f} ms",
            f"{full['p50_ms']:.1f} / {full['p99_ms']:.1f} ms",
            "",
        ],
    ]
    header = ["", "bare FastAPI", "full production stack", "full ÷ bare"]
    lines = [
        markdown_table(header, rows, align="-rrr"),
        "",
        f"Medians of {st['rounds']} rounds × {st['duration_seconds']} s per server, in "
        "rotating order; ratios are medians of the per-round ratios. Errors "
        f"(non-2xx or socket): {s['errors']}. Target (≥ {100 * s['target']:.0f}% of bare): "
        f"**{'met' if s['target_met'] else 'NOT met'}**. The full app's sampled spans went to "
        f"a stand-in OTLP collector on loopback ({s['otlp_exports']} export requests).",
    ]
    if s["ablations"]:
        lines += [
            "",
            "What each feature costs: the full app with that one feature turned off, in the "
            "same rounds.",
            "",
            markdown_table(
                ["full app without", "setting", "req/s", "vs full", "of bare", "CPU/request saved"],
                [
                    [
                        name.removeprefix("without "),
                        f"`{VARIANTS[name][2]}`",
                        f"{s[name]['requests_per_second']:,.0f}",
                        f"× {entry['gain_over_full']:.2f}",
                        f"{100 * entry['share_of_bare']:.0f}%",
                        f"{entry['cpu_us_saved']:.0f} µs",
                    ]
                    for name, entry in sorted(
                        s["ablations"].items(), key=lambda i: -i[1]["gain_over_full"]
                    )
                ],
                align="--rrrr",
            ),
        ]
    if result["profiles"]:
        full_share = result["profiles"]["full"]["components"]
        bare_share = result["profiles"]["bare"]["components"]
        names = [*full_share, *(n for n in bare_share if n not in full_share)]
        lines += [
            "",
            f"Where the time goes inside the workers (py-spy, {st['profile_seconds']} s per "
            "server under the same load; share of the samples by the component whose code "
            "was running):",
            "",
            markdown_table(
                ["component", "bare", "full"],
                [
                    [name, f"{bare_share.get(name, 0.0):.1f}%", f"{full_share.get(name, 0.0):.1f}%"]
                    for name in names
                ],
                align="-rr",
            ),
        ]
    lines += [
        "",
        machine_sentence(m, python=m["python"], postgres=False)
        + f". Load generator: {st['load_generator']} on the same machine; "
        f"{st['workers']} Gunicorn workers per server.",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    samples = result["samples"]
    profiles = result["profiles"]
    ratio = result["summary"]["ratio"]
    with figure(
        path,
        title="Middleware tax: the full production stack against bare FastAPI",
        conclusion=f"The full app keeps {100 * ratio:.0f}% of bare FastAPI's throughput "
        f"(target {100 * TARGET_RATIO:.0f}%).",
        size=(14 if profiles else 8, 5),
    ) as fig:
        axes = fig.subplots(1, 2 if profiles else 1, squeeze=False)
        left = axes[0][0]
        names = list(dict.fromkeys(s["server"] for s in samples))
        bare = statistics.median(s["requests_per_second"] for s in samples if s["server"] == "bare")
        for x, name in enumerate(names):
            values = [s["requests_per_second"] for s in samples if s["server"] == name]
            color = {"bare": "#4C72B0", "full": "#DD8452"}.get(name, "#BBBBBB")
            left.bar(x, statistics.median(values), color=color, alpha=0.85)
            left.plot([x] * len(values), values, "k.", alpha=0.6)
            left.annotate(f"{100 * statistics.median(values) / bare:.0f}%", (x, 0), ha="center",
                          va="bottom", fontsize=8, color="white", weight="bold")  # fmt: skip
        left.set_xticks(range(len(names)), [n.replace("without ", "without\n") for n in names],
                        fontsize=8)  # fmt: skip
        left.set_xlabel("server")
        left.set_ylabel("requests/s (bars: median; dots: rounds; % of bare)")
        left.set_title("Throughput", fontsize=10)
        if profiles:
            right = axes[0][1]
            full_share = profiles["full"]["components"]
            bare_share = profiles["bare"]["components"]
            components = [n for n in full_share if n != "other"][:9]
            y = range(len(components))
            right.barh([i + 0.2 for i in y], [bare_share.get(n, 0) for n in components],
                       height=0.4, label="bare", color="#4C72B0")  # fmt: skip
            right.barh([i - 0.2 for i in y], [full_share.get(n, 0) for n in components],
                       height=0.4, label="full", color="#DD8452")  # fmt: skip
            right.set_yticks(list(y), components, fontsize=8)
            right.invert_yaxis()
            right.set_xlabel("share of the workers' samples (%)")
            right.set_ylabel("component")
            right.set_title("Where the time goes (py-spy)", fontsize=10)
            right.legend(fontsize=8)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity bench middleware", description=__doc__.split("\n\n")[0]
    )
    add_measurement_options(parser, rounds=5, duration=10, workers=2, connections=64,
                            duration_means="seconds per server per round")  # fmt: skip
    parser.add_argument(
        "--profile",
        type=int,
        default=10,
        metavar="SECONDS",
        help="py-spy seconds per server after the rounds (default 10; 0 = no profile)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for result.json and the raw profiles "
        "(default results/bench-middleware-<time>)",
    )
    parser.add_argument(
        "--no-ablation",
        dest="ablation",
        action="store_false",
        help="only full and bare (not the full app without each feature)",
    )
    parser.add_argument("--plot", type=Path, help="write a PNG chart here")
    parser.add_argument("--write-docs", action="store_true",
                        help="replace this benchmark's section of docs/benchmarks.md")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.profile < 0:
        parser.error(f"argument --profile: {args.profile!r} must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or REPO_ROOT / "results" / time.strftime("bench-middleware-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/parity bench middleware " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    result = measured(lambda: run(args, out))
    write_json(out / "result.json", result)
    section = markdown(result, command.strip())
    if args.plot:
        plot(result, args.plot)
    if args.write_docs:
        replace_section("bench_middleware", "Middleware tax", section)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(section)
    progress(f"results: {out}/")
    return 0 if result["summary"]["errors"] == 0 else 1
