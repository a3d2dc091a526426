"""`promtool check metrics` on what a real Gunicorn's /metrics serves: Prometheus' own
lint of names, types, units and help texts. Every finding is either fixed or listed in
ACCEPTED with the reason we keep it; a finding not listed fails, and so does a listed
one that no longer occurs (the list must not outlive its reason)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from parity.harness.prometheus_native import binaries, missing_reason
from parity.harness.stack import GunicornProcess
from tests.helpers import run

# metric family -> why its finding is accepted
ACCEPTED = {
    "db_client_connection_count": (
        "the OpenTelemetry semantic conventions' name for the pool's connections by state "
        "(db.client.connection.count, an UpDownCounter exported as a gauge): dashboards "
        "and users who know the conventions look for it under that name"
    ),
}

# One request of each kind, so that every labelled family has a sample to lint.
REQUESTS = ("/api/v1/products/1", "/api/v1/products?limit=2", "/api/v1/products/x", "/nope",
            "/health", "/ready")  # fmt: skip


def findings(exposition: str) -> dict[str, str]:
    """promtool's findings, by metric family: `NAME MESSAGE` lines."""
    result = run(
        ["promtool", "check", "metrics"], input=exposition, timeout=60, )  # fmt: skip
    lines = (result.stdout + result.stderr).strip().splitlines()
    found = dict(line.split(" ", 1) for line in lines if " " in line)
    assert result.returncode == (3 if found else 0), result
    return found


@pytest.mark.gunicorn
@pytest.mark.skipif(binaries() is None, reason=missing_reason())
def test_promtool_finds_nothing_in_live_metrics_but_what_is_accepted(
    gunicorn: Callable[..., GunicornProcess],
) -> None:
    server = gunicorn(workers=2)
    for path in REQUESTS:
        httpx.get(server.base_url + path, timeout=10)
    exposition = httpx.get(server.base_url + "/metrics", timeout=10).text
    assert "http_server_request_duration_seconds_bucket" in exposition
    found = findings(exposition)
    unexplained = {name: message for name, message in found.items() if name not in ACCEPTED}
    assert not unexplained, f"promtool check metrics: {unexplained}"
    stale = set(ACCEPTED) - set(found)
    assert not stale, f"accepted findings that promtool no longer reports: {stale}"
