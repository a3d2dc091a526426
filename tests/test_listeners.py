"""INTERNAL_BIND: /ready and /metrics only on the internal listener (the load balancer's
checks, the kubelet, Prometheus), never on the public one that clients reach; /health
on both; nothing else on the internal one. Against a real Gunicorn with both listeners
(issue 18: flooding /ready pulled healthy instances, /metrics told internals)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError

from app.listeners import served_on
from app.settings import Settings
from parity.harness.stack import GunicornProcess, free_port
from tests.helpers import run

pytestmark = pytest.mark.gunicorn


@pytest.fixture
def two_listeners(
    gunicorn: Callable[..., GunicornProcess],
) -> tuple[GunicornProcess, str]:
    """Gunicorn (2 workers) with the API on one port and probes/metrics on another."""
    internal = f"127.0.0.1:{free_port()}"
    server = gunicorn(workers=2, env={"INTERNAL_BIND": internal}, ready_path="/health")
    return server, f"http://{internal}"


def test_clients_cannot_reach_readiness_or_metrics(
    two_listeners: tuple[GunicornProcess, str],
) -> None:
    server, _ = two_listeners
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for path in ("/ready", "/metrics"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/health").status_code == 200
        assert client.get("/api/v1/products", params={"limit": 1}).status_code == 200


def test_the_internal_listener_serves_probes_and_metrics_only(
    two_listeners: tuple[GunicornProcess, str],
) -> None:
    _, internal = two_listeners
    with httpx.Client(base_url=internal, timeout=10) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").json()["status"] == "ready"
        assert "http_server_request_duration_seconds" in client.get("/metrics").text
        for path in ("/api/v1/products", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 404, path


def test_the_container_health_check_asks_the_internal_listener(
    two_listeners: tuple[GunicornProcess, str],
) -> None:
    """With INTERNAL_BIND set, `python -m app.healthcheck` checks it (as the kubelet
    does), whatever GUNICORN_BIND says: here a port where nothing listens."""
    _, internal = two_listeners
    result = run(
        [sys.executable, "-m", "app.healthcheck"],
        env={
            **os.environ,
            "INTERNAL_BIND": internal.removeprefix("http://"),
            "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
        },
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("path", "public", "internal"),
    [
        ("/health", True, True),
        ("/ready", False, True),
        ("/metrics", False, True),
        ("/api/v1/products", True, False),
        ("/docs", True, False),
    ],
)
def test_which_listener_serves_which_path(path: str, public: bool, internal: bool) -> None:
    assert served_on(path, internal=False) is public
    assert served_on(path, internal=True) is internal


@pytest.mark.parametrize(
    ("internal_bind", "message"),
    [
        ("127.0.0.1:8000", "must use another port than GUNICORN_BIND"),
        ("unix:/run/probes.sock", "must be HOST:PORT"),
        ("9000", "must be HOST:PORT"),
    ],
)
def test_an_internal_bind_that_cannot_work_is_refused(internal_bind: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(GUNICORN_BIND="127.0.0.1:8000", INTERNAL_BIND=internal_bind)


def test_without_an_internal_bind_there_is_one_listener() -> None:
    assert Settings(INTERNAL_BIND="").internal_port is None
    assert Settings(INTERNAL_BIND="0.0.0.0:9000").internal_port == 9000
