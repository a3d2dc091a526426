"""What the locustfile computes besides Locust's own statistics: load shapes, the
per-scenario tallies, the step table and its knee, the generator's CPU, and the
`locust_*` Prometheus metrics.

Plain Python, no Locust or gevent import, so the tests can import it
(`loadtest.loadstats`) without gevent monkey-patching the test process.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# Exactly the boundaries of the server's http_server_request_duration_seconds (the
# OpenTelemetry defaults, app/telemetry/metrics.py), so histogram_quantile() over both
# interpolates alike and the gap between client and server means something. Finer
# buckets on one side only would show a gap that is just interpolation.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


# --- load shapes --------------------------------------------------------------------


def shape_tick(
    shape: str,
    now: float,
    *,
    users: int,
    spawn_rate: float,
    run_time: float = 0,
    step_users: int = 10,
    step_seconds: float = 30,
    spike_seconds: float = 0,
) -> tuple[int, float] | None:
    """Users and spawn rate wanted `now` seconds into the test; None ends it.

    - constant: `users` at `spawn_rate` until `run_time` (0: until stopped);
    - step: `step_users` more every `step_seconds` up to `users`, each step spawned at
      once; until `run_time`, else the last step is held for one step and it ends;
    - spike: a fifth of `users`, then all of them within a second for `spike_seconds`
      (default a sixth of the run) in the middle of the run, then back to a fifth.
    """
    if shape == "step":
        steps = math.ceil(users / step_users)
        end = run_time or (steps + 1) * step_seconds
        if now >= end:
            return None
        wanted = min(users, step_users * (int(now // step_seconds) + 1))
        return wanted, max(spawn_rate, float(step_users))
    if shape == "spike":
        length = spike_seconds or (run_time / 6 if run_time else 30.0)
        end = run_time or 3 * length + 60
        start = (end - length) / 2
        if now >= end:
            return None
        if start <= now < start + length:
            return users, float(users)
        return max(1, round(users / 5)), spawn_rate
    if run_time and now >= run_time:
        return None
    return users, spawn_rate


# --- tallies ------------------------------------------------------------------------


@dataclass
class Tally:
    requests: int = 0
    failures: int = 0
    rate_limited: int = 0  # 429s that were the scenario's expected answer (burst)


@dataclass
class StepStats:
    requests: int = 0
    failures: int = 0
    durations_ms: list[float] = field(default_factory=list)


class Report:
    """Everything recorded during one test run (a new one per run)."""

    def __init__(self, step_seconds: float = 0) -> None:
        self.process = psutil.Process()
        self.started = time.monotonic()
        self.cpu_started = self._cpu_seconds()
        self.process.cpu_percent(None)
        self.cpu_samples: list[float] = []
        self.step_seconds = step_seconds
        self.scenarios: dict[str, Tally] = defaultdict(Tally)
        self.steps: dict[int, StepStats] = defaultdict(StepStats)

    def _cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def sample_cpu(self) -> float:
        """CPU % of this process since the previous sample (100 = one core)."""
        percent = float(self.process.cpu_percent(None))
        self.cpu_samples.append(percent)
        return percent

    def record(self, scenario: str, status: int, failed: bool, duration_ms: float) -> None:
        tally = self.scenarios[scenario]
        tally.requests += 1
        if failed:
            tally.failures += 1
        elif status == 429:
            tally.rate_limited += 1
        if self.step_seconds:
            step = self.steps[int((time.monotonic() - self.started) // self.step_seconds)]
            step.requests += 1
            step.failures += failed
            step.durations_ms.append(duration_ms)

    def summary(self, *, users: int, step_users: int) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        cpu_mean = 100 * (self._cpu_seconds() - self.cpu_started) / elapsed
        steps = [
            {
                "step": index + 1,
                "users": min(users, (index + 1) * step_users),
                "rps": round(stats.requests / self.step_seconds, 1),
                "p50_ms": percentile(stats.durations_ms, 50),
                "p95_ms": percentile(stats.durations_ms, 95),
                "failures": stats.failures,
            }
            for index, stats in sorted(self.steps.items())
            # a last, partial step's rate would read as a fall in throughput
            if (index + 1) * self.step_seconds <= elapsed + 1
        ]
        return {
            "scenarios": {name: vars(tally) for name, tally in sorted(self.scenarios.items())},
            "generator": {
                "cpu_percent_mean": round(cpu_mean, 1),
                # The samples (every 2 s while running) miss start-up and the final
                # report, which the mean includes: a peak is never below the mean.
                "cpu_percent_peak": round(max([*self.cpu_samples, cpu_mean]), 1),
                "cpus_available": len(os.sched_getaffinity(0)),
                "seconds": round(elapsed, 1),
            },
            "steps": steps,
            "knee": find_knee(steps),
        }


def percentile(values: list[float], percent: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))], 1)


def find_knee(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first step that reached 90% of the best step's throughput: users added past
    it bought little more throughput, only queueing (compare the p95s). Robust to one
    noisy step, unlike "the first step that grew by less than 10%"."""
    if not steps:
        return None
    best = max(steps, key=lambda step: step["rps"])
    knee = next(step for step in steps if step["rps"] >= 0.9 * best["rps"])
    last = steps[-1]
    return {
        "users": knee["users"],
        "rps": knee["rps"],
        "p95_ms": knee["p95_ms"],
        "best_users": best["users"],
        "best_rps": best["rps"],
        "last_users": last["users"],
        "last_p95_ms": last["p95_ms"],
        "reached": knee["users"] < last["users"],
    }


