"""The limit holds across real Gunicorn workers: exactly the quota per client with 4
workers deciding, only issued API keys making clients of their own, X-Forwarded-For
believed only from proxies in the trusted range (a CIDR network, as an ingress
controller's pods are), and `parity verify rate-limit --native` passing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.client_identity import issue_key
from parity.commands.verify_rate_limit import (
    UNTRUSTED_LOOPBACK,
    IdentityReport,
    Policy,
    drive_identity,
    forged_addresses,
)
from parity.harness.connections import close_connections, open_connections
from parity.harness.stack import GunicornProcess, NativeStack
from tests.conftest import REDIS_URL
from tests.helpers import run

pytestmark = pytest.mark.gunicorn

WORKERS = 4
QUOTA = 10
POLICY = Policy("default", QUOTA, 60)
PRODUCTS = "/api/v1/products?limit=1"
# FORWARDED_ALLOW_IPS as a network, like an ingress controller's pod CIDR: two proxies
# inside it (two ingress pods), and the untrusted client outside it.
TRUSTED_PROXIES = "127.0.0.16/28"
PROXIES = ("127.0.0.17", "127.0.0.30")
# API keys issued to this server (their hashes in RATE_LIMIT_API_KEY_HASHES): 4 keys.
ISSUED = [issue_key() for _ in range(4)]


@pytest.fixture(scope="module")
def server(database_url: str, redis_prefix: str) -> Iterator[GunicornProcess]:
    """4 workers, 10 requests per 60 s, the ISSUED keys, proxies trusted in 127.0.0.16/28
    only."""
    stack = NativeStack(database_url=database_url)
    env = {
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"{redis_prefix}{uuid.uuid4().hex[:8]}:",
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_DEFAULT": f"{QUOTA}/60s",
        "RATE_LIMIT_ROUTES": "",
        "FORWARDED_ALLOW_IPS": TRUSTED_PROXIES,
        "RATE_LIMIT_API_KEY_HASHES": ",".join(digest for _, digest in ISSUED),
        # A worker's event loop busy with the burst must not push the Redis call past
        # its bound (that would fail open, correctly, but not exactly).
        "REDIS_TIMEOUT_SECONDS": "2",
        "LOG_LEVEL": "info",
    }
    with stack.start_gunicorn(workers=WORKERS, env=env, host="127.0.0.1") as started:
        yield started


async def burst(
    server: GunicornProcess,
    requests: int,
    *,
    api_key: str | None = None,
    local_address: str | None = None,
    forge: bool = False,
    rotate_keys: bool = False,
) -> IdentityReport:
    """`requests` requests of one client at once, over connections held by every
    worker; `forge`: a different X-Forwarded-For on each; `rotate_keys`: a different
    made-up X-API-Key on each."""
    connections = await open_connections(
        server.base_url, count=8, server=server, local_address=local_address
    )
    report = IdentityReport(api_key or str(local_address), requests, min(QUOTA, requests))
    forged = forged_addresses(requests)

    def headers(index: int) -> dict[str, str]:
        if forge:
            return {"X-Forwarded-For": forged[index]}
        if rotate_keys:
            return {"X-API-Key": f"made-up-{index}-{uuid.uuid4().hex}"}
        return {"X-API-Key": api_key} if api_key else {}

    try:
        await drive_identity(
            report, connections, PRODUCTS, POLICY, headers_for=headers, count=requests
        )
    finally:
        await close_connections(connections)
    return report


def test_four_workers_admit_exactly_the_quota_per_client(server: GunicornProcess) -> None:
    """1. 3 clients (issued API keys) x 30 requests at once, each client's requests spread
    over connections held by all 4 workers  -> exactly 10 allowed per client, every
    other answer a 429 with Retry-After, each remaining count 9..0 seen once, and each
    worker decided some of every client's requests."""

    async def scenario() -> list[IdentityReport]:
        keys = [key for key, _ in ISSUED[:3]]
        return await asyncio.gather(*(burst(server, 30, api_key=key) for key in keys))

    for report in asyncio.run(scenario()):
        assert (report.allowed, report.limited) == (QUOTA, 30 - QUOTA), report
        assert report.retry_after_missing == report.failed_open == 0
        assert report.header_errors == []
        assert sorted(report.remaining_seen) == list(range(QUOTA))
        assert sorted(report.by_worker) == sorted(str(pid) for pid in server.worker_pids())


