"""Measure the best Gunicorn worker count for this service on this machine.

    parity tune --native                  # 1 .. 2×CPUs workers
    parity tune --native --workers 1,2,4 --duration 60 --slo-p95-ms 150
    parity tune --compose                 # recreate compose's `api`

For each worker count it (re)starts the API with that many workers, waits for /ready,
warms up, then runs the same headless Locust scenario (same users, spawn rate and
duration every time) and records throughput, p50/p95/p99, the error rate, the server's
CPU and RSS per worker, the database connections it held and the CPU Locust itself
used. It writes results/<timestamp>/ (sweep.csv, sweep.md, sweep.png, sweep.json and
Locust's own reports) and recommends the smallest count within 5% of the best
throughput whose p95 meets --slo-p95-ms, with the connection-pool arithmetic
`workers × (DB_POOL_SIZE + DB_MAX_OVERFLOW)` against the server's `max_connections`.

Ctrl-C stops the current measurement, the server and Locust, and keeps (writes) the
worker counts already measured. --url does not apply: the tool must restart the server.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psutil
from sqlalchemy.engine import make_url

from app.settings import Settings
from app.worker import available_cpus
from parity.harness.benchdocs import cpu_model
from parity.harness.loadgen import LoadgenError, LocustResult, run_locust
from parity.harness.options import bounded
from parity.harness.repo import REPO_ROOT
from parity.harness.report import figure, markdown_table, write_json
from parity.harness.report import progress as log
from parity.harness.stack import (
    DEFAULT_DATABASE_URL,
    ComposeStack,
    GunicornProcess,
    NativeStack,
    StackError,
    delete_redis_prefix,
    drop_database,
    fetch_value,
)
from parity.harness.target import add_target_options, target_choice

SCENARIOS = ("mixed", "browse", "buy")
NEAR_BEST = 0.95  # "within 5% of the best throughput"
MAX_ERROR_RATE = 0.01
MIB = 1024 * 1024


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --- what one worker count measured ---------------------------------------------------


@dataclass
class Point:
    workers: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    failures: int
    error_rate: float
    server_cpu_percent: float  # master + workers, 100 = one core
    rss_mib_per_worker: float  # mean over the run and the workers
    rss_mib_max: float  # the largest worker seen
    db_connections_max: int  # held by this server at once (pg_stat_activity)
    db_connections_active_max: int  # of which running a statement
    pool_capacity: int  # workers × (DB_POOL_SIZE + DB_MAX_OVERFLOW)
    locust_cpu_percent: float  # the load generator, 100 = one core


@dataclass
class Samples:
    """What the sampler thread saw during one measurement."""

    cpu_first: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)
    rss: list[float] = field(default_factory=list)
    rss_max: float = 0.0
    db_total: int = 0
    db_active: int = 0
    elapsed: float = 0.0

    @property
    def cpu_percent(self) -> float:
        used = sum(self.cpu_last[pid] - self.cpu_first[pid] for pid in self.cpu_last)
        return 100 * used / self.elapsed if self.elapsed else 0.0


class Sweepable(Protocol):
    """Where the API runs (natively or in compose, chosen by harness/target.py's option
    group) as the sweep needs it: restarted with each worker count, its processes and
    its database connections watched. Not harness.target.Target, which attaches to one
    running API: the sweep owns the API's whole life."""

    base_url: str

    def describe(self) -> str: ...
    def prepare(self) -> None: ...
    def start(self, workers: int, log_path: Path) -> None: ...
    def stop(self) -> None: ...
    def cleanup(self) -> None: ...
    def master_and_worker_pids(self) -> tuple[list[int], list[int]]: ...
    def db_connections(self) -> tuple[int, int]: ...
    def db_server_limits(self) -> tuple[int, int]: ...
    def pool_per_worker(self) -> int: ...


# --- native: Gunicorn started by parity stack ---------------------------------------


