"""The Docker path end to end: `docker compose up` on the real engine, then the checks of
docs/compose.md ("What the end-to-end run proves") against the running containers.

    parity e2e            # make e2e (CI's `compose e2e` step)
    parity e2e --keep     # leave the stack running afterwards
    parity e2e --json

It builds the offline images (parity images; cached), starts compose.yaml
with compose.offline.yaml as project `parity-e2e` on free loopback ports (a stack of
your own on :8000 is left alone), and runs, in this order:

 1. the api image: non-root numeric USER, exec-form CMD, HEALTHCHECK, no compiler/pip;
    the locust image (profile `loadtest`) builds and runs;
 2. `up --wait`: migrate and seed exited 0, every long-running service healthy, the lb
    and 2 api replicas among them;
 3. through the load balancer's published port: a product MISS then HIT (Postgres and
    Redis reached from the containers), bad input answered with problem+json, every
    process of every replica uid 10001, the health check failing when nothing answers;
 4. the Prometheus container: every replica scraped on its own and the lb, a request
    counter exact after N requests through the lb (summed over replicas);
 5. parity verify shutdown --compose on one replica, at its own address:
    TERM with >= 200 requests in flight (0 accepted requests lost, exit 0 inside
    stop_grace_period), then HUP;
 6. parity verify rate-limit --compose through the lb: 2 replicas x 2 workers, 5
    clients and a spoofed X-Forwarded-For, exactly the quota each;
 7. the edge, under a steady load through the lb: SIGTERM to one replica and a rollout
    of every replica (parity rollout) with 0 client-visible errors, the replica out
    of the pool within the checks' bound; SIGKILL of one replica: only requests it held
    may fail, it restarts and rejoins;
 8. parity tune --compose (one replica) with 2 worker counts: table, plot,
    recommendation;
 9. parity chaos --compose through the lb: Postgres stopped (panic routing keeps the
    replicas answering), Redis stopped and paused, recovery;
10. `docker compose down -v`: no container, volume or network of the project left.

A summary table (check, result, figure) ends the run. Exit status: 0 every check passed;
1 a check failed; 3 NOT RUN: no Docker engine reachable here (nothing was checked).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.client_identity import issue_key
from parity.harness.images import BuildError, KitUnavailable, engine_reachable, ensure_images
from parity.harness.load import Load, Sample, cycle, default_requests
from parity.harness.loadbalancer import LoadBalancer, PoolWatcher, api_replicas
from parity.harness.prometheus_native import PrometheusAPI
from parity.harness.repo import REPO_ROOT
from parity.harness.report import progress as say
from parity.harness.stack import (
    OFFLINE_COMPOSE_FILES,
    StackError,
    child_pids,
    free_port,
    iter_json_lines,
    ps_entries,
)
from parity.harness.traffic import seeded_product_ids

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUN = 0, 1, 3
PROJECT = "parity-e2e"
API_IMAGE = "parity-api:local"
LOCUST_IMAGE = "parity-locust:local"
APP_UID = 10001
STOP_GRACE_SECONDS = 40  # compose.yaml's api stop_grace_period
LONG_RUNNING = ("postgres", "redis", "api", "prometheus", "lb")
REPLICAS = 2  # compose.yaml's API_REPLICAS default
RATE_LIMIT_CLIENTS = 5  # API-key clients of the rate-limit check
# The e2e's own /24 for the project network (EDGE_NET_PREFIX), so that it can run while
# a stack of your own holds the default one.
EDGE_NET_PREFIX = "10.213.250"
# docker/haproxy/haproxy.cfg: inter 1s + (fall 2 - 1) x fastinter 0.5s + timeout check
# 1s, plus the pool's 0.1 s sampling.
LEAVES_POOL_WITHIN_SECONDS = 2.6
ONE_SHOTS = ("migrate", "seed")
MISSING_PRODUCT = 2**62  # a valid id that is never seeded: 404
# The shutdown proof needs the slow demo route and no limiter (300 clients from one
# address), on one replica (it signals the service's container directly); the edge
# proofs, the worker sweep and the chaos run keep the limiter on (its fail-open is part
# of the run) with a quota one load generator cannot reach: through the lb all of its
# simulated users are one client (an API key the api did not issue is no identity).
SHUTDOWN_ENV = {
    "DEMO_ENDPOINTS_ENABLED": "true",
    "RATE_LIMIT_ENABLED": "false",
    "API_REPLICAS": "1",
    # Its 300 clients reach the one replica from the host's one address, which the
    # replica does not trust as a proxy: above the default per-address cap (128).
    "WORKER_CONNECTIONS_PER_ADDRESS": "1000",
}
# The `docker compose watch` proof runs on a copy of the project as a project of its own.
WATCH_PROJECT = "parity-e2e-watch"
WATCH_IMAGE = "parity-api:e2e-watch"
WATCH_NET_PREFIX = "10.213.251"
NOT_BUILD_CONTEXT = (".git", ".venv", ".tools", "results", "*_cache", "__pycache__")
# Writes get a quota out of reach and fail open like reads, as in the native chaos run:
# the default `fail=closed` would answer them 503 while Redis is out and until the
# breaker closes again, which the outage checks count as errors.
CHAOS_ENV = {
    "RATE_LIMIT_DEFAULT": "1000000/60s",
    "RATE_LIMIT_ROUTES": "writes=1000000/60s POST,PUT,PATCH,DELETE /api/",
}


class CheckFailed(Exception):
    """A check failed; the message says what was seen."""


@dataclass
class Check:
    name: str
    ok: bool
    figure: str
    seconds: float


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    outcome: str = "passed"  # passed | failed | not-run
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "passed" and all(check.ok for check in self.checks)


# --- docker and compose --------------------------------------------------------------


def run(command: list[str], *, timeout: float = 600, env: dict[str, str] | None = None,
        check: bool = True, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run a command (from the repository root) with this run's compose variables."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise CheckFailed(f"`{' '.join(command[:4])} …` exited {result.returncode}:\n"
                          + "\n".join(output[-25:]))  # fmt: skip
    return result


def compose(*args: str, timeout: float = 600, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return run(["docker", "compose", *args], timeout=timeout, env=env, check=check)


def compose_ps() -> dict[str, list[dict[str, Any]]]:
    """Service name -> its containers' `docker compose ps` entries (stopped ones too)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in ps_entries(compose("ps", "--all", "--format", "json").stdout):
        found.setdefault(entry["Service"], []).append(entry)
    return found