def test_rotating_unissued_api_keys_from_one_address_gets_only_the_address_quota(
    server: GunicornProcess,
) -> None:
    """Issue 18: a new made-up X-API-Key on each request got 150 of 150 through a quota
    of 100. 1. a client at 127.0.0.3 sends 25 requests at once, each with a key never
    issued  -> all count against 127.0.0.3: exactly 10 allowed, 15 refused
    2. the same address with an issued key  -> that key's own quota: 10 of 12 allowed."""
    rotating = asyncio.run(burst(server, 25, local_address="127.0.0.3", rotate_keys=True))
    assert (rotating.allowed, rotating.limited) == (QUOTA, 25 - QUOTA), rotating
    issued_key = ISSUED[3][0]
    issued = asyncio.run(burst(server, 12, local_address="127.0.0.3", api_key=issued_key))
    assert (issued.allowed, issued.limited) == (QUOTA, 2), issued


def test_a_client_forging_x_forwarded_for_is_still_limited(server: GunicornProcess) -> None:
    """1. a client at 127.0.0.2 (outside the trusted range) sends 25 requests, each with a
    different X-Forwarded-For  -> Uvicorn ignores the header; all 25 count against
    127.0.0.2 and exactly 10 are allowed. (The same happens to a real proxy that is not
    trusted: all its clients share one quota.)"""
    report = asyncio.run(burst(server, 25, local_address=UNTRUSTED_LOOPBACK, forge=True))
    assert (report.allowed, report.limited) == (QUOTA, 25 - QUOTA), report
    assert report.header_errors == []


def test_x_forwarded_for_from_a_trusted_proxy_range_is_believed(server: GunicornProcess) -> None:
    """Through two proxies inside FORWARDED_ALLOW_IPS=127.0.0.16/28 (127.0.0.17 and
    127.0.0.30, like two ingress controller pods), requests taking turns:
    1. 25 different forwarded addresses  -> 25 clients, all allowed (were the proxies not
    trusted, all would count as the two proxies' addresses: 20 allowed, 5 refused)
    2. one forwarded address 11 times  -> one client, whichever proxy forwards it:
    10 allowed, the 11th refused."""
    many, one = forged_addresses(2 * QUOTA + 5), forged_addresses(1)[0]
    proxies = [
        httpx.Client(base_url=server.base_url, transport=httpx.HTTPTransport(local_address=a))
        for a in PROXIES
    ]

    def through_proxies(forwarded: list[str]) -> list[int]:
        return [
            proxies[index % 2].get(PRODUCTS, headers={"X-Forwarded-For": address}).status_code
            for index, address in enumerate(forwarded)
        ]

    try:
        distinct = through_proxies(many)
        repeated = through_proxies([one] * (QUOTA + 1))
    finally:
        for proxy in proxies:
            proxy.close()
    assert distinct == [200] * len(many)
    assert repeated == [200] * QUOTA + [429]


def test_verify_script_passes_natively_with_four_workers(database_url: str) -> None:
    """`parity verify rate-limit --native --json` starts its own Gunicorn
    (4 workers) and exits 0 reporting exactly the quota for every client."""
    result = run(
        [
            sys.executable,
            "-m",
            "parity",
            "verify",
            "rate-limit",
            "--native",
            "--quota",
            str(QUOTA),
            "--database-url",
            database_url,
            "--json",
        ],
        env={**os.environ, "REDIS_URL": REDIS_URL},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert len(report["workers"]["pids"]) == 4
    assert len(report["identities"]) == 5  # 4 API keys + the spoofer
    assert {i["allowed"] for i in report["identities"]} == {QUOTA}
    assert report["trusted_proxy"]["ok"]
    assert report["exempt"]["ok"]
    assert "driving 5 identities" in result.stderr  # progress output