class NativeSweep:
    """A database, Redis prefix and `application_name` of this run's own, so several
    sweeps (or test sessions) on one machine never count each other's connections."""

    def __init__(self, *, database_url: str, products: int, env: dict[str, str]) -> None:
        run = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.database_url = (
            make_url(database_url)
            .set(database=f"parity_tune_{run}")
            .render_as_string(hide_password=False)
        )
        self.service_name = f"parity-tune-{run}".replace("_", "-")
        self.redis_prefix = f"parity-tune-{run}:"
        self.env = {
            "SERVICE_NAME": self.service_name,
            "REDIS_KEY_PREFIX": self.redis_prefix,
            **env,
        }
        self.products = products
        self.stack = NativeStack(database_url=self.database_url, env=self.env)
        self.server: GunicornProcess | None = None
        self.base_url = ""

    def describe(self) -> str:
        masked = make_url(self.database_url).render_as_string(hide_password=True)
        return f"native Gunicorn (gunicorn.conf.py) on a free port, database {masked}"

    def prepare(self) -> None:
        self.stack.prepare(products=self.products)

    def start(self, workers: int, log_path: Path) -> None:
        self.server = self.stack.start_gunicorn(
            workers=workers, ready_timeout=90, log_path=log_path
        )
        self.base_url = self.server.base_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=40)
            self.server = None

    def cleanup(self) -> None:
        drop_database(self.database_url)
        redis_url = self.env.get(
            "REDIS_URL", os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        )
        delete_redis_prefix(redis_url, self.redis_prefix)

    def master_and_worker_pids(self) -> tuple[list[int], list[int]]:
        if self.server is None:
            return [], []
        return [self.server.pid], self.server.worker_pids()

    def db_connections(self) -> tuple[int, int]:
        counts = fetch_value(
            self.database_url,
            "SELECT json_build_array(count(*), count(*) FILTER (WHERE state = 'active'))"
            " FROM pg_stat_activity WHERE application_name = $1",
            self.service_name,
        )
        total, active = json.loads(counts)
        return int(total), int(active)

    def db_server_limits(self) -> tuple[int, int]:
        maximum = fetch_value(self.database_url, "SELECT current_setting('max_connections')")
        reserved = fetch_value(
            self.database_url, "SELECT current_setting('superuser_reserved_connections')"
        )
        return int(maximum), int(reserved)

    def pool_per_worker(self) -> int:
        # Strings, validated as the environment's would be (hence Any for the typed
        # constructor); the rest comes from this process's environment, as before.
        known: dict[str, Any] = {
            name: self.env[name] for name in Settings.model_fields if name in self.env
        }
        settings = Settings(**known)
        return settings.db_connections_per_worker


# --- compose: recreate the `api` service with GUNICORN_WORKERS ---------------------------


# Through compose's load balancer every simulated user is one client (it replaces
# X-Forwarded-For, and a made-up API key is no identity): quotas no sweep reaches, so the
# limiter does its whole work per request and never refuses, as `--identity request`
# makes it natively.
QUOTAS_OUT_OF_REACH = {
    "RATE_LIMIT_DEFAULT": "1000000/60s",
    "RATE_LIMIT_ROUTES": "writes=1000000/60s POST,PUT,PATCH,DELETE /api/",
}


