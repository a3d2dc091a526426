"""Graceful shutdown and reload (app/graceful_server.py, app/lifecycle.py,
docs/shutdown.md), against real Gunicorn masters: the verification script under load,
and the single behaviours one by one (readiness during the delay, the cut-off at the
drain timeout)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.settings import Settings
from parity.harness.stack import GunicornProcess, NativeStack
from tests.helpers import run

Start = Callable[..., GunicornProcess]
PHASES = ["signal", "delay", "stop_accepting", "drain", "lifespan_shutdown", "exit"]
DEMO = {"DEMO_ENDPOINTS_ENABLED": "true"}
COMMAND = ["-m", "parity", "verify", "shutdown"]


def run_verification(native_stack: NativeStack, *args: str) -> tuple[int, dict[str, Any]]:
    """`parity verify shutdown --native --json ...` as a user runs
    it: on this session's Postgres server, with a database and Redis prefix of its own."""
    env = {**os.environ, **native_stack.app_env()}
    result = run(
        [sys.executable, *COMMAND, "--native", "--json", "--quiet", *args],
        env=env,
        timeout=240,
    )
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)


def phase_records(server: GunicornProcess) -> dict[int, list[dict[str, Any]]]:
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for record in server.log_records():
        if "shutdown_phase" in record:
            by_pid.setdefault(record["pid"], []).append(record)
    return by_pid


# --- under load, with the script --------------------------------------------------------------


@pytest.mark.gunicorn
@pytest.mark.slow
def test_sigterm_with_200_requests_in_flight_loses_none(native_stack: NativeStack) -> None:
    """1. 250 clients, half slow (2-3 s) requests, half keep-alive connections
    2. SIGTERM to the master once >= 200 requests are in flight
    -> every request in flight completes with 200; new connections are refused once the
    listener has closed (expected, counted apart); each worker logs the six phases in
    order with its lifespan shutdown completed; the master exits 0."""
    code, report = run_verification(native_stack, "--signal", "TERM", "--min-in-flight", "200")
    requests = report["requests"]
    assert requests["in_flight_at_signal"] >= 200
    assert requests["in_flight_at_signal_slow"] > 0
    assert requests["in_flight_at_signal_ok"] == requests["in_flight_at_signal"]
    assert requests["lost"] == 0, report["failure_examples"]
    assert report["exit_code"] == 0
    assert report["phases"]["in_order"], report["phases"]["problems"]
    for worker in report["phases"]["workers"].values():
        assert [p["phase"] for p in worker] == PHASES
        lifespan = next(p for p in worker if p["phase"] == "lifespan_shutdown")
        assert lifespan["outcome"] == "completed"
        assert next(p for p in worker if p["phase"] == "signal")["replacing_worker"] is False
    assert report["verdict"] == {"ok": True, "reasons": []}
    assert code == 0


@pytest.mark.gunicorn
@pytest.mark.slow
def test_sighup_under_steady_load_fails_and_refuses_nothing(native_stack: NativeStack) -> None:
    """1. steady load (120 clients, slow and fast, keep-alive and fresh)  2. SIGHUP
    -> the master keeps the socket: 0 failed, 0 refused; the old workers drain (phases in
    order, /ready kept up since the instance stays ready) and new workers answer."""
    code, report = run_verification(
        native_stack, "--signal", "HUP", "--clients", "120", "--min-in-flight", "80", "--after", "6"
    )
    requests = report["requests"]
    assert requests["failed"] == {}, report["failure_examples"]
    assert requests["refused"] == 0
    assert requests["in_flight_at_signal_ok"] == requests["in_flight_at_signal"] >= 80
    assert report["reload"]["new_workers_answer"], report["reload"]
    # The reload's gap is measured: new workers answer only once the app has imported.
    assert 0 < report["reload"]["new_workers_first_answered_after_s"] < 60
    assert report["phases"]["in_order"], report["phases"]["problems"]
    for worker in report["phases"]["workers"].values():
        assert next(p for p in worker if p["phase"] == "signal")["replacing_worker"] is True
    assert code == 0


# --- one behaviour at a time -------------------------------------------------------------------


