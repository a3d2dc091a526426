"""Prove that a signal in the middle of traffic loses no request.

Runs load (parity.harness.load: many concurrent clients mixing fast and slow requests,
over keep-alive and fresh connections), sends the signal to the Gunicorn master
mid-load, and reports: requests sent, in flight at the signal, completed OK, failed by
kind, connections refused after the listener closed, drain time, the master's exit code,
and whether every worker went through the shutdown phases in order (from the logs).
docs/shutdown.md explains the sequence.

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
import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from parity.harness.load import Load, Request, RequestSource, Sample
from parity.harness.report import figure
from parity.harness.report import progress as log
from parity.harness.stack import (
    StackError,
)
from parity.harness.target import (
    ComposeTarget,
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
SLOW, FAST = "slow", "fast"  # the requests' labels
# After a HUP, how long new workers must have been answering before the load stops: the
# report's "answering at the end" looks at the requests of the last 2 s.
NEW_WORKERS_WINDOW = 3.0
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
    """One request as the client saw it (a Sample of the load, seen by this proof); times
    are seconds since the load started."""

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

    @classmethod
    def of(cls, sample: Sample, t0: float) -> Attempt:
        return cls(
            slow=sample.label == SLOW,
            fresh=sample.fresh,
            started=sample.started - t0,
            sent=None if sample.sent is None else sample.sent - t0,
            ended=sample.ended - t0,
            new_connection=sample.new_connection,
            outcome=outcome_of(sample),
            status=sample.status or None,
            error=error_of(sample),
            connection_close=sample.connection_close,
            pid=sample.kept if sample.status == 200 else None,
        )

    def in_flight_at(self, moment: float) -> bool:
        """Sent to the server (not just queued in the client) and not yet answered."""
        sent = self.sent is not None and self.sent <= moment
        return sent and (self.ended is None or self.ended > moment)


def read_answer(response: httpx.Response) -> int | str | None:
    """What a request keeps of its answer (Sample.kept): of a 200 from the slow endpoint,
    the pid of the worker that answered (after a HUP, new workers must answer); of any
    other status, the body (the report's examples; the drain's cut-off says so there)."""
    if response.status_code != 200:
        return response.text
    if response.url.path == SLOW_PATH:
        pid: int | None = response.json().get("pid")
        return pid
    return None


def outcome_of(sample: Sample) -> str:
    if not sample.status:
        # The driver's reasons for no answer are this proof's failure kinds (timeout,
        # reset, other), but a connection never accepted lost no request.
        return REFUSED if sample.not_accepted else str(sample.reason)
    if sample.status == 200:
        return OK
    if sample.status >= 500:
        is_cut = sample.status == 503 and CUT_OFF_TYPE in str(sample.kept)
        return "cut_off" if is_cut else "5xx"
    return "unexpected_status"


def error_of(sample: Sample) -> str | None:
    if sample.status in (0, 200):
        return sample.error  # why there was no answer; None for a 200
    return f"{sample.status} {str(sample.kept)[:200]}"


# --- load -------------------------------------------------------------------------------


@dataclass
class LoadShape:
    """The mix of requests and clients (the report's `load`)."""

    clients: int = 300
    slow_share: float = 0.7  # of requests
    fresh_share: float = 0.5  # of clients
    slow_ms: int = 2000  # slow requests take slow_ms .. 1.5 x slow_ms
    fast_path: str = FAST_PATH
    timeout: float = 60.0


def mixed_requests(shape: LoadShape, seed: int = 1) -> RequestSource:
    """Slow or fast at random, `slow_share` of them slow."""
    rng = random.Random(seed)

    def next_request(client: int, n: int) -> Request:
        if rng.random() < shape.slow_share:
            ms = rng.randint(shape.slow_ms, shape.slow_ms * 3 // 2)
            return Request(SLOW, "GET", f"{SLOW_PATH}?ms={ms}", keep=read_answer)
        return Request(FAST, "GET", shape.fast_path, keep=read_answer)

    return next_request


def shaped_load(base_url: str, shape: LoadShape) -> Load:
    return Load(
        base_url,
        mixed_requests(shape),
        concurrency=shape.clients,
        fresh_clients=round(shape.clients * shape.fresh_share),
        timeout=httpx.Timeout(shape.timeout, connect=10.0),
        # Not all at once: that would measure how a cold server copes with a thundering
        # herd, not how it shuts down.
        ramp_seconds=0.5,
        refused_backoff=0.2,  # after TERM the listener closes: back off, do not spin
    )


def since(t0: float) -> float:
    return time.monotonic() - t0


# --- the run ----------------------------------------------------------------------------


@dataclass
class RunConfig:
    signal: signal.Signals
    shape: LoadShape
    min_in_flight: int = 200
    after: float = 8.0  # HUP: keep the load up at least this long after the signal
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


def wait_for_in_flight(load: Load, t0: float, config: RunConfig, deadline: float = 45.0) -> None:
    """Until `min_in_flight` requests are in flight, slow ones among them, and the load
    has run for a second (so keep-alive connections exist)."""
    peak = 0
    while True:
        in_flight = load.in_flight()
        peak = max(peak, len(in_flight))
        if (
            since(t0) >= 1.0
            and len(in_flight) >= config.min_in_flight
            and any(r.label == SLOW for r in in_flight)
        ):
            return
        if since(t0) > deadline:
            raise StackError(
                f"only {peak} requests in flight at most (wanted {config.min_in_flight}): "
                "raise --clients or lower --min-in-flight"
            )
        time.sleep(0.05)


def progress_line(load: Load, t0: float) -> str:
    pending = load.pending()
    outcomes = Counter(outcome_of(s) for s in list(load.samples))
    lost = sum(n for kind, n in outcomes.items() if kind in FAILURE_KINDS)
    return (
        f"  [{since(t0):5.1f}s] sent {outcomes.total() + pending:6d}  in flight "
        f"{pending:4d}  ok {outcomes[OK]:6d}  refused {outcomes[REFUSED]:4d}  "
        f"failed {lost:3d}"
    )


@contextmanager
def progress(load: Load, t0: float, every: float = 1.0) -> Iterator[None]:
    """A progress line every `every` seconds while the block runs."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            log(progress_line(load, t0))

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


def run_load(target: Target, config: RunConfig) -> RunData:
    load = shaped_load(target.base_url, config.shape)
    t0 = time.monotonic()
    # The load stops (no new requests; those in flight finish) before the ticker does.
    with progress(load, t0) if config.progress else nullcontext(), load:
        wait_for_in_flight(load, t0, config)
        old_workers = target.worker_pids()
        in_flight = load.in_flight()
        log(
            f"sending {config.signal.name} at {since(t0):.1f}s with {len(in_flight)} "
            f"requests in flight ({sum(r.label == SLOW for r in in_flight)} slow)"
        )
        signal_wall, signal_at = time.time(), since(t0)
        target.send_signal(config.signal)
        exit_at = after_signal(target, t0, config, load, old_workers)
        load_stopped_at = since(t0)
    exit_code = target.exit_code() if config.signal == signal.SIGTERM else None
    data = RunData(
        attempts=[Attempt.of(sample, t0) for sample in load.samples],
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


def after_signal(
    target: Target, t0: float, config: RunConfig, load: Load, old_workers: set[int]
) -> float | None:
    """TERM: keep the load on until the master has exited; HUP: for `after` seconds and
    until new workers have answered for a while (see until_new_workers_answer)."""
    if config.signal != signal.SIGTERM:
        until_new_workers_answer(load, old_workers, t0, config)
        return None
    deadline = since(t0) + config.exit_timeout
    while since(t0) < deadline:
        if not target.running():
            log(f"the master exited {since(t0):.1f}s into the run")
            return since(t0)
        time.sleep(0.1)
    log(f"the master was still running {config.exit_timeout:g}s after the signal")
    return None


def until_new_workers_answer(
    load: Load, old_workers: set[int], t0: float, config: RunConfig
) -> None:
    """After a HUP, the load goes on for `after` seconds, and on until a worker that is
    not an old one has answered for NEW_WORKERS_WINDOW seconds: Gunicorn stops the old
    workers at once and the new ones take as long as the app takes to import, which
    on a busy machine exceeds `after`. Bounded by `exit_timeout`; the report says when
    the new workers first answered (the reload's gap)."""
    signal_at = time.monotonic()
    while time.monotonic() < signal_at + config.exit_timeout:
        first = first_new_answer(load.samples, old_workers, signal_at)
        long_enough = time.monotonic() >= signal_at + config.after
        if long_enough and first is not None and time.monotonic() >= first + NEW_WORKERS_WINDOW:
            return
        time.sleep(0.1)
    log(f"no new worker had answered {config.exit_timeout:g}s after the signal")


def first_new_answer(
    samples: Sequence[Sample], old_workers: set[int], since: float
) -> float | None:
    """When (time.monotonic()) a worker not in `old_workers` first answered a request
    sent after `since`; None if none has yet."""
    answers = [
        s.ended for s in list(samples)
        if isinstance(s.kept, int) and s.kept not in old_workers and s.started >= since
    ]  # fmt: skip
    return min(answers, default=None)


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
    new = [
        a.ended - data.signal_at for a in data.attempts
        if a.pid is not None and a.pid not in data.old_workers
        and a.started >= data.signal_at and a.ended is not None
    ]  # fmt: skip
    return {
        "old_workers": sorted(data.old_workers),
        "answered_by_at_the_end": sorted(p for p in late_pids if p is not None),
        "new_workers_answer": bool(late_pids) and not (late_pids & data.old_workers),
        # The reload's gap: Gunicorn stops the old workers before the new ones can answer.
        "new_workers_first_answered_after_s": round(min(new), 2) if new else None,
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
        first = reload["new_workers_first_answered_after_s"]
        lines.append(
            "  new workers first answered    "
            + (f"{first:.2f} s after the signal" if first is not None else "never")
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
    parser.add_argument(
        "--after",
        type=float,
        default=8.0,
        help="HUP: seconds of load after the signal at least (8; then on until new workers answer)",
    )
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
    target = open_target(args.target, label="shutdown", workers=args.workers, env=env,
                         products=100, log_file=args.log_file)  # fmt: skip
    if isinstance(target, ComposeTarget):
        one_container(target)
    return target


def one_container(target: ComposeTarget) -> None:
    """`docker compose stop/kill api` signals every replica at once: this proves what
    one replica does. The replicated path, through the load balancer, is `make
    rollout`'s (docs/shutdown.md)."""
    replicas = target.stack.container_count()
    if replicas != 1:
        target.close()
        raise StackError(
            f"--compose signals the whole `{target.stack.service}` service, which has "
            f"{replicas} containers: run it with one (API_REPLICAS=1 docker compose up "
            "-d api), or use `make rollout` for several behind the load balancer"
        )


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
        data = run_load(target, config)
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
