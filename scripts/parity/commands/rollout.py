"""Rolling restart of the compose stack's api replicas under load: one replica at a time,
through the load balancer, and what clients saw.

    parity rollout                    # make rollout: every replica, 8 clients
    parity rollout --count 1 --json   # one replica (the e2e's SIGTERM proof)

For each replica, in order: `docker stop` (SIGTERM; Docker sends SIGKILL only after the
service's 40 s stop_grace_period), which returns once the replica has drained and
exited; remove it; `docker compose up --no-recreate --scale api=N api` starts its
replacement from the image compose has now (build first to deploy new code); wait until
the load balancer has the replacement in its pool. Meanwhile a steady load runs through
the load balancer (parity.harness.load) and the pool is sampled every 0.1 s
(parity.harness.loadbalancer).

Reported: client-visible errors (no HTTP answer, or a 5xx), 429s apart (the limiter
doing its job; raise RATE_LIMIT_DEFAULT for a cleaner run), p50/p99 before and during
the rollout, and per replica: SIGTERM -> out of the pool, SIGTERM -> exit (and the exit
code), replacement start -> in the pool. Writes rollout.md, rollout.json and rollout.png
(requests/s, errors, p99 and pool size over time) to --out.

Which stack: the one Compose's own variables name (COMPOSE_FILE, COMPOSE_PROJECT_NAME),
with the api at 127.0.0.1:$API_PORT and HAProxy's stats at 127.0.0.1:$LB_STATS_PORT.
Exit status: 0 no client-visible error, every old replica exited 0 and every new one
joined the pool; 1 otherwise; 3 NOT RUN: no Docker engine, or no stack running.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from parity.harness.images import engine_reachable
from parity.harness.load import Load, Sample, cycle, default_requests
from parity.harness.loadbalancer import (
    LoadBalancer,
    PoolWatcher,
    Replica,
    api_replicas,
    compose,
    docker,
    exit_code,
)
from parity.harness.options import bounded, positive_int
from parity.harness.repo import REPO_ROOT
from parity.harness.report import figure, markdown_table, write_json
from parity.harness.report import progress as say
from parity.harness.stack import StackError, compose_api_url
from parity.harness.traffic import seeded_product_ids

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUN = 0, 1, 3


@dataclass
class ReplicaReport:
    """One replacement; times in seconds, `*_at` since the load started."""

    old: str
    old_address: str
    new: str = ""
    new_address: str = ""
    exit_code: int | None = None
    term_at: float = 0.0
    out_of_pool_after: float | None = None  # SIGTERM -> first pool sample without it
    exited_after: float | None = None  # SIGTERM -> container exited
    joined_after: float | None = None  # replacement started -> in the pool
    total: float | None = None  # SIGTERM -> replacement in the pool


@dataclass
class Window:
    """The answers of one stretch of the run."""

    requests: int
    errors: int
    limited: int
    p50_ms: float
    p99_ms: float


@dataclass
class Report:
    replicas_before: int
    concurrency: int
    baseline: Window
    during: Window
    replicas: list[ReplicaReport] = field(default_factory=list)
    error_examples: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    results: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def window(samples: Sequence[Sample]) -> Window:
    latencies = sorted(s.latency * 1000 for s in samples if not s.failed)
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else 0.0
    return Window(
        requests=len(samples),
        errors=sum(s.failed for s in samples),
        limited=sum(s.status == 429 for s in samples),
        p50_ms=round(statistics.median(latencies), 1) if latencies else 0.0,
        p99_ms=round(p99, 1),
    )


# --- one replacement ------------------------------------------------------------------


def replace(
    replica: Replica, replicas: int, lb: LoadBalancer, watcher: PoolWatcher, t0: float,
    timeout: float,
) -> ReplicaReport:  # fmt: skip
    report = ReplicaReport(old=replica.name, old_address=replica.address)
    term = time.monotonic()
    report.term_at = round(term - t0, 2)
    say(f"  SIGTERM {replica.name} ({replica.address}); waiting until it has drained and exited")
    # Without --time: the container's own stop timeout, compose's stop_grace_period.
    docker("stop", replica.container, timeout=timeout)
    report.exited_after = round(time.monotonic() - term, 2)
    report.exit_code = exit_code(replica.container)
    left = watcher.left_at(replica.address, after=term)
    report.out_of_pool_after = round(left - term, 2) if left is not None else None
    say(
        f"    out of the pool after {report.out_of_pool_after} s, exited {report.exit_code} "
        f"after {report.exited_after} s"
    )
    docker("rm", replica.container)
    before = {r.container for r in api_replicas()}
    started = time.monotonic()
    compose("up", "--detach", "--no-deps", "--no-recreate", "--scale", f"api={replicas}", "api")
    new = [r for r in api_replicas() if r.container not in before]
    if len(new) != 1:
        raise StackError(f"expected one new api container, found {[r.name for r in new]}")
    report.new, report.new_address = new[0].name, new[0].address
    say(f"    started {report.new} ({report.new_address}); waiting until the lb has it")
    lb.wait_for_pool({report.new_address}, timeout=timeout)
    joined = time.monotonic()
    report.joined_after = round(joined - started, 2)
    report.total = round(joined - term, 2)
    say(f"    in the pool {report.joined_after} s after its start; {report.total} s in all")
    return report


def check(report: Report, count: int) -> list[str]:
    problems = []
    if report.during.errors or report.baseline.errors:
        problems.append(
            f"{report.baseline.errors + report.during.errors} client-visible errors "
            f"(e.g. {'; '.join(report.error_examples[:3])})"
        )
    for replica in report.replicas:
        if replica.exit_code != 0:
            problems.append(f"{replica.old} exited {replica.exit_code}")
        if replica.out_of_pool_after is None:
            problems.append(f"{replica.old} was never seen leaving the pool")
    if len(report.replicas) != count:
        problems.append(f"{len(report.replicas)} of {count} replicas replaced")
    return problems


# --- the run ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Report:
    base_url = compose_api_url()
    lb = LoadBalancer.from_environment()
    replicas = api_replicas()
    if not replicas:
        raise StackError("no api replica running: start the stack first (make up)")
    lb.wait_for_pool({r.address for r in replicas}, timeout=30)
    count = min(args.count or len(replicas), len(replicas))
    product_ids = seeded_product_ids(base_url, limit=5)
    say(
        f"rollout: {count} of {len(replicas)} replicas, one at a time, under {args.concurrency} "
        f"clients through {base_url}"
    )
    requests = default_requests(product_ids)
    with PoolWatcher(lb) as watcher, Load(
        base_url, cycle(requests), concurrency=args.concurrency
    ) as load:  # fmt: skip
        t0 = time.monotonic()
        time.sleep(args.baseline_seconds)
        rollout_started = time.monotonic()
        reports, failures = [], []
        try:
            for replica in replicas[:count]:
                reports.append(replace(replica, len(replicas), lb, watcher, t0, args.timeout))
        except StackError as exc:  # a replica that would not stop or join: stop here
            failures.append(str(exc))
            say(f"    FAILED: {exc}")
        rollout_ended = time.monotonic()
        time.sleep(args.settle_seconds)
    samples = load.between(t0, time.monotonic())
    report = Report(
        replicas_before=len(replicas),
        concurrency=args.concurrency,
        baseline=window([s for s in samples if s.started < rollout_started]),
        during=window([s for s in samples if s.started >= rollout_started]),
        replicas=reports,
        error_examples=[
            f"{s.label} {s.status or s.error}" for s in samples if s.failed
        ][:10],
    )  # fmt: skip
    report.problems = failures + check(report, count)
    write_results(report, samples, watcher, t0, (rollout_started, rollout_ended), args.out)
    return report


# --- results ----------------------------------------------------------------------------


def conclusion(report: Report) -> str:
    total = report.baseline.requests + report.during.requests
    errors = report.baseline.errors + report.during.errors
    per_replica = [r.total for r in report.replicas if r.total is not None]
    mean = statistics.mean(per_replica) if per_replica else 0.0
    return (
        f"{errors} client-visible errors in {total:,} requests; p99 "
        f"{report.baseline.p99_ms:g} ms before, {report.during.p99_ms:g} ms during; "
        f"{mean:.1f} s per replica"
    )


def markdown(report: Report) -> str:
    replicas = markdown_table(
        ["replica", "SIGTERM at s", "out of pool after s", "exited after s", "exit code",
         "replacement", "in pool after s", "total s"],
        [
            [f"{r.old} ({r.old_address})", r.term_at, r.out_of_pool_after, r.exited_after,
             r.exit_code, f"{r.new} ({r.new_address})", r.joined_after, r.total]
            for r in report.replicas
        ],
        align="-rrrr-rr",
    )  # fmt: skip
    lines = [
        f"# Rollout: {len(report.replicas)} of {report.replicas_before} api replicas, "
        f"{report.concurrency} clients",
        "",
        conclusion(report),
        "",
        markdown_table(
            ["window", "requests", "client-visible errors", "429", "p50 ms", "p99 ms"],
            [
                [name, w.requests, w.errors, w.limited, f"{w.p50_ms:g}", f"{w.p99_ms:g}"]
                for name, w in (("before", report.baseline), ("during", report.during))
            ],
            align="-rrrrr",
        ),
        "",
        replicas,
    ]
    if report.problems:
        lines += ["", *(f"- FAILED: {problem}" for problem in report.problems)]
    return "\n".join(lines) + "\n"


def write_results(
    report: Report, samples: Sequence[Sample], watcher: PoolWatcher, t0: float,
    rollout: tuple[float, float], out: Path,
) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    report.results = str(out)
    (out / "rollout.md").write_text(markdown(report))
    write_json(out / "rollout.json", asdict(report))
    plot(report, samples, watcher.samples, t0, rollout, out / "rollout.png")


def plot(
    report: Report, samples: Sequence[Sample], pool: Sequence[tuple[float, frozenset[str]]],
    t0: float, rollout: tuple[float, float], path: Path,
) -> None:  # fmt: skip
    """Answers and errors per second, p99 per second, pool size: one shared time axis."""
    from matplotlib.ticker import MaxNLocator

    # Whole seconds only: the last, partial one would show as a drop in throughput.
    seconds = int(max((s.started - t0 for s in samples), default=0))
    answered, errors, p99 = [0] * seconds, [0] * seconds, [float("nan")] * seconds
    by_second: list[list[float]] = [[] for _ in range(seconds)]
    for s in samples:
        second = int(s.started - t0)
        if second >= seconds:
            continue
        if s.failed:
            errors[second] += 1
        else:
            answered[second] += 1
            by_second[second].append(s.latency * 1000)
    for second, latencies in enumerate(by_second):
        if len(latencies) >= 2:
            p99[second] = statistics.quantiles(latencies, n=100)[98]
    xs = list(range(seconds))
    with figure(
        path,
        title=f"make rollout: {len(report.replicas)} api replicas replaced one at a time under "
        "load",
        conclusion=conclusion(report),
        size=(11, 7),
    ) as fig:
        ax_rps, ax_p99, ax_pool = fig.subplots(3, 1, sharex=True)
        ax_rps.plot(xs, answered, color="tab:blue", label="answered (not 5xx)")
        ax_rps.bar(xs, errors, color="tab:red", label="client-visible errors")
        ax_rps.set_ylabel("requests / s")
        ax_rps.legend(loc="lower left", fontsize=8)
        ax_p99.plot(xs, p99, color="tab:purple")
        ax_p99.set_ylabel("p99 latency (ms)")
        ax_pool.step([m - t0 for m, _ in pool], [len(p) for _, p in pool], where="post",
                     color="tab:green")  # fmt: skip
        ax_pool.set_ylabel("replicas in the lb pool")
        ax_pool.set_ylim(0, max((len(p) for _, p in pool), default=1) + 0.5)
        ax_pool.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax_pool.set_xlabel("seconds since the load started")
        for ax in (ax_rps, ax_p99, ax_pool):
            for r in report.replicas:
                ax.axvline(r.term_at, color="grey", linestyle="--", linewidth=0.8)
            ax.axvspan(rollout[0] - t0, rollout[1] - t0, color="grey", alpha=0.08)
        for r in report.replicas:
            ax_rps.annotate(f"TERM {r.old}", (r.term_at, 1.0), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", fontsize=7)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity rollout",
        description=__doc__.split("\n\n")[0],
        epilog="Reports client-visible errors (no HTTP answer, or a 5xx), p50/p99 before and "
        "during, and per replica: SIGTERM -> out of the lb pool, -> exit, replacement -> in "
        "the pool; writes rollout.md, .json and .png. Needs a running stack (make up). Exit "
        "status: 0 no client-visible error, 1 a problem, 3 NOT RUN (no engine, no stack).",
    )
    parser.add_argument("--count", type=positive_int, help="replace only the first N replicas")
    parser.add_argument("--concurrency", type=bounded(int, 1, 64), default=8,
                        help="load threads through the lb (8)")  # fmt: skip
    parser.add_argument("--baseline-seconds", type=bounded(float, 1, 120), default=5,
                        help="load before the first SIGTERM (5)")  # fmt: skip
    parser.add_argument("--settle-seconds", type=bounded(float, 0, 120), default=3,
                        help="load after the last replacement joined (3)")  # fmt: skip
    parser.add_argument("--timeout", type=bounded(float, 10, 600), default=120,
                        help="bound on each stop and each join, s (120)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "rollout",
                        help="where rollout.md/.json/.png go (results/rollout)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if reason := engine_reachable():
        say(f"rollout NOT RUN: {reason}")
        return EXIT_NOT_RUN
    try:
        report = run(args)
    except (StackError, httpx.HTTPError) as exc:
        say(f"rollout NOT RUN: {exc}")
        return EXIT_NOT_RUN
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(markdown(report))
    say(f"rollout: {conclusion(report)}; results in {report.results}")
    return EXIT_OK if report.ok else EXIT_FAILED
