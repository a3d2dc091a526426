"""A real Prometheus for scripts and tests, started natively on a free port with a
configuration derived from observability/prometheus/prometheus.yml, plus a small
client for its HTTP API (also usable against the compose stack's Prometheus).

    config = native_config(targets={"api": [server_address]}, interval=1.0)
    with NativePrometheus(config) as prom:
        prom.wait_for_scrape("api")
        prom.query("up")

"Derived" means: the same jobs, metric paths and rule files as the file compose uses;
only what cannot be the same on a developer machine changes — the targets (loopback
addresses instead of compose service names, static instead of DNS discovery), the
intervals (1 s instead of 15 s, so a test needs seconds, not minutes), and jobs
without a native counterpart are dropped (`drop_jobs`, named by the caller).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from parity.harness.repo import REPO_ROOT
from parity.harness.stack import StackError, free_port, stop_process

PROMETHEUS_DIR = REPO_ROOT / "observability" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"

NO_COLLECTOR = (
    "no OpenTelemetry Collector here (no Debian package: not run natively nor by "
    "compose.offline.yaml); checked against the full compose stack"
)

# Jobs of prometheus.yml that have no native counterpart -> why. --native drops them
# from its Prometheus, and reports every expression that selects one as skipped, with
# this reason.
NATIVE_DROPPED: dict[str, str] = {
    "otel-collector": NO_COLLECTOR,
    "spanmetrics": NO_COLLECTOR,
    "locust": "Locust runs only during a load test: tests/test_loadtest.py checks its panels",
    "lb": (
        "compose's load balancer (HAProxy); natively one Gunicorn and no proxy: "
        "checked by --compose, e.g. `--compose --only-job lb` (parity e2e)"
    ),
}
NATIVE_DROPPED_JOBS = tuple(NATIVE_DROPPED)


def binaries() -> tuple[str, str] | None:
    """Paths of `prometheus` and `promtool`, or None if either is missing."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    return (prometheus, promtool) if prometheus and promtool else None


def missing_reason() -> str:
    return (
        "prometheus/promtool not installed (Debian: apt-get install prometheus; "
        "CI installs it in .ci/run)"
    )


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    """Run `promtool ARGS` (e.g. "check", "config", "prometheus.yml") and capture it."""
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def native_config(
    targets: Mapping[str, Sequence[str]],
    *,
    interval: float = 1.0,
    drop_jobs: Sequence[str] = (),
    source: Path = PROMETHEUS_CONFIG,
) -> dict[str, Any]:
    """observability/prometheus/prometheus.yml with loopback targets.

    Every job of the source must be either in `targets` (job -> ["host:port", ...]) or
    in `drop_jobs`, so that a job added to the real config cannot silently go
    unchecked. Rule file globs are made absolute.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    seconds = f"{interval:g}s"
    config["global"].update(
        scrape_interval=seconds, evaluation_interval=seconds, scrape_timeout=seconds
    )
    config["rule_files"] = [str(source.parent / pattern) for pattern in config["rule_files"]]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    unknown = (set(targets) | set(drop_jobs)) - jobs
    unhandled = jobs - set(targets) - set(drop_jobs)
    if unknown or unhandled:
        raise StackError(
            f"jobs of {source.name}: {sorted(jobs)}; unknown: {sorted(unknown)}, "
            f"neither targeted nor dropped: {sorted(unhandled)}"
        )
    scrape_configs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in drop_jobs:
            continue
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
        scrape_configs.append(job)
    config["scrape_configs"] = scrape_configs
    return config


class PrometheusAPI:
    """The parts of Prometheus' HTTP API (v1) that the checks use."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, **params: Any) -> Any:
        response = self._http.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise StackError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def ready(self) -> bool:
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self._get("/api/v1/query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get(
            "/api/v1/query_range", query=expr, start=start, end=end, step=step
        )["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every group, with its health and last error."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return active

    def wait_for_scrape(self, job: str, after: float = 0.0, timeout: float = 30.0) -> None:
        """Wait until every target of `job` was scraped successfully after `after`
        (epoch seconds): then the data of everything before `after` is stored."""
        deadline = time.monotonic() + timeout
        state = "no target"
        while time.monotonic() < deadline:
            targets = [t for t in self.targets() if t["labels"].get("job") == job]
            if targets:
                state = "; ".join(
                    f"{t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}" for t in targets
                )
                if all(t["health"] == "up" and scraped_at(t) > after for t in targets):
                    return
            time.sleep(0.2)
        raise StackError(f"job {job!r} not scraped after {timeout}s: {state}")

    def wait_for_rule_evaluation(self, after: float, timeout: float = 30.0) -> None:
        """Wait until every rule group was evaluated after `after` (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            groups = self._get("/api/v1/rules")["groups"]
            if groups and all(evaluated_at(group) > after for group in groups):
                return
            time.sleep(0.2)
        raise StackError(f"rule groups not evaluated within {timeout}s")


def scraped_at(target: Mapping[str, Any]) -> float:
    return parse_rfc3339(target.get("lastScrape", ""))


def evaluated_at(group: Mapping[str, Any]) -> float:
    return parse_rfc3339(group.get("lastEvaluation", ""))


def parse_rfc3339(text: str) -> float:
    """Prometheus' timestamps ("2024-05-01T10:00:00.123456789Z") as epoch seconds;
    0 for the zero time it reports before the first scrape."""
    if not text or text.startswith("0001-"):
        return 0.0
    head, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + (float("0." + fraction[:6]) if fraction else 0.0)


class NativePrometheus(PrometheusAPI):
    """`prometheus` started on a free loopback port with `config`, in a temporary
    directory that is removed when it stops."""

    def __init__(self, config: Mapping[str, Any], *, port: int | None = None) -> None:
        if binaries() is None:
            raise StackError(missing_reason())
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.workdir = Path(tempfile.mkdtemp(prefix="parity-prometheus-"))
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.log_path = self.workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> NativePrometheus:
        check = promtool("check", "config", str(self.config_path))
        if check.returncode != 0:
            raise StackError(
                f"generated config rejected by promtool:\n{check.stdout}{check.stderr}"
            )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StackError(f"prometheus did not become ready:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=15)
        self.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NativePrometheus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