@pytest.mark.gunicorn
def test_during_the_delay_ready_is_503_health_200_and_requests_are_served(gunicorn: Start) -> None:
    """1. SHUTDOWN_DELAY_SECONDS=3, one worker  2. SIGTERM
    -> at once /ready 503 (`not-ready`, shutting down) while /health stays 200; a new
    connection is still accepted and served, with `Connection: close`
    3. after the delay the listener closes and the master exits 0."""
    server = gunicorn(workers=1, env={**DEMO, "SHUTDOWN_DELAY_SECONDS": "3"})
    server.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(server.base_url + "/ready")
    health = httpx.get(server.base_url + "/health")
    served = httpx.get(server.base_url + "/api/v1/demo/slow", params={"ms": 100})
    assert ready.status_code == 503
    assert ready.json()["detail"] == "not ready: shutting down"
    assert health.status_code == 200
    assert served.status_code == 200
    assert served.headers["connection"] == "close"
    assert server.stop(timeout=30) == 0
    (phases,) = phase_records(server).values()
    assert [p["shutdown_phase"] for p in phases] == PHASES
    assert phases[1]["since_signal_seconds"] >= 3  # the delay ended 3 s after the signal


@pytest.mark.gunicorn
def test_a_request_longer_than_the_drain_timeout_is_cut_off_at_the_bound(gunicorn: Start) -> None:
    """1. SHUTDOWN_DRAIN_TIMEOUT_SECONDS=2  2. a request that takes 20 s  3. SIGTERM
    -> at the drain timeout the request is answered 503 `shutting-down` with `Connection:
    close` (not a hang, not a bare 500), the drain phase logs it as cut off, the lifespan
    shutdown still runs and the master exits 0, long before the 20 s are up."""
    server = gunicorn(workers=1, env={**DEMO, "SHUTDOWN_DRAIN_TIMEOUT_SECONDS": "2"})
    url = f"{server.base_url}/api/v1/demo/slow?ms=20000"
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(httpx.get, url, timeout=30)
        time.sleep(1.0)  # the request is in flight
        server.send_signal(signal.SIGTERM)
        answer = pending.result(timeout=30)
        elapsed = time.monotonic() - started
    assert answer.status_code == 503
    assert answer.json()["type"] == "urn:parity:problem:shutting-down"
    assert answer.headers["connection"] == "close"
    assert elapsed < 15, "the cut-off did not happen at the drain timeout"
    assert server.stop(timeout=30) == 0
    (phases,) = phase_records(server).values()
    drain = next(p for p in phases if p["shutdown_phase"] == "drain")
    lifespan = next(p for p in phases if p["shutdown_phase"] == "lifespan_shutdown")
    assert drain["cut_off"] == 1
    assert drain["level"] == "ERROR"
    assert lifespan["outcome"] == "completed"


# --- in process: the app's side -----------------------------------------------------------------


async def test_responses_say_connection_close_once_shutting_down(
    make_settings: Callable[..., Settings],
) -> None:
    """The app's half of the sequence, without a server: once the lifecycle says
    shutting down, /ready is 503 and every response carries `Connection: close`."""
    app = create_app(make_settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            before = await client.get("/health")
            app.state.lifecycle.begin_shutdown(replacing_worker=False)
            after = await client.get("/health")
            ready = await client.get("/ready")
    assert "connection" not in before.headers
    assert after.headers["connection"] == "close"
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"


async def test_a_replaced_worker_stays_ready(make_settings: Callable[..., Settings]) -> None:
    """HUP replaces workers while the master keeps listening: the instance is still
    ready, only the connections move (`Connection: close`)."""
    app = create_app(make_settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            app.state.lifecycle.begin_shutdown(replacing_worker=True)
            ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.headers["connection"] == "close"


async def test_demo_endpoint_is_404_unless_enabled(make_settings: Callable[..., Settings]) -> None:
    for enabled, expected in ((False, 404), (True, 200)):
        app = create_app(make_settings(DEMO_ENDPOINTS_ENABLED=enabled))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.get("/api/v1/demo/slow", params={"ms": 1})
                too_long = await client.get("/api/v1/demo/slow", params={"ms": 600_000})
        assert response.status_code == expected
        assert too_long.status_code == (422 if enabled else 404)