def recreate_api(env: dict[str, str]) -> None:
    """Recreate only the api with `env` for compose's interpolation; wait until healthy."""
    compose("up", "--detach", "--no-deps", "--force-recreate", "--wait", "api", env=env)


def project_leftovers() -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={PROJECT}"
    found = {
        "containers": run(["docker", "ps", "--all", "--quiet", "--filter", label]).stdout,
        "volumes": run(["docker", "volume", "ls", "--quiet", "--filter", label]).stdout,
        "networks": run(["docker", "network", "ls", "--quiet", "--filter", label]).stdout,
    }
    return {kind: out.split() for kind, out in found.items() if out.split()}


# --- the run ---------------------------------------------------------------------------


# How long after os.kill() a request may still have reached the replica before it died.
KILL_LANDS_WITHIN_SECONDS = 0.05
IDEMPOTENT = ("GET", "HEAD")


def may_fail_after_kill(sample: Sample, killed: float, left_pool: float) -> bool:
    """Which failures a SIGKILLed replica may cause behind the lb. A request in flight on
    it at the kill. And a POST sent before the lb took it out of the pool: one written
    to a kept-alive connection to the replica just as the dead replica's kernel closed
    it cannot be known unprocessed, so HAProxy (http-reuse safe) closes the client's
    connection without an answer, leaving the retry to the client, as any keep-alive
    race does; an idempotent request in the same race is retried by the lb."""
    if sample.started <= killed + KILL_LANDS_WITHIN_SECONDS:
        return True
    return sample.method not in IDEMPOTENT and sample.started < left_pool


