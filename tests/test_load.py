"""The one load driver (parity.harness.load): bounded, counted per route and status, in
phases with their outage hooks. Against a real Gunicorn, as the commands use it."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from parity.harness.load import (
    REFUSED,
    Load,
    Phase,
    PhaseRun,
    Request,
    cycle,
    run_fresh_phases,
    run_phases,
)
from parity.harness.stack import GunicornProcess, free_port

pytestmark = pytest.mark.gunicorn

HEALTH = Request("health", "GET", "/health")
LIST = Request("list", "GET", "/api/v1/products", {"params": {"limit": 2}})
DEMO = {"DEMO_ENDPOINTS_ENABLED": "true"}


def test_a_budget_is_spent_exactly_and_then_the_clients_stop(
    gunicorn: Callable[..., GunicornProcess],
) -> None:
    server = gunicorn(workers=1)
    load = Load(server.base_url, cycle([HEALTH, LIST]), concurrency=3, max_requests=25)
    with load:
        load.wait(60)  # returns as soon as the budget is spent
    assert len(load.samples) == 25
    counts = load.counts()
    assert set(counts) == {("GET", "health", 200), ("GET", "list", 200)}
    assert sum(counts.values()) == 25


def test_phases_run_their_hooks_in_order_and_keep_their_own_samples(
    gunicorn: Callable[..., GunicornProcess],
) -> None:
    server = gunicorn(workers=1)
    events: list[str] = []
    phases = [
        Phase("one", 0.5, before=lambda: events.append("one: before")),
        Phase(
            "two",
            0.5,
            before=lambda: events.append("two: before"),
            settle=lambda: events.append("two: settle"),
            after=lambda: events.append("two: after"),
        ),
    ]
    with Load(server.base_url, cycle([HEALTH]), concurrency=2) as load:
        runs = run_phases(load, phases, done=lambda run: events.append(f"{run.name}: done"))
    assert events == ["one: before", "one: done", "two: before", "two: settle", "two: after",
                      "two: done"]  # fmt: skip
    assert [run.name for run in runs] == ["one", "two"]
    for run in runs:
        assert run.samples, f"phase {run.name} saw no request"
        assert all(run.start <= s.started < run.end for s in run.samples)
    assert runs[0].end <= runs[1].start


def test_fresh_phases_have_their_own_clients_and_count_every_request(
    gunicorn: Callable[..., GunicornProcess],
) -> None:
    server = gunicorn(workers=1)
    clients: list[int] = []

    def headers(client: int) -> dict[str, str]:
        clients.append(client)
        return {"X-Client": str(client)}

    runs: list[PhaseRun] = run_fresh_phases(
        server.base_url,
        cycle([HEALTH]),
        [
            Phase("a", 30, concurrency=2, max_requests=10),
            Phase("b", 30, concurrency=5, max_requests=7),
        ],
        client_headers=headers,
    )
    assert [len(run.samples) for run in runs] == [10, 7]  # budgets end them, not seconds
    assert all(s.status == 200 for run in runs for s in run.samples)
    assert sorted(clients) == [0, 0, 1, 1, 2, 3, 4]


def test_no_answer_is_a_sample_with_status_0_and_its_reason() -> None:
    load = Load(f"http://127.0.0.1:{free_port()}", cycle([HEALTH]), max_requests=3, timeout=2)
    with load:
        load.wait(30)
    assert len(load.samples) == 3
    for sample in load.samples:
        assert sample.status == 0
        assert sample.failed
        assert (sample.error or "").startswith("ConnectError")


def test_a_closed_port_is_refused_and_the_client_backs_off() -> None:
    load = Load(f"http://127.0.0.1:{free_port()}", cycle([HEALTH]), concurrency=1,
                max_requests=3, refused_backoff=0.3)  # fmt: skip
    with load:
        load.wait(30)
    assert [s.reason for s in load.samples] == [REFUSED] * 3
    assert all(s.not_accepted and s.sent is None for s in load.samples)
    assert all((s.error or "").endswith("[ECONNREFUSED]") for s in load.samples)
    first, _, last = load.samples
    assert last.started - first.started >= 0.6  # two back-offs between three attempts


def test_fresh_clients_connect_for_every_request_the_others_keep_theirs(
    gunicorn: Callable[..., GunicornProcess],
) -> None:
    server = gunicorn(workers=1)
    load = Load(server.base_url, cycle([HEALTH]), concurrency=4, fresh_clients=2,
                max_requests=40)  # fmt: skip
    with load:
        load.wait(60)
    fresh = [s for s in load.samples if s.fresh]
    kept_alive = [s for s in load.samples if not s.fresh]
    assert fresh
    assert kept_alive
    assert all(s.new_connection for s in fresh)
    assert sum(s.new_connection for s in kept_alive) == 2  # one per keep-alive client
    for sample in load.samples:
        assert sample.sent is not None
        assert sample.started <= sample.sent <= sample.ended


def test_in_flight_shows_the_requests_sent_and_not_answered_yet(
    gunicorn: Callable[..., GunicornProcess],
) -> None:
    server = gunicorn(workers=1, env=DEMO)
    slow = Request("slow", "GET", "/api/v1/demo/slow", {"params": {"ms": 1500}})
    load = Load(server.base_url, cycle([slow]), concurrency=3, max_requests=3)
    with load:
        deadline = time.monotonic() + 1.2
        while len(load.in_flight()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert load.in_flight() == [slow] * 3
        assert not load.samples  # none answered yet
        load.wait(30)
    assert load.in_flight() == []
    assert load.pending() == 0
    assert [s.status for s in load.samples] == [200] * 3


def test_a_request_keeps_what_it_reads_from_its_answer(
    gunicorn: Callable[..., GunicornProcess],
) -> None:
    server = gunicorn(workers=2, env=DEMO)

    def pid(response: httpx.Response) -> int:
        return int(response.json()["pid"])

    answered_by = Request("pid", "GET", "/api/v1/demo/slow", {"params": {"ms": 0}}, keep=pid)
    load = Load(server.base_url, cycle([answered_by, HEALTH]), concurrency=2, max_requests=10)
    with load:
        load.wait(30)
    kept = {s.label: s.kept for s in load.samples}
    assert kept["pid"] in server.worker_pids()
    assert kept["health"] is None  # no `keep`: nothing kept
