"""The one load driver of the verification commands (chaos, rollout, verify shutdown,
verify dashboards, the compose e2e, the outage tests): `concurrency` clients sending
requests back to back, each answer recorded as a Sample (when it started, how long it
took, the route it counts under, the status, the problem type, Retry-After, X-Cache, or
why there was no answer), so a run is cut into phases and counted per route and status
afterwards.

    with Load(base_url, cycle(default_requests(product_ids)), concurrency=4) as load:
        runs = run_phases(load, [Phase("steady", 5), Phase("redis down", 3, before=stop)])
    runs[1].samples         # what the clients saw while Redis was down
    load.counts()           # {("GET", "read", 200): 812, ...}

The clients are asyncio tasks on an event loop of the load's own, in a background
thread, each with its own httpx.AsyncClient: hundreds of them cost what a few threads
do. What a shutdown proof needs to know is there for every command:

    fresh_clients       that many clients (spread among the others) open a new
                        connection for every request; the others keep theirs alive
    ramp_seconds        the clients start spread over this long, not as one herd
    refused_backoff     a client pauses this long after a connection was not accepted
    Request.keep        reads a value from the answer into Sample.kept (e.g. a pid)
    load.in_flight()    the requests sent to the server (headers written) and not yet
                        ended, callable from any thread while the load runs

and per request, traced as httpx sends it: when its headers were written
(`Sample.sent`), whether a TCP connect happened for it (`new_connection`), whether the
answer said `Connection: close`, which kind of client sent it (`fresh`).

Bounded: the clients stop when the `with` block ends (no new request; those in flight
finish, bounded by the timeout), or earlier after `max_requests`; every phase after its
`seconds`. Traffic goes only to `base_url` (loopback or the project's own containers).
Status 0 means no HTTP answer at all (refused, reset, client timeout): the error is in
`Sample.error`, classified in `Sample.reason`.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any

import httpx


@dataclass(frozen=True)
class Request:
    label: str  # what it is counted under: a name ("read") or a route template
    method: str
    path: str
    options: Mapping[str, Any] = field(default_factory=dict)  # httpx: json, params, headers
    keep: Callable[[httpx.Response], Any] | None = None  # what Sample.kept holds of the answer


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


# Why there was no HTTP answer (Sample.reason).
REFUSED = "refused"  # no TCP connection was made: refused, or the host unreachable
CONNECT_TIMEOUT = "connect_timeout"  # no TCP handshake completed in time
TIMEOUT = "timeout"  # connected, no answer within the client timeout
RESET = "reset"  # the connection was reset or closed before the answer
OTHER = "other"


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
    reason: str | None = None  # the error classified: REFUSED, CONNECT_TIMEOUT, ...
    sent: float | None = None  # time.monotonic() when its headers were written
    new_connection: bool = False  # a TCP connect happened for it
    connection_close: bool = False  # the answer said `Connection: close`
    fresh: bool = False  # sent by a client that connects anew for every request
    kept: Any = None  # what its Request.keep read from the answer

    @property
    def failed(self) -> bool:
        """What a client would call a failure: no HTTP answer at all, or a 5xx."""
        return self.status == 0 or self.status >= 500

    @property
    def ended(self) -> float:
        return self.started + self.latency

    @property
    def not_accepted(self) -> bool:
        """The server never accepted its connection, so never saw the request."""
        return self.reason in (REFUSED, CONNECT_TIMEOUT)


class Load:
    """`concurrency` clients, each with its own connection (kept alive, or a new one for
    every request for `fresh_clients` of them), sending what `source` gives them back
    to back until stopped or `max_requests` have been sent; `client_headers(client)`
    adds a client's own headers (e.g. its address). `timeout` may be an httpx.Timeout."""

    def __init__(
        self,
        base_url: str,
        source: RequestSource,
        *,
        concurrency: int = 4,
        headers: Mapping[str, str] | None = None,
        client_headers: Callable[[int], Mapping[str, str]] | None = None,
        timeout: float | httpx.Timeout = 10.0,
        max_requests: int | None = None,
        fresh_clients: int = 0,
        ramp_seconds: float = 0.0,
        refused_backoff: float = 0.0,
    ) -> None:
        self.base_url = base_url
        self.source = source
        self.concurrency = concurrency
        self.headers = dict(headers or {})
        self.client_headers = client_headers or (lambda client: {})
        self.timeout = timeout
        self.budget = max_requests
        self.fresh_clients = fresh_clients
        self.ramp_seconds = ramp_seconds
        self.refused_backoff = refused_backoff
        self.samples: list[Sample] = []
        self._open: set[_Open] = set()  # started, not ended
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        longest = _longest(self.timeout)
        bound = None if longest is None else longest + 5 + self.ramp_seconds + self.refused_backoff
        self._thread.join(timeout=bound)

    def wait(self, seconds: float) -> None:
        """Let the clients run for `seconds`, or until they have spent the budget."""
        self._thread.join(timeout=seconds)

    def in_flight(self) -> list[Request]:
        """The requests sent to the server (headers written) and not ended yet."""
        with self._lock:
            return [o.request for o in self._open if o.sent is not None]

    def pending(self) -> int:
        """How many requests have started and not ended (sent, or still connecting)."""
        with self._lock:
            return len(self._open)

    def between(self, start: float, end: float) -> list[Sample]:
        """The samples of the requests started in [start, end)."""
        with self._lock:
            return [s for s in self.samples if start <= s.started < end]

    def counts(self, samples: Sequence[Sample] | None = None) -> Counter[tuple[str, str, int]]:
        """Answers by (method, label, status); status 0 counts the requests with none."""
        with self._lock:
            chosen = list(self.samples if samples is None else samples)
        return Counter((s.method, s.label, s.status) for s in chosen)

    def is_fresh(self, client: int) -> bool:
        """Spreads the `fresh_clients` evenly among the keep-alive ones."""
        n, fresh = self.concurrency, self.fresh_clients
        return (client + 1) * fresh // n != client * fresh // n

    # --- on the load's own event loop -----------------------------------------------

    async def _run(self) -> None:
        # anyio resolves the address of every new connection (getaddrinfo, even for an
        # IP) in the loop's default executor: with its few threads, clients that connect
        # anew would queue there, and the run would measure the client, not the server.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64))
        # One TLS context for all: httpx builds one per client otherwise (~50 ms each).
        tls = httpx.create_ssl_context()
        clients = [self._client(client, tls) for client in range(self.concurrency)]
        results = await asyncio.gather(*clients, return_exceptions=True)
        for result in results:  # a broken client must not pass unnoticed
            if isinstance(result, BaseException):
                raise result

    def _take_one(self) -> bool:
        """Whether another request may be sent (the budget, if any, is shared)."""
        with self._lock:
            if self.budget is None:
                return True
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True

    async def _client(self, client: int, tls: SSLContext) -> None:
        fresh = self.is_fresh(client)
        headers = {**self.headers, **self.client_headers(client)}
        # No idle connection is kept: each request of a fresh client connects anew.
        limits = httpx.Limits(max_keepalive_connections=0) if fresh else httpx.Limits()
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, headers=headers, limits=limits,
            verify=tls,
        ) as http:  # fmt: skip
            await asyncio.sleep(self.ramp_seconds * client / self.concurrency)
            n = 0
            while not self._stop.is_set() and self._take_one():
                sample = await self._send(http, _Open(self.source(client, n), fresh))
                n += 1
                if sample.not_accepted and self.refused_backoff:
                    await asyncio.sleep(self.refused_backoff)  # as a real client, not spinning

    async def _send(self, http: httpx.AsyncClient, under_way: _Open) -> Sample:
        with self._lock:
            self._open.add(under_way)
        sample = await under_way.send(http)
        with self._lock:  # at once: every request started is either open or a sample
            self._open.discard(under_way)
            self.samples.append(sample)
        return sample


