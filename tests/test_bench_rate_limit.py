"""The benchmark script's bookkeeping (the measurement itself is a script, not a test:
timings on a shared 2-core machine prove nothing in CI)."""

from __future__ import annotations

from pathlib import Path

from parity.commands import bench_rate_limit
from parity.commands.bench_rate_limit import Sample, summarise, write_docs
from tests.helpers import run_parity


def test_write_docs_replaces_only_its_own_section(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Locust\n\nothers' numbers\n")
    write_docs("first run", path=docs)
    write_docs("second run", path=docs)
    text = docs.read_text()
    assert "others' numbers" in text
    assert "first run" not in text
    assert text.count("second run") == 1
    assert text.count("## Rate limiter overhead") == 1


def test_summary_pairs_rounds_and_takes_medians() -> None:
    def sample(path: str, server: str, round_: int, measure: str, rps: float, p50: float):
        return Sample(path, server, round_, measure, rps, p50, p50 * 3, 0, 0)

    samples = []
    for path in bench_rate_limit.PATHS:
        for round_, (on, off) in enumerate([(0.30, 0.10), (0.50, 0.20), (0.40, 0.10)], 1):
            samples.append(sample(path, "on", round_, "latency", 1000, on))
            samples.append(sample(path, "off", round_, "latency", 3000, off))
            samples.append(sample(path, "on", round_, "throughput", 500 * round_, 5))
            samples.append(sample(path, "off", round_, "throughput", 1000 * round_, 2))
    route = summarise(samples)["summary"]["routes"]["/health"]
    assert route["latency_p50_ms"] == {"on": 0.4, "off": 0.1}
    assert route["added_p50_ms"] == 0.3  # median of 0.2, 0.3, 0.3
    assert route["throughput_ratio"] == 0.5


def test_help_describes_the_run() -> None:
    result = run_parity("bench", "rate-limit", "--help")
    assert result.returncode == 0, result.stderr
    assert "--rounds" in result.stdout
    assert "limiter on and off" in result.stdout
