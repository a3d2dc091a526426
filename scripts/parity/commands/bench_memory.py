"""Memory and start-up of the API, and the same app under several Python versions.

    parity bench memory                          # memory: 500,000 requests
    parity bench memory --requests 50000 --plot memory.png
    parity bench memory --python 3.12.1          # the same, served by 3.12
    parity bench memory --compare --python 3.11.7 --python 3.12.1 --python 3.13.0

Memory (the default): the production app (`app.main:app`, every feature at its
defaults) behind Gunicorn with the project's gunicorn.conf.py, on a database and a
Redis prefix of the run's own (both removed afterwards). The time from starting the
master to every worker booted and /ready answering 200; then the RSS, USS and PSS
(/proc, through psutil) of the master and of each worker after start, after a warm-up
and after --requests requests of steady load (wrk, --connections connections, cached
and uncached product reads from a pool of client addresses, so the rate limiter,
cache, database pool, tracing, metrics and access log all do their work). The load
runs in chunks with a memory sample after each: a leak shows as growth, reported as
MiB per 100,000 requests (least squares over the second half of the run, after the
caches and allocator have settled). Worker recycling is off (GUNICORN_MAX_REQUESTS=0)
so that no restart hides growth. Also the API image's size (`docker image inspect`;
this tool never builds it) and the memory limits compose.yaml and k8s set, next to
the limit the measurements call for.

--compare: the same measures for each --python side by side in one run. Per version,
a throwaway virtualenv (uv, from requirements.txt, in a temporary directory removed
afterwards; `current` is this tool's own interpreter, no venv built); start-up of the
production app, --starts times in rotating order; then the full app and bare FastAPI
(parity.harness.bench_apps) of every version served at once, measured with wrk in rotating
rounds: requests/s, server CPU per request, RSS per worker after the load. A version
whose requirements do not install (a missing wheel) is reported, not measured.

Needs wrk (apt-get install wrk). Traffic goes to 127.0.0.1 only and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from parity.harness.bench_apps import TRIVIAL_PATH
from parity.harness.benchdocs import machine_sentence, replace_section
from parity.harness.options import positive_int
from parity.harness.repo import REPO_ROOT
from parity.harness.report import figure, markdown_table, progress, write_json
from parity.harness.stack import (
    GunicornProcess,
    NativeStack,
    StackError,
    delete_redis_prefix,
    free_port,
    scratch_database,
)
from parity.harness.wrk import (
    ADDRESS_LUA,
    IDENTITY_LUA,
    WRK_REPORT,
    OtlpSink,
    machine,
    measure_in_rotation,
    measured,
    round_progress,
    wrk,
)

MIB = 1024 * 1024
PRODUCTION_APP = "app.main:app"
FULL, BARE = "parity.harness.bench_apps:full", "parity.harness.bench_apps:bare"
PRODUCTS = 1000
API_IMAGE = os.environ.get("API_IMAGE", "parity-api:local")
# Headroom on top of what was measured: bursts of connections (up to
# GUNICORN_WORKER_CONNECTIONS per worker), request bodies, garbage not yet collected,
# telemetry buffers, the tmpfs metric files; rounded up to a multiple of 64 MiB.
HEADROOM = 1.5
ROUND_TO_MIB = 64

# The memory run's load: product reads (ids 1..PRODUCTS: misses, then cache hits until
# the entries expire), each request from one of 10,000 client addresses per wrk thread
# (198.18.0.0/15, believed from loopback via X-Forwarded-For): the limiter checks every
# request against Redis and no client comes near the default quota.
PRODUCTS_LUA = (
    ADDRESS_LUA
    + f"""
request = function()
  local address = next_address()
  local path = "/api/v1/products/" .. ((counter * 7 + id) % {PRODUCTS} + 1)
  return wrk.format("GET", path, {{["X-Forwarded-For"] = address}})
