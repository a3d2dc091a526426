"""`make dev`: the API natively, one process that restarts by itself when a file under
app/ changes, against the same Postgres and Redis as `make run`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from parity.harness.repo import REPO_ROOT
from parity.harness.stack import delete_redis_prefix, drop_database, free_port
from tests.conftest import REDIS_URL, SERVER_URL, unique_name
from tests.helpers import stop_process_group, wait_until_answers

STARTED = re.compile(r"Started server process \[(\d+)\]")


def started_pids(log: Path) -> list[str]:
    return STARTED.findall(log.read_text(errors="replace"))


@pytest.mark.gunicorn
def test_make_dev_restarts_the_api_when_a_file_under_app_changes(tmp_path: Path) -> None:
    """`stack.py dev` (what `make dev` runs) serves the seeded catalogue; touching a
    module under app/ starts a new server process, which serves again."""
    port = free_port()
    database_url = SERVER_URL.rsplit("/", 1)[0] + f"/{unique_name('parity_test_dev')}"
    prefix = f"{unique_name('parity-test-dev')}:"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
           "REDIS_KEY_PREFIX": prefix}  # fmt: skip
    log = tmp_path / "dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "parity", "stack", "dev", "--products", "20",
             "--bind", f"127.0.0.1:{port}"],
            cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{base_url}/health", timeout=60)
        assert httpx.get(f"{base_url}/api/v1/products/20", timeout=5).status_code == 200
        first = started_pids(log)
        assert len(first) == 1, log.read_text()
        os.utime(REPO_ROOT / "app" / "demo.py")  # what an editor's save does to mtime
        deadline = time.monotonic() + 30
        while len(started_pids(log)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started_pids(log)[-1] != first[0], log.read_text()[-2000:]
        wait_until_answers(f"{base_url}/health", timeout=60)
    finally:
        try:
            stop_process_group(process)
        finally:
            delete_redis_prefix(REDIS_URL, prefix)
            drop_database(database_url)