class ComposeSweep:
    """`docker compose up --force-recreate api` with GUNICORN_WORKERS set (compose.yaml
    interpolates it). Process figures need the engine on this host (its pids visible to
    psutil); database figures come from `psql` inside the database service."""

    def __init__(self, *, base_url: str, db_service: str, db_user: str) -> None:
        self.stack = ComposeStack(base_url=base_url)
        self.base_url = base_url
        self.db_service = db_service
        self.db_user = db_user

    def describe(self) -> str:
        return f"docker compose service `{self.stack.service}` at {self.base_url}"

    def prepare(self) -> None:
        self.stack.wait_ready(timeout=120)

    def start(self, workers: int, log_path: Path) -> None:
        # One replica behind the load balancer: the sweep sizes the workers of one
        # container (its CPU limit); replicas multiply what one of them does.
        self.stack.recreate({"GUNICORN_WORKERS": str(workers), "API_REPLICAS": "1",
                             **QUOTAS_OUT_OF_REACH})  # fmt: skip
        self.stack.wait_ready(timeout=120)

    def stop(self) -> None:
        """The service stays up between counts; `start` recreates it."""

    def cleanup(self) -> None:
        """The compose stack is the user's: back to its own replicas and workers (its
        .env or compose.yaml's defaults), left running."""
        self.stack.recreate({})
        self.stack.wait_ready(timeout=120)

    def master_and_worker_pids(self) -> tuple[list[int], list[int]]:
        result = self.stack.compose("top", self.stack.service, check=False)
        pids = top_pids(result.stdout)
        masters = [pid for pid, parent in pids.items() if parent not in pids]
        workers = [pid for pid, parent in pids.items() if parent in pids]
        if not all(psutil.pid_exists(pid) for pid in pids):
            return [], []  # the engine runs elsewhere (a VM): no process figures
        return masters, workers

    def _psql(self, sql: str) -> str:
        result = self.stack.compose(
            "exec", "-T", self.db_service, "psql", "-U", self.db_user, "-Atc", sql, check=False
        )
        if result.returncode != 0:
            raise StackError(f"psql in `{self.db_service}` failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def db_connections(self) -> tuple[int, int]:
        text = self._psql(
            "SELECT count(*) || ',' || count(*) FILTER (WHERE state = 'active') "
            "FROM pg_stat_activity WHERE application_name = 'parity-api'"
        )
        total, active = text.split(",")
        return int(total), int(active)

    def db_server_limits(self) -> tuple[int, int]:
        maximum = self._psql("SHOW max_connections")
        reserved = self._psql("SHOW superuser_reserved_connections")
        return int(maximum), int(reserved)

    def pool_per_worker(self) -> int:
        result = self.stack.compose(
            "exec",
            "-T",
            self.stack.service,
            "python",
            "-c",
            "from app.settings import load_settings; "
            "print(load_settings().db_connections_per_worker)",
            check=False,
        )
        return int(result.stdout.strip() or 10)


def top_pids(text: str) -> dict[int, int]:
    """PID -> PPID from `docker compose top`, whichever columns come first (Compose 2
    prints a header per container, `UID PID PPID ...`; Compose 5 one table with
    `SERVICE # UID PID PPID ...`)."""
    pids: dict[int, int] = {}
    columns: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if "PID" in parts and "PPID" in parts:
            columns = parts
            continue
        if columns and len(parts) >= len(columns):
            pid, ppid = parts[columns.index("PID")], parts[columns.index("PPID")]
            if pid.isdigit() and ppid.isdigit():
                pids[int(pid)] = int(ppid)
    return pids


# --- sampling during a measurement ---------------------------------------------------------


@contextmanager
def sampling(
    target: Sweepable, interval: float, on_tick: Callable[[Samples], None]
) -> Iterator[Samples]:
    """Sample the server's processes and database connections in a thread while the
    block runs; `on_tick` gets the samples after each round (progress output)."""
    samples = Samples()
    stop = threading.Event()
    started = time.monotonic()

    def loop() -> None:
        while not stop.is_set():
            take_sample(target, samples)
            samples.elapsed = time.monotonic() - started
            on_tick(samples)
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="sampler", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=10)
        take_sample(target, samples)
        samples.elapsed = time.monotonic() - started


def take_sample(target: Sweepable, samples: Samples) -> None:
    masters, workers = target.master_and_worker_pids()
    for pid in masters + workers:
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            used = times.user + times.system
            rss = process.memory_info().rss / MIB
        except psutil.Error:
            continue  # exited between listing and reading
        samples.cpu_first.setdefault(pid, used)
        samples.cpu_last[pid] = used
        if pid in workers:
            samples.rss.append(rss)
            samples.rss_max = max(samples.rss_max, rss)
    try:
        total, active = target.db_connections()
    except (StackError, OSError, ValueError) as exc:
        log(f"  (could not count database connections: {exc})")
        return
    samples.db_total = max(samples.db_total, total)
    samples.db_active = max(samples.db_active, active)


