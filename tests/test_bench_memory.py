"""parity bench memory runs end to end with tiny settings and writes its table,
report and plot, in both modes. No timing or memory figure is asserted: on a shared
machine they prove nothing. The comparison mode runs with this venv's own Python only
(`--python current`): CI machines need not have other interpreters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from parity.commands.bench_memory import growth, recommend, slope_per_100k, to_mib
from tests.helpers import needs_wrk, run_parity


@pytest.mark.gunicorn
@pytest.mark.slow
@needs_wrk
def test_memory_run_writes_its_table_report_and_plot(tmp_path: Path) -> None:
    process = run_parity(
        "bench", "memory", "--requests", "300", "--warmup", "1", "--chunks", "2",
        "--workers", "1", "--connections", "4", "--out", str(tmp_path),
        "--plot", str(tmp_path / "memory.png"),
        timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    assert "| RSS (MiB) | master |" in process.stdout
    assert "**recommended limit**" in process.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    summary = result["summary"]
    assert result["mode"] == "memory"
    assert summary["errors"] == 0
    assert summary["requests"] >= 300
    assert len(summary["after_load"]["workers"]) == 1
    assert summary["after_load"]["master"]["rss"] > 0
    assert summary["ready_seconds"] > 0
    assert summary["recommended"]["limit_mib"] > 0
    assert len(result["series"]) >= 2  # after the warm-up, then after each chunk
    with Image.open(tmp_path / "memory.png") as image:
        image.verify()


@pytest.mark.gunicorn
@pytest.mark.slow
@needs_wrk
def test_python_comparison_runs_with_this_interpreter_only(tmp_path: Path) -> None:
    process = run_parity(
        "bench", "memory", "--compare", "--python", "current", "--rounds", "1",
        "--duration", "1", "--starts", "1", "--workers", "1", "--connections", "4",
        "--out", str(tmp_path), "--plot", str(tmp_path / "python.png"), "--json",
        timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout)
    assert result["mode"] == "compare"
    assert result["summary"]["errors"] == 0
    (entry,) = result["summary"]["versions"].values()
    assert entry["installed"]
    assert entry["full"]["requests_per_second"] > 0
    assert entry["bare"]["cpu_us_per_request"] > 0
    assert entry["full"]["ratio_to_baseline"] == 1.0
    assert (tmp_path / "result.json").exists()
    with Image.open(tmp_path / "python.png") as image:
        image.verify()


def test_growth_is_the_slope_over_the_second_half() -> None:
    assert slope_per_100k([(0, 100.0), (100_000, 101.0), (200_000, 102.0)]) == 1.0
    assert slope_per_100k([(5, 100.0)]) == 0.0

    def point(requests: int, worker: float) -> dict:
        return {
            "requests": requests,
            "master": {"rss": 50.0},
            "workers": {"7": {"rss": worker}},
        }

    # Fast growth while warming up, then flat: the second half shows no leak.
    series = [point(0, 90), point(100_000, 99), point(200_000, 100), point(400_000, 100)]
    assert growth(series)["worker_mean"] == 0.0
    leaking = [point(n * 100_000, 100 + 2 * n) for n in range(5)]
    assert growth(leaking)["worker_max"] == 2.0


def test_recommended_limit_adds_growth_until_recycling_and_headroom() -> None:
    flat = recommend(
        master=50, worker_peak=100, growth_per_100k=0, workers=2, recycle_after=110_000
    )
    assert flat["need_mib"] == 250
    assert flat["limit_mib"] % 64 == 0
    assert flat["limit_mib"] >= 250 * 1.5
    leaking = recommend(50, 100, 10, 2, 110_000)
    assert leaking["per_worker_mib"] == 111


def test_memory_quantities_of_docker_and_kubernetes() -> None:
    assert to_mib("512M") == 512
    assert to_mib("512Mi") == 512
    assert to_mib("1Gi") == 1024


def test_bad_arguments_name_the_value() -> None:
    process = run_parity("bench", "memory", "--python", "3.11.7", "--python", "3.12.1")
    assert process.returncode == 2
    assert "one version without --compare" in process.stderr
    process = run_parity("bench", "memory", "--requests", "0")
    assert process.returncode == 2
    assert "argument --requests: '0' must be at least 1" in process.stderr
