"""The steady load the verification commands drive (chaos, rollout, the outage tests):
a few threads sending a fixed round-robin of requests back to back, each answer
recorded with its start time, latency and status, so a run can be cut into phases
afterwards (`between`).

    with SteadyLoad(base_url, default_requests(product_ids), concurrency=4) as load:
        ...  # break something, wait
    samples = load.between(start, end)

Bounded by its caller: the threads stop when the `with` block ends. Status 0 means no
HTTP answer at all (refused, reset, client timeout): the error is in `Sample.error`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

# What the load sends, round-robin per thread: (label, method, path, json body).
Request = tuple[str, str, str, dict[str, Any] | None]


def default_requests(product_ids: Sequence[int]) -> list[Request]:
    requests: list[Request] = [("health", "GET", "/health", None)]
    for product_id in product_ids:
        requests += [
            ("read", "GET", f"/api/v1/products/{product_id}", None),
            ("list", "GET", "/api/v1/products?limit=5", None),
        ]
    order = {"items": [{"product_id": product_ids[0], "quantity": 1}]}
    requests.append(("order", "POST", "/api/v1/orders", order))
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

    @property
    def failed(self) -> bool:
        """What a client would call a failure: no HTTP answer at all, or a 5xx."""
        return self.status == 0 or self.status >= 500


class SteadyLoad:
    """`concurrency` threads sending `requests` round-robin, back to back, each with
    its own keep-alive client; every answer is recorded as a Sample."""

    def __init__(
        self,
        base_url: str,
        requests: Sequence[Request],
        *,
        concurrency: int = 4,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.headers = headers or {}
        self.requests = list(requests)
        self.concurrency = concurrency
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> SteadyLoad:
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10, headers=self.headers) as client:
            index = offset
            while not self._stop.is_set():
                label, method, path, body = self.requests[index % len(self.requests)]
                index += 1
                self._record(self._send(client, label, method, path, body))

    @staticmethod
    def _send(
        client: httpx.Client, label: str, method: str, path: str, body: dict[str, Any] | None
    ) -> Sample:
        started = time.monotonic()
        try:
            response = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
            return Sample(started, time.monotonic() - started, label, 0, error=error)
        problem = None
        if response.headers.get("content-type") == "application/problem+json":
            problem = response.json().get("type")
        return Sample(
            started,
            time.monotonic() - started,
            label,
            response.status_code,
            problem,
            response.headers.get("retry-after"),
            response.headers.get("x-cache"),
        )

    def _record(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def between(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.started < end]
