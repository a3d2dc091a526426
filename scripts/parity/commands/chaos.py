"""Chaos run: a steady load while Postgres and Redis are stopped and started, with
errors and latency per phase, and the behaviour each phase must show.

    parity chaos                     # native: own throwaway Postgres, Redis, Gunicorn
    parity chaos --phase-seconds 8 --json --plot chaos.png
    parity chaos --compose           # against `docker compose up` (stop/start services)

Phases: baseline -> postgres down -> postgres back -> redis down -> redis back ->
redis hung -> redis resumed (natively SIGSTOP/SIGCONT; in compose `pause`/`unpause`).
Expected, and checked (exit 1 if not): no transport error and no hang anywhere; while
Postgres is down, database routes answer 503 problems with Retry-After within the
2 s connect timeout (< 2.5 s) and /health stays 200; while Redis is down or hung,
every request is still served (cache bypass, limiter fails open); after each recovery,
no error at all. The run is bounded: phases x --phase-seconds.

The load and its phases are parity.harness.load's (`Load`, `run_phases`), the driver
parity rollout, verify dashboards and tests/test_outages.py use too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from parity.harness.load import Load, Phase, PhaseRun, Sample, cycle, default_requests, run_phases
from parity.harness.report import figure
from parity.harness.stack import StackError, wait_until_answers
from parity.harness.target import (
    Target,
    TargetChoice,
    add_target_options,
    open_target,
    target_choice,
)

DB_ROUTES = ("list", "order")  # always need Postgres; "read" may be a cache hit
REDIS_TIMEOUT_MS = 250  # REDIS_TIMEOUT_SECONDS' default, marked on the plot


@dataclass
class PhaseReport:
    name: str
    seconds: float
    requests: int
    by_status: dict[str, int]
    p50_ms: float
    p95_ms: float
    max_ms: float
    failures: list[str] = field(default_factory=list)
    start_offset: float = 0.0  # seconds since the run's first phase started

    @property
    def ok(self) -> bool:
        return not self.failures


Check = Callable[[list[Sample]], list[str]]


def summarise(name: str, samples: list[Sample], seconds: float, check: Check) -> PhaseReport:
    latencies = sorted(s.latency * 1000 for s in samples) or [0.0]
    by_status: dict[str, int] = {}
    for sample in samples:
        key = str(sample.status or "no answer")
        by_status[key] = by_status.get(key, 0) + 1
    failures = check(samples) if samples else ["no request completed in this phase"]
    return PhaseReport(
        name,
        round(seconds, 1),
        len(samples),
        dict(sorted(by_status.items())),
        round(statistics.median(latencies), 1),
        round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        round(latencies[-1], 1),
        failures,
    )


# --- what each phase must show ------------------------------------------------------


def no_errors(samples: list[Sample]) -> list[str]:
    bad = [s for s in samples if s.status == 0 or s.status >= 500]
    return [f"{len(bad)} errors, e.g. {bad[0].label} -> {bad[0].status}"] if bad else []


def served_despite_redis(samples: list[Sample]) -> list[str]:
    failures = no_errors(samples)
    reads = [s for s in samples if s.label == "read"]
    if reads and not any(s.cache == "BYPASS" for s in reads):
        failures.append("no product read reported X-Cache: BYPASS")
    return failures + no_hang(samples)


def no_hang(samples: list[Sample], bound: float = 2.0) -> list[str]:
    slow = [s for s in samples if s.latency >= bound]
    return [f"{len(slow)} requests took >= {bound} s"] if slow else []


# A request that needs Postgres while it is down is answered within the connect timeout
# (DB_CONNECT_TIMEOUT_SECONDS, 2 s) plus its own work. Natively a stopped server refuses
# at once; in compose the stopped container's name is no longer in Docker's DNS, which
# then asks the host's resolver, and concurrent look-ups there can hang (seen: 16 of 64
# took 5 s), so the connect timeout is what answers them: 503 after 2.0x s.
POSTGRES_DOWN_BOUND_SECONDS = 2.5


def postgres_down(samples: list[Sample]) -> list[str]:
    failures = no_hang(samples, bound=POSTGRES_DOWN_BOUND_SECONDS)
    if any(s.status == 0 for s in samples):
        failures.append("a request got no HTTP answer")
    if any(s.label == "health" and s.status != 200 for s in samples):
        failures.append("/health was not 200")
    db = [s for s in samples if s.label in DB_ROUTES]
    unexpected = [
        s for s in db if not (s.status == 503 and s.problem and s.retry_after) and s.status < 500
    ]
    if db and len(unexpected) == len(db):
        failures.append("no database route answered 503 with Retry-After")
    wrong = [s for s in samples if s.status >= 500 and not (s.status == 503 and s.retry_after)]
    if wrong:
        failures.append(f"{len(wrong)} 5xx without Retry-After, e.g. {wrong[0].status}")
    return failures


# --- the run ------------------------------------------------------------------------


@dataclass
class Outage:
    """One phase of the plan: what is done at its start, what clients must see."""

    name: str
    action: Callable[[], None]  # done at the start of the phase
    check: Check
    settle: Callable[[], None] = lambda: None  # waited for before the phase is measured


def run_outages(
    load: Load, outages: Sequence[Outage], seconds: float, t0: float
) -> list[PhaseReport]:
    """The plan, phase by phase, on the harness's phase runner; each phase judged (and
    its verdict printed) as it ends."""
    checks = {outage.name: outage.check for outage in outages}
    reports: list[PhaseReport] = []

    def judge(run: PhaseRun) -> None:
        report = summarise(run.name, run.samples, seconds, checks[run.name])
        report.start_offset = round(run.start - t0, 2)
        verdict = "ok" if report.ok else "FAIL: " + "; ".join(report.failures)
        say(f"  {report.requests} requests {report.by_status} p95 {report.p95_ms} ms -> {verdict}")
        reports.append(report)

    phases = [Phase(o.name, seconds, before=o.action, settle=o.settle) for o in outages]
    run_phases(load, phases, progress=say, done=judge)
    return reports


def say(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


# Ready as a client sees it: a route that needs Postgres answers 200. (/ready itself is
# on the replicas' internal listener in compose, not behind the published port.)
READY_PATH = "/api/v1/products?limit=1"


def wait_ready(base_url: str, timeout: float = 60.0) -> None:
    wait_until_answers(base_url + READY_PATH, timeout=timeout)


def outage_phases(target: Target) -> list[Outage]:
    """The plan, on whatever the target's dependencies are: natively throwaway servers
    (the hang is SIGSTOP/SIGCONT), in compose its services (the hang is `pause`: the
    cgroup freezer, connections open and nothing answers)."""
    ready = lambda: wait_ready(target.base_url)  # noqa: E731
    return [
        Outage("baseline", lambda: None, no_errors, ready),
        Outage("postgres down", lambda: target.stop_dependency("postgres"), postgres_down),
        Outage("postgres back", lambda: target.start_dependency("postgres"), no_errors, ready),
        Outage("redis down", lambda: target.stop_dependency("redis"), served_despite_redis),
        Outage("redis back", lambda: target.start_dependency("redis"), no_errors),
        Outage("redis hung", lambda: target.pause_dependency("redis"), served_despite_redis),
        Outage("redis resumed", lambda: target.resume_dependency("redis"), no_errors),
    ]


# The limiter stays on natively (its Redis calls and fail-open are part of the run),
# with quotas one load generator cannot reach.
NATIVE_ENV = {
    "LOG_LEVEL": "info",
    "RATE_LIMIT_DEFAULT": "1000000/60s",
    "RATE_LIMIT_ROUTES": "writes=1000000/60s POST,PUT,PATCH,DELETE /api/",
}


def open_chaos_target(choice: TargetChoice, workers: int) -> Target:
    """Natively on throwaway Postgres and Redis of the run's own, which it may stop and
    hang without harming anyone; in compose the running stack, whose stopped or paused
    services its close() restores even after an interrupted run."""
    target = open_target(
        choice, label="chaos", workers=workers, env=NATIVE_ENV, products=50, throwaway=True
    )
    say(target.description)
    return target


def product_ids(base_url: str, count: int = 5) -> list[int]:
    page = httpx.get(f"{base_url}/api/v1/products", params={"limit": count}, timeout=10)
    page.raise_for_status()
    ids = [item["id"] for item in page.json()["items"]]
    if not ids:
        raise StackError("the stack has no products: seed it first")
    return ids


def plot(reports: list[PhaseReport], samples: list[Sample], t0: float, path: Path) -> None:
    """Every request as a dot (latency, log scale) over time, phases marked."""
    behaved = sum(report.ok for report in reports)
    failed = [report.name for report in reports if not report.ok]
    with figure(
        path,
        title="parity chaos: every request by phase",
        conclusion=f"{behaved} of {len(reports)} phases behaved as documented"
        + (f"; failed: {', '.join(failed)}." if failed else "."),
        size=(11, 4.5),
    ) as fig:
        ax = fig.subplots()
        for status_class, colour in (
            ("2xx/4xx", "tab:blue"),
            ("5xx", "tab:red"),
            ("no HTTP answer", "black"),
        ):
            points = [
                (s.started - t0, max(s.latency * 1000, 0.1))
                for s in samples
                if s.started >= t0 and _status_class(s.status) == status_class
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, s=4, color=colour, label=status_class, alpha=0.6)
        for report in reports:
            ax.axvline(report.start_offset, color="grey", linewidth=0.8)
            ax.text(
                report.start_offset,
                0.98,
                f" {report.name}",
                rotation=90,
                va="top",
                fontsize=8,
                transform=ax.get_xaxis_transform(),
            )
        for report in reports:
            if report.name != "redis hung":
                continue
            # The band of ~250 ms answers while Redis hangs is the app's own bound on a
            # Redis call, not a slow Postgres: say so on the plot.
            ax.axhline(REDIS_TIMEOUT_MS, color="tab:orange", linestyle=":", linewidth=1)
            ax.annotate("Redis timeout, 0.25 s", (report.start_offset, REDIS_TIMEOUT_MS),
                        xytext=(14, -12), textcoords="offset points", fontsize=8,
                        color="tab:orange")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the baseline started")
        ax.set_ylabel("latency (ms, log scale)")
        ax.legend(loc="lower right", title="answer")


def _status_class(status: int) -> str:
    if status == 0:
        return "no HTTP answer"
    return "5xx" if status >= 500 else "2xx/4xx"


def print_table(reports: list[PhaseReport]) -> None:
    print(
        f"{'phase':<16}{'requests':>9}  {'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}  statuses / verdict"
    )
    for r in reports:
        statuses = " ".join(f"{k}:{v}" for k, v in r.by_status.items())
        verdict = "ok" if r.ok else "FAIL " + "; ".join(r.failures)
        print(
            f"{r.name:<16}{r.requests:>9}  {r.p50_ms:>8}{r.p95_ms:>8}{r.max_ms:>8}  "
            f"{statuses}  {verdict}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity chaos",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    add_target_options(
        parser, ("native", "compose"), help={"native": "own throwaway servers, stopped at will"}
    )
    parser.add_argument("--phase-seconds", type=float, default=5.0, help="default 5")
    parser.add_argument("--concurrency", type=int, default=4, help="load threads (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="Gunicorn workers (native)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--plot", type=Path, help="write a PNG of every request's latency")
    args = parser.parse_args(argv)
    if not 1 <= args.phase_seconds <= 120:
        parser.error(f"--phase-seconds {args.phase_seconds:g}: must be between 1 and 120")
    if not 1 <= args.concurrency <= 32:
        parser.error(f"--concurrency {args.concurrency}: must be between 1 and 32")
    args.target = target_choice(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with closing(open_chaos_target(args.target, args.workers)) as target:
            wait_ready(target.base_url, timeout=10)
            requests = default_requests(product_ids(target.base_url))
            with Load(target.base_url, cycle(requests), concurrency=args.concurrency) as load:
                t0 = time.monotonic()
                reports = run_outages(load, outage_phases(target), args.phase_seconds, t0)
            samples = load.samples
    except (StackError, httpx.HTTPError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        plot(reports, samples, t0, args.plot)
        print(f"[chaos] plot written to {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in reports], indent=2))
    else:
        print_table(reports)
    failed = [r.name for r in reports if not r.ok]
    print(
        f"[chaos] {'FAILED: ' + ', '.join(failed) if failed else 'every phase behaved'}",
        file=sys.stderr,
    )
    return 1 if failed else 0
