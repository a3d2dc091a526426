"""parity bench telemetry: runs, reports every variant, and the numbers add up."""

from __future__ import annotations

import json

from tests.helpers import run_parity


def test_bench_telemetry_reports_each_feature_as_json() -> None:
    """One short round -> six variants in order, bare first at ratio 1, every added cost
    measured against the bare route (timing itself is never asserted)."""
    result = run_parity(
        "bench", "telemetry", "--rounds", "1", "--requests", "200", "--json", timeout=120
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    assert rows[0]["variant"] == "bare route"
    assert len(rows) == 6
    assert rows[0]["throughput_vs_bare"] == 1.0
    for row in rows:
        assert row["cpu_us_per_request"] > 0
        added = row["cpu_us_per_request"] - rows[0]["cpu_us_per_request"]
        assert abs(row["added_us"] - added) <= 0.15
    assert "round 1/1" in result.stderr


def test_bench_telemetry_refuses_a_meaningless_run() -> None:
    result = run_parity("bench", "telemetry", "--requests", "5", timeout=60)
    assert result.returncode == 2
    assert "--requests" in result.stderr
