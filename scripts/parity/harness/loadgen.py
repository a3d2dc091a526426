"""Run the project's Locust scenarios headless and read back what they measured: the
one way scripts (`tune_workers.py`, `demo.py`, the benchmarks) and tests drive Locust.

    result = run_locust("http://127.0.0.1:8000", out_prefix=Path("results/x/run"),
                        tags=["mixed"], users=32, spawn_rate=32, seconds=30)
    result.rps, result.p95_ms, result.error_rate, result.generator_cpu_percent

Locust runs as a subprocess (`python -m locust`), never inside the caller: it
monkey-patches the standard library with gevent, which would break asyncio, pytest and
everything else in the calling process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.harness.repo import REPO_ROOT
from parity.harness.stack import stop_process

LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"
LOCUST_CONF = REPO_ROOT / "loadtest" / "locust.conf"


class LoadgenError(RuntimeError):
    """Locust did not run or left no statistics; the message has its output's tail."""


@dataclass
class LocustResult:
    """The `Aggregated` row of Locust's stats CSV plus the locustfile's own summary."""

    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    exit_code: int
    summary: dict[str, Any]
    rows: list[dict[str, str]] = field(repr=False)
    output: str = field(repr=False)
    out_prefix: Path = field(repr=False, default=Path())

    @property
    def html_report(self) -> Path:
        return Path(f"{self.out_prefix}.html")

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def generator_cpu_percent(self) -> float:
        return float(self.summary.get("generator", {}).get("cpu_percent_mean", 0.0))

    @property
    def scenarios(self) -> dict[str, dict[str, int]]:
        return dict(self.summary.get("scenarios", {}))

    def row(self, name: str, method: str | None = None) -> dict[str, str] | None:
        """The stats row of one request name (and method)."""
        for row in self.rows:
            if row["Name"] == name and (method is None or row["Type"] == method):
                return row
        return None


def locust_command(
    base_url: str,
    *,
    out_prefix: Path | None,
    tags: Sequence[str] = ("mixed",),
    users: int = 10,
    spawn_rate: float = 10,
    seconds: float = 30,
    extra_args: Sequence[str] = (),
) -> list[str]:
    command = [
        sys.executable, "-m", "locust",
        "--config", str(LOCUST_CONF),
        "--locustfile", str(LOCUSTFILE),
        "--headless", "--only-summary",
        "--host", base_url,
        "--users", str(users),
        "--spawn-rate", str(spawn_rate),
        "--run-time", f"{max(1, round(seconds))}s",
        "--stop-timeout", "5",
        "--tags", *tags,
    ]  # fmt: skip
    if out_prefix is not None:
        command += ["--csv", str(out_prefix), "--html", f"{out_prefix}.html"]
    return command + list(extra_args)


def run_locust(
    base_url: str,
    *,
    out_prefix: Path,
    tags: Sequence[str] = ("mixed",),
    users: int = 10,
    spawn_rate: float = 10,
    seconds: float = 30,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> LocustResult:
    """Run Locust headless for `seconds` and parse what it wrote next to `out_prefix`.
    Failures in the run are data (`failures`, `exit_code`), not exceptions; a Locust that
    could not run at all raises LoadgenError. Ctrl-C stops Locust before it propagates."""
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    command = locust_command(
        base_url,
        out_prefix=out_prefix,
        tags=tags,
        users=users,
        spawn_rate=spawn_rate,
        seconds=seconds,
        extra_args=extra_args,
    )
    # Its own session: a Ctrl-C in the terminal reaches the caller, which stops Locust
    # in order instead of both racing to exit.
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=locust_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout or seconds + 60)
    except BaseException:
        stop_locust(process)
        raise
    return read_result(out_prefix, process.returncode, output)


def locust_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    # The API's multiprocess directory must not leak into Locust: prometheus_client
    # would write the generator's metrics into the server's files.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    return env


def stop_locust(process: subprocess.Popen[Any]) -> None:
    """SIGTERM (Locust writes its reports and exits), SIGKILL after 10 s."""
    stop_process(process, timeout=10)


def read_result(out_prefix: Path, exit_code: int, output: str) -> LocustResult:
    stats_path = Path(f"{out_prefix}_stats.csv")
    if not stats_path.exists():
        tail = "\n".join(output.splitlines()[-20:])
        raise LoadgenError(f"Locust exited with {exit_code} and wrote no statistics:\n{tail}")
    with stats_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    total = next((row for row in rows if row["Name"] == "Aggregated"), None)
    if total is None or not int(total["Request Count"]):
        tail = "\n".join(output.splitlines()[-20:])
        raise LoadgenError(f"Locust sent no request (exit code {exit_code}):\n{tail}")
    summary_path = Path(f"{out_prefix}_parity.json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return LocustResult(
        requests=int(total["Request Count"]),
        failures=int(total["Failure Count"]),
        rps=float(total["Requests/s"]),
        p50_ms=_number(total["50%"]),
        p95_ms=_number(total["95%"]),
        p99_ms=_number(total["99%"]),
        exit_code=exit_code,
        summary=summary,
        rows=[row for row in rows if row["Name"] != "Aggregated"],
        output=output,
        out_prefix=out_prefix,
    )


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "N/A" when nothing was recorded
        return 0.0
