"""API fuzzing: schemathesis generates requests from our OpenAPI document (positive and
negative, every operation, stateful sequences through the links) and runs every check
against a real Gunicorn. Configuration: schemathesis.toml (deterministic, so a CI run
is reproducible and bounded)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from parity.harness.repo import REPO_ROOT
from parity.harness.stack import GunicornProcess, NativeStack, seed
from tests.helpers import run

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

MIN_REQUESTS = 1000


def operation_of(path: str, operations: set[str]) -> str | None:
    """The path template (`/api/v1/products/{product_id}`) a concrete path belongs to."""
    parts = path.rstrip("/").split("/")
    for template in operations:
        pieces = template.split("/")
        if len(pieces) == len(parts) and all(
            p.startswith("{") or p == q for p, q in zip(pieces, parts, strict=True)
        ):
            return template
    return None


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    gunicorn: Callable[..., GunicornProcess], native_stack: NativeStack, tmp_path: Path
) -> None:
    """1. Gunicorn with 2 workers, 50 products  2. schemathesis, every phase and check
    -> exit 0 (no failed check), >= 1,000 requests over every documented path, not a
    single 5xx, and no ERROR line in the server's log."""
    seed(native_stack.database_url, 50)
    server = gunicorn(workers=2)
    har = tmp_path / "fuzz.har"
    result = run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(REPO_ROOT / "schemathesis.toml"),
            "run",
            f"{server.base_url}/openapi.json",
            "--report",
            "har",
            "--report-har-path",
            str(har),
            "--no-color",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary

    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(entry["response"]["status"] for entry in entries)
    assert len(entries) >= MIN_REQUESTS, f"only {len(entries)} requests: {statuses}"
    assert not [s for s in statuses if s >= 500], statuses

    documented = set(httpx.get(server.base_url + "/openapi.json", timeout=10).json()["paths"])
    exercised = {operation_of(urlsplit(e["request"]["url"]).path, documented) for e in entries}
    assert documented <= exercised, documented - exercised

    errors = [r for r in server.log_records() if r.get("level") == "ERROR"]
    assert errors == [], errors[:3]
