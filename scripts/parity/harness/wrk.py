"""wrk, the load generator of every benchmark, and what the benchmarks share around it:
its one-line JSON report, the Lua that gives each request a client of its own, the
machine's description, the server's CPU per request, and a stand-in OTLP receiver so
sampled spans are really exported. Commands: `parity bench ...`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import psutil
from redis import Redis

from parity.harness.bench_apps import TRIVIAL_PATH
from parity.harness.benchdocs import cpu_model
from parity.harness.report import progress
from parity.harness.stack import GunicornProcess, StackError

T = TypeVar("T")

# wrk calls done() once at the end; one JSON line is easier to trust than its text.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


# Each request comes from one of 10,000 client addresses per wrk thread (198.18.0.0/15,
# no real client; X-Forwarded-For, believed from loopback): the rate limiter checks
# every request against Redis, and no client comes near the default quota. (A made-up
# API key is no identity: only issued keys are.) A script adds its own `request`
# calling next_address(), which counts the thread's requests in `counter`.
ADDRESS_LUA = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
local counter = 0
function next_address()
  counter = counter + 1
  local n = (id * 10000 + counter % 10000) % 131072
  local high, low = 18 + math.floor(n / 65536), n % 65536
  return "198." .. high .. "." .. math.floor(low / 256) .. "." .. (low % 256)
end
"""

# The same request (the URL given to wrk), each from a client of its own.
IDENTITY_LUA = (
    ADDRESS_LUA
    + """
request = function()
  return wrk.format(nil, nil, {["X-Forwarded-For"] = next_address()})
end
"""
)


# Shared by every route: thread ids, a fresh client address per request, and a JSON report
# (with the X-Cache MISS count) written by done() for parity.commands.bench_rate_limit.wrk.
LUA_COMMON = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
counter = 0
misses = 0
function identity()
  counter = counter + 1
  return "bench-" .. run .. "-" .. id .. "-" .. counter
end
-- A client of its own per request: an address (198.18.0.0/15, no real client) as
-- X-Forwarded-For, which the server believes from loopback (FORWARDED_ALLOW_IPS). A
-- made-up API key is no identity (only issued keys are). Each thread walks its own
-- block of the /15 from an offset random per wrk run (`run`), so neither threads nor
-- the runs of one window (rounds, loads) keep hitting the same few addresses.
local offset = tonumber(string.sub(run, 1, 5), 16) % 131072
function address()
  local n = (offset + (id - 1) * math.floor(131072 / nthreads) + counter) % 131072
  local high, low = 18 + math.floor(n / 65536), n % 65536
  return "198." .. high .. "." .. math.floor(low / 256) .. "." .. (low % 256)
end
function client()
  identity()
  return address()
end
response = function(status, headers, body)
  if headers["x-cache"] == "MISS" or headers["X-Cache"] == "MISS" then
    misses = misses + 1
  end
end
done = function(summary, latency, requests)
  local missed = 0
  for _, thread in ipairs(threads) do missed = missed + thread:get("misses") end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d, "misses": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), missed))
end
"""


def rate_and_latency(raw: dict[str, Any]) -> tuple[float, float, float]:
    """From a WRK_REPORT: requests per second, p50 and p99 latency in ms."""
    rate = round(raw["requests"] / (raw["duration_us"] / 1e6), 1)
    return rate, raw["p50_us"] / 1000, raw["p99_us"] / 1000


def wrk(url: str, *, connections: int, threads: int, seconds: int, script: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise StackError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def machine() -> dict[str, Any]:
    model = cpu_model()
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        redis_version = str(redis.info("server").get("redis_version", "?"))
    finally:
        redis.close()
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": redis_version,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass
class CpuSample:
    server: str  # full | bare
    round: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float  # the server's master + workers
    non_2xx: int
    socket_errors: int


def server_cpu_seconds(server: GunicornProcess) -> float:
    total = 0.0
    for pid in [server.pid, *server.worker_pids()]:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def measure_cpu(name: str, server: GunicornProcess, round_: int, *, connections: int,
                seconds: int, script: Path) -> CpuSample:  # fmt: skip
    """One wrk run on the trivial route: rate, latency, and the server's CPU per request."""
    cpu_before = server_cpu_seconds(server)
    raw = wrk(
        server.base_url + TRIVIAL_PATH,
        connections=connections,
        threads=2,
        seconds=seconds,
        script=script,
    )
    cpu = server_cpu_seconds(server) - cpu_before
    return CpuSample(
        name,
        round_,
        *rate_and_latency(raw),
        round(1e6 * cpu / max(raw["requests"], 1), 1),
        raw["non_2xx"],
        raw["socket_errors"],
    )


def measure_in_rotation(
    servers: Mapping[str, GunicornProcess],
    *,
    rounds: int,
    connections: int,
    seconds: int,
    script: Path,
    report: Callable[[int, CpuSample], None],
) -> list[CpuSample]:
    """`rounds` rounds of measure_cpu on every server, each server taking each position
    in turn (first in one round, last in another), so that a drift of a shared machine's
    speed spreads over all of them; `report(round, sample)` after each measurement."""
    samples = []
    names = list(servers)
    for round_ in range(1, rounds + 1):
        shift = (round_ - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            sample = measure_cpu(name, servers[name], round_, connections=connections,
                                 seconds=seconds, script=script)  # fmt: skip
            samples.append(sample)
            report(round_, sample)
    return samples


def round_progress(
    rounds: int, *, name_width: int, rate_width: int, percentiles: bool
) -> Callable[[int, CpuSample], None]:
    """The `report` of measure_in_rotation that prints one progress line per measurement:
    round, server (padded to `name_width`), rate (`rate_width`), p50/p99 if
    `percentiles`, CPU per request. The widths let a command line up its own names."""

    def report(round_: int, sample: CpuSample) -> None:
        latency = f"p50 {sample.p50_ms:.2f} ms  p99 {sample.p99_ms:.2f} ms  " if percentiles else ""
        progress(
            f"round {round_}/{rounds} {sample.server:<{name_width}} "
            f"{sample.requests_per_second:>{rate_width}.0f} req/s  {latency}"
            f"{sample.cpu_us_per_request:.0f} µs CPU/request"
        )

    return report


def measured(measure: Callable[[], T]) -> T:
    """`measure()`, or the end of the benchmark when it cannot finish: exit 1 with the
    error on one line when a server or a tool failed (no traceback), 130 on Ctrl-C."""
    try:
        return measure()
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        progress(f"error: {exc}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        progress("interrupted")
        raise SystemExit(130) from None


class OtlpSink:
    """A stand-in OpenTelemetry Collector: accepts OTLP/HTTP exports (POST /v1/traces)
    on a loopback port and counts them, so the full app really serialises and sends its
    sampled spans, as it would to a collector, instead of failing to connect."""

    def __init__(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.exports += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.exports = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