# --- the sweep ------------------------------------------------------------------------------


@dataclass
class Sweep:
    args: argparse.Namespace
    target: Sweepable
    out_dir: Path
    points: list[Point] = field(default_factory=list)
    interrupted: bool = False

    def locust_args(self) -> list[str]:
        return [
            "--think-time",
            str(self.args.think_time),
            "--identity",
            "request",
            "--product-count",
            str(self.args.products),
        ]

    def run(self) -> None:
        counts = self.args.workers
        for index, workers in enumerate(counts, start=1):
            log(f"[{index}/{len(counts)}] {plural(workers, 'worker')}: starting")
            began = time.monotonic()
            self.target.start(workers, self.out_dir / f"gunicorn-w{workers}.log")
            try:
                log(f"  ready in {time.monotonic() - began:.1f}s; warming up {self.args.warmup:g}s")
                if self.args.warmup:
                    self.locust(workers, "warmup", self.args.warmup)
                point = self.measure(workers)
            finally:
                self.target.stop()
            self.points.append(point)
            log(
                f"  {point.rps:,.0f} req/s, p50 {point.p50_ms:g} ms, p95 {point.p95_ms:g} ms, "
                f"p99 {point.p99_ms:g} ms, errors {100 * point.error_rate:.2f}%, server CPU "
                f"{point.server_cpu_percent:.0f}%, {point.rss_mib_per_worker:.0f} MiB/worker, "
                f"{point.db_connections_max} DB connections, Locust CPU "
                f"{point.locust_cpu_percent:.0f}%"
            )

    def locust(self, workers: int, label: str, seconds: float) -> LocustResult:
        return run_locust(
            self.target.base_url,
            out_prefix=self.out_dir / "locust" / f"w{workers}_{label}",
            tags=[self.args.scenario],
            users=self.args.users,
            spawn_rate=self.args.spawn_rate,
            seconds=seconds,
            extra_args=self.locust_args(),
        )

    def measure(self, workers: int) -> Point:
        duration = self.args.duration

        next_report = [10.0]

        def progress(samples: Samples) -> None:
            """A line every 10 s (samples come about every second, not on the dot)."""
            if samples.elapsed >= next_report[0]:
                next_report[0] += 10
                log(
                    f"  measuring {samples.elapsed:.0f}/{duration:g}s, "
                    f"server CPU so far {samples.cpu_percent:.0f}%"
                )

        log(f"  measuring {duration:g}s")
        with sampling(self.target, 1.0, progress) as samples:
            result = self.locust(workers, "run", duration)
        return Point(
            workers=workers,
            rps=round(result.rps, 1),
            p50_ms=result.p50_ms,
            p95_ms=result.p95_ms,
            p99_ms=result.p99_ms,
            requests=result.requests,
            failures=result.failures,
            error_rate=round(result.error_rate, 5),
            server_cpu_percent=round(samples.cpu_percent, 1),
            rss_mib_per_worker=round(sum(samples.rss) / len(samples.rss), 1) if samples.rss else 0,
            rss_mib_max=round(samples.rss_max, 1),
            db_connections_max=samples.db_total,
            db_connections_active_max=samples.db_active,
            pool_capacity=workers * self.target.pool_per_worker(),
            locust_cpu_percent=result.generator_cpu_percent,
        )


# --- the recommendation ------------------------------------------------------------------


@dataclass
class Recommendation:
    workers: int | None
    reasons: list[str]


