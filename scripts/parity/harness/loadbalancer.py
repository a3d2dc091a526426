"""The compose stack's load balancer and the api replicas behind it, as the verification
commands see them (parity rollout, the compose e2e's edge proofs).

    lb = LoadBalancer.from_environment()       # http://127.0.0.1:$LB_STATS_PORT
    lb.pool()                                   # {"10.213.0.130", ...}: replicas taking traffic
    with PoolWatcher(lb) as watcher: ...        # pool membership over time
    replicas = api_replicas()                   # the api containers, with their addresses

The pool is read from HAProxy's stats CSV (`/stats;csv`, docker/haproxy/haproxy.cfg's
`stats` frontend): a server of backend `api` whose status is UP (backend `api_panic`,
used only while no replica is ready, is not the pool).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from parity.harness.repo import REPO_ROOT
from parity.harness.stack import StackError, ps_entries

BACKEND = "api"


@dataclass(frozen=True)
class Server:
    """One server slot of the backend: `address` is the replica's IP ("" while empty)."""

    name: str
    address: str
    # UP; "UP 1/2": a check failed, still routed to until `fall` checks have; DOWN;
    # "DOWN 1/2": a check passed, not routed to until `rise` have; "MAINT (resolution)":
    # an empty slot; ...
    status: str
    check: str  # last health check: L7OK, L7STS (wrong status), L4CON (refused), ...
    sessions: int  # requests in progress on it

    @property
    def in_pool(self) -> bool:
        return self.status.startswith("UP")


@dataclass
class LoadBalancer:
    stats_url: str

    @classmethod
    def from_environment(cls) -> LoadBalancer:
        """compose.yaml publishes the stats on 127.0.0.1:${LB_STATS_PORT:-8404}."""
        port = os.environ.get("LB_STATS_PORT") or "8404"
        return cls(f"http://127.0.0.1:{port}")

    def rows(self) -> list[dict[str, str]]:
        """HAProxy's stats CSV, one dict per proxy/server line."""
        response = httpx.get(f"{self.stats_url}/stats;csv", timeout=3)
        response.raise_for_status()
        return list(csv.DictReader(io.StringIO(response.text.removeprefix("# "))))

    def retries(self) -> int:
        """Requests the backend sent again (to the same or, redispatched, another
        replica) since HAProxy started: `wretr` + `wredis` of backend api."""
        (row,) = [r for r in self.rows() if r["pxname"] == BACKEND and r["svname"] == "BACKEND"]
        return int(row["wretr"] or 0) + int(row["wredis"] or 0)

    def servers(self) -> list[Server]:
        rows = self.rows()
        return [
            Server(
                name=row["svname"],
                address=row["addr"].rpartition(":")[0],
                status=row["status"],
                check=row.get("check_status", ""),
                sessions=int(row["scur"] or 0),
            )
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        ]

    def pool(self) -> set[str]:
        """Addresses of the replicas HAProxy currently sends requests to."""
        return {server.address for server in self.servers() if server.in_pool}

    def wait_for_pool(self, wanted: set[str], timeout: float) -> float:
        """Wait until every address in `wanted` is in the pool; return the seconds taken."""
        started = time.monotonic()
        while True:
            pool = self.pool()
            if wanted <= pool:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise StackError(f"{sorted(wanted - pool)} not in the lb pool after {timeout:g} s")
            time.sleep(0.1)


@dataclass
class PoolWatcher:
    """Samples the pool every `interval` seconds in a thread, for timelines and for
    "when did this replica leave / join"."""

    lb: LoadBalancer
    interval: float = 0.1
    samples: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PoolWatcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pool = frozenset(self.lb.pool())
            except httpx.HTTPError:
                pool = None  # a missed sample, not an empty pool
            if pool is not None:
                self.samples.append((time.monotonic(), pool))
            self._stop.wait(self.interval)

    def left_at(self, address: str, after: float) -> float | None:
        """The first sample time after `after` at which `address` was out of the pool."""
        for moment, pool in list(self.samples):
            if moment >= after and address not in pool:
                return moment
        return None


# --- the api replicas (docker compose) ------------------------------------------------


@dataclass(frozen=True)
class Replica:
    container: str  # id
    name: str  # e.g. parity-api-2
    address: str  # on the project network


def docker(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise StackError(f"docker {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout


def compose(*args: str, timeout: float = 300) -> str:
    """`docker compose ARGS` from the repository, for the stack the environment names
    (COMPOSE_FILE, COMPOSE_PROJECT_NAME), as a user would type it."""
    result = subprocess.run(
        ["docker", "compose", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"docker compose {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout


def api_replicas(service: str = "api") -> list[Replica]:
    """The service's running containers, in replica-number order."""
    entries = [e for e in ps_entries(compose("ps", "--format", "json", service)) if e]
    replicas = [
        Replica(entry["ID"], entry["Name"], container_address(entry["ID"])) for entry in entries
    ]
    return sorted(replicas, key=lambda replica: replica.name)


def container_address(container: str) -> str:
    networks: dict[str, Any] = json.loads(
        docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", container)
    )
    addresses = [network["IPAddress"] for network in networks.values() if network["IPAddress"]]
    if not addresses:
        raise StackError(f"container {container} has no address")
    return str(addresses[0])


def exit_code(container: str) -> int:
    return int(docker("inspect", "--format", "{{.State.ExitCode}}", container))
