"""The one load driver of the verification commands (chaos, rollout, verify dashboards,
the compose e2e, the outage tests): `concurrency` clients sending requests back to back,
each answer recorded as a Sample (when it started, how long it took, the route it counts
under, the status, the problem type, Retry-After, X-Cache, or why there was no answer),
so a run is cut into phases and counted per route and status afterwards.

    with Load(base_url, cycle(default_requests(product_ids)), concurrency=4) as load:
        runs = run_phases(load, [Phase("steady", 5), Phase("redis down", 3, before=stop)])
    runs[1].samples         # what the clients saw while Redis was down
    load.counts()           # {("GET", "read", 200): 812, ...}

Bounded: the clients stop when the `with` block ends, or earlier after `max_requests`;
every phase after its `seconds`. Traffic goes only to `base_url` (loopback or the
project's own containers). Status 0 means no HTTP answer at all (refused, reset,
client timeout): the error is in `Sample.error`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Request:
    label: str  # what it is counted under: a name ("read") or a route template
    method: str
    path: str
    options: Mapping[str, Any] = field(default_factory=dict)  # httpx: json, params, headers


# The next request of client `client`, its `n`-th.
RequestSource = Callable[[int, int], Request]


def cycle(requests: Sequence[Request]) -> RequestSource:
    """Round-robin over `requests`, each client starting at its own offset."""
    if not requests:
        raise ValueError("no requests to send")
    return lambda client, n: requests[(client + n) % len(requests)]


def default_requests(product_ids: Sequence[int]) -> list[Request]:
    """Health, product reads and lists, one order: what the outage proofs send."""
    requests = [Request("health", "GET", "/health")]
    for product_id in product_ids:
        requests += [
            Request("read", "GET", f"/api/v1/products/{product_id}"),
            Request("list", "GET", "/api/v1/products?limit=5"),
        ]
    order = {"items": [{"product_id": product_ids[0], "quantity": 1}]}
    requests.append(Request("order", "POST", "/api/v1/orders", {"json": order}))
    return requests


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # time.monotonic()
    latency: float
    label: str
    status: int  # 0: no HTTP answer (connection refused, reset, client timeout)
    problem: str | None = None
    retry_after: str | None = None
    cache: str | None = None
    error: str | None = None  # why there was no HTTP answer
    method: str = "GET"

    @property
    def failed(self) -> bool:
        """What a client would call a failure: no HTTP answer at all, or a 5xx."""
        return self.status == 0 or self.status >= 500


class Load:
    """`concurrency` threads, each a client with its own keep-alive connection, sending
    what `source` gives them back to back until stopped or `max_requests` have been
    sent; `client_headers(client)` adds a client's own headers (e.g. its address)."""

    def __init__(
        self,
        base_url: str,
        source: RequestSource,
        *,
        concurrency: int = 4,
        headers: Mapping[str, str] | None = None,
        client_headers: Callable[[int], Mapping[str, str]] | None = None,
        timeout: float = 10.0,
        max_requests: int | None = None,
    ) -> None:
        self.base_url = base_url
        self.source = source
        self.concurrency = concurrency
        self.headers = dict(headers or {})
        self.client_headers = client_headers or (lambda client: {})
        self.timeout = timeout
        self.budget = max_requests
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        for client in range(self.concurrency):
            thread = threading.Thread(target=self._run, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def _take_one(self) -> bool:
        """Whether another request may be sent (the budget, if any, is shared)."""
        with self._lock:
            if self.budget is None:
                return True
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True

    def _run(self, client: int) -> None:
        headers = {**self.headers, **self.client_headers(client)}
        with httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=headers) as http:
            n = 0
            while not self._stop.is_set() and self._take_one():
                sample = send(http, self.source(client, n))
                n += 1
                with self._lock:
                    self.samples.append(sample)

    def wait(self, seconds: float) -> None:
        """Let the clients run for `seconds`, or until they have spent the budget."""
        deadline = time.monotonic() + seconds
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def between(self, start: float, end: float) -> list[Sample]:
        """The samples of the requests started in [start, end)."""
        with self._lock:
            return [s for s in self.samples if start <= s.started < end]

    def counts(self, samples: Sequence[Sample] | None = None) -> Counter[tuple[str, str, int]]:
        """Answers by (method, label, status); status 0 counts the requests with none."""
        with self._lock:
            chosen = list(self.samples if samples is None else samples)
        return Counter((s.method, s.label, s.status) for s in chosen)


def send(http: httpx.Client, request: Request) -> Sample:
    started = time.monotonic()
    try:
        response = http.request(request.method, request.path, **request.options)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
        return Sample(
            started, time.monotonic() - started, request.label, 0, error=error,
            method=request.method,
        )  # fmt: skip
    problem = None
    if response.headers.get("content-type") == "application/problem+json":
        problem = response.json().get("type")
    return Sample(
        started,
        time.monotonic() - started,
        request.label,
        response.status_code,
        problem,
        response.headers.get("retry-after"),
        response.headers.get("x-cache"),
        method=request.method,
    )


# --- phases ---------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    # Called (blocking) before the phase is measured, e.g. stop Redis; then `settle`
    # (e.g. wait until the outage shows); `after` once it is over, e.g. start Redis.
    before: Callable[[], Any] | None = None
    settle: Callable[[], Any] | None = None
    after: Callable[[], Any] | None = None
    # run_fresh_phases only: this phase's own clients and request budget.
    concurrency: int = 4
    max_requests: int | None = None


@dataclass
class PhaseRun:
    name: str
    start: float  # time.monotonic()
    end: float
    samples: list[Sample]

    @property
    def seconds(self) -> float:
        return self.end - self.start


def run_phases(
    load: Load,
    phases: Sequence[Phase],
    *,
    progress: Callable[[str], None] = lambda message: None,
    done: Callable[[PhaseRun], None] = lambda run: None,
) -> list[PhaseRun]:
    """Each phase in turn while one `load` keeps running across them: its hooks, then
    `seconds` of load; the samples of the requests started meanwhile and answered by
    the phase's end. `done` sees each phase as it ends."""
    runs = []
    for phase in phases:
        _hooks(phase.before, phase.settle)
        progress(f"{phase.name} ({phase.seconds:g} s, {load.concurrency} clients)")
        start = time.monotonic()
        time.sleep(phase.seconds)
        end = time.monotonic()
        run = PhaseRun(phase.name, start, end, load.between(start, end))
        _hooks(phase.after)
        done(run)
        runs.append(run)
    return runs


def run_fresh_phases(
    base_url: str,
    source: RequestSource,
    phases: Sequence[Phase],
    *,
    progress: Callable[[str], None] = lambda message: None,
    **load_options: Any,
) -> list[PhaseRun]:
    """Each phase with a load of its own (its `concurrency`, its `max_requests`), every
    request of it answered or failed before the next phase: nothing is left uncounted."""
    runs = []
    for phase in phases:
        _hooks(phase.before, phase.settle)
        progress(f"{phase.name} ({phase.seconds:g} s, {phase.concurrency} clients)")
        start = time.monotonic()
        load = Load(base_url, source, concurrency=phase.concurrency,
                    max_requests=phase.max_requests, **load_options)  # fmt: skip
        with load:
            load.wait(phase.seconds)
        runs.append(PhaseRun(phase.name, start, time.monotonic(), list(load.samples)))
        _hooks(phase.after)
    return runs


def _hooks(*hooks: Callable[[], Any] | None) -> None:
    for hook in hooks:
        if hook is not None:
            hook()
