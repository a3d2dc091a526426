"""parity bench orders: it runs end to end with a tiny duration and writes its
table, report and plot; its bookkeeping (medians, the ratio) is checked on made-up
samples. No timing is asserted: figures on a shared 2-core machine prove nothing here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from parity.commands import bench_orders
from parity.commands.bench_orders import ROUTES, Sample, markdown, summarise
from parity.harness.stack import StackError
from tests.helpers import needs_wrk, run_parity


def _pgbench_found() -> bool:
    try:
        bench_orders.pgbench_binary()
    except StackError:
        return False
    return True


needs_pgbench = pytest.mark.skipif(not _pgbench_found(), reason="pgbench not installed")


@pytest.mark.gunicorn
@pytest.mark.slow
@needs_wrk
@needs_pgbench
def test_bench_orders_runs_and_writes_its_table_report_and_plot(tmp_path: Path) -> None:
    """1 round of 1 s at 1 connection: every load measured, a ratio per route, no
    failed transaction or non-2xx answer, the Markdown table and a valid PNG."""
    process = run_parity(
        "bench", "orders", "--rounds", "1", "--duration", "1", "--connections", "1",
        "--products", "300", "--out", str(tmp_path), "--json",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout)
    assert result["summary"]["errors"] == 0
    row = result["summary"]["by_connections"]["1"]
    for load in bench_orders.loads():
        assert row[load]["per_second"] > 0
        assert row[load]["p50_ms"] > 0
    assert set(row["ratio"]) == set(ROUTES)
    assert all(ratio > 0 for ratio in row["ratio"].values())
    report = (tmp_path / "report.md").read_text()
    assert "| connections | load | p50 / p99 | per second | route p50 ÷ pgbench p50 |" in report
    assert "Command: `.venv/bin/parity bench orders --rounds 1" in report
    assert json.loads((tmp_path / "report.json").read_text())["summary"] == result["summary"]
    with Image.open(tmp_path / "orders.png") as image:
        image.verify()
    assert "round 1/1 c=1" in process.stderr


def test_summary_takes_medians_and_divides_by_the_current_sql() -> None:
    reference = bench_orders.reference()
    samples = []
    for round_, (sql, route) in enumerate([(1.0, 4.0), (2.0, 5.0), (1.5, 9.0)], 1):
        for load in bench_orders.loads():
            p50 = route if load in ROUTES else sql
            samples.append(Sample(load, 4, round_, 100.0 * round_, p50, p50 * 2, 0))
    summary = summarise(samples, [4])
    row = summary["by_connections"]["4"]
    assert summary["reference"] == reference
    assert row[reference]["p50_ms"] == 1.5
    assert row["route, with key"]["p50_ms"] == 5.0
    assert row["ratio"] == {"route, with key": 3.33, "route, no key": 3.33}
    assert row["route, no key"]["per_second"] == 200.0
    result = {
        "summary": summary,
        "settings": {"rounds": 3, "duration_seconds": 5, "workers": 2, "products": 1000},
        "machine": {
            "cpus": 2, "cpu_model": "x", "os": "y", "python": "3", "redis": "7",
            "load_average": [1.0, 1.0, 1.0],
        },
    }  # fmt: skip
    table = markdown(result, ".venv/bin/parity bench orders")
    assert "| 4 | route, with key | 5.00 / 10.00 ms | 200 | **3.33×** |" in table
    assert "3.3× at 4 connections" in table


def test_bad_connection_counts_are_refused_with_the_value() -> None:
    result = run_parity("bench", "orders", "--connections", "1,x")
    assert result.returncode == 2
    assert "'1,x' is not a list" in result.stderr
