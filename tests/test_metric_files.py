"""Dead workers' multiprocess metric files are compacted (issue 18): before, 50 worker
recycles left 113 files and a scrape read them all (20 ms, growing with each recycle).
Now the master sums a dead worker's counters and histograms into one archive per type
and deletes its files; totals stay exact and the file count stays bounded.

The merge uses prometheus_client's own file format (a private API): these tests write
files the way workers do (real prometheus_client in multiprocess mode, in child
processes) and read them back the way a scrape does, so a format change fails here."""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.samples import Sample

from app.telemetry.metric_files import (
    LOCK_NAME,
    PROMETHEUS_CLIENT_CHECKED,
    LockedMultiProcessCollector,
    compact_dead_workers,
)
from parity.harness.stack import GunicornProcess
from tests.helpers import parse_metrics, sample_sum

# One "worker": counts `jobs` jobs of each kind, observes `jobs` latencies, holds a
# livesum gauge, then exits (its pid is then dead).
WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import Counter, Gauge, Histogram
    jobs = int(sys.argv[1])
    done = Counter("jobs_total", "Jobs done.", ["kind"])
    latency = Histogram("job_seconds", "Job latency.", buckets=(0.1, 1.0))
    busy = Gauge("busy_workers", "Workers busy now.", multiprocess_mode="livesum")
    busy.inc()
    for n in range(jobs):
        done.labels("read" if n % 2 else "write").inc()
        latency.observe(0.05 if n % 3 else 0.5)
    """
)


def run_worker(directory: Path, jobs: int) -> int:
    """Runs one worker process to completion; returns its (now dead) pid."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(jobs)], env=env)
    assert process.wait(30) == 0
    return process.pid


def scrape(directory: Path) -> list[Sample]:
    registry = CollectorRegistry(auto_describe=False)
    LockedMultiProcessCollector(registry, str(directory))
    return parse_metrics(generate_latest(registry).decode())


def totals(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


def db_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.db"))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path


def test_the_private_file_format_was_checked_for_the_installed_prometheus_client() -> None:
    """app/telemetry/metric_files.py reads and writes prometheus_client's files with its
    MmapedDict, which is not a public API: after an upgrade, check it again (the tests
    below prove the round trip) and update PROMETHEUS_CLIENT_CHECKED."""
    assert importlib.metadata.version("prometheus_client") == PROMETHEUS_CLIENT_CHECKED


def test_compaction_keeps_every_total_and_leaves_one_file_per_type(directory: Path) -> None:
    """1. three workers run and exit (7, 10 and 4 jobs)  2. the master compacts
    -> the scrape is the same as before, sample by sample, from 2 files instead of 9
    (the dead workers' livesum gauge gone, as mark_process_dead does)."""
    for jobs in (7, 10, 4):
        run_worker(directory, jobs)
    before = totals(scrape(directory))
    assert len(db_files(directory)) == 9
    assert compact_dead_workers(directory, live_pids=[]) == 9
    assert db_files(directory) == ["counter_archive.db", "histogram_archive.db"]
    after = totals(scrape(directory))
    assert after == {k: v for k, v in before.items() if k[0] != "busy_workers"}
    assert after[("jobs_total", (("kind", "write"),))] == 4 + 5 + 2
    assert after[("job_seconds_count", ())] == 21


def test_later_workers_are_added_to_the_archive(directory: Path) -> None:
    """Compacting after every exit, 20 times: the counts add up exactly, the files do
    not pile up."""
    for _ in range(20):
        run_worker(directory, 3)
        compact_dead_workers(directory, live_pids=[])
        assert len(db_files(directory)) == 2
    samples = scrape(directory)
    assert sample_sum(samples, "jobs_total") == 60
    assert sample_sum(samples, "job_seconds_count") == 60


def test_live_workers_files_are_left_alone(directory: Path) -> None:
    dead = run_worker(directory, 2)
    alive = run_worker(directory, 5)  # exited, but the master still counts it a worker
    compact_dead_workers(directory, live_pids=[alive])
    files = db_files(directory)
    assert f"counter_{alive}.db" in files
    assert f"gauge_livesum_{alive}.db" in files
    assert not [name for name in files if str(dead) in name]
    assert sample_sum(scrape(directory), "jobs_total") == 7


@pytest.fixture
def scrape_in_progress(directory: Path) -> Iterator[Callable[[], None]]:
    """Holds the lock as a scrape does (shared) until the returned function is called."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    closed = False

    def finish() -> None:
        nonlocal closed
        if not closed:
            os.close(fd)
            closed = True

    yield finish
    finish()


def test_the_master_never_merges_under_a_scrape(
    directory: Path, scrape_in_progress: Callable[[], None]
) -> None:
    """A scrape reading the files (the shared lock held)  -> the master gives up after a
    second and changes nothing; the next exit, with no scrape running, compacts."""
    run_worker(directory, 4)
    files = db_files(directory)
    assert compact_dead_workers(directory, live_pids=[]) == 0
    assert db_files(directory) == files
    scrape_in_progress()
    assert compact_dead_workers(directory, live_pids=[]) == len(files)
    assert sample_sum(scrape(directory), "jobs_total") == 4


RECYCLES = 12
DURATION_COUNT = "http_server_request_duration_seconds_count"


@pytest.mark.gunicorn
def test_recycled_workers_leave_exact_counts_in_a_bounded_number_of_files(
    gunicorn: Callable[..., GunicornProcess], tmp_path: Path
) -> None:
    """1. Gunicorn, 2 workers, each recycled after 10 requests
    2. /health, 5 at a time, until 12 workers have been replaced
    -> every one counted exactly once, and the directory holds the live workers'
    files, the master's and the archives: at most 12, not 2 more per recycle (50
    recycles left 113 files before)."""
    directory = tmp_path / "metrics"
    server = gunicorn(
        workers=2,
        env={
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "GUNICORN_MAX_REQUESTS": "10",
            "GUNICORN_MAX_REQUESTS_JITTER": "0",
        },
    )
    health_checks = 0
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        while True:
            samples = parse_metrics(client.get("/metrics").text)
            if sample_sum(samples, "gunicorn_workers_started_total") >= 2 + RECYCLES:
                break
            for _ in range(5):
                assert client.get("/health").status_code == 200
                health_checks += 1
        files = db_files(directory)
    counted = sample_sum(samples, DURATION_COUNT, http_route="/health")
    assert counted == health_checks
    # Per live worker: counter, histogram, two livesum/livemax gauges; the master's
    # counter; the two archives (one file more per worker in the middle of a recycle).
    assert len(files) <= 2 * 4 + 1 + 2 + 2, files
    assert {"counter_archive.db", "histogram_archive.db"} <= set(files)
