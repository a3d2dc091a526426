"""Bounded, mixed HTTP traffic against the API, in phases, counting every answer by
route template and status. For checks that need every route, cache outcome and status
class to show up in the metrics (parity verify dashboards, the observability tests);
load *testing* is Locust's job (loadtest/).

    phases = [Phase("steady", seconds=4, concurrency=4),
              Phase("redis down", seconds=3, before=redis.stop, after=redis.start)]
    report = run_traffic("http://127.0.0.1:8000", phases, product_ids=range(1, 51))
    report.by_route()   # {("GET", "/api/v1/products/{product_id}"): 812, ...}

Every phase stops by itself after `seconds` or `max_requests` (20,000 unless the phase
says), whichever comes first; traffic only ever goes to the given base URL (loopback in
tests). The driver is harness/load.py's, one fresh load per phase.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import httpx

from parity.harness.load import Phase, Request, run_fresh_phases

PRODUCTS = "/api/v1/products"
PRODUCT = "/api/v1/products/{product_id}"
ORDERS = "/api/v1/orders"
MISSING_PRODUCT_ID = 2**62  # valid id, never seeded: 404


MAX_REQUESTS_PER_PHASE = 20_000


@dataclass
class TrafficReport:
    """Answers by (method, route template, status); transport errors by phase."""

    answers: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    phases: list[tuple[str, float, int]] = field(default_factory=list)  # name, seconds, sent
    started: float = 0.0
    finished: float = 0.0

    def by_route(self) -> Counter[tuple[str, str]]:
        counts: Counter[tuple[str, str]] = Counter()
        for (method, route, _status), n in self.answers.items():
            counts[method, route] += n
        return counts

    def by_status_class(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for (_method, _route, status), n in self.answers.items():
            counts[f"{status // 100}xx"] += n
        return counts

    @property
    def total(self) -> int:
        return sum(self.answers.values())

    def summary(self) -> str:
        phases = ", ".join(f"{name} {sent} req in {sec:.1f}s" for name, sec, sent in self.phases)
        classes = " ".join(f"{k}={v}" for k, v in sorted(self.by_status_class().items()))
        errors = sum(self.transport_errors.values())
        return f"{self.total} answers ({classes}); {errors} transport errors; {phases}"


class Requests:
    """The request mix: hot product reads (cache hits), cold reads (misses), list pages,
    404s, orders (writes, stock checks) and product updates (cache invalidation)."""

    def __init__(self, product_ids: Sequence[int], seed: int = 5) -> None:
        if not product_ids:
            raise ValueError("product_ids is empty: seed some products first")
        self.product_ids = list(product_ids)
        self.hot = self.product_ids[:5]
        self.random = random.Random(seed)

    def next(self, client: int = 0, n: int = 0) -> Request:
        """The next request of the mix, counted under its route template (any client:
        the mix is one random sequence)."""
        pick = self.random.random()
        if pick < 0.35:
            product = self.random.choice(self.hot)
            return Request(PRODUCT, "GET", f"{PRODUCTS}/{product}")
        if pick < 0.50:
            product = self.random.choice(self.product_ids)
            return Request(PRODUCT, "GET", f"{PRODUCTS}/{product}")
        if pick < 0.65:
            return Request(PRODUCTS, "GET", PRODUCTS, {"params": {"limit": 20}})
        if pick < 0.75:
            return Request(PRODUCT, "GET", f"{PRODUCTS}/{MISSING_PRODUCT_ID}")
        if pick < 0.90:
            line = {"product_id": self.random.choice(self.product_ids), "quantity": 1}
            headers = {"Idempotency-Key": uuid.uuid4().hex}
            return Request(ORDERS, "POST", ORDERS, {"json": {"items": [line]}, "headers": headers})
        product = self.random.choice(self.hot)
        return Request(PRODUCT, "PATCH", f"{PRODUCTS}/{product}", {"json": {}})


# Each simulated client is an address of its own (198.18.0.0/15, RFC 2544: no real
# client), sent as X-Forwarded-For, so the rate limiter sees several clients (as in
# production) instead of one address that exhausts its quota at once. A natively run
# server believes it from loopback (FORWARDED_ALLOW_IPS); behind compose's lb, which
# replaces the header, all of them are the lb's one client. (A made-up API key is no
# identity: only issued keys are, issue 18.)
IDENTITY_HEADER = "X-Forwarded-For"


def client_address(number: int) -> str:
    return f"198.18.{number // 256 % 256}.{number % 256}"


def run_traffic(
    base_url: str,
    phases: Sequence[Phase],
    *,
    product_ids: Sequence[int],
    progress: Callable[[str], None] = lambda message: None,
    seed: int = 5,
) -> TrafficReport:
    """Run `phases` one after the other against `base_url`; blocks until done."""
    report = TrafficReport(started=time.time())
    budgeted = [
        replace(phase, max_requests=phase.max_requests or MAX_REQUESTS_PER_PHASE)
        for phase in phases
    ]
    # Generous timeout: a slow answer is still an answer to count; the server bounds
    # its own work (pool and statement timeouts).
    runs = run_fresh_phases(
        base_url,
        Requests(product_ids, seed).next,
        budgeted,
        progress=lambda message: progress(f"traffic: {message}"),
        client_headers=lambda client: {IDENTITY_HEADER: client_address(client)},
        timeout=30,
    )
    for run in runs:
        for sample in run.samples:
            if sample.status:
                report.answers[sample.method, sample.label, sample.status] += 1
            else:
                kind = (sample.error or "error").split(":")[0]
                report.transport_errors[f"{run.name}: {kind}"] += 1
        report.phases.append((run.name, run.seconds, len(run.samples)))
    report.finished = time.time()
    return report


def seeded_product_ids(base_url: str, limit: int = 100) -> list[int]:
    """Ids of the first products the API lists."""
    response = httpx.get(f"{base_url}{PRODUCTS}", params={"limit": limit}, timeout=10)
    response.raise_for_status()
    return [item["id"] for item in response.json()["items"]]