class E2E:
    def __init__(self, report: Report, results: Path) -> None:
        self.report = report
        self.results = results
        self.api_port = free_port()
        self.prometheus_port = free_port()
        self.lb_stats_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        # API keys this run issues to the api (their hashes in RATE_LIMIT_API_KEY_HASHES):
        # the first for the request-counter check, the others one per client of the
        # rate-limit check. Only issued keys are clients of their own (issue 18).
        self.api_keys = [issue_key() for _ in range(1 + RATE_LIMIT_CLIENTS)]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        say(f"▶ {name}")
        started = time.monotonic()
        try:
            yield
        finally:
            self.report.timings[name] = round(time.monotonic() - started, 1)

    def check(self, name: str, probe: Callable[[], str]) -> bool:
        """Run one check: `probe` returns its figure or raises CheckFailed."""
        started = time.monotonic()
        try:
            figure, ok = probe(), True
        except (CheckFailed, StackError, httpx.HTTPError, subprocess.TimeoutExpired) as exc:
            figure, ok = f"{type(exc).__name__}: {exc}", False
        self.report.checks.append(Check(name, ok, figure, round(time.monotonic() - started, 1)))
        first = figure.splitlines()[0] if figure else ""
        say(f"  {'✔' if ok else '✘'} {name}: {first}")
        if not ok and "\n" in figure:
            say("    " + figure.replace("\n", "\n    "))
        return ok

    def environment(self) -> None:
        """Compose's own variables: every `docker compose` below, and in the scripts this
        run starts, addresses this project."""
        os.environ.update(
            COMPOSE_FILE=OFFLINE_COMPOSE_FILES,
            COMPOSE_PROJECT_NAME=PROJECT,
            API_PORT=str(self.api_port),
            PROMETHEUS_PORT=str(self.prometheus_port),
            LB_STATS_PORT=str(self.lb_stats_port),
            EDGE_NET_PREFIX=EDGE_NET_PREFIX,
            RATE_LIMIT_API_KEY_HASHES=",".join(digest for _, digest in self.api_keys),
        )

    # 1. the image ------------------------------------------------------------------
    def image_checks(self) -> None:
        inspect = json.loads(run(["docker", "image", "inspect", API_IMAGE]).stdout)[0]
        config = inspect["Config"]

        def metadata() -> str:
            problems = []
            if config.get("User") != f"{APP_UID}:{APP_UID}":
                problems.append(f"USER {config.get('User')!r}")
            if config.get("Cmd") != ["gunicorn", "app.main:app", "-c", "gunicorn.conf.py"]:
                problems.append(f"CMD {config.get('Cmd')}")
            if config.get("Entrypoint"):
                problems.append(f"ENTRYPOINT {config.get('Entrypoint')}")
            test = (config.get("Healthcheck") or {}).get("Test") or []
            if test[:1] != ["CMD"] or {"curl", "wget"} & set(test):
                problems.append(f"HEALTHCHECK {test}")
            if config.get("StopSignal") != "SIGTERM":
                problems.append(f"STOPSIGNAL {config.get('StopSignal')}")
            if problems:
                raise CheckFailed("; ".join(problems))
            size = inspect["Size"] / 1e6
            return f"USER {APP_UID}, exec-form CMD, HEALTHCHECK exec form, SIGTERM; {size:.0f} MB"

        def content() -> str:
            script = (
                "import importlib.util, json, os, shutil; print(json.dumps({"
                "'tools': [t for t in ('gcc', 'cc', 'make', 'curl', 'wget') if shutil.which(t)],"
                "'pip': importlib.util.find_spec('pip') is not None,"
                "'strays': [p for p in ('tests', '.git', '.env', 'compose.yaml')"
                " if os.path.exists(p)]}))"
            )
            out = run(["docker", "run", "--rm", "--network=none", API_IMAGE, "python", "-c",
                       script]).stdout  # fmt: skip
            found = json.loads(out)
            if found["tools"] or found["pip"] or found["strays"]:
                raise CheckFailed(f"in the runtime image: {found}")
            return "no compiler, curl, wget or pip; no tests, .git or .env (.dockerignore)"

        def locust() -> str:
            # Profile `loadtest`: not part of `up`, so built here, FROM the stand-in.
            compose("--profile", "loadtest", "build", "locust", timeout=900)
            out = run(["docker", "run", "--rm", "--network=none", LOCUST_IMAGE, "--version"])
            return f"docker/locust/Dockerfile on the stand-in: {out.stdout.strip()}"

        self.check("api image metadata", metadata)
        self.check("api image content", content)
        self.check("locust image builds", locust)

    # 2. up ---------------------------------------------------------------------------
    def up_checks(self) -> bool:
        def up() -> str:
            started = time.monotonic()
            compose("up", "--detach", "--wait", "--wait-timeout", "240", timeout=300)
            return f"every service up and healthy in {time.monotonic() - started:.0f} s"

        if not self.check("docker compose up --wait", up):
            return False

        def states() -> str:
            entries = compose_ps()
            problems = []
            for name in ONE_SHOTS:
                for entry in entries.get(name, [{}]):
                    if entry.get("State") != "exited" or entry.get("ExitCode") != 0:
                        problems.append(f"{name}: {entry.get('State')} {entry.get('ExitCode')}")
            for name in LONG_RUNNING:
                for entry in entries.get(name, [{}]):
                    if entry.get("Health") != "healthy":
                        problems.append(f"{entry.get('Name', name)}: {entry.get('Health')}")
            if len(entries.get("api", [])) != REPLICAS:
                problems.append(f"{len(entries.get('api', []))} api replicas, not {REPLICAS}")
            extra = set(entries) - set(ONE_SHOTS) - set(LONG_RUNNING)
            if extra:
                problems.append(f"unexpected services {sorted(extra)}")
            if problems:
                raise CheckFailed("; ".join(problems))
            return (
                f"migrate, seed exited 0; {', '.join(LONG_RUNNING)} healthy "
                f"({REPLICAS} api replicas)"
            )

        return self.check("one-shots exited 0, services healthy", states)

    # 3. the api through the published port ---------------------------------------------
    def api_checks(self) -> None:
        def cache() -> str:
            seen = []
            for _ in range(2):
                response = httpx.get(f"{self.base_url}/api/v1/products/4242", timeout=10)
                if response.status_code != 200:
                    raise CheckFailed(f"{response.status_code} {response.text[:200]}")
                seen.append(response.headers.get("x-cache"))
            if seen != ["MISS", "HIT"]:
                raise CheckFailed(f"X-Cache {seen}, expected MISS then HIT")
            return "GET /api/v1/products/4242: X-Cache MISS, then HIT"

        def problem() -> str:
            response = httpx.get(f"{self.base_url}/api/v1/products/not-a-number", timeout=10)
            body = response.json()
            if (
                response.status_code != 422
                or response.headers.get("content-type") != "application/problem+json"
                or "type" not in body
            ):
                raise CheckFailed(f"{response.status_code} {response.headers} {body}")
            return f"GET /api/v1/products/not-a-number: 422 problem+json {body['type']}"

        def uids() -> str:
            template = "{{.State.Pid}}"
            found: dict[int, int] = {}
            for replica in api_replicas():
                pid = int(
                    run(["docker", "inspect", "--format", template, replica.container]).stdout
                )
                processes = {p: process_uid(p) for p in (pid, *child_pids(pid))}
                if len(processes) < 3:
                    raise CheckFailed(f"{replica.name}: {processes}, expected master + 2 workers")
                found.update(processes)
            if set(found.values()) != {APP_UID}:
                raise CheckFailed(f"uids {found}: expected {APP_UID}")
            return f"{len(found)} processes in {REPLICAS} replicas, all uid {APP_UID}"

        def health_fails() -> str:
            result = compose("exec", "-T", "-e", "INTERNAL_BIND=127.0.0.1:1", "api",
                             "python", "-m", "app.healthcheck", check=False)  # fmt: skip
            if result.returncode == 0:
                raise CheckFailed("the health check passed against a closed port")
            return f"exit {result.returncode} against a closed port"

        def internals_not_public() -> str:
            """/ready and /metrics only on the replicas' internal listener (9000)."""
            seen = {path: httpx.get(f"{self.base_url}{path}", timeout=10).status_code
                    for path in ("/ready", "/metrics", "/health")}  # fmt: skip
            internal = f"http://{api_replicas()[0].address}:9000"
            ready = httpx.get(f"{internal}/ready", timeout=10).status_code
            if seen != {"/ready": 404, "/metrics": 404, "/health": 200} or ready != 200:
                raise CheckFailed(f"through the lb {seen}; {internal}/ready {ready}")
            return f"through the lb /ready 404, /metrics 404, /health 200; on :9000 /ready {ready}"

        self.check("product read MISS then HIT", cache)
        self.check("/ready and /metrics not behind the lb", internals_not_public)
        self.check("bad input gets problem+json", problem)
        self.check("api processes run as uid 10001", uids)
        self.check("health check fails when nothing answers", health_fails)

    # 4. Prometheus -------------------------------------------------------------------
    def prometheus_checks(self) -> None:
        prometheus = PrometheusAPI(f"http://127.0.0.1:{self.prometheus_port}")
        query = (
            'sum(http_server_request_duration_seconds_count{job="api", '
            'http_route="/api/v1/products/{product_id}", http_response_status_code="404"})'
        )

        def value() -> float:
            found = prometheus.query(query)
            return float(found[0]["value"][1]) if found else 0.0

        def targets_up() -> str:
            """Every replica on its own (DNS discovery), never through the balancer."""
            prometheus.wait_for_scrape("api", after=time.time(), timeout=60)
            prometheus.wait_for_scrape("lb", after=time.time(), timeout=60)
            targets = prometheus.targets()
            api = sorted(t["scrapeUrl"] for t in targets if t["labels"]["job"] == "api"
                         and t["health"] == "up")  # fmt: skip
            # The internal listener (INTERNAL_BIND): /metrics is not served on 8000.
            addresses = sorted(f"http://{r.address}:9000/metrics" for r in api_replicas())
            if api != addresses:
                raise CheckFailed(f"api targets up {api}, replicas {addresses}")
            (lb,) = [t for t in targets if t["labels"]["job"] == "lb"]
            return f"job api: {len(api)} replicas ({', '.join(api)}); job lb {lb['health']}"

        def exact() -> str:
            before = value()
            sent = 37
            key = {"X-API-Key": self.api_keys[0][0]}
            with httpx.Client(base_url=self.base_url, headers=key, timeout=10) as client:
                statuses = {client.get(f"/api/v1/products/{MISSING_PRODUCT}").status_code
                            for _ in range(sent)}  # fmt: skip
            if statuses != {404}:
                raise CheckFailed(f"statuses {statuses}, expected 404")
            prometheus.wait_for_scrape("api", after=time.time(), timeout=60)
            after = value()
            if after - before != sent:
                raise CheckFailed(f"counter went {before:g} -> {after:g}, sent {sent}")
            return (
                f"{sent} requests sent through the lb, sum over {REPLICAS} replicas x all "
                f"workers +{after - before:g}"
            )

        try:
            self.check("Prometheus scrapes every replica and the lb", targets_up)
            self.check("request counter exact across replicas", exact)
        finally:
            prometheus.close()

    # 5-8. the scripts' --compose modes --------------------------------------------------
    def script(self, args: list[str], timeout: float, env: dict[str, str] | None = None
               ) -> tuple[int, Any]:  # fmt: skip
        """Run a verification script as a user would (with `env` exported, as a user would
        set compose variables for it); its JSON report from stdout."""
        result = subprocess.run(
            [sys.executable, *args, "--json"],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
        try:
            data = json.loads(result.stdout)
        except ValueError:
            raise CheckFailed(
                f"{args[0]} exited {result.returncode} without a JSON report:\n"
                + result.stdout[-2000:]
            ) from None
        return result.returncode, data

    def shutdown_checks(self) -> None:
        recreate_api(SHUTDOWN_ENV)

        def signalled(name: str) -> tuple[int, Any]:
            # The container's own address on the project network, not the published
            # port: docker-proxy accepts a connection before it knows whether the api
            # still listens, so a refusal after the listener closed would reach the
            # client as a reset (docs/compose.md, "Signals through published ports").
            (replica,) = api_replicas()  # SHUTDOWN_ENV: one replica
            url = f"http://{replica.address}:8000"
            return self.script(
                ["-m", "parity", "verify", "shutdown", "--compose", "--url", url,
                 "--signal", name, "--quiet"], timeout=180)  # fmt: skip

        def term() -> str:
            code, data = signalled("TERM")
            requests, timings = data["requests"], data["timings"]
            exit_after = (
                data["phases"].get("master_exit_at") or timings["signal_to_master_exit_seconds"]
            )
            problems = list(data["verdict"]["reasons"])
            if requests["in_flight_at_signal"] < 200:
                problems.append(f"only {requests['in_flight_at_signal']} in flight")
            if exit_after is None or exit_after > STOP_GRACE_SECONDS:
                problems.append(f"exit after {exit_after} s (grace {STOP_GRACE_SECONDS} s)")
            if code != 0 or problems:
                raise CheckFailed(f"exit {code}: {'; '.join(problems)}" + examples(data))
            return (
                f"{requests['in_flight_at_signal']} in flight at SIGTERM, "
                f"{requests['completed_ok']} OK, {requests['lost']} lost, "
                f"{requests['refused']} refused after the listener closed; "
                f"exit {data['exit_code']} {exit_after:.1f} s after the signal"
            )

        def hup() -> str:
            code, data = signalled("HUP")
            requests, reload = data["requests"], data["reload"]
            if code != 0:
                reasons = "; ".join(data["verdict"]["reasons"])
                raise CheckFailed(f"exit {code}: {reasons}" + examples(data))
            return (
                f"{requests['in_flight_at_signal']} in flight, {requests['lost']} lost, "
                f"{requests['refused']} refused; workers {reload['old_workers']} -> "
                f"{reload['answered_by_at_the_end']}, the new ones answering "
                f"{reload['new_workers_first_answered_after_s']} s after the signal"
            )

        self.check("SIGTERM under load loses nothing", term)
        # `docker compose stop` left the container exited: start it again (same env).
        recreate_api(SHUTDOWN_ENV)
        self.check("SIGHUP under load: reload without failing", hup)

    # 6. the edge: the load balancer in front of the replicas ----------------------------
    def edge_checks(self) -> None:
        recreate_api(CHAOS_ENV)
        lb = LoadBalancer.from_environment()

        def pool() -> str:
            replicas = api_replicas()
            lb.wait_for_pool({r.address for r in replicas}, timeout=30)
            if len(replicas) != REPLICAS:
                raise CheckFailed(f"{len(replicas)} replicas, expected {REPLICAS}")
            return f"{REPLICAS} replicas in HAProxy's pool: {sorted(lb.pool())}"

        def rollout(count: int | None) -> dict[str, Any]:
            args = ["-m", "parity", "rollout", "--out", str(self.results / "rollout")]
            if count:
                args += ["--count", str(count), "--out", str(self.results / "rollout-one")]
            code, data = self.script(args, timeout=300, env=CHAOS_ENV)
            if code != 0:
                raise CheckFailed(f"exit {code}: {'; '.join(data['problems'])}")
            return dict(data)

        def term_one() -> str:
            data = rollout(1)
            (replica,) = data["replicas"]
            if replica["out_of_pool_after"] > LEAVES_POOL_WITHIN_SECONDS:
                raise CheckFailed(f"left the pool after {replica['out_of_pool_after']} s")
            during = data["during"]
            return (
                f"{during['requests']} requests while {replica['old']} drained: "
                f"{during['errors']} client-visible errors; out of the pool after "
                f"{replica['out_of_pool_after']} s, exit {replica['exit_code']} after "
                f"{replica['exited_after']} s"
            )

        def rollout_all() -> str:
            data = rollout(None)
            during, before = data["during"], data["baseline"]
            per_replica = ", ".join(f"{r['total']} s" for r in data["replicas"])
            return (
                f"{len(data['replicas'])} replicas replaced under load: {during['requests']} "
                f"requests, {during['errors']} client-visible errors; p99 {before['p99_ms']} "
                f"-> {during['p99_ms']} ms; per replica {per_replica}; "
                f"{data['results']}/rollout.png"
            )

        def one_replica_proof_refuses_two() -> str:
            """verify_graceful_shutdown --compose would stop every replica at once."""
            result = run([sys.executable, "-m", "parity", "verify", "shutdown", "--compose"],
                         timeout=60, check=False)  # fmt: skip
            if result.returncode != 2 or f"{REPLICAS} containers" not in result.stderr:
                raise CheckFailed(f"exit {result.returncode}: {result.stderr[-300:]}")
            return f"exit 2: {result.stderr.strip().splitlines()[-1][:110]}…"

        self.check("lb pools every replica", pool)
        self.check("single-replica shutdown proof refuses 2", one_replica_proof_refuses_two)
        self.check("SIGTERM to one replica: no client-visible error", term_one)
        self.check("rollout of every replica: no client-visible error", rollout_all)
        self.check("SIGKILL of one replica: bounded failures, recovery", self.kill_one)

        def lb_panels() -> str:
            """After the traffic above: every Load balancer panel and lb rule has data."""
            code, data = self.script(
                ["-m", "parity", "verify", "dashboards", "--compose", "--only-job", "lb"],
                timeout=120,
            )
            if code != 0:
                failed = [c for c in data.get("checks", []) if c.get("status") != "ok"]
                raise CheckFailed(f"exit {code}: {failed[:5]}")
            return f"{len(data['checks'])} expressions of job lb have data"

        self.check("Load balancer dashboard has data", lb_panels)

    def kill_one(self) -> str:
        """A replica dies without draining (SIGKILL to its master from the host, as the
        kernel's OOM killer would; `docker kill` would count as a deliberate stop and
        skip the restart policy). Only requests it held may fail; the lb routes around
        it; the restart policy brings it back and the lb takes it in again."""
        lb = LoadBalancer.from_environment()
        replicas = api_replicas()
        victim = replicas[0]
        ids = seeded_product_ids(self.base_url, limit=5)
        concurrency = 8
        with PoolWatcher(lb) as watcher, Load(
            self.base_url, cycle(default_requests(ids)), concurrency=concurrency
        ) as load:  # fmt: skip
            time.sleep(2)
            pid = int(run(["docker", "inspect", "--format", "{{.State.Pid}}",
                           victim.container]).stdout)  # fmt: skip
            (held,) = [s.sessions for s in lb.servers() if s.address == victim.address]
            retries = lb.retries()
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            deadline = killed + 10
            while (left := watcher.left_at(victim.address, after=killed)) is None:
                if time.monotonic() > deadline:
                    raise CheckFailed(f"{victim.name} still in the pool 10 s after SIGKILL")
                time.sleep(0.1)
            lb.wait_for_pool({r.address for r in api_replicas()}, timeout=90)
            back = time.monotonic()
            time.sleep(2)
            retried = lb.retries() - retries
        samples = load.between(killed - 30, time.monotonic())
        failed = [s for s in samples if s.failed]
        unexpected = [s for s in failed if not may_fail_after_kill(s, killed, left)]
        if len(failed) > concurrency or unexpected:
            raise CheckFailed(
                f"{len(failed)} failed ({len(unexpected)} that the lb should have spared), "
                f"at most {concurrency} (one in flight per client) expected: "
                + "; ".join(
                    f"{s.method} {s.label} {s.started - killed:+.3f} s {s.status or s.error}"
                    for s in failed[:5]
                )
            )
        kinds = ", ".join(sorted({f"{s.label} {s.status or 'no answer'}" for s in failed}))
        return (
            f"{held} requests in flight on {victim.name} at the kill; {len(failed)} of "
            f"{len(samples)} failed ({kinds or 'none'}); the lb retried {retried}; out of "
            f"the pool after {left - killed:.1f} s, restarted and back after "
            f"{back - killed:.1f} s"
        )

    def rate_limit_check(self) -> None:
        recreate_api({})

        def exact() -> str:
            keys = [arg for key, _ in self.api_keys[1:] for arg in ("--api-key", key)]
            code, data = self.script(
                ["-m", "parity", "verify", "rate-limit", "--compose", "--identities",
                 str(RATE_LIMIT_CLIENTS), *keys], timeout=180)  # fmt: skip
            if code != 0:
                raise CheckFailed("; ".join(data.get("deviations", [])) or f"exit {code}")
            policy = data["policy"]
            allowed = [identity["allowed"] for identity in data["identities"]]
            return (
                f"policy {policy['quota']}/{policy['window']}s: allowed {allowed} for "
                f"{len(allowed)} clients (spoofed X-Forwarded-For included); "
                f"the api saw clients as {self.seen_clients()}"
            )

        self.check(
            f"rate limit exact: {REPLICAS} replicas x 2 workers, {RATE_LIMIT_CLIENTS} clients",
            exact,
        )

    def seen_clients(self) -> str:
        """The client addresses the api's access log recorded (docker-proxy's, here)."""
        logs = compose("logs", "--no-color", "--no-log-prefix", "api").stdout
        clients = {r["client"] for r in iter_json_lines(logs) if r.get("client")}
        return ", ".join(sorted(clients)) or "unknown"

    def tune_check(self) -> None:
        def sweep() -> str:
            out = self.results / "tune"
            code, data = self.script(
                ["-m", "parity", "tune", "--compose", "--workers", "1,2", "--duration",
                 "8", "--warmup", "2", "--users", "8", "--out", str(out)], timeout=300,
                env=CHAOS_ENV)  # fmt: skip
            if code != 0:
                raise CheckFailed(f"exit {code}")
            points = data["points"]
            written = Path(data["results"])
            missing = [n for n in ("sweep.md", "sweep.png", "sweep.csv")
                       if not (written / n).is_file()]  # fmt: skip
            if [p["workers"] for p in points] != [1, 2] or missing:
                raise CheckFailed(f"points {points}, missing {missing}")
            # The server's processes are on this host: their figures must be there.
            unseen = [p["workers"] for p in points if not p["rss_mib_per_worker"]]
            if unseen:
                raise CheckFailed(f"no CPU/RSS figures for {unseen} workers (docker compose top)")
            rps = ", ".join(f"{p['workers']}w {p['rps']:.0f} req/s p95 {p['p95_ms']:g} ms"
                            for p in points)  # fmt: skip
            choice = data["recommendation"]["workers"]
            return f"{rps}; recommends {choice}; {written}/sweep.png"

        self.check("tune_workers sweeps 2 worker counts", sweep)
        recreate_api({})  # back to the compose default worker count

    def chaos_check(self) -> None:
        recreate_api(CHAOS_ENV)

        def outages() -> str:
            code, data = self.script(
                ["-m", "parity", "chaos", "--compose", "--phase-seconds", "4", "--plot",
                 str(self.results / "chaos.png")], timeout=240)  # fmt: skip
            failed = [f"{p['name']}: {p['failures']}" for p in data if not p["ok"]]
            if code != 0 or failed:
                raise CheckFailed(f"exit {code}: {failed}")
            return "; ".join(
                f"{p['name']} {p['requests']} req p95 {p['p95_ms']:g} ms "
                + "/".join(f"{k}:{v}" for k, v in p["by_status"].items())
                for p in data
            )

        self.check("outages: Postgres, Redis stopped and paused", outages)

    # 9. down -------------------------------------------------------------------------
    # 8. the development loop -------------------------------------------------------------
    def watch_check(self) -> None:
        def serves_the_change() -> str:
            with tempfile.TemporaryDirectory(prefix="parity-watch-") as tmp:
                return WatchProof(Path(tmp)).run()

        self.check("docker compose watch: an edit is served", serves_the_change)

    def down_check(self) -> None:
        def nothing_left() -> str:
            compose("down", "--volumes", "--remove-orphans", timeout=180)
            left = project_leftovers()
            if left:
                raise CheckFailed(f"left behind: {left}")
            return "no container, volume or network of the project left"

        self.check("docker compose down -v leaves nothing", nothing_left)


def examples(report: dict[str, Any]) -> str:
    """The shutdown report's failure examples, one a line, to show under a failed check."""
    found = report.get("failure_examples") or {}
    return "".join(f"\n  e.g. {e}" for kind in found.values() for e in kind)


class WatchProof:
    """compose.yaml's `develop.watch`, proven on a copy of the project (your tree is
    never edited) run as a project of its own (its network, volumes and image tag): the
    api, Postgres and Redis up, `docker compose watch` started, a line of app/ changed,
    and the running api polled until it serves the change."""

    TIMEOUT_SECONDS = 300

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": WATCH_PROJECT,
            "API_IMAGE": WATCH_IMAGE,
            "API_REPLICAS": "1",
            "EDGE_NET_PREFIX": WATCH_NET_PREFIX,
            "API_PORT": str(free_port()),
            "PROMETHEUS_PORT": str(free_port()),
            "LB_STATS_PORT": str(free_port()),
        }

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(["docker", "compose", *args], timeout=timeout, env=self.env, cwd=self.directory)

    def run(self) -> str:
        shutil.copytree(REPO_ROOT, self.directory, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*NOT_BUILD_CONTEXT))  # fmt: skip
        try:
            self.compose("up", "--detach", "--build", "--wait", "api", timeout=900)
            log = self.directory / "watch.log"
            with log.open("w") as output:
                watcher = subprocess.Popen(
                    ["docker", "compose", "watch", "--no-up", "api"], cwd=self.directory,
                    env=self.env, stdout=output, stderr=subprocess.STDOUT,
                )  # fmt: skip
            try:
                return self.edit_and_wait(log)
            finally:
                watcher.terminate()
                watcher.wait(timeout=30)
        finally:
            self.compose("down", "--volumes", "--remove-orphans", timeout=180)
            run(["docker", "image", "rm", "--force", WATCH_IMAGE], check=False)

    def edit_and_wait(self, log: Path) -> str:
        deadline = time.monotonic() + 60
        while "watch enabled" not in log.read_text().lower():
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"`docker compose watch` never said it watches:\n{log.read_text()}"
                )
            time.sleep(0.5)
        version_file = self.directory / "app" / "__init__.py"
        before = self.served_version()
        version_file.write_text(
            version_file.read_text().replace(f'"{before}"', f'"{before}+watched"')
        )
        edited = time.monotonic()
        while time.monotonic() - edited < self.TIMEOUT_SECONDS:
            time.sleep(2)
            if self.served_version(check=False) == f"{before}+watched":
                waited = time.monotonic() - edited
                return (
                    f"app/__init__.py edited in a copy: the running api served version "
                    f"{before}+watched {waited:.0f} s later (image rebuilt, container replaced)"
                )
        last_lines = "\n".join(log.read_text().splitlines()[-20:])
        raise CheckFailed(
            f"the api still served {before} {self.TIMEOUT_SECONDS} s after the edit:\n{last_lines}"
        )

    def served_version(self, *, check: bool = True) -> str | None:
        """The version in the running api's /openapi.json, asked from inside its container
        (the api publishes no port; the lb is not part of this project's run)."""
        probe = (
            "import json, urllib.request; print(json.load(urllib.request.urlopen("
            "'http://127.0.0.1:8000/openapi.json', timeout=5))['info']['version'])"
        )
        try:
            result = self.compose("exec", "-T", "api", "python", "-c", probe, timeout=30)
        except (CheckFailed, subprocess.TimeoutExpired):
            if check:
                raise
            return None  # being rebuilt or replaced
        return result.stdout.strip()


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise CheckFailed(f"no Uid line for pid {pid}")