end
"""
)


# --- interpreters ------------------------------------------------------------------------


@dataclass
class Interpreter:
    label: str  # what the user asked for: current, 3.12.1, /path/to/python
    python: str | None  # the interpreter that runs Gunicorn; None: could not install
    version: str = ""
    error: str = ""
    env: dict[str, str] | None = None  # extra environment for its servers


def base_interpreter(spec: str) -> str:
    """`current`, a path to an interpreter, or a pyenv version (3.12.1)."""
    if spec == "current":
        return sys.executable
    if os.sep in spec:
        return spec
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    return str(root / "versions" / spec / "bin" / "python")


def python_version(python: str) -> str:
    result = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"{python} does not run: {result.stderr.strip()[-300:]}")
    return result.stdout.strip()


def prepare_interpreter(spec: str, workdir: Path) -> Interpreter:
    """The tool's own interpreter as it is, or a throwaway venv with requirements.txt
    installed by uv for another one. Bytecode of the other versions goes to a cache
    of the run's own (PYTHONPYCACHEPREFIX), not into the repository."""
    if spec == "current":
        return Interpreter(spec, sys.executable, python_version(sys.executable), env={})
    base = base_interpreter(spec)
    if not Path(base).exists():
        return Interpreter(spec, None, error=f"no interpreter at {base}")
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        return Interpreter(spec, None, error="uv not found (the venv's uv builds the venvs)")
    venv = workdir / f"venv-{len(list(workdir.glob('venv-*')))}"
    for command in (
        [uv, "venv", "--quiet", "--python", base, str(venv)],
        [
            uv,
            "pip",
            "sync",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            str(REPO_ROOT / "requirements.txt"),
        ],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
            return Interpreter(spec, None, error=" / ".join(tail))
    python = str(venv / "bin" / "python")
    cache = workdir / f"pycache-{venv.name}"
    # The throwaway venv holds the runtime requirements only, not the editable install:
    # Gunicorn finds app/ from its working directory, and the benchmark's apps
    # (parity.harness.bench_apps) through PYTHONPATH.
    env = {"PYTHONPYCACHEPREFIX": str(cache), "PYTHONPATH": str(REPO_ROOT / "scripts")}
    return Interpreter(spec, python, python_version(python), env=env)


# --- servers and memory ------------------------------------------------------------------


def start_server(
    interpreter: Interpreter,
    stack: NativeStack,
    app: str,
    env: dict[str, str],
    workers: int,
    timeout: float = 120,
) -> tuple[GunicornProcess, float]:
    """Gunicorn with `interpreter` (stack.start_gunicorn uses this tool's own); returns
    the server and the seconds from starting the master to every worker booted and its
    readiness route answering 200 (/ready; the bare app has none: its route)."""
    assert interpreter.python is not None
    port = free_port()
    handle, name = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
    os.close(handle)
    log_path = Path(name)
    app_env = stack.app_env(**env, **(interpreter.env or {}))
    full_env = {
        **os.environ,
        "GUNICORN_WORKERS": str(workers),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        **app_env,
    }
    log_file = log_path.open("wb")
    started = time.monotonic()
    process = subprocess.Popen(
        [interpreter.python, "-m", "gunicorn", app, "-c", "gunicorn.conf.py"],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = GunicornProcess(process, "127.0.0.1", port, log_path, app_env, log_file, True)
    try:
        if app == BARE:  # no boot lines to wait for: all workers forked, its route answers
            server.wait_ready(timeout, path=TRIVIAL_PATH)
            deadline = time.monotonic() + timeout
            while len(server.worker_pids()) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            server.wait_workers_booted(workers, timeout)
            server.wait_ready(timeout)
    except BaseException:
        server.stop(timeout=10)
        raise
    return server, round(time.monotonic() - started, 2)


def process_memory(pid: int) -> dict[str, float]:
    """RSS, USS (pages only this process has) and PSS (shared pages divided among their
    sharers: the sum over processes is what they use together) in MiB."""
    try:
        info = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return {"rss": 0.0, "uss": 0.0, "pss": 0.0}
    return {key: round(getattr(info, key, 0) / MIB, 1) for key in ("rss", "uss", "pss")}


def snapshot(server: GunicornProcess, requests: int = 0) -> dict[str, Any]:
    workers = {str(pid): process_memory(pid) for pid in sorted(server.worker_pids())}
    master = process_memory(server.pid)
    total = {
        key: round(master[key] + sum(w[key] for w in workers.values()), 1)
        for key in ("rss", "uss", "pss")
    }
    return {"requests": requests, "master": master, "workers": workers, "total": total}


def worker_mean(point: dict[str, Any], key: str = "rss") -> float:
    values = [w[key] for w in point["workers"].values()]
    return round(statistics.fmean(values), 1) if values else 0.0


def worker_max(point: dict[str, Any], key: str = "rss") -> float:
    rss: float = max((w[key] for w in point["workers"].values()), default=0.0)
    return rss


def slope_per_100k(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of MiB against requests, in MiB per 100,000 requests."""
    if len(points) < 2:
        return 0.0
    xs, ys = zip(*points, strict=True)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    slope: float = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    return round(slope * 100_000, 2)


def growth(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Per worker and for the master: the slope over the second half of the load."""
    if not series:
        return {"workers": {}, "worker_mean": 0.0, "worker_max": 0.0, "master": 0.0}
    half = series[-1]["requests"] / 2
    tail = [p for p in series if p["requests"] >= half] or series
    pids = list(series[-1]["workers"])
    workers = {
        pid: slope_per_100k(
            [(p["requests"], p["workers"][pid]["rss"]) for p in tail if pid in p["workers"]]
        )
        for pid in pids
    }
    return {
        "workers": workers,
        "worker_mean": round(statistics.fmean(workers.values()), 2) if workers else 0.0,
        "worker_max": max(workers.values(), default=0.0),
        "master": slope_per_100k([(p["requests"], p["master"]["rss"]) for p in tail]),
        "from_requests": int(tail[0]["requests"]),
    }


def image_size() -> dict[str, Any]:
    if shutil.which("docker") is None:
        return {"image": API_IMAGE, "built": False, "reason": "docker not installed"}
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}} {{.Created}}", API_IMAGE],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        return {"image": API_IMAGE, "built": False, "reason": "not built"}
    size, _, created = result.stdout.strip().partition(" ")
    return {
        "image": API_IMAGE,
        "built": True,
        "size_mb": round(int(size) / 1e6, 1),
        "created": created,
    }


def to_mib(text: str) -> float:
    """A Docker / Kubernetes quantity (512M, 512Mi, 1G, 1Gi) in MiB. Docker's M is MiB."""
    units = {
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "K": 1 / 1024,
        "M": 1,
        "G": 1024,
        "k": 1 / 1024,
        "m": 1,
        "g": 1024,
    }
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text) / MIB