def describe(summary: dict[str, Any]) -> list[str]:
    """The summary as lines for the console."""
    generator = summary["generator"]
    lines = [
        f"generator: Locust used {generator['cpu_percent_mean']}% of one CPU on average "
        f"(peak {generator['cpu_percent_peak']}%) of {generator['cpus_available']} "
        "available; CPU it takes is CPU the server under test did not get"
    ]
    for name, tally in summary["scenarios"].items():
        lines.append(
            f"scenario {name}: {tally['requests']} requests, {tally['failures']} unexpected "
            f"failures, {tally['rate_limited']} rate-limited (429) as expected"
        )
    if summary["steps"]:
        lines.append("step  users      rps   p50 ms   p95 ms  failures")
        for step in summary["steps"]:
            lines.append(
                f"{step['step']:>4} {step['users']:>6} {step['rps']:>8} "
                f"{step['p50_ms']:>8} {step['p95_ms']:>8} {step['failures']:>9}"
            )
        knee = summary["knee"]
        if knee["reached"]:
            lines.append(
                f"knee: about {knee['users']} users ({knee['rps']} req/s, p95 "
                f"{knee['p95_ms']} ms) already gave 90% of the best throughput "
                f"({knee['best_rps']} req/s at {knee['best_users']} users); more users "
                f"mostly queued (p95 {knee['last_p95_ms']} ms at {knee['last_users']})"
            )
        else:
            lines.append("knee: not reached; throughput still grew at the last step")
    return lines


def write_summary(prefix: str, summary: dict[str, Any]) -> None:
    import json

    Path(f"{prefix}_parity.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["steps"]:
        columns = list(summary["steps"][0])
        rows = [",".join(columns)]
        rows += [",".join(str(step[c]) for c in columns) for step in summary["steps"]]
        Path(f"{prefix}_steps.csv").write_text("\n".join(rows) + "\n")


# --- Prometheus ---------------------------------------------------------------------


class Exporter:
    """Client-side statistics as `locust_*` metrics, in a registry of their own (so no
    process_* or python_* series of the generator mix with the API's). One Locust
    process; a distributed run would need one exporter per worker."""

    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise SystemExit(
                "--prometheus-port needs prometheus_client: pip install prometheus-client"
            ) from None
        self.registry = CollectorRegistry()
        labels = ["scenario", "name", "method"]
        self.duration = Histogram(
            "locust_request_duration_seconds",
            "Request duration seen by the load generator: includes the time a request "
            "waited in the server's accept queue and in the network, which server-side "
            "metrics cannot see.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.responses = Counter(
            "locust_responses_total",
            "Responses received by the load generator, by status code (0: no response).",
            [*labels, "status_code"],
            registry=self.registry,
        )
        self.failures = Counter(
            "locust_request_failures_total",
            "Requests that failed their scenario's checks (expected 429s are not failures).",
            labels,
            registry=self.registry,
        )
        self.users = Gauge("locust_users", "Simulated users running.", registry=self.registry)
        self.cpu = Gauge(
            "locust_process_cpu_percent",
            "CPU used by the load generator process (100 = one core).",
            registry=self.registry,
        )

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)

    def record(
        self, scenario: str, name: str, method: str, status: int, failed: bool, seconds: float
    ) -> None:
        labels = {"scenario": scenario, "name": name, "method": method}
        self.duration.labels(**labels).observe(seconds)
        self.responses.labels(**labels, status_code=str(status)).inc()
        if failed:
            self.failures.labels(**labels).inc()