def recommend(points: list[Point], slo_p95_ms: float) -> Recommendation:
    """The smallest count within 5% of the best throughput whose p95 meets the SLO,
    among the counts with at most 1% errors."""
    reasons: list[str] = []
    healthy = [p for p in points if p.error_rate <= MAX_ERROR_RATE]
    if not healthy:
        return Recommendation(None, ["every worker count had more than 1% errors: fix those first"])
    for p in points:
        if p not in healthy:
            reasons.append(f"{p.workers} workers excluded: {100 * p.error_rate:.1f}% errors")
    best = max(healthy, key=lambda p: p.rps)
    reasons.append(f"best throughput: {best.rps:,.0f} req/s with {plural(best.workers, 'worker')}")
    near = [p for p in healthy if p.rps >= NEAR_BEST * best.rps]
    reasons.append(
        f"within 5% of it (≥ {NEAR_BEST * best.rps:,.0f} req/s): "
        + ", ".join(str(p.workers) for p in near)
    )
    meeting = [p for p in near if p.p95_ms <= slo_p95_ms]
    if meeting:
        choice = min(meeting, key=lambda p: p.workers)
        reasons.append(
            f"of those, p95 ≤ {slo_p95_ms:g} ms: " + ", ".join(str(p.workers) for p in meeting)
        )
        reasons.append(
            f"→ {plural(choice.workers, 'worker')}: the fewest that give near-best throughput "
            f"within the SLO (p95 {choice.p95_ms:g} ms); every further worker costs about "
            f"{choice.rss_mib_per_worker:.0f} MiB and up to "
            f"{choice.pool_capacity // choice.workers} more database connections for no "
            "measurable gain"
        )
        return Recommendation(choice.workers, reasons)
    slo_ok = [p for p in healthy if p.p95_ms <= slo_p95_ms]
    if slo_ok:
        choice = max(slo_ok, key=lambda p: p.rps)
        reasons.append(
            f"none of those meets p95 ≤ {slo_p95_ms:g} ms; the best count that does is "
            f"{choice.workers} ({choice.rps:,.0f} req/s, p95 {choice.p95_ms:g} ms) → "
            f"{choice.workers} workers, at {100 * choice.rps / best.rps:.0f}% of the best "
            "throughput"
        )
        return Recommendation(choice.workers, reasons)
    reasons.append(
        f"no count meets p95 ≤ {slo_p95_ms:g} ms at this load: lower --users, raise the SLO, "
        f"or add capacity; {best.workers} workers gave the most throughput"
    )
    return Recommendation(None, reasons)


def generator_warning(points: list[Point], cpus: int) -> str | None:
    busiest = max(points, key=lambda p: p.locust_cpu_percent, default=None)
    if busiest is None or busiest.locust_cpu_percent < 50:
        return None
    return (
        f"Locust itself used up to {busiest.locust_cpu_percent:.0f}% of a CPU on this "
        f"{cpus}-CPU machine: the server had that much less. Counts above the CPUs left "
        "for the server are generator-bound here; for a cleaner answer run Locust on "
        "another machine (or compare the counts as a ratio, as this table does)."
    )


def pool_arithmetic(
    points: list[Point], choice: int | None, per_worker: int, max_connections: int, reserved: int
) -> list[str]:
    usable = max_connections - reserved
    lines = [
        f"connection budget: each worker has its own pool of up to {per_worker} connections "
        f"(DB_POOL_SIZE + DB_MAX_OVERFLOW); the server allows {max_connections} "
        f"(max_connections) minus {reserved} reserved for superusers = {usable}"
    ]
    for workers in sorted({p.workers for p in points} | ({choice} if choice else set())):
        need = workers * per_worker
        lines.append(
            f"  {plural(workers, 'worker')} × {per_worker} = {need} per replica → at most "
            f"{usable // need} replicas before headroom for migrations, cron jobs and psql"
        )
    peak = max((p.db_connections_max for p in points), default=0)
    lines.append(f"  most connections one server actually held during the sweep: {peak}")
    return lines


# --- reports ---------------------------------------------------------------------------------


