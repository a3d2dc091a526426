"""The real thing: `gunicorn app.main:app -c gunicorn.conf.py` with 2 Uvicorn workers,
talked to over HTTP on a free port."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from parity.commands.stack import serving_line
from parity.harness.stack import (
    GunicornProcess,
    NativeStack,
    drop_database,
    ensure_database,
    migrate,
    seed,
)
from tests.conftest import unique_name

pytestmark = pytest.mark.gunicorn

Start = Callable[..., GunicornProcess]


def test_two_workers_serve_seeded_products_and_cache_them(
    gunicorn: Start, native_stack: NativeStack
) -> None:
    seed(native_stack.database_url, 50)
    server = gunicorn(workers=2)
    assert len(server.worker_pids()) == 2
    with httpx.Client(base_url=server.base_url) as client:
        product_id = client.get("/api/v1/products", params={"limit": 1}).json()["items"][0]["id"]
        client.patch(f"/api/v1/products/{product_id}", json={})  # no-op; entry may be cached
        first = client.get(f"/api/v1/products/{product_id}")
        second = client.get(f"/api/v1/products/{product_id}")
    assert first.status_code == second.status_code == 200
    assert second.headers["x-cache"] == "HIT"
    assert first.json() == second.json()


def test_every_log_line_is_json_with_level_logger_and_pid(gunicorn: Start) -> None:
    server = gunicorn(workers=2)
    httpx.get(server.base_url + "/ready")
    server.stop()
    lines = server.log_text().splitlines()
    records = server.log_records()
    assert lines
    assert len(records) == len(lines), "a log line is not JSON"
    assert all({"time", "level", "logger", "message", "pid"} <= record.keys() for record in records)
    ready_pids = {r["pid"] for r in records if r["message"].startswith("worker ready to serve")}
    assert len(ready_pids) == 2
    assert any(r["message"].startswith("Listening at:") for r in records)


def test_server_boots_without_its_database_and_becomes_ready_when_it_appears(
    gunicorn: Start, native_stack: NativeStack
) -> None:
    """1. the database does not exist  2. Gunicorn starts  -> the master and both workers
    stay up, /health 200, /ready 503  3. the database is created and migrated
    -> /ready turns 200 with no restart."""
    missing = native_stack.database_url.rsplit("/", 1)[0] + "/" + unique_name("parity_late")
    server = gunicorn(workers=2, env={"DATABASE_URL": missing}, ready_path="/health")
    try:
        workers = sorted(server.worker_pids())
        assert httpx.get(server.base_url + "/health").status_code == 200
        not_ready = httpx.get(server.base_url + "/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["database"]["status"] == "error"

        ensure_database(missing)
        migrate(missing)
        server.wait_ready(timeout=15)
        assert httpx.get(server.base_url + "/api/v1/products").status_code == 200
        assert sorted(server.worker_pids()) == workers, "workers were restarted"
        assert server.process.poll() is None
    finally:
        server.stop()
        drop_database(missing)


def test_sigterm_stops_the_master_cleanly(gunicorn: Start) -> None:
    server = gunicorn(workers=2)
    started = time.monotonic()
    assert server.stop(timeout=30) == 0
    assert time.monotonic() - started < 30
    messages = [r["message"] for r in server.log_records()]
    assert any(m.startswith("Shutting down: Master") for m in messages)


def test_make_run_tells_a_person_where_to_look_before_the_json_logs() -> None:
    """`make run` at a terminal: one plain line with the URLs a person opens (a 0.0.0.0
    bind shown as 127.0.0.1), and how to get plain log lines."""
    line = serving_line("0.0.0.0:8000")
    for url in ("/docs", "/metrics", "/ready"):
        assert f"http://127.0.0.1:8000{url}" in line
    assert "LOG_JSON=false" in line
    assert serving_line(None).startswith("serving on http://127.0.0.1:8000:")
