"""Prove that a signal in the middle of traffic loses no request.

Runs load (many concurrent clients mixing fast and slow requests, over keep-alive and
fresh connections), sends the signal to the Gunicorn master mid-load, and reports:
requests sent, in flight at the signal, completed OK, failed by kind, connections refused
after the listener closed, drain time, the master's exit code, and whether every worker
went through the shutdown phases in order (from the logs). docs/shutdown.md explains the
sequence.

    parity verify shutdown --native --signal TERM
    parity verify shutdown --native --signal HUP
    parity verify shutdown --compose --signal TERM
    parity verify shutdown --pid 4242 --url http://127.0.0.1:8000 \\
        --log-file gunicorn.log

TERM: every request the server accepted must complete with its normal response; new
connections refused once the listener has closed are expected and reported apart. HUP
(zero-downtime reload): nothing may fail and nothing may be refused.

Exit status: 0 verified; 1 a request was lost (or a check failed); 2 bad usage or the
stack did not start. The target needs DEMO_ENDPOINTS_ENABLED=true (set by --native).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from parity.harness.report import figure
from parity.harness.report import progress as log
from parity.harness.stack import (
    StackError,
)
from parity.harness.target import (
    NativeTarget,
    Target,
    add_target_options,
    open_target,
    target_choice,
)

PHASES = ("signal", "delay", "stop_accepting", "drain", "lifespan_shutdown", "exit")
SLOW_PATH = "/api/v1/demo/slow"
# Fast requests: an immediate answer from the app. `--fast-path /api/v1/products/1` adds
# Redis and Postgres (and, on a busy machine, their timeouts) to the picture.
FAST_PATH = f"{SLOW_PATH}?ms=0"
CUT_OFF_TYPE = "urn:parity:problem:shutting-down"
# Outcomes that are not a lost request: a completed response, or a connection the server
# never accepted, refused or timed out while connecting (only expected after TERM, once
# the listener has closed).
OK, REFUSED = "ok", "refused"
FAILURE_KINDS = {
    "reset": "connection reset or closed before the response",
    "timeout": "no response within the client timeout",
    "5xx": "server error status",
    "cut_off": "503 from the drain timeout (request outlived SHUTDOWN_DRAIN_TIMEOUT_SECONDS)",
    "unexpected_status": "a status other than 200",
    "other": "any other client error",
}


# --- one request ------------------------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    """One request as the client saw it; times are seconds since the load started."""

    slow: bool
    fresh: bool  # sent by a client that opens a new connection for every request
    started: float
    sent: float | None = None  # the request headers were written to a connection
    ended: float | None = None
    new_connection: bool = False  # a TCP connect happened for it
    outcome: str = "pending"
    status: int | None = None
    error: str | None = None
    connection_close: bool = False  # the response said `Connection: close`
    pid: int | None = None  # the worker that answered (slow requests say)

    def in_flight_at(self, moment: float) -> bool:
        """Sent to the server (not just queued in the client) and not yet answered."""
        sent = self.sent is not None and self.sent <= moment
        return sent and (self.ended is None or self.ended > moment)


def os_error_of(exc: BaseException) -> OSError | None:
    """The operating system's error behind an httpx error (httpx -> httpcore -> anyio)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def describe_error(exc: Exception) -> str:
    cause = os_error_of(exc)
    errno_name = errno.errorcode.get(cause.errno, "?") if cause and cause.errno else None
    return f"{type(exc).__name__}: {exc}" + (f" [{errno_name}]" if errno_name else "")