def configured_limits() -> dict[str, Any]:
    """The api's memory limit in compose.yaml and the API container's in k8s."""
    limits: dict[str, Any] = {}
    try:
        compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
        memory = compose["services"]["api"]["deploy"]["resources"]["limits"]["memory"]
        limits["compose"] = {"text": str(memory), "mib": to_mib(str(memory))}
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        pass
    try:
        for doc in yaml.safe_load_all((REPO_ROOT / "k8s" / "deployment.yaml").read_text()):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "api":
                    resources = container["resources"]
                    limit, request = resources["limits"]["memory"], resources["requests"]["memory"]
                    limits["k8s"] = {
                        "text": str(limit),
                        "mib": to_mib(str(limit)),
                        "request": str(request),
                    }
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        pass
    return limits


def recommend(
    master: float, worker_peak: float, growth_per_100k: float, workers: int, recycle_after: int
) -> dict[str, Any]:
    """What one server (a container, a pod) needs: the master plus each worker at its
    largest, plus the growth a worker may add before Gunicorn recycles it, times the
    headroom, rounded up."""
    per_worker = worker_peak + max(growth_per_100k, 0.0) * recycle_after / 100_000
    need = master + workers * per_worker
    limit = ROUND_TO_MIB * math.ceil(need * HEADROOM / ROUND_TO_MIB)
    return {
        "per_worker_mib": round(per_worker, 1),
        "need_mib": round(need, 1),
        "limit_mib": limit,
        "recycle_after": recycle_after,
    }


# --- the memory run ----------------------------------------------------------------------


@contextmanager
def environment(tool: str, products: int) -> Iterator[tuple[NativeStack, dict[str, str], OtlpSink]]:
    """A database and Redis prefix of the run's own (removed on the way out) and a
    stand-in OTLP collector; the env every server of the run gets."""
    prefix = f"parity-bench-{tool}-{uuid.uuid4().hex[:12]}:"
    with ExitStack() as resources:
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        resources.callback(delete_redis_prefix, redis_url, prefix)
        sink = OtlpSink()
        resources.callback(sink.close)
        progress(f"preparing a database of its own (migrate, seed {products} products)")
        url = resources.enter_context(scratch_database(f"bench_{tool}", products))
        env = {
            "REDIS_KEY_PREFIX": prefix,
            "GUNICORN_MAX_REQUESTS": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        }
        yield NativeStack(database_url=url), env, sink


