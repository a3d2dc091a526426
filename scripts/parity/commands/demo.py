"""A team demo in one command: a steady, realistic load on the API, and the URLs to open
while it runs (dashboards, metrics, the trace of a slow request).

    parity demo                  # --native: start the API here, load it
    parity demo --compose        # the compose stack: Grafana, Jaeger, Prometheus
    parity demo --url http://127.0.0.1:8000   # an API you started (make run)
    make demo

The load is Locust's `mixed` scenario (popular and long-tail product reads, list pages,
orders with idempotent retries) at --users users with a second of think time each, for
--duration seconds (default 10 minutes; Ctrl-C stops it earlier). Every 15 s it prints
what the users see; after the first 20 s it looks for the slowest recent request and
prints where its trace is.

- --compose: the load comes from the compose `locust` service (profile loadtest),
  started through its web API, so Prometheus scrapes its client-side statistics; the
  Load test, API overview and Dependencies dashboards are in Grafana, the slow trace is
  a Jaeger link.
- --native / --url: there is no Grafana and no Jaeger on this machine, and the demo
  says so. It still serves what exists: the API's /metrics, Locust's `locust_*` metrics,
  a Prometheus (if the `prometheus` package is installed) scraping both with the
  project's rules and a graph of client vs server p95, and the slowest request from the
  API's access log with its trace id.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from parity.harness.loadgen import locust_command, locust_env, stop_locust
from parity.harness.prometheus_native import (
    NATIVE_DROPPED_JOBS,
    NativePrometheus,
    binaries,
    native_config,
)
from parity.harness.repo import REPO_ROOT
from parity.harness.stack import (
    ComposeStack,
    GunicornProcess,
    NativeStack,
    StackError,
    delete_redis_prefix,
    free_port,
    scratch_database,
    wait_until_answers,
)
from parity.harness.target import add_target_options, target_choice

GRAFANA = "http://127.0.0.1:3000"
JAEGER = "http://127.0.0.1:16686"
PROMETHEUS = "http://127.0.0.1:9090"
LOCUST_UI = "http://127.0.0.1:8089"
DASHBOARDS = {
    "Load test (client vs server latency)": "/d/parity-loadtest",
    "API overview": "/d/parity-api-overview",
    "Dependencies": "/d/parity-dependencies",
}
CLIENT_P95 = (
    "histogram_quantile(0.95, sum by (le) "
    '(rate(locust_request_duration_seconds_bucket{job="locust"}[30s])))'
)
SERVER_P95 = (
    "histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_seconds_bucket"
    '{job="api", http_route!~"/health|/ready|/metrics"}[30s])))'
)
STATUS_EVERY = 15.0
SLOW_TRACE_AFTER = 20.0


def say(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


def port_or_free(preferred: int) -> int:
    """`preferred` if nothing listens there, else a free port."""
    with contextlib.suppress(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{preferred}/", timeout=0.5)
        return free_port()
    return preferred


# --- status and the slow request --------------------------------------------------------


def locust_status(csv_prefix: Path) -> str | None:
    """One line from the Aggregated row Locust rewrites every second."""
    path = Path(f"{csv_prefix}_stats.csv")
    try:
        with path.open(newline="") as handle:
            row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    except (OSError, StopIteration, KeyError):
        return None
    return (
        f"{int(row['Request Count']):,} requests, {float(row['Requests/s']):.0f} req/s, "
        f"p50 {row['50%']} ms, p95 {row['95%']} ms, {row['Failure Count']} failed"
    )


def slowest_logged_request(server: GunicornProcess) -> dict[str, Any] | None:
    """The slowest access-log record whose trace was sampled (exported): the default
    sampler keeps 10% of the traces, and a trace id that was not sampled leads nowhere."""
    slowest = None
    for record in server.log_records():
        duration = record.get("duration_ms")
        if (
            record.get("trace_id")
            and record.get("trace_sampled")
            and isinstance(duration, int | float)
            and (slowest is None or duration > slowest["duration_ms"])
        ):
            slowest = record
    return slowest


def slowest_jaeger_trace(service: str = "parity-api") -> tuple[str, float] | None:
    """(trace id, duration ms) of the slowest trace of the last 15 minutes in Jaeger."""
    try:
        response = httpx.get(
            f"{JAEGER}/api/traces",
            params={"service": service, "lookback": "15m", "limit": 200, "minDuration": "20ms"},
            timeout=10,
        )
        traces = response.json().get("data") or []
    except (httpx.HTTPError, ValueError):
        return None
    best = None
    for trace in traces:
        duration = max((span.get("duration", 0) for span in trace.get("spans", [])), default=0)
        if best is None or duration > best[1]:
            best = (trace["traceID"], duration / 1000)
    return best


# --- the modes ----------------------------------------------------------------------------


def print_native_urls(base_url: str, exporter: int, prometheus: NativePrometheus | None) -> None:
    say("\nOpen while it runs:")
    say(f"  API                      {base_url}/docs")
    with contextlib.suppress(httpx.HTTPError):
        if httpx.get(base_url + "/metrics", timeout=2).status_code == 200:
            say(f"  API metrics              {base_url}/metrics")
    say(f"  Locust client metrics    http://127.0.0.1:{exporter}/metrics")
    if prometheus is not None:
        graph = urllib.parse.urlencode(
            {
                "g0.expr": CLIENT_P95, "g0.tab": "0", "g0.range_input": "15m",
                "g1.expr": SERVER_P95, "g1.tab": "0", "g1.range_input": "15m",
            }
        )  # fmt: skip
        say(f"  Prometheus               {prometheus.base_url}/targets")
        say(f"  client vs server p95     {prometheus.base_url}/graph?{graph}")
    else:
        say("  Prometheus               not installed (apt-get install prometheus) — skipped")
    say(
        "\nNo Grafana and no Jaeger on this machine (they run in compose): for the Load test, "
        "API overview and Dependencies dashboards and clickable traces, run `make up`, then "
        "`make demo DEMO_ARGS=--compose`."
    )


def native_prometheus(api: str, exporter: int, stack: ExitStack) -> NativePrometheus | None:
    if binaries() is None:
        return None
    port = port_or_free(9090)
    config = native_config(
        {"api": [api], "prometheus": [f"127.0.0.1:{port}"], "locust": [f"127.0.0.1:{exporter}"]},
        interval=5.0,
        drop_jobs=[job for job in NATIVE_DROPPED_JOBS if job != "locust"],
    )
    return stack.enter_context(NativePrometheus(config, port=port))


def run_local(args: argparse.Namespace, out: Path) -> int:
    """--native (start the API here) or --url (an API already running)."""
    with ExitStack() as stack:
        server: GunicornProcess | None = None
        if args.target.kind == "url":
            base_url = args.target.url
            # /health: behind compose's load balancer /ready is not served (it is on the
            # replicas' internal listener, app/listeners.py).
            httpx.get(base_url + "/health", timeout=5).raise_for_status()
        else:
            # A database and Redis prefix of this run's own, removed when it ends.
            say(f"preparing a database of its own (migrate, seed {args.products} products)")
            url = stack.enter_context(scratch_database("demo", args.products))
            prefix = f"parity-demo-{uuid.uuid4().hex[:12]}:"
            redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            stack.callback(delete_redis_prefix, redis_url, prefix)
            native = NativeStack(database_url=url, env={"REDIS_KEY_PREFIX": prefix})
            port = port_or_free(8000)
            say(f"starting the API with {args.workers} workers on 127.0.0.1:{port}")
            server = stack.enter_context(
                native.start_gunicorn(workers=args.workers, port=port, ready_timeout=60)
            )
            base_url = server.base_url
        exporter = port_or_free(9646)
        host_port = base_url.split("://", 1)[1]
        prometheus = native_prometheus(host_port, exporter, stack) if args.prometheus else None
        locust = start_locust(args, base_url, exporter, out)
        stack.callback(stop_locust, locust)
        print_native_urls(base_url, exporter, prometheus)

        def slow_request() -> None:
            record = slowest_logged_request(server) if server else None
            if record is None:
                say(
                    "\nslowest request: none with a sampled trace in the log yet (with --url, "
                    "read your server's log: the `trace_id` of its slowest `app.access` line)"
                )
                return
            say(
                f"\nslowest request so far (sampled): {record.get('method')} "
                f"{record.get('path')} {record['duration_ms']} ms, trace_id "
                f"{record['trace_id']}\n  natively its spans go to OTEL_EXPORTER_OTLP_ENDPOINT "
                "(no collector here); with a collector and Jaeger it is at "
                f"{JAEGER}/trace/{record['trace_id']} (`--compose` prints that link)"
            )

        return watch(locust, out / "locust", args.duration, slow_request)


def run_compose(args: argparse.Namespace, out: Path) -> int:
    compose = ComposeStack(base_url=args.target.url)
    compose.wait_ready(timeout=120)
    say("starting the compose `locust` service (profile loadtest)")
    result = compose.compose("--profile", "loadtest", "up", "--detach", "locust", check=False)
    if result.returncode != 0:
        raise StackError(f"docker compose up locust failed: {result.stderr.strip()}")
    # Any answer but a 5xx: Locust's UI is up.
    wait_until_answers(f"{LOCUST_UI}/", timeout=90, interval=1, accept=lambda status: status < 500)
    response = httpx.post(
        f"{LOCUST_UI}/swarm",
        data={
            "user_count": args.users,
            "spawn_rate": args.users,
            "host": "http://api:8000",
            "run_time": f"{args.duration}s",
            "think_time": "1",
            "shape": "constant",
        },
        timeout=10,
    )
    response.raise_for_status()
    say("\nOpen while it runs:")
    for title, path in DASHBOARDS.items():
        say(f"  {title:<37} {GRAFANA}{path}?refresh=5s&from=now-15m&to=now")
    say(f"  {'Locust web UI':<37} {LOCUST_UI}")
    say(f"  {'Prometheus targets':<37} {PROMETHEUS}/targets")
    say(f"  {'Jaeger':<37} {JAEGER}/search?service=parity-api")

    def slow_trace() -> None:
        found = slowest_jaeger_trace()
        if found is None:
            say("\nslowest trace: none in Jaeger yet (is the collector up?)")
        else:
            say(
                f"\nslowest trace of the last 15 min ({found[1]:.0f} ms): {JAEGER}/trace/{found[0]}"
            )

    try:
        deadline = time.monotonic() + args.duration
        shown = False
        started = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(STATUS_EVERY)
            with contextlib.suppress(httpx.HTTPError, ValueError):
                stats = httpx.get(f"{LOCUST_UI}/stats/requests", timeout=5).json()
                say(
                    f"  {stats.get('user_count', 0)} users, {stats.get('total_rps', 0):.0f} "
                    f"req/s, p95 {stats.get('current_response_time_percentiles', {}).get('response_time_percentile_0.95', '?')} ms, "  # noqa: E501
                    f"failures {100 * stats.get('fail_ratio', 0):.1f}%"
                )
            if not shown and time.monotonic() - started >= SLOW_TRACE_AFTER:
                slow_trace()
                shown = True
    finally:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{LOCUST_UI}/stop", timeout=5)
        say("load stopped (the locust service keeps running: `docker compose stop locust`)")
    return 0


def start_locust(args: argparse.Namespace, base_url: str, exporter: int,
                 out: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    command = locust_command(
        base_url,
        out_prefix=out / "locust",
        tags=["mixed"],
        users=args.users,
        spawn_rate=max(1, args.users // 5),
        seconds=args.duration,
        extra_args=[
            "--think-time", "1",
            "--product-count", str(args.products),
            "--prometheus-port", str(exporter),
        ],
    )  # fmt: skip
    say(f"starting Locust: {args.users} users of the mixed scenario for {args.duration}s")
    log = (out / "locust.log").open("wb")
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=locust_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches this script, which stops Locust in order
    )  # fmt: skip


def watch(locust: subprocess.Popen[bytes], csv_prefix: Path, duration: float,
          slow_request: Any) -> int:  # fmt: skip
    """Print status lines until Locust ends (after --duration) or Ctrl-C."""
    started = time.monotonic()
    shown = False
    while locust.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            locust.wait(STATUS_EVERY)
        if locust.poll() is None:
            status = locust_status(csv_prefix)
            elapsed = time.monotonic() - started
            say(f"  {elapsed:4.0f}/{duration:.0f}s  {status or 'starting…'}")
            if not shown and elapsed >= SLOW_TRACE_AFTER:
                slow_request()
                shown = True
    say(f"\ndone: {locust_status(csv_prefix) or 'no statistics'}")
    say(f"Locust's report: {csv_prefix}.html")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parity demo", description=__doc__.split("\n\n")[0])
    add_target_options(parser, ("native", "compose", "url"))
    parser.add_argument("--users", type=int, default=20, help="simulated users (default 20)")
    parser.add_argument("--duration", type=int, default=600,
                        help="seconds of load (default 600; Ctrl-C stops earlier)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2,
                        help="--native: Gunicorn workers (default 2)")  # fmt: skip
    parser.add_argument("--products", type=int, default=10_000,
                        help="products seeded / in the catalogue (default 10000)")  # fmt: skip
    parser.add_argument("--out", type=Path,
                        help="Locust's report and log (default results/demo-<time>)")  # fmt: skip
    parser.add_argument("--no-prometheus", dest="prometheus", action="store_false",
                        help="--native/--url: do not start a local Prometheus")  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("users", "duration", "workers", "products"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name}: {getattr(args, name)} must be at least 1")
    args.target = target_choice(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or REPO_ROOT / "results" / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.target.kind == "compose":
            return run_compose(args, out)
        return run_local(args, out)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        say("\nstopped: Locust, Prometheus and the API are shut down")
        return 0
    except (StackError, httpx.HTTPError, OSError) as exc:
        say(f"error: {exc}")
        return 1