def classify_error(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        # No TCP connection was made, so no request was accepted: ECONNREFUSED from a
        # closed listener, and, once a container has stopped, EHOSTUNREACH when its
        # address on the Docker network no longer answers ARP.
        return REFUSED
    if isinstance(exc, httpx.ConnectTimeout):
        # Never accepted either: no TCP handshake completed. Seen once a container has
        # stopped, when its address on the Docker network answers nothing at all.
        return REFUSED
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "reset"
    return "other"


def classify_response(response: httpx.Response) -> str:
    if response.status_code == 200:
        return OK
    if response.status_code >= 500:
        is_cut = response.status_code == 503 and CUT_OFF_TYPE in response.text
        return "cut_off" if is_cut else "5xx"
    return "unexpected_status"


# --- load -------------------------------------------------------------------------------


@dataclass
class LoadShape:
    clients: int = 300
    slow_share: float = 0.7  # of requests
    fresh_share: float = 0.5  # of clients
    slow_ms: int = 2000  # slow requests take slow_ms .. 1.5 x slow_ms
    fast_path: str = FAST_PATH
    timeout: float = 60.0


class Load:
    """Clients that loop until `stop()`: each sends one request at a time, slow or fast
    at random; keep-alive clients share a connection pool, fresh ones connect anew."""

    def __init__(self, base_url: str, shape: LoadShape, seed: int = 1) -> None:
        self.base_url = base_url
        self.shape = shape
        self.rng = random.Random(seed)
        self.attempts: list[Attempt] = []
        self.t0 = time.monotonic()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        timeout = httpx.Timeout(shape.timeout, connect=10.0)
        limits_pooled = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self._pooled = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits_pooled)
        limits_fresh = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        self._fresh = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits_fresh)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self, ramp_seconds: float = 0.5) -> None:
        """Start the clients spread over `ramp_seconds` (all at once would measure how a
        cold server copes with a thundering herd, not how it shuts down)."""
        fresh_clients = round(self.shape.clients * self.shape.fresh_share)
        for index in range(self.shape.clients):
            delay = ramp_seconds * index / self.shape.clients
            # Spread the fresh-connection clients evenly among the keep-alive ones.
            n = self.shape.clients
            fresh = (index + 1) * fresh_clients // n != index * fresh_clients // n
            client = self._client(fresh=fresh)
            self._tasks.append(asyncio.create_task(self._after(delay, client)))

    @staticmethod
    async def _after(delay: float, coroutine: Coroutine[Any, Any, None]) -> None:
        await asyncio.sleep(delay)
        await coroutine

    async def stop(self) -> None:
        """No new requests; wait for those in flight (each bounded by the timeout)."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pooled.aclose()
        await self._fresh.aclose()

    def in_flight(self) -> list[Attempt]:
        return [a for a in self.attempts if a.ended is None and a.sent is not None]

    async def _client(self, *, fresh: bool) -> None:
        while not self._stopping.is_set():
            attempt = await self._request(
                fresh=fresh, slow=self.rng.random() < self.shape.slow_share
            )
            if attempt.outcome == REFUSED:
                await asyncio.sleep(0.2)  # back off like a real client instead of spinning

    async def _request(self, *, fresh: bool, slow: bool) -> Attempt:
        attempt = Attempt(slow=slow, fresh=fresh, started=self.now())
        self.attempts.append(attempt)

        async def trace(event: str, info: dict[str, Any]) -> None:
            if event == "connection.connect_tcp.started":
                attempt.new_connection = True
            elif event == "http11.send_request_headers.complete":
                attempt.sent = self.now()

        if slow:
            ms = self.rng.randint(self.shape.slow_ms, self.shape.slow_ms * 3 // 2)
            path = f"{SLOW_PATH}?ms={ms}"
        else:
            path = self.shape.fast_path
        client = self._fresh if fresh else self._pooled
        try:
            response = await client.get(path, extensions={"trace": trace})
        except httpx.HTTPError as exc:
            attempt.outcome, attempt.error = classify_error(exc), describe_error(exc)
        else:
            attempt.status = response.status_code
            attempt.outcome = classify_response(response)
            attempt.connection_close = response.headers.get("connection", "").lower() == "close"
            if attempt.outcome == OK and response.url.path == SLOW_PATH:
                attempt.pid = response.json().get("pid")
            if attempt.outcome != OK:
                attempt.error = f"{response.status_code} {response.text[:200]}"
        attempt.ended = self.now()
        return attempt


# --- the run ----------------------------------------------------------------------------


@dataclass
class RunConfig:
    signal: signal.Signals
    shape: LoadShape
    min_in_flight: int = 200
    after: float = 8.0  # HUP: keep the load up this long after the signal
    exit_timeout: float = 60.0  # TERM: give up waiting for the master after this long
    progress: bool = True


@dataclass
class RunData:
    attempts: list[Attempt]
    signal_at: float  # seconds since the load started
    signal_wall: float  # time.time() at the signal, to match log timestamps
    exit_at: float | None  # when the master was seen gone (TERM)
    exit_code: int | None
    old_workers: set[int]
    records: list[dict[str, Any]] | None
    load_stopped_at: float = 0.0  # no new requests after this
    notes: list[str] = field(default_factory=list)


async def wait_for_in_flight(load: Load, config: RunConfig, deadline: float = 45.0) -> None:
    """Until `min_in_flight` requests are in flight, slow ones among them, and the load
    has run for a second (so keep-alive connections exist)."""
    peak = 0
    while True:
        in_flight = load.in_flight()
        peak = max(peak, len(in_flight))
        if (
            load.now() >= 1.0
            and len(in_flight) >= config.min_in_flight
            and any(a.slow for a in in_flight)
        ):
            return
        if load.now() > deadline:
            raise StackError(
                f"only {peak} requests in flight at most (wanted {config.min_in_flight}): "
                "raise --clients or lower --min-in-flight"
            )
        await asyncio.sleep(0.05)


async def progress(load: Load, every: float = 1.0) -> None:
    while True:
        await asyncio.sleep(every)
        outcomes = Counter(a.outcome for a in load.attempts)
        lost = sum(n for kind, n in outcomes.items() if kind in FAILURE_KINDS)
        log(
            f"  [{load.now():5.1f}s] sent {len(load.attempts):6d}  in flight "
            f"{outcomes['pending']:4d}  ok {outcomes[OK]:6d}  refused {outcomes[REFUSED]:4d}  "
            f"failed {lost:3d}"
        )


async def run_load(target: Target, config: RunConfig) -> RunData:
    # Every new connection resolves its address in the default executor (anyio calls
    # getaddrinfo even for an IP): with its default of a few threads, fresh connections
    # would queue in the client and measure the client, not the server.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64))
    load = Load(target.base_url, config.shape)
    ticker = asyncio.create_task(progress(load)) if config.progress else None
    load.start()
    try:
        await wait_for_in_flight(load, config)
        old_workers = target.worker_pids()
        in_flight = load.in_flight()
        log(
            f"sending {config.signal.name} at {load.now():.1f}s with {len(in_flight)} "
            f"requests in flight ({sum(a.slow for a in in_flight)} slow)"
        )
        signal_wall, signal_at = time.time(), load.now()
        await asyncio.to_thread(target.send_signal, config.signal)
        exit_at = await after_signal(target, load, config)
    finally:
        load_stopped_at = load.now()
        await load.stop()
        if ticker is not None:
            ticker.cancel()
    exit_code = target.exit_code() if config.signal == signal.SIGTERM else None
    data = RunData(
        attempts=load.attempts,
        signal_at=signal_at,
        signal_wall=signal_wall,
        exit_at=exit_at,
        exit_code=exit_code,
        old_workers=old_workers,
        records=None,
        load_stopped_at=load_stopped_at,
    )
    records = target.log_records()
    if records is not None:
        data.records = [r for r in records if record_time(r) >= signal_wall - 1.0]
    return data


async def after_signal(target: Target, load: Load, config: RunConfig) -> float | None:
    """TERM: keep the load on until the master has exited; HUP: for `after` seconds."""
    if config.signal != signal.SIGTERM:
        await asyncio.sleep(config.after)
        return None
    deadline = load.now() + config.exit_timeout
    while load.now() < deadline:
        if not await asyncio.to_thread(target.running):
            log(f"the master exited {load.now():.1f}s into the run")
            return load.now()
        await asyncio.sleep(0.1)
    log(f"the master was still running {config.exit_timeout:g}s after the signal")
    return None


def record_time(record: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(record["time"])).timestamp()
    except (KeyError, ValueError):
        return 0.0


# --- the report -------------------------------------------------------------------------


def phase_report(records: list[dict[str, Any]] | None, signal_wall: float) -> dict[str, Any]:
    """Per worker pid: the shutdown phases it logged, in log order, with their timing."""
    if records is None:
        return {"checked": False, "reason": "no logs (pass --log-file with --pid)"}
    workers: dict[int, list[dict[str, Any]]] = {}
    master_exit: float | None = None
    for record in records:
        if phase := record.get("shutdown_phase"):
            workers.setdefault(int(record["pid"]), []).append(
                {
                    "phase": phase,
                    "since_signal_seconds": record.get("since_signal_seconds"),
                    "phase_seconds": record.get("phase_seconds"),
                    "at": round(record_time(record) - signal_wall, 3),
                    **{
                        k: record[k]
                        for k in ("cut_off", "outcome", "replacing_worker")
                        if k in record
                    },
                }
            )
        elif str(record.get("message", "")).startswith("Shutting down: Master"):
            master_exit = round(record_time(record) - signal_wall, 3)
    problems = []
    for pid, phases in workers.items():
        names = tuple(p["phase"] for p in phases)
        if names != PHASES:
            problems.append(
                f"worker {pid}: phases {', '.join(names)}; expected {', '.join(PHASES)}"
            )
    last_exit = max((p[-1]["at"] for p in workers.values() if p), default=None)
    if master_exit is not None and last_exit is not None and master_exit < last_exit:
        problems.append("the master exited before a worker finished its shutdown")
    return {
        "checked": True,
        "workers": {str(pid): phases for pid, phases in workers.items()},
        "master_exit_at": master_exit,
        "in_order": not problems and bool(workers),
        "problems": problems or ([] if workers else ["no worker logged a shutdown phase"]),
    }


def summarize(data: RunData, config: RunConfig) -> dict[str, Any]:
    attempts = data.attempts
    at_signal = [a for a in attempts if a.in_flight_at(data.signal_at)]
    outcomes = Counter(a.outcome for a in attempts)
    failed = {kind: outcomes[kind] for kind in FAILURE_KINDS if outcomes[kind]}
    refused_before = sum(
        1 for a in attempts if a.outcome == REFUSED and (a.ended or 0) < data.signal_at
    )
    phases = phase_report(data.records, data.signal_wall)
    drains = [
        p["phase_seconds"]
        for worker in phases.get("workers", {}).values()
        for p in worker
        if p["phase"] == "drain"
    ]
    report: dict[str, Any] = {
        "signal": config.signal.name.removeprefix("SIG"),
        "load": asdict(config.shape),
        "requests": {
            "sent": len(attempts),
            "in_flight_at_signal": len(at_signal),
            "in_flight_at_signal_slow": sum(a.slow for a in at_signal),
            "in_flight_at_signal_ok": sum(a.outcome == OK for a in at_signal),
            "completed_ok": outcomes[OK],
            "failed": failed,
            "lost": sum(failed.values()),
            "refused": outcomes[REFUSED],
            "refused_before_signal": refused_before,
            "with_connection_close": sum(a.connection_close for a in attempts),
        },
        "failure_examples": failure_examples(attempts),
        "timings": {
            "signal_at_seconds": round(data.signal_at, 3),
            "drain_seconds_max": max(drains, default=None),
            "signal_to_master_exit_seconds": (
                round(data.exit_at - data.signal_at, 3) if data.exit_at is not None else None
            ),
            "last_in_flight_request_done_seconds": max(
                (round(a.ended - data.signal_at, 3) for a in at_signal if a.ended), default=None
            ),
        },
        "exit_code": data.exit_code,
        "phases": phases,
    }
    if config.signal == signal.SIGHUP:
        report["reload"] = reload_report(data)
    report["verdict"] = verdict(report, config)
    return report


def failure_examples(attempts: Iterable[Attempt], per_kind: int = 3) -> dict[str, list[str]]:
    examples: dict[str, list[str]] = {}
    for a in attempts:
        if a.outcome in FAILURE_KINDS and len(examples.setdefault(a.outcome, [])) < per_kind:
            kind = "slow" if a.slow else "fast"
            conn = "new connection" if a.new_connection else "reused connection"
            examples[a.outcome].append(f"{kind}, {conn}, at {a.started:.2f}s: {a.error}")
    return examples


def reload_report(data: RunData) -> dict[str, Any]:
    """After a HUP the old workers must be gone and new ones answering."""
    late = [a for a in data.attempts if a.pid is not None and a.started > data.load_stopped_at - 2]
    late_pids = {a.pid for a in late}
    return {
        "old_workers": sorted(data.old_workers),
        "answered_by_at_the_end": sorted(p for p in late_pids if p is not None),
        "new_workers_answer": bool(late_pids) and not (late_pids & data.old_workers),
    }


def verdict(report: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    requests, reasons = report["requests"], []
    if requests["in_flight_at_signal"] == 0:
        reasons.append("no request was in flight at the signal: nothing was verified")
    if requests["lost"]:
        reasons.append(f"{requests['lost']} accepted requests lost: {requests['failed']}")
    if requests["refused_before_signal"]:
        reasons.append(f"{requests['refused_before_signal']} connections refused before the signal")
    if config.signal == signal.SIGHUP:
        if requests["refused"]:
            reasons.append(f"{requests['refused']} connections refused during a reload")
        if not report["reload"]["new_workers_answer"]:
            reasons.append("old workers still answered at the end (or none answered)")
    elif report["exit_code"] not in (0, None):
        reasons.append(f"the master exited with {report['exit_code']}")
    elif report["timings"]["signal_to_master_exit_seconds"] is None:
        reasons.append("the master did not exit")
    phases = report["phases"]
    if phases["checked"] and not phases["in_order"]:
        reasons.append("shutdown phases: " + "; ".join(phases["problems"]))
    return {"ok": not reasons, "reasons": reasons}


def render(report: dict[str, Any], description: str) -> str:
    r, t = report["requests"], report["timings"]
    lines = [
        f"graceful {report['signal']} against {description}",
        f"  requests sent                 {r['sent']}",
        f"  in flight at the signal       {r['in_flight_at_signal']} "
        f"({r['in_flight_at_signal_slow']} slow); "
        f"{r['in_flight_at_signal_ok']} of them completed OK",
        f"  completed OK                  {r['completed_ok']}"
        f" ({r['with_connection_close']} told `Connection: close`)",
        f"  lost (accepted, not answered) {r['lost']}",
    ]
    lines += [f"    {kind:<12} {n:5d}  {FAILURE_KINDS[kind]}" for kind, n in r["failed"].items()]
    lines += [
        f"      e.g. {e}" for examples in report["failure_examples"].values() for e in examples
    ]
    refused_note = (
        "expected after TERM: the listener had closed"
        if report["signal"] == "TERM"
        else "must be 0 on reload"
    )
    lines.append(f"  not accepted (refused)        {r['refused']} ({refused_note})")
    if t["drain_seconds_max"] is not None:
        lines.append(f"  drain (longest worker)        {t['drain_seconds_max']:.2f} s")
    if t["last_in_flight_request_done_seconds"] is not None:
        lines.append(
            f"  last in-flight request done   {t['last_in_flight_request_done_seconds']:.2f} s "
            "after the signal"
        )
    if report["signal"] == "TERM":
        exit_after = report["phases"].get("master_exit_at") or t["signal_to_master_exit_seconds"]
        lines.append(
            f"  master exit                   code {report['exit_code']}"
            + (f", {exit_after:.2f} s after the signal" if exit_after is not None else "")
        )
    else:
        reload = report["reload"]
        lines.append(
            f"  reload                        old workers {reload['old_workers']} -> answering "
            f"at the end {reload['answered_by_at_the_end']}"
        )
    phases = report["phases"]
    if phases["checked"]:
        status = "in order" if phases["in_order"] else "NOT in order"
        lines.append(
            f"  shutdown phases               {status} for {len(phases['workers'])} workers"
        )
        for pid, worker in phases["workers"].items():
            steps = "  ".join(f"{p['phase']}@{p['at']:.2f}s" for p in worker)
            lines.append(f"    {pid}: {steps}")
    else:
        lines.append(f"  shutdown phases               not checked: {phases['reason']}")
    v = report["verdict"]
    lines.append("VERDICT: " + ("OK, nothing lost" if v["ok"] else "FAILED"))
    lines += [f"  - {reason}" for reason in v["reasons"]]
    return "\n".join(lines)


# --- CLI --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity verify shutdown",
        description=__doc__.split("\n\n")[0],
        epilog="docs/shutdown.md explains the shutdown sequence and the numbers.",
    )
    add_target_options(parser, ("native", "compose", "pid"), default=None)
    parser.add_argument("--log-file", type=Path, help="with --pid: its log, for the phases")
    parser.add_argument("--signal", choices=["TERM", "HUP"], default="TERM")
    parser.add_argument("--clients", type=int, default=300, help="concurrent clients (300)")
    parser.add_argument("--min-in-flight", type=int, default=200, help="signal once this many")
    parser.add_argument("--slow-share", type=float, default=0.7, help="share of slow requests")
    parser.add_argument(
        "--fresh-share",
        type=float,
        default=0.5,
        help="share of clients that connect anew for each request",
    )
    parser.add_argument("--slow-ms", type=int, default=2000, help="slow: this to 1.5x (2000)")
    parser.add_argument("--fast-path", default=FAST_PATH, help=f"fast requests ({FAST_PATH})")
    parser.add_argument("--after", type=float, default=8.0, help="HUP: seconds of load after")
    parser.add_argument("--workers", type=int, default=2, help="--native: workers (2)")
    parser.add_argument("--delay", type=float, help="--native: SHUTDOWN_DELAY_SECONDS")
    parser.add_argument(
        "--drain-timeout", type=float, help="--native: SHUTDOWN_DRAIN_TIMEOUT_SECONDS"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", type=Path, help="write a timeline PNG here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    problems = check_args(args)
    if problems:
        parser.error("; ".join(problems))
    args.target = target_choice(parser, args)
    return args


def check_args(args: argparse.Namespace) -> list[str]:
    checks: list[tuple[bool, str]] = [
        (args.clients >= 1, f"--clients must be at least 1 (got {args.clients})"),
        (0 <= args.slow_share <= 1, f"--slow-share must be 0..1 (got {args.slow_share})"),
        (0 <= args.fresh_share <= 1, f"--fresh-share must be 0..1 (got {args.fresh_share})"),
        (0 <= args.slow_ms <= 40_000, f"--slow-ms must be 0..40000 (got {args.slow_ms})"),
        (args.min_in_flight <= args.clients, "--min-in-flight cannot exceed --clients"),
        (args.after > 0, f"--after must be positive (got {args.after})"),
        (args.workers >= 1, f"--workers must be at least 1 (got {args.workers})"),
        (args.log_file is None or args.pid is not None, "--log-file goes with --pid"),
        (args.fast_path.startswith("/"), f"--fast-path must start with / (got {args.fast_path})"),
    ]
    return [message for ok, message in checks if not ok]


def native_env(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    if args.delay is not None:
        env["SHUTDOWN_DELAY_SECONDS"] = str(args.delay)
    if args.drain_timeout is not None:
        env["SHUTDOWN_DRAIN_TIMEOUT_SECONDS"] = str(args.drain_timeout)
    return env


def make_target(args: argparse.Namespace) -> Target:
    # The rate limiter (100 requests/min per client by default) would answer most of the
    # load with 429s: this run measures shutdown, not admission control.
    env = {"DEMO_ENDPOINTS_ENABLED": "true", "RATE_LIMIT_ENABLED": "false", **native_env(args)}
    return open_target(args.target, label="shutdown", workers=args.workers, env=env,
                       products=100, log_file=args.log_file)  # fmt: skip


def check_target(base_url: str, fast_path: str) -> None:
    """Both kinds of request answer 200 before the load starts."""
    for path in (f"{SLOW_PATH}?ms=0", fast_path):
        try:
            response = httpx.get(f"{base_url}{path}", timeout=5)
        except httpx.HTTPError as exc:
            raise StackError(f"{base_url} does not answer: {exc}") from exc
        if response.status_code == 404 and path.startswith(SLOW_PATH):
            raise StackError(f"{base_url}{SLOW_PATH} is 404: set DEMO_ENDPOINTS_ENABLED=true")
        if response.status_code == 429:
            raise StackError(
                f"{base_url}{path} answered 429: run the target with RATE_LIMIT_ENABLED=false "
                "(or a quota above the load)"
            )
        if response.status_code != 200:
            raise StackError(f"{base_url}{path} answered {response.status_code}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = RunConfig(
        signal=signal.Signals[f"SIG{args.signal}"],
        shape=LoadShape(
            args.clients, args.slow_share, args.fresh_share, args.slow_ms, args.fast_path
        ),
        min_in_flight=args.min_in_flight,
        after=args.after,
        progress=not args.quiet,
    )
    try:
        target = make_target(args)
    except (StackError, OSError) as exc:
        log(f"error: {exc}")
        return 2
    try:
        check_target(target.base_url, config.shape.fast_path)
        data = asyncio.run(run_load(target, config))
    except StackError as exc:
        log(f"error: {exc}")
        target.close()
        if isinstance(target, NativeTarget):
            target.keep_log()
        return 2
    except BaseException:
        target.close()
        raise
    target.close()
    report = summarize(data, config)
    if isinstance(target, NativeTarget) and not report["verdict"]["ok"]:
        target.keep_log()  # what a failed run needs to be understood
    report["target"] = target.description
    if args.plot:
        plot_timeline(data, report, args.plot)
        log(f"timeline written to {args.plot}")
    print(json.dumps(report, indent=2) if args.json else render(report, target.description))
    return 0 if report["verdict"]["ok"] else 1


def plot_timeline(data: RunData, report: dict[str, Any], path: Path) -> None:
    """Requests in flight and outcomes per 100 ms around the signal, phases marked."""
    step = 0.1
    end = max((a.ended or a.started for a in data.attempts), default=0.0)
    bins = [i * step for i in range(int(end / step) + 2)]
    in_flight = [sum(a.in_flight_at(t) for a in data.attempts) for t in bins]
    done: dict[str, list[int]] = {}
    for a in data.attempts:
        if a.ended is not None:
            series = done.setdefault(a.outcome, [0] * len(bins))
            series[min(int(a.ended / step), len(bins) - 1)] += 1
    requests, verdict_ = report["requests"], report["verdict"]
    conclusion = (
        f"Nothing lost: {requests['in_flight_at_signal_ok']} of the "
        f"{requests['in_flight_at_signal']} requests in flight at the signal completed OK."
        if verdict_["ok"]
        else "FAILED: " + "; ".join(verdict_["reasons"])
    )
    with figure(
        path,
        title=f"SIG{report['signal']} under load",
        conclusion=conclusion,
        size=(11, 6),
        dpi=100,
    ) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True)
        top.plot(bins, in_flight, color="tab:blue")
        top.set_ylabel("requests in flight")
        colors: dict[str, str] = {OK: "tab:green", REFUSED: "tab:gray"}
        # Refusals are not failures: after TERM the listener closes on purpose.
        labels = {OK: "answered", REFUSED: "not accepted (expected once the listener closed)"}
        bottom_line = [0] * len(bins)
        for outcome, series in sorted(done.items()):
            color = colors.get(outcome, "tab:red")
            label = labels.get(outcome, f"LOST: {outcome}")
            bottom.bar(bins, series, width=step, bottom=bottom_line, color=color, label=label)
            bottom_line = [b + s for b, s in zip(bottom_line, series, strict=True)]
        bottom.set_ylabel("responses per 100 ms")
        bottom.set_xlabel("seconds since the load started")
        bottom.legend(loc="upper right")
        marks: list[tuple[float, str]] = [(data.signal_at, f"SIG{report['signal']}")]
        for phase in ("stop_accepting", "drain"):
            times = [
                p["at"]
                for worker in report["phases"].get("workers", {}).values()
                for p in worker
                if p["phase"] == phase
            ]
            if times:
                marks.append((data.signal_at + max(times), f"{phase} done"))
        # The master's exit, the moment the console reports (the workers exit just before).
        master_exit = report["phases"].get("master_exit_at")
        if master_exit is not None:
            marks.append((data.signal_at + master_exit, "master exit"))
        for axis in (top, bottom):
            for x, _ in marks:
                axis.axvline(x, color="black", linestyle="--", linewidth=0.8)
        # Marks a few tenths of a second apart (SIGTERM, then stop_accepting with no delay)
        # would print over each other: each label at its own height.
        for index, (x, label) in enumerate(marks):
            height = 1.0 - 0.22 * (index % 4)
            top.annotate(label, (x, height), xycoords=("data", "axes fraction"), xytext=(3, 0),
                         textcoords="offset points", fontsize=8, va="top")  # fmt: skip