def run_memory(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    interpreter = prepare_interpreter(args.python[0], workdir)
    if interpreter.python is None:
        raise StackError(f"Python {interpreter.label} could not be installed: {interpreter.error}")
    script = workdir / "products.lua"
    script.write_text(PRODUCTS_LUA + WRK_REPORT)
    non_2xx = socket_errors = 0
    series: list[dict[str, Any]] = []
    with environment("mem", PRODUCTS) as (stack, env, sink):
        if interpreter.label != "current":  # bytecode into its cache: not a measured start
            progress(f"priming Python {interpreter.version} (compiles its bytecode)")
            server, _ = start_server(interpreter, stack, PRODUCTION_APP, env, args.workers)
            server.stop()
        progress(f"starting Gunicorn ({args.workers} workers, Python {interpreter.version})")
        server, ready_seconds = start_server(interpreter, stack, PRODUCTION_APP, env, args.workers)
        with server:
            time.sleep(1)  # let the workers' startup allocations settle
            after_start = snapshot(server)
            progress(
                f"ready in {ready_seconds:.2f} s; RSS master {after_start['master']['rss']} "
                f"MiB, workers {worker_mean(after_start)} MiB each"
            )
            raw = wrk(
                server.base_url + "/",
                connections=args.connections,
                threads=2,
                seconds=args.warmup,
                script=script,
            )
            warm_requests = raw["requests"]
            rate = raw["requests"] / (raw["duration_us"] / 1e6)
            after_warmup = snapshot(server, 0)
            progress(
                f"warm-up: {warm_requests} requests, {rate:.0f} req/s; RSS workers "
                f"{worker_mean(after_warmup)} MiB each"
            )
            per_chunk = args.requests / args.chunks
            done, started, chunk_seconds = 0, time.monotonic(), 1
            series.append(after_warmup)
            deadline = started + 60 * args.max_minutes
            while done < args.requests and len(series) <= 3 * args.chunks:
                # Each chunk sized from the last measured rate: --chunks samples in all,
                # the last one cut short at --max-minutes.
                wanted = min(per_chunk, args.requests - done)
                left = deadline - time.monotonic()
                if left < 1:
                    progress(f"stopping the load at --max-minutes {args.max_minutes}")
                    break
                chunk_seconds = min(600, int(left), max(1, math.ceil(wanted / max(rate, 1))))
                raw = wrk(
                    server.base_url + "/",
                    connections=args.connections,
                    threads=2,
                    seconds=chunk_seconds,
                    script=script,
                )
                rate = raw["requests"] / (raw["duration_us"] / 1e6)
                done += raw["requests"]
                non_2xx += raw["non_2xx"]
                socket_errors += raw["socket_errors"]
                series.append(snapshot(server, done))
                progress(
                    f"{done:>9,} requests: RSS master {series[-1]['master']['rss']} MiB, "
                    f"workers {', '.join(str(w['rss']) for w in series[-1]['workers'].values())}"
                    " MiB"
                )
            load_seconds = time.monotonic() - started
            pids_changed = set(after_start["workers"]) != set(series[-1]["workers"])
        exports = sink.exports
    end = series[-1]
    grew = growth(series)
    recycle = 100_000 + 10_000  # the defaults: GUNICORN_MAX_REQUESTS + its jitter
    recommended = recommend(
        end["master"]["rss"], worker_max(end), grew["worker_max"], args.workers, recycle
    )
    return {
        "mode": "memory",
        "settings": {
            "workers": args.workers,
            "connections": args.connections,
            "requests": args.requests,
            "warmup_seconds": args.warmup,
            "chunks": args.chunks,
            "chunk_requests": round(per_chunk),
            "max_minutes": args.max_minutes,
            "load_generator": f"wrk 4 -t2 -c{args.connections}",
            "python": interpreter.version,
            "python_label": interpreter.label,
        },
        "machine": machine(),
        "summary": {
            "ready_seconds": ready_seconds,
            "after_start": after_start,
            "after_warmup": {**after_warmup, "warmup_requests": warm_requests},
            "after_load": end,
            "requests": done,
            "load_seconds": round(load_seconds, 1),
            "requests_per_second": round(done / max(load_seconds, 1e-9), 1),
            "growth_mib_per_100k": grew,
            "workers_replaced": pids_changed,
            "errors": non_2xx + socket_errors,
            "non_2xx": non_2xx,
            "socket_errors": socket_errors,
            "otlp_exports": exports,
            "image": image_size(),
            "configured_limits": configured_limits(),
            "recommended": recommended,
        },
        "series": series,
    }


# --- the Python comparison ---------------------------------------------------------------


def run_compare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    interpreters = []
    for spec in args.python:
        progress(f"Python {spec}: {'this interpreter' if spec == 'current' else 'building a venv'}")
        interpreter = prepare_interpreter(spec, workdir)
        if interpreter.python is None:
            progress(f"Python {spec}: could not install: {interpreter.error}")
        interpreters.append(interpreter)
    usable = [i for i in interpreters if i.python is not None]
    if not usable:
        raise StackError("no Python version could be installed")
    script = workdir / "trivial.lua"
    script.write_text(IDENTITY_LUA + WRK_REPORT)
    starts: dict[str, list[float]] = {i.label: [] for i in usable}
    start_memory: dict[str, dict[str, Any]] = {}
    samples = []
    after_load: dict[str, dict[str, Any]] = {}
    with environment("py", 10) as (stack, env, _sink):
        for interpreter in usable:  # bytecode, page cache: no version starts cold
            progress(f"priming Python {interpreter.version}")
            server, _ = start_server(interpreter, stack, PRODUCTION_APP, env, args.workers)
            server.stop()
        for round_ in range(args.starts):
            shift = round_ % len(usable)
            for interpreter in usable[shift:] + usable[:shift]:
                server, seconds = start_server(
                    interpreter, stack, PRODUCTION_APP, env, args.workers
                )
                with server:
                    time.sleep(1)
                    start_memory[interpreter.label] = snapshot(server)
                starts[interpreter.label].append(seconds)
                progress(
                    f"start {round_ + 1}/{args.starts} Python {interpreter.version}: ready "
                    f"in {seconds:.2f} s"
                )
        with ExitStack() as running:
            servers: dict[str, tuple[Interpreter, str, GunicornProcess]] = {}
            for interpreter in usable:
                for kind, app in (("full", FULL), ("bare", BARE)):
                    name = f"{kind} {interpreter.label}"
                    progress(f"starting {name} ({args.workers} workers)")
                    server, _ = start_server(interpreter, stack, app, env, args.workers)
                    servers[name] = (interpreter, kind, running.enter_context(server))
            for _, _, server in servers.values():  # warm-up: connections, imports, Redis
                wrk(
                    server.base_url + TRIVIAL_PATH,
                    connections=8,
                    threads=2,
                    seconds=min(3, args.duration),
                    script=script,
                )

            samples += measure_in_rotation(
                {name: server for name, (_, _, server) in servers.items()},
                rounds=args.rounds,
                connections=args.connections,
                seconds=args.duration,
                script=script,
                report=round_progress(args.rounds, name_width=14, rate_width=7, percentiles=False),
            )
            for name, (_, _, server) in servers.items():
                after_load[name] = snapshot(server)
    versions: dict[str, Any] = {}
    baseline = usable[0].label
    for interpreter in interpreters:
        entry: dict[str, Any] = {
            "label": interpreter.label,
            "version": interpreter.version,
            "installed": interpreter.python is not None,
            "error": interpreter.error,
        }
        if interpreter.python is not None:
            label = interpreter.label
            entry["ready_seconds"] = round(statistics.median(starts[label]), 2)
            entry["ready_seconds_all"] = starts[label]
            entry["after_start"] = start_memory[label]
            for kind in ("full", "bare"):
                mine = sorted(
                    (s for s in samples if s.server == f"{kind} {label}"), key=lambda s: s.round
                )
                base = sorted(
                    (s for s in samples if s.server == f"{kind} {baseline}"), key=lambda s: s.round
                )
                ratios = [
                    a.requests_per_second / max(b.requests_per_second, 1e-9)
                    for a, b in zip(mine, base, strict=True)
                ]
                entry[kind] = {
                    "requests_per_second": round(
                        statistics.median(s.requests_per_second for s in mine), 1
                    ),
                    "cpu_us_per_request": round(
                        statistics.median(s.cpu_us_per_request for s in mine), 1
                    ),
                    "ratio_to_baseline": round(statistics.median(ratios), 3),
                    "ratio_min": round(min(ratios), 3),
                    "ratio_max": round(max(ratios), 3),
                    "after_load": after_load[f"{kind} {label}"],
                }
        versions[interpreter.label] = entry
    errors = sum(s.non_2xx + s.socket_errors for s in samples)
    return {
        "mode": "compare",
        "settings": {
            "workers": args.workers,
            "connections": args.connections,
            "rounds": args.rounds,
            "duration_seconds": args.duration,
            "starts": args.starts,
            "baseline": baseline,
            "load_generator": f"wrk 4 -t2 -c{args.connections}",
        },
        "machine": machine(),
        "summary": {"versions": versions, "errors": errors},
        "samples": [s.__dict__ for s in samples],
    }


# --- reports -----------------------------------------------------------------------------


def memory_markdown(result: dict[str, Any], command: str) -> str:
    s, st, m = result["summary"], result["settings"], result["machine"]
    workers = st["workers"]
    phases = [
        ("after start", s["after_start"]),
        ("after warm-up", s["after_warmup"]),
        (f"after {s['requests']:,} requests", s["after_load"]),
    ]
    rows = [
        [
            title,
            f"{point['master']['rss']:.0f}",
            f"{worker_mean(point):.0f}; {worker_max(point):.0f}",
            f"{point['total']['rss']:.0f}",
        ]
        for title, point in phases
    ]
    end, grew = s["after_load"], s["growth_mib_per_100k"]
    rows += [
        [
            "USS / PSS after the load",
            f"{end['master']['uss']:.0f} / {end['master']['pss']:.0f}",
            f"{worker_mean(end, 'uss'):.0f} / {worker_mean(end, 'pss'):.0f}",
            f"{end['total']['uss']:.0f} / **{end['total']['pss']:.0f}**",
        ],
        [
            f"growth, MiB per 100k requests (from {grew.get('from_requests', 0):,} on)",
            f"{grew['master']:+.2f}",
            f"**{grew['worker_mean']:+.2f}** (max {grew['worker_max']:+.2f})",
            "",
        ],
    ]
    header = ["RSS (MiB)", "master", "each worker (mean; max)", f"master + {workers} workers"]
    lines = [markdown_table(header, rows, align="-rrr")]
    image = s["image"]
    image_text = (
        f"{image['size_mb']:.0f} MB (`{image['image']}`, `docker image inspect`)"
        if image["built"]
        else f"not built (`{image['image']}`: {image['reason']})"
    )
    rec, limits = s["recommended"], s["configured_limits"]
    configured = "; ".join(
        f"{where} {limits[where]['text']} ({limits[where]['mib']:.0f} MiB)"
        for where in ("compose", "k8s")
        if where in limits
    )
    short = (
        f" (cut short at --max-minutes {st['max_minutes']}: {st['requests']:,} were asked for)"
        if s["requests"] < st["requests"]
        else ""
    )
    lines += [
        "",
        f"Start to ready (master started → {workers} workers booted and `/ready` answering "
        f"200): **{s['ready_seconds']:.2f} s**. Image size: {image_text}.",
        "",
        f"Steady load: {s['requests']:,} requests in {s['load_seconds']:.0f} s{short} "
        f"({s['requests_per_second']:,.0f} req/s; {st['load_generator']}, product reads "
        f"by id, cache hits and misses, rate-limited clients), after a {st['warmup_seconds']} s "
        f"warm-up of {s['after_warmup']['warmup_requests']:,} requests; a sample after every "
        f"~{st['chunk_requests']:,} requests. Growth is the least-squares slope over the second "
        f"half of the run. Worker recycling off for the run; workers replaced: "
        f"{'yes' if s['workers_replaced'] else 'none'}. Errors: {s.get('non_2xx', 0)} non-2xx "
        f"answers, {s.get('socket_errors', 0)} socket errors (wrk counts no answer within 2 s "
        "as one).",
        "",
        markdown_table(
            ["memory per server (container / pod)", "MiB"],
            [
                [
                    f"measured: master + {workers} workers after the load, RSS / PSS",
                    f"{end['total']['rss']:.0f} / {end['total']['pss']:.0f}",
                ],
                [
                    f"need: master + {workers} × (largest worker + growth until recycled "
                    f"after {rec['recycle_after']:,} requests)",
                    f"{rec['need_mib']:.0f}",
                ],
                [
                    f"**recommended limit** (need × {HEADROOM}, rounded up to {ROUND_TO_MIB} MiB)",
                    f"**{rec['limit_mib']}**",
                ],
                ["configured", configured or "none found"],
            ],
            align="-r",
        ),
        "",
        machine_sentence(m, python=st["python"], postgres=True) + f"; {workers} Gunicorn workers.",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def compare_markdown(result: dict[str, Any], command: str) -> str:
    s, st, m = result["summary"], result["settings"], result["machine"]
    versions = list(s["versions"].values())
    ok = [v for v in versions if v["installed"]]
    base = s["versions"][st["baseline"]]
    header = ["", *(f"Python {v['version'] or v['label']}" for v in versions)]
    rows: list[list[str]] = []

    def row(title: str, cell: Any) -> None:
        rows.append([title, *(cell(v) if v["installed"] else "not installed" for v in versions)])

    for kind, what in (("full", "full app"), ("bare", "bare FastAPI")):
        row(
            f"{what}: req/s, {st['connections']} connections",
            lambda v, k=kind: (
                f"{v[k]['requests_per_second']:,.0f} (**× {v[k]['ratio_to_baseline']:.2f}**)"
            ),
        )
    for kind, what in (("full", "full app"), ("bare", "bare FastAPI")):
        row(
            f"{what}: server CPU per request",
            lambda v, k=kind: f"{v[k]['cpu_us_per_request']:.0f} µs",
        )
    for kind, what in (("full", "full app"), ("bare", "bare FastAPI")):
        row(
            f"{what}: RSS per worker after the load (PSS)",
            lambda v, k=kind: (
                f"{worker_mean(v[k]['after_load']):.0f} "
                f"({worker_mean(v[k]['after_load'], 'pss'):.0f}) MiB"
            ),
        )
    row(
        "production app: RSS per worker after start",
        lambda v: f"{worker_mean(v['after_start']):.0f} MiB",
    )
    row("production app: master RSS", lambda v: f"{v['after_start']['master']['rss']:.0f} MiB")
    row(
        f"production app: start to ready (median of {st['starts']})",
        lambda v: f"{v['ready_seconds']:.2f} s",
    )
    lines = [markdown_table(header, rows, align="-" + "r" * len(versions))]
    failed = [v for v in versions if not v["installed"]]
    lines += [
        "",
        f"Ratios against Python {base['version']}: medians of the per-round ratios "
        f"(rounds: "
        + "; ".join(
            f"{v['version']} {v['full']['ratio_min']:.2f}–{v['full']['ratio_max']:.2f}" for v in ok
        )
        + " for the full app). "
        f"Medians of {st['rounds']} rounds × {st['duration_seconds']} s per server, "
        f"{len(ok) * 2} servers at once in rotating order; {st['workers']} workers each; "
        f"the full app on the trivial route of parity.harness.bench_apps, clients from a pool of "
        f"addresses (the limiter checks each request). Errors (non-2xx or socket): "
        f"{s['errors']}.",
    ]
    if failed:
        lines += ["", "Not installed: " + "; ".join(f"{v['label']}: {v['error']}" for v in failed)]
    lines += [
        "",
        machine_sentence(m, python=None, postgres=True)
        + f"; load generator {st['load_generator']} on the same machine.",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def conclusion(result: dict[str, Any]) -> str:
    s = result["summary"]
    if result["mode"] == "memory":
        rec = s["recommended"]
        return (
            f"{s['after_load']['total']['rss']:.0f} MiB after {s['requests']:,} requests, "
            f"growth {s['growth_mib_per_100k']['worker_mean']:+.2f} MiB/100k per worker "
            f"→ limit {rec['limit_mib']} MiB"
        )
    ok = [v for v in s["versions"].values() if v["installed"]]
    best = max(ok, key=lambda v: v["full"]["ratio_to_baseline"])
    return (
        f"fastest full app: Python {best['version']} "
        f"(× {best['full']['ratio_to_baseline']:.2f} of {ok[0]['version']})"
    )


def plot(result: dict[str, Any], path: Path) -> None:
    if result["mode"] == "memory":
        plot_memory(result, path)
    else:
        plot_compare(result, path)


def plot_memory(result: dict[str, Any], path: Path) -> None:
    with figure(
        path, title="Memory under steady load", conclusion=conclusion(result), size=(9, 5)
    ) as fig:
        axis = fig.subplots()
        series = result["series"]
        xs = [p["requests"] / 1000 for p in series]
        for pid in series[-1]["workers"]:
            axis.plot(
                xs,
                [p["workers"].get(pid, {}).get("rss", float("nan")) for p in series],
                marker=".",
                label=f"worker {pid} RSS",
            )
        axis.plot(xs, [p["master"]["rss"] for p in series], marker=".", label="master RSS")
        axis.plot(
            xs, [worker_mean(p, "pss") for p in series], linestyle="--", label="worker PSS (mean)"
        )
        axis.set_xlabel("requests served after the warm-up (thousands)")
        axis.set_ylabel("memory (MiB)")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)


def plot_compare(result: dict[str, Any], path: Path) -> None:
    versions = [v for v in result["summary"]["versions"].values() if v["installed"]]
    with figure(
        path,
        title="The same app under each Python",
        conclusion=conclusion(result),
        size=(14, 4.8),
    ) as fig:
        axes = fig.subplots(1, 3)
        labels = [v["version"] for v in versions]
        x = range(len(versions))
        for offset, kind, color in ((-0.2, "full", "#DD8452"), (0.2, "bare", "#4C72B0")):
            axes[0].bar(
                [i + offset for i in x],
                [v[kind]["requests_per_second"] for v in versions],
                width=0.4,
                color=color,
                label=kind,
            )
            axes[1].bar(
                [i + offset for i in x],
                [worker_mean(v[kind]["after_load"]) for v in versions],
                width=0.4,
                color=color,
                label=kind,
            )
        for points in result["samples"]:
            kind, _, label = points["server"].partition(" ")
            index = next(i for i, v in enumerate(versions) if v["label"] == label)
            axes[0].plot(
                index + (-0.2 if kind == "full" else 0.2),
                points["requests_per_second"],
                "k.",
                alpha=0.6,
            )
        axes[0].set_ylabel("requests/s (bars: median; dots: rounds)")
        axes[1].set_ylabel("RSS per worker after the load (MiB)")
        axes[2].bar(list(x), [v["ready_seconds"] for v in versions], color="#55A868")
        axes[2].set_ylabel("start to ready, production app (s, median)")
        for axis, title in zip(axes, ("Throughput", "Memory per worker", "Start-up"), strict=True):
            axis.set_xticks(list(x), [f"Python {label}" for label in labels])
            axis.set_xlabel("Python version")
            axis.set_title(title, fontsize=10)
        axes[0].legend(fontsize=8)
        axes[1].legend(fontsize=8)


# --- CLI ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity bench memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="compare the --python versions side by side (default: the memory and start-up run)",
    )
    parser.add_argument(
        "--python",
        action="append",
        metavar="VERSION|PATH|current",
        help="the Python to serve with: `current` (this interpreter, the "
        "default), a pyenv version (3.12.1) or an interpreter's path, for "
        "which a throwaway venv is built; repeat with --compare",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=2, help="Gunicorn workers per server (default 2)"
    )
    parser.add_argument(
        "--connections", type=positive_int, default=64, help="wrk connections (default 64)"
    )
    parser.add_argument(
        "--requests",
        type=positive_int,
        default=500_000,
        help="memory: requests of steady load after the warm-up (default 500000)",
    )
    parser.add_argument(
        "--warmup",
        type=positive_int,
        default=10,
        help="memory: seconds of warm-up load (default 10)",
    )
    parser.add_argument(
        "--max-minutes",
        type=positive_int,
        default=60,
        help="memory: stop the load after this long even if --requests are not served "
        "(default 60; the report says so)",
    )
    parser.add_argument(
        "--chunks",
        type=positive_int,
        default=20,
        help="memory: samples taken during the load (default 20)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="compare: rounds (default 5)"
    )
    parser.add_argument(
        "--duration",
        type=positive_int,
        default=10,
        help="compare: seconds per server per round (default 10)",
    )
    parser.add_argument(
        "--starts",
        type=positive_int,
        default=3,
        help="compare: measured starts per version (default 3)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for result.json (default results/bench-memory-<time>)",
    )
    parser.add_argument("--plot", type=Path, help="write a PNG chart here")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="replace this benchmark's section of docs/benchmarks.md",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    args.python = args.python or ["current"]
    if not args.compare and len(args.python) > 1:
        parser.error("argument --python: one version without --compare")
    if len(set(args.python)) != len(args.python):
        parser.error("argument --python: a version is named twice")
    return args


def run_in_workdir(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parity-bench-memory-") as workdir:
        return (run_compare if args.compare else run_memory)(args, Path(workdir))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kind = "python" if args.compare else "memory"
    out = args.out or REPO_ROOT / "results" / time.strftime(f"bench-{kind}-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/parity bench memory " + " ".join(sys.argv[1:] if argv is None else argv)
    result = measured(lambda: run_in_workdir(args))
    result["conclusion"] = conclusion(result)
    write_json(out / "result.json", result)
    section = (compare_markdown if args.compare else memory_markdown)(result, command.strip())
    if args.plot:
        plot(result, args.plot)
    if args.write_docs:
        if args.compare:
            replace_section("bench_python", "Which Python", section)
        else:
            replace_section("bench_memory", "Memory and start-up", section)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(section)
        print(f"\n{result['conclusion']}")
    progress(f"results: {out}/")
    return 0 if acceptable(result) else 1


def acceptable(result: dict[str, Any]) -> bool:
    """The comparison measures throughput: any error spoils it. The memory run measures
    memory: a few wrk timeouts over hundreds of thousands of requests on a shared machine
    do not, up to 0.1% (the report counts them either way)."""
    errors: int = result["summary"]["errors"]
    if result["mode"] == "compare":
        return errors == 0
    requests: int = result["summary"]["requests"]
    return errors <= 0.001 * max(requests, 1)