def execute(e2e: E2E, keep: bool) -> None:
    e2e.environment()
    with e2e.phase("offline images"):
        try:
            results = ensure_images(progress=say)
        except (KitUnavailable, BuildError) as exc:
            raise CheckFailed(f"offline images: {exc}") from exc
        built = [r.image for r in results if r.state == "built"]
        say(f"  {len(results)} images ready, built now: {', '.join(built) or 'none'}")
    try:
        with e2e.phase("build"):
            compose("build", timeout=1800)
        with e2e.phase("image"):
            e2e.image_checks()
        with e2e.phase("up"):
            if not e2e.up_checks():
                say(compose("logs", "--no-color", "--tail", "40", check=False).stdout)
                return
        with e2e.phase("api"):
            e2e.api_checks()
        with e2e.phase("prometheus"):
            e2e.prometheus_checks()
        with e2e.phase("shutdown"):
            e2e.shutdown_checks()
        with e2e.phase("rate limit"):
            e2e.rate_limit_check()
        with e2e.phase("edge"):
            e2e.edge_checks()
        with e2e.phase("tune"):
            e2e.tune_check()
        with e2e.phase("chaos"):
            e2e.chaos_check()
    finally:
        if not keep:
            with e2e.phase("down"):
                e2e.down_check()
    with e2e.phase("watch"):
        e2e.watch_check()