COLUMNS = [
    ("workers", "workers"),
    ("rps", "req/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("error_rate", "errors"),
    ("server_cpu_percent", "server CPU %"),
    ("rss_mib_per_worker", "RSS/worker MiB"),
    ("db_connections_max", "DB conns (max)"),
    ("pool_capacity", "pool capacity"),
    ("locust_cpu_percent", "Locust CPU %"),
]


def write_csv(path: Path, points: list[Point]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)


def sweep_table(points: list[Point]) -> str:
    def cell(point: Point, key: str) -> str:
        value = getattr(point, key)
        if key == "error_rate":
            return f"{100 * value:.2f}%"
        if key == "rps":
            return f"{value:,.0f}"
        return f"{value:g}" if isinstance(value, float) else str(value)

    return markdown_table(
        [title for _, title in COLUMNS],
        [[cell(p, key) for key, _ in COLUMNS] for p in points],
        align="r" * len(COLUMNS),
    )


def write_plot(
    path: Path, points: list[Point], slo_p95_ms: float, choice: int | None, title: str
) -> None:
    workers = [p.workers for p in points]
    chosen = next((p for p in points if p.workers == choice), None)
    conclusion = (
        f"Recommended: {plural(chosen.workers, 'worker')}, {chosen.rps:,.0f} req/s at p95 "
        f"{chosen.p95_ms:g} ms (SLO {slo_p95_ms:g} ms)."
        if chosen
        else f"No recommendation: no worker count met p95 ≤ {slo_p95_ms:g} ms with at most "
        f"{100 * MAX_ERROR_RATE:g}% errors."
    )
    with figure(path, title=title, conclusion=conclusion, size=(8, 7)) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        bars = top.bar(
            workers, [p.rps for p in points], color="#4C72B0", alpha=0.8, label="throughput (req/s)"
        )
        if choice is not None:
            bars[workers.index(choice)].set_color("#55A868")
        top.set_ylabel("throughput (req/s)")
        top.set_ylim(0, 1.35 * max(p.rps for p in points))  # room for the legend
        latency = top.twinx()
        latency.plot(workers, [p.p95_ms for p in points], "o-", color="#C44E52", label="p95 (ms)")
        latency.plot(
            workers, [p.p99_ms for p in points], "o:", color="#C44E52", alpha=0.5, label="p99 (ms)"
        )
        latency.axhline(
            slo_p95_ms,
            color="#C44E52",
            linestyle="--",
            linewidth=1,
            label=f"SLO p95 {slo_p95_ms:g} ms",
        )
        # Said on the line itself: a dashed line across the bars otherwise reads as a
        # throughput on the left axis.
        latency.annotate(
            f"SLO: p95 ≤ {slo_p95_ms:g} ms (right axis)",
            (1.0, slo_p95_ms),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            color="#C44E52",
        )
        latency.set_ylabel("latency (ms, right axis, red)", color="#C44E52")
        latency.tick_params(axis="y", colors="#C44E52")
        latency.set_ylim(0, 1.35 * max(slo_p95_ms, *(p.p99_ms for p in points)))
        handles = [bars, *latency.get_lines()]
        top.legend(
            handles, [h.get_label() for h in handles], loc="upper center", ncol=4, fontsize=8
        )
        bottom.plot(workers, [p.server_cpu_percent for p in points], "s-", label="server CPU %")
        bottom.plot(workers, [p.locust_cpu_percent for p in points], "^-", label="Locust CPU %")
        bottom.set_ylabel("CPU % (100 = one core)")
        bottom.set_ylim(0, 1.35 * max(100.0, *(p.server_cpu_percent for p in points)))
        memory = bottom.twinx()
        memory.plot(
            workers,
            [p.rss_mib_per_worker for p in points],
            "d--",
            color="#8172B2",
            label="RSS per worker (MiB)",
        )
        memory.set_ylabel("RSS per worker (MiB, right axis)", color="#8172B2")
        memory.tick_params(axis="y", colors="#8172B2")
        memory.set_ylim(0, 1.35 * max(p.rss_mib_per_worker for p in points) or 1)
        handles = bottom.get_lines() + memory.get_lines()
        bottom.legend(
            handles, [h.get_label() for h in handles], loc="upper center", ncol=3, fontsize=8
        )
        bottom.set_xlabel(
            "Gunicorn workers" + (f" (recommended: {choice}, green)" if choice else "")
        )
        bottom.set_xticks(workers)


def machine_description() -> str:
    model = cpu_model()
    memory = psutil.virtual_memory().total / 1024**3
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{available_cpus()} CPUs available ({model}), {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"load average at the end {load} (1, 5, 15 min: includes other work on the machine)"
    )


# --- command line -------------------------------------------------------------------------


def worker_counts(text: str) -> list[int]:
    """ "1,2,4" or "1-4" (or both: "1-3,6") → sorted unique counts in 1..256."""
    counts: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a count or a range like 1-4"
            ) from None
        if not 1 <= first <= last <= 256:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} must lie within 1..256")
        counts.update(range(first, last + 1))
    return sorted(counts)


