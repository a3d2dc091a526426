"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.main import create_app
from app.settings import Settings
from parity.harness.repo import REPO_ROOT
from parity.harness.stack import StackError
from parity.harness.stack import wait_until_answers as harness_wait


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on an app built from `settings`, its lifespan running."""
    async with asgi_client(create_app(settings)) as client:
        yield client


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on `app` (e.g. one a test added a route to), its lifespan running."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def create_product(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {
        "sku": f"T-{uuid.uuid4().hex[:12]}",
        "name": "Test product",
        "price_cents": 1234,
        "stock": 10,
    }
    response = await client.post("/api/v1/products", json={**body, **fields})
    assert response.status_code == 201, response.text
    product: dict[str, Any] = response.json()
    return product


def create_product_sync(base_url: str, **fields: Any) -> dict[str, Any]:
    """`create_product` against a running server (a real Gunicorn)."""
    body = {
        "sku": f"T-{uuid.uuid4().hex[:12]}",
        "name": "Test product",
        "price_cents": 1234,
        "stock": 10,
    }
    response = httpx.post(f"{base_url}/api/v1/products", json={**body, **fields}, timeout=10)
    assert response.status_code == 201, response.text
    product: dict[str, Any] = response.json()
    return product


def pinned_version(lock: Path, package: str) -> str:
    """The version a requirements lock pins, e.g. "0.26.0" for prometheus-client."""
    found = re.search(rf"^{re.escape(package)}==([^\s;\\]+)", lock.read_text(), re.M)
    assert found, f"{lock.name} pins no {package}"
    return found.group(1)


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def sample_sum(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


# The benchmarks' load generator (Debian's wrk): tests that drive one skip without it
# (and fail under PARITY_STRICT_SKIPS=1).
needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)"
)


def run(
    command: Sequence[str],
    *,
    cwd: Path = REPO_ROOT,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `command` to its end, from the repository root unless `cwd`, with its output
    captured as text; bounded by `timeout`. `check`: raise when it fails (a step the
    test needs, not the behaviour under test)."""
    return subprocess.run(
        list(command), cwd=cwd, env=env, input=input, capture_output=True, text=True,
        timeout=timeout, check=check,
    )  # fmt: skip


def run_parity(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`parity <args>` from the repository root, as a user runs a command (this venv's
    Python, `-m parity`: the same entry point as the console script); output captured."""
    return run([sys.executable, "-m", "parity", *args], timeout=timeout)


def run_gunicorn(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`gunicorn app.main:app -c gunicorn.conf.py` with exactly `env`, for a start that
    must be refused (it returns when Gunicorn exits); output captured."""
    return run(
        [sys.executable, "-m", "gunicorn", "app.main:app", "-c", "gunicorn.conf.py"],
        env=env, timeout=timeout,
    )  # fmt: skip


def wait_until_answers(
    url: str, *, timeout: float, process: subprocess.Popen[Any] | None = None
) -> None:
    """Poll `url` until it answers 200 (the harness's loop); fail at once if `process`
    (the server) exits. A failure is the test's: AssertionError."""

    def exited() -> str | None:
        if process is None or process.poll() is None:
            return None
        return f"the server exited {process.returncode} before {url} answered"

    try:
        harness_wait(url, timeout=timeout, interval=0.3, gone=exited)
    except StackError as exc:
        raise AssertionError(str(exc)) from None


def stop_process_group(process: subprocess.Popen[Any]) -> None:
    """TERM to `process` and everything it started in its session (start_new_session):
    wait until every one of them is gone (a `make` or a reloader exits at once, the
    server it started drains), then KILL what is left."""
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