@dataclass(eq=False)
class _Open:
    """A request under way, traced as httpx sends it."""

    request: Request
    fresh: bool
    started: float = field(default_factory=time.monotonic)
    sent: float | None = None
    new_connection: bool = False

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            self.new_connection = True
        elif event == "http11.send_request_headers.complete":
            self.sent = time.monotonic()

    async def send(self, http: httpx.AsyncClient) -> Sample:
        request = self.request
        try:
            response = await http.request(
                request.method, request.path, extensions={"trace": self.trace},
                **request.options,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            return self.sample(0, error=describe_error(exc), reason=classify_error(exc))
        problem = None
        if response.headers.get("content-type") == "application/problem+json":
            problem = response.json().get("type")
        return self.sample(
            response.status_code,
            problem=problem,
            retry_after=response.headers.get("retry-after"),
            cache=response.headers.get("x-cache"),
            connection_close=response.headers.get("connection", "").lower() == "close",
            kept=request.keep(response) if request.keep else None,
        )

    def sample(self, status: int, **answer: Any) -> Sample:
        return Sample(
            self.started, time.monotonic() - self.started, self.request.label, status,
            method=self.request.method, sent=self.sent, new_connection=self.new_connection,
            fresh=self.fresh, **answer,
        )  # fmt: skip


def _longest(timeout: float | httpx.Timeout) -> float | None:
    """The longest a request may wait in one step; None: no bound."""
    if not isinstance(timeout, httpx.Timeout):
        return timeout
    steps = [timeout.connect, timeout.read, timeout.write, timeout.pool]
    return None if None in steps else max(s for s in steps if s is not None)


# --- why there was no answer ----------------------------------------------------------


def os_error_of(exc: BaseException) -> OSError | None:
    """The operating system's error behind an httpx error (httpx -> httpcore -> anyio)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def describe_error(exc: Exception) -> str:
    """`ConnectError: [Errno 111] Connection refused [ECONNREFUSED]`."""
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
        return CONNECT_TIMEOUT
    if isinstance(exc, httpx.TimeoutException):
        return TIMEOUT
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return RESET
    return OTHER


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