def key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cpus = available_cpus()
    parser = argparse.ArgumentParser(
        prog="parity tune",
        description=__doc__.split("\n\n")[0],
        epilog="Example: parity tune --native --workers 1-4 --duration 30",
    )
    add_target_options(
        parser,
        ("native", "compose"),
        help={
            "native": "start Gunicorn natively via parity stack",
            "compose": "recreate the compose `api` service with GUNICORN_WORKERS",
        },
    )
    parser.add_argument(
        "--workers",
        type=worker_counts,
        default=list(range(1, 2 * cpus + 1)),
        help=f"counts to try, e.g. 1,2,4 or 1-4 (default 1-{2 * cpus}: "
        "up to 2 × the CPUs available)",
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="mixed",
        help="Locust scenario (tag) run for every count (default mixed)",
    )
    parser.add_argument(
        "--users",
        type=bounded(int, 1, 10_000),
        default=32,
        help="simulated users (default 32)",
    )
    parser.add_argument(
        "--spawn-rate",
        type=bounded(float, 0.1, 10_000),
        default=32.0,
        help="users started per second (default 32: at once)",
    )
    parser.add_argument(
        "--duration",
        type=bounded(float, 1, 3600),
        default=30.0,
        help="measured seconds per count (default 30)",
    )
    parser.add_argument(
        "--warmup",
        type=bounded(float, 0, 600),
        default=5.0,
        help="unrecorded seconds of the same load first (default 5)",
    )
    parser.add_argument(
        "--think-time",
        type=bounded(float, 0, 60),
        default=0.0,
        help="mean pause between a user's requests (default 0: closed loop, "
        "so the server is saturated and throughput is its capacity)",
    )
    parser.add_argument(
        "--slo-p95-ms",
        type=bounded(float, 0.1, 600_000),
        default=200.0,
        help="latency objective for the recommendation (default 200)",
    )
    parser.add_argument(
        "--products",
        type=bounded(int, 100, 10_000_000),
        default=10_000,
        help="products seeded (native; default 10000)",
    )
    parser.add_argument(
        "--env",
        type=key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server environment (native), repeatable",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "results",
        help="parent directory of the timestamped results (default results/)",
    )
    parser.add_argument("--compose-db-service", default="postgres", help=argparse.SUPPRESS)
    # compose.yaml's POSTGRES_USER (tests/test_deploy_compose.py keeps them equal).
    parser.add_argument("--compose-db-user", default="parity", help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep-database", action="store_true", help="native: keep the sweep's database afterwards"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    args.target = target_choice(parser, args)
    return args


def build_sweep(args: argparse.Namespace) -> Sweepable:
    if args.target.kind == "compose":
        return ComposeSweep(
            base_url=args.target.url,
            db_service=args.compose_db_service,
            db_user=args.compose_db_user,
        )
    return NativeSweep(
        database_url=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        products=args.products,
        env=dict(args.env),
    )


def report(sweep: Sweep, args: argparse.Namespace) -> dict[str, Any]:
    """Write sweep.{csv,md,png,json} and print the table and the recommendation."""
    points, target, out = sweep.points, sweep.target, sweep.out_dir
    recommendation = recommend(points, args.slo_p95_ms)
    max_connections, reserved = target.db_server_limits()
    per_worker = target.pool_per_worker()
    budget = pool_arithmetic(points, recommendation.workers, per_worker, max_connections, reserved)
    warning = generator_warning(points, available_cpus())
    title = (
        f"Worker sweep on {available_cpus()} CPUs: {args.scenario} scenario, {args.users} "
        f"users, {args.warmup:g} s warm-up + {args.duration:g} s measured per count"
        + (" (interrupted)" if sweep.interrupted else "")
    )
    write_csv(out / "sweep.csv", points)
    write_plot(out / "sweep.png", points, args.slo_p95_ms, recommendation.workers, title)
    settings = (
        f"Scenario `{args.scenario}` (think time {args.think_time:g}s, a new rate-limit identity "
        f"per request), {args.users} users spawned at {args.spawn_rate:g}/s, {args.warmup:g}s "
        f"warm-up then {args.duration:g}s measured per worker count; target: {target.describe()}."
    )
    markdown = "\n".join(
        [
            f"# Worker-count sweep, {out.name}",
            "",
            f"Machine: {machine_description()}.",
            "",
            settings,
            "",
            sweep_table(points),
            "",
            "## Recommendation",
            "",
            *[f"- {line}" for line in recommendation.reasons],
            "",
            "## Connection budget",
            "",
            "```",
            *budget,
            "```",
            "",
            *([f"Note: {warning}", ""] if warning else []),
            "![throughput and p95 against worker count](sweep.png)",
            "",
        ]
    )
    (out / "sweep.md").write_text(markdown)
    data = {
        "points": [asdict(p) for p in points],
        "recommendation": asdict(recommendation),
        "connection_budget": {
            "per_worker": per_worker,
            "max_connections": max_connections,
            "superuser_reserved": reserved,
        },
        "slo_p95_ms": args.slo_p95_ms,
        "interrupted": sweep.interrupted,
        "results": str(out),
    }
    write_json(out / "sweep.json", data)
    print(file=sys.stderr)
    print(sweep_table(points), file=sys.stderr)
    print(file=sys.stderr)
    for line in [*recommendation.reasons, "", *budget, *([warning] if warning else [])]:
        print(line, file=sys.stderr)
    print(
        f"\nresults: {out}/ (sweep.md, sweep.csv, sweep.png, sweep.json, locust/)", file=sys.stderr
    )
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    target = build_sweep(args)
    sweep = Sweep(args, target, out)
    log(f"sweeping {', '.join(map(str, args.workers))} workers against {target.describe()}")
    log(f"results go to {out}/; Ctrl-C stops and keeps what was measured")
    failed = False
    try:
        target.prepare()
        sweep.run()
    except KeyboardInterrupt:
        sweep.interrupted = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        log("\ninterrupted: stopping the server and Locust, keeping what was measured")
    except (StackError, LoadgenError, OSError) as exc:
        log(f"error: {exc}")
        failed = True
    finally:
        target.stop()  # before finish(), which drops the sweep's database
    return finish(sweep, args, failed=failed)


def finish(sweep: Sweep, args: argparse.Namespace, *, failed: bool) -> int:
    try:
        if not sweep.points:
            log("nothing was measured")
            return 130 if sweep.interrupted else 1
        data = report(sweep, args)
        if args.json:
            print(json.dumps(data, indent=2))
    finally:
        if not args.keep_database:
            try:
                sweep.target.cleanup()
            except Exception as exc:  # cleanup must not hide the results
                log(f"warning: cleanup failed: {exc}")
    if sweep.interrupted:
        return 130
    return 1 if failed else 0
