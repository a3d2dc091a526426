"""Metrics across Gunicorn workers: a real master with two Uvicorn workers, requests
spread over both, and `/metrics` scraped over HTTP (each scrape is answered by whichever
worker accepts it). The totals must be exact, whichever worker answers and whichever
workers have died since.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.samples import Sample

from parity.harness.stack import GunicornProcess, NativeStack, seed, start_gunicorn
from tests.helpers import parse_metrics, sample_sum

pytestmark = pytest.mark.gunicorn

Start = Callable[..., GunicornProcess]
PRODUCT_ROUTE = "/api/v1/products/{product_id}"
DURATION_COUNT = "http_server_request_duration_seconds_count"
READS = 200  # N of the exact-N test


def scrape(server: GunicornProcess) -> list[Sample]:
    response = httpx.get(server.base_url + "/metrics", headers={"Connection": "close"})
    assert response.status_code == 200
    return parse_metrics(response.text)


def product_reads(server: GunicornProcess) -> float:
    return sample_sum(scrape(server), DURATION_COUNT, http_route=PRODUCT_ROUTE)


def read_products(server: GunicornProcess, count: int, concurrency: int = 8) -> list[int]:
    """`count` product reads, each on a fresh connection (so the kernel spreads them
    over the workers' accept calls); returns the status codes (0: no answer)."""
    listing = httpx.get(f"{server.base_url}/api/v1/products", params={"limit": 20})
    ids = [item["id"] for item in listing.json()["items"]]

    def read(n: int) -> int:
        try:
            response = httpx.get(
                f"{server.base_url}/api/v1/products/{ids[n % len(ids)]}",
                headers={"Connection": "close"},
                # Generous: while a recycled worker's successor boots, requests wait in
                # the listen backlog; a client that gave up would still be counted.
                timeout=60,
            )
        except httpx.TransportError:
            return 0
        return response.status_code

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(read, range(count)))


def pids_that_served(server: GunicornProcess, route: str) -> Counter[int]:
    return Counter(
        record["pid"]
        for record in server.log_records()
        if record.get("logger") == "app.access" and record.get("route") == route
    )


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def seeded(native_stack: NativeStack) -> NativeStack:
    seed(native_stack.database_url, 20)
    return native_stack


def test_request_count_is_exact_across_workers_scrapes_and_a_worker_exit(
    gunicorn: Start, seeded: NativeStack
) -> None:
    """1. 200 product reads over fresh connections -> the access log shows both workers
    served some  2. /metrics scraped six times -> the route's count is exactly 200 every
    time (whichever worker answers), labelled with the template  3. TTOU: the master
    stops one worker -> still exactly 200; the dead worker's in-flight and pool gauges
    are gone, the exit is counted  4. TTIN: a new worker -> still 200, 3 starts."""
    server = gunicorn(workers=2)
    statuses = read_products(server, READS)
    assert statuses.count(200) == READS, Counter(statuses)
    served = pids_that_served(server, PRODUCT_ROUTE)
    assert len(served) == 2, f"one worker served everything: {served}"

    for _ in range(6):
        samples = scrape(server)
        assert sample_sum(samples, DURATION_COUNT, http_route=PRODUCT_ROUTE) == READS
        bucket = "http_server_request_duration_seconds_bucket"
        assert sample_sum(samples, bucket, http_route=PRODUCT_ROUTE, le="+Inf") == READS
        assert sample_sum(samples, "http_server_active_requests") <= 1  # the scrape itself
    samples = scrape(server)
    assert sample_sum(samples, "gunicorn_workers_started_total") == 2
    assert sample_sum(samples, "app_info", workers="2") == 1
    assert sample_sum(samples, "db_client_connection_max") == 2 * 10  # two pools of 5+5

    # 3. one worker stops for good
    server.send_signal(signal.SIGTTOU)
    wait_for(lambda: len(server.worker_pids()) == 1)
    wait_for(lambda: sample_sum(scrape(server), "gunicorn_workers_exited_total") == 1)
    samples = scrape(server)
    assert sample_sum(samples, DURATION_COUNT, http_route=PRODUCT_ROUTE) == READS
    assert sample_sum(samples, "db_client_connection_max") == 10, "dead worker's pool summed"
    assert sample_sum(samples, "http_server_active_requests") <= 1

    # 4. and a new one starts
    server.send_signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 2)
    wait_for(lambda: sample_sum(scrape(server), "gunicorn_workers_started_total") == 3)
    assert product_reads(server) == READS


