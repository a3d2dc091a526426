"""The load balancer in front of the compose replicas (compose.yaml's `lb`,
docker/haproxy/): what it publishes, whom the api trusts, what it answers itself.
The compose e2e (parity e2e) runs it for real; these check the files."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from parity.commands.e2e import may_fail_after_kill
from parity.harness.load import Sample
from parity.harness.repo import REPO_ROOT
from tests.deploy_tools import run_tool

HAPROXY_DIR = REPO_ROOT / "docker" / "haproxy"
CONFIG = HAPROXY_DIR / "haproxy.cfg"


def services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]
    return services


def default(value: str) -> str:
    """`${VAR:-default}` inside a string -> the default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def config_lines() -> list[list[str]]:
    lines = (line.split("#")[0].split() for line in CONFIG.read_text().splitlines())
    return [words for words in lines if words]


def test_clients_reach_the_api_only_through_the_load_balancer() -> None:
    """The api's port is published by lb alone; the api exposes it to the network."""
    api, lb = services()["api"], services()["lb"]
    assert "ports" not in api
    published = [default(port) for port in lb["ports"]]
    assert "127.0.0.1:8000:8000" in published


def test_the_api_believes_forwarded_headers_from_the_load_balancer_only() -> None:
    """FORWARDED_ALLOW_IPS is lb's fixed address, which lies in the project subnet but
    outside the range Docker hands out, so no other container can ever hold it."""
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    (ipam,) = compose["networks"]["default"]["ipam"]["config"]
    subnet = ipaddress.ip_network(default(ipam["subnet"]))
    dynamic = ipaddress.ip_network(default(ipam["ip_range"]))
    lb_address = ipaddress.ip_address(
        default(services()["lb"]["networks"]["default"]["ipv4_address"])
    )
    trusted = default(services()["api"]["environment"]["FORWARDED_ALLOW_IPS"])
    assert trusted == str(lb_address)
    assert lb_address in subnet
    assert lb_address not in dynamic
    # Docker gives the dynamic range's first address to the gateway.
    assert lb_address != next(dynamic.hosts())


def test_a_client_sent_forwarded_for_never_reaches_the_api() -> None:
    """The frontend replaces X-Forwarded-For with the address HAProxy saw (set-header, not
    `option forwardfor`, which would keep the client's line beside its own) and drops
    the standardised Forwarded header."""
    lines = config_lines()
    assert ["http-request", "set-header", "X-Forwarded-For", "%[src]"] in lines
    assert ["http-request", "del-header", "Forwarded"] in lines
    assert not [words for words in lines if words[:2] == ["option", "forwardfor"]]


def test_readiness_decides_pool_membership_and_every_replica_is_discovered() -> None:
    lines = config_lines()
    assert next(words[:6] for words in lines if words[:2] == ["http-check", "send"]) == [
        "http-check",
        "send",
        "meth",
        "GET",
        "uri",
        "/ready",
    ]
    template, unchecked = [w for w in lines if w[:2] == ["server-template", "api"]]
    assert template[3] == "api:8000"
    assert "check" in template
    assert unchecked[2:4] == template[2:4]
    assert "check" not in unchecked
    for defaults in [w for w in lines if w[0] == "default-server"]:
        assert {"resolvers", "docker"} <= set(defaults)
    assert ["nameserver", "docker", "127.0.0.11:53"] in lines


def test_with_no_ready_replica_requests_still_reach_the_replicas() -> None:
    """When Postgres is down every /ready fails at once; the replicas still serve cached
    reads and /health and answer the rest with a problem. So with no server of `api` up,
    the frontend uses `api_panic`: the same replicas, unchecked, rather than answering
    every request 503 itself."""
    lines = config_lines()
    assert ["use_backend", "api_panic", "if", "{", "nbsrv(api)", "eq", "0", "}"] in lines
    assert ["backend", "api_panic"] in lines


def test_only_idempotent_requests_are_retried_after_a_replica_answered_nothing() -> None:
    lines = config_lines()
    (retry_on,) = [w for w in lines if w[0] == "retry-on"]
    assert "conn-failure" in retry_on
    assert ["http-request", "disable-l7-retry", "unless", "METH_GET", "||", "METH_HEAD"] in lines


@pytest.mark.parametrize(
    ("method", "started", "may_fail"),
    [
        ("GET", 0.01, True),  # in flight on the replica when it died
        ("GET", 0.2, False),  # written to a dead connection: the lb retries a GET
        ("POST", 0.2, True),  # the same race for a POST: HAProxy leaves it to the client
        ("POST", 1.6, False),  # after the lb took the replica out: on a live one
    ],
)
def test_after_a_replica_is_killed_only_in_flight_requests_and_racing_posts_may_fail(
    method: str, started: float, may_fail: bool
) -> None:
    """The e2e's SIGKILL check (docs/compose.md): killed at t=0, out of the pool at
    t=1.5. A request retried by the lb must never fail after the kill has landed."""
    sample = Sample(started, 0.01, "order", 0, error="RemoteProtocolError", method=method)
    assert may_fail_after_kill(sample, killed=0.0, left_pool=1.5) is may_fail


@pytest.mark.parametrize("path", sorted((HAPROXY_DIR / "errors").glob("*.http")), ids=str)
def test_the_proxys_own_errors_are_problem_json(path: Path) -> None:
    """Each errorfile is a whole HTTP response whose Content-Length matches its body,
    in the api's problem format, with the status of its file name."""
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    status = int(path.stem)
    assert status_line.startswith(f"HTTP/1.1 {status} ")
    assert headers["Content-Type"] == "application/problem+json"
    assert int(headers["Content-Length"]) == len(body)
    problem = json.loads(body)
    assert problem["status"] == status
    assert problem["type"].startswith("urn:parity:problem:")
    assert [w for w in config_lines() if w[:2] == ["errorfile", str(status)]]


@pytest.mark.parametrize(
    ("replicas", "message"),
    [("0", "out of range: 1 to 10"), ("11", "out of range: 1 to 10"),
     ("two", "not a whole number"), ("", "not a whole number")],
)  # fmt: skip
def test_the_load_balancer_refuses_a_replica_count_it_cannot_serve(
    replicas: str, message: str
) -> None:
    """Compose refuses a non-integer `deploy.replicas`; 0 (nothing to balance) and more
    replicas than server slots (some would never get traffic) are refused here, before
    HAProxy starts, with the value and the allowed range."""
    result = run_tool(
        ["sh", str(HAPROXY_DIR / "entrypoint.sh")],
        env={"PATH": "/usr/bin:/bin", "API_REPLICAS": replicas, "HAPROXY_CONFIG": str(CONFIG)},
    )
    assert result.returncode == 64
    assert message in result.stderr
    assert f"API_REPLICAS={replicas}" in result.stderr.replace("'", "")
