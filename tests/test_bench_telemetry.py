"""scripts/bench_telemetry.py: runs, reports every variant, and the numbers add up."""

from __future__ import annotations

import json
import subprocess
import sys

from scripts.stack import REPO_ROOT


def test_bench_telemetry_reports_each_feature_as_json() -> None:
    """One short round -> five variants in order, bare first at ratio 1, every added cost
    measured against the bare route (timing itself is never asserted)."""
    result = subprocess.run(
        [
            sys.executable,
            "scripts/bench_telemetry.py",
            "--rounds",
            "1",
            "--requests",
            "200",
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = json.loads(result.stdout)["results"]
    assert rows[0]["variant"] == "bare route"
    assert len(rows) == 5
    assert rows[0]["throughput_vs_bare"] == 1.0
    for row in rows:
        assert row["cpu_us_per_request"] > 0
        added = row["cpu_us_per_request"] - rows[0]["cpu_us_per_request"]
        assert abs(row["added_us"] - added) <= 0.15
    assert "round 1/1" in result.stderr


def test_bench_telemetry_refuses_a_meaningless_run() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/bench_telemetry.py", "--requests", "5"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--requests" in result.stderr