def test_worker_recycling_by_max_requests_loses_no_counts(
    gunicorn: Start, seeded: NativeStack
) -> None:
    """GUNICORN_MAX_REQUESTS=30 (+ up to 15 jitter): each worker is replaced after 30-45
    requests. 1. 150 product reads -> several recycles  2. scrape -> the route's count
    equals the number of reads answered 200, although most workers that served them are
    dead. (A fresh connection accepted by a worker just as it stops is closed unanswered
    and never reaches the app: neither answered nor counted.)"""
    server = gunicorn(
        workers=2, env={"GUNICORN_MAX_REQUESTS": "30", "GUNICORN_MAX_REQUESTS_JITTER": "15"}
    )
    statuses = read_products(server, 150, concurrency=4)
    answered = statuses.count(200)
    assert answered >= 140, Counter(statuses)
    wait_for(lambda: len(server.worker_pids()) == 2)
    samples = scrape(server)
    assert sample_sum(samples, "gunicorn_workers_started_total") >= 4
    assert sample_sum(samples, DURATION_COUNT, http_route=PRODUCT_ROUTE) == answered
    assert len(pids_that_served(server, PRODUCT_ROUTE)) >= 3


def test_each_master_empties_locks_and_cleans_its_own_directory(
    gunicorn: Start, seeded: NativeStack, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR points at a directory holding a previous run's counts:
    1. start -> they are wiped (not summed into ours)  2. a second master on the same
    directory is refused with a message naming it  3. stop -> no file left behind.
    Without the variable: 4. a fresh directory of its own, removed at exit."""
    directory = tmp_path / "metrics"
    stale = _stale_counts(directory, pid=999_999, requests=1000)
    server = gunicorn(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert not stale.exists()
    read_products(server, 5)
    assert product_reads(server) == 5

    rival = start_gunicorn(
        {**seeded.app_env(), "PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=1
    )
    assert rival.process.wait(30) != 0
    rival.stop()
    assert "in use by another running Gunicorn master" in rival.log_text()
    assert product_reads(server) == 5, "the rival touched our files"

    assert server.stop() == 0
    assert sorted(p.name for p in directory.iterdir()) == []

    fresh = gunicorn(workers=2)
    [own_dir] = [
        Path(r["message"].rsplit(" ", 1)[1])
        for r in fresh.log_records()
        if r["message"].startswith("prometheus multiprocess directory:")
    ]
    assert own_dir.is_dir()
    assert own_dir != directory
    assert fresh.stop() == 0
    assert not own_dir.exists()


def _stale_counts(directory: Path, pid: int, requests: int) -> Path:
    """A histogram file as a worker of an earlier run would have left it: `requests`
    product reads in the 5 ms bucket. Checked to be counted when left in place."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    from app.telemetry.metrics import HTTP_REQUEST_DURATION

    directory.mkdir()
    path = directory / f"histogram_{pid}.db"
    stale = MmapedDict(str(path))
    key = mmap_key(
        "http_server_request_duration_seconds",
        "http_server_request_duration_seconds_bucket",
        ["http_request_method", "http_route", "http_response_status_code", "le"],
        ["GET", PRODUCT_ROUTE, "200", "0.005"],
        HTTP_REQUEST_DURATION._documentation,
    )
    stale.write_value(key, float(requests), 0.0)
    stale.close()
    assert path.stat().st_size > 0
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    labels = {"http_route": PRODUCT_ROUTE}
    assert (
        registry.get_sample_value(
            DURATION_COUNT,
            {**labels, "http_request_method": "GET", "http_response_status_code": "200"},
        )
        == requests
    )
    return path