def print_summary(report: Report) -> None:
    print("\ncompose e2e: the Docker path on the real engine (compose.yaml + compose.offline.yaml)")
    if report.outcome == "not-run":
        print(f"NOT RUN: {report.reason}")
        return
    print(f"| {'check':<46} | result | figure")
    print(f"|{'-' * 48}|--------|-------")
    for check in report.checks:
        first = check.figure.splitlines()[0] if check.figure else ""
        print(f"| {check.name:<46} | {'PASS' if check.ok else 'FAIL':<6} | {first}")
    if report.reason:
        print(f"ERROR: {report.reason}")
    timings = ", ".join(f"{name} {seconds:g}s" for name, seconds in report.timings.items())
    print(f"time: {timings}; total {sum(report.timings.values()):.0f}s")
    passed = sum(check.ok for check in report.checks)
    print(f"compose e2e: {passed} of {len(report.checks)} checks passed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity e2e",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 passed, 1 a check failed, 3 NOT RUN (no Docker engine).",
    )
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--results", type=Path, default=REPO_ROOT / "results" / "compose-e2e",
        help="where the tune and chaos plots go (default results/compose-e2e)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    if reason := engine_reachable():
        report.outcome, report.reason = "not-run", reason
    else:
        args.results.mkdir(parents=True, exist_ok=True)
        try:
            execute(E2E(report, args.results), args.keep)
        except (CheckFailed, StackError, subprocess.TimeoutExpired) as exc:
            report.outcome, report.reason = "failed", str(exc)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_summary(report)
    if report.outcome == "not-run":
        say(f"compose e2e NOT RUN: {report.reason}")
        return EXIT_NOT_RUN
    return EXIT_OK if report.ok else EXIT_FAILED
