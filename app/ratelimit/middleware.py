"""The rate limiter as pure ASGI middleware: which policy a request falls under, who
the client is, the decision (app/ratelimit/sliding_window.py), the `RateLimit` headers,
and the 429 (or 503 when failing closed) it answers itself.

    RateLimitMiddleware   answers 429 / 503 itself
     ├── acquire()        one EVALSHA of the sliding-window script -> Decision, within a
     │                    deadline loop lag does not spend (app/deadline.py)
     │                    (pipelined with other requests' under load: autopipeline.py)
     └── LocalLimiter     when Redis cannot decide and the policy fails open: this
                          worker's share of the quota (local_limiter.py)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from opentelemetry import trace
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.breaker import CircuitOpen
from app.client_identity import ClientIdentifier
from app.deadline import lag_tolerant_deadline
from app.deps import Resources
from app.problem import problem_response
from app.ratelimit.autopipeline import AutoPipeline
from app.ratelimit.local_limiter import LocalLimiter
from app.ratelimit.policy import RateLimitPolicy
from app.ratelimit.sliding_window import Decision, acquire
from app.settings import Settings
from app.telemetry.logging import ThrottledLog
from app.telemetry.metrics import DEPENDENCY_ERRORS, RATE_LIMIT_DECISIONS, count
from app.worker import default_workers

# The package's name, as before it was a package: what operators filter the log on.
logger = logging.getLogger("app.ratelimit")

# Redis unavailable and failing closed: how long we suggest the client waits.
UNAVAILABLE_RETRY_AFTER_SECONDS = 1


def policy_header(policy: RateLimitPolicy) -> bytes:
    return f'"{policy.name}";q={policy.quota};w={policy.window_seconds}'.encode()


def limit_header(policy: RateLimitPolicy, decision: Decision) -> bytes:
    return f'"{policy.name}";r={decision.remaining};t={decision.reset_seconds}'.encode()


class RateLimitMiddleware:
    """Admission control before any work is done. Per request it picks the first
    policy that matches the method and path, identifies the client, asks Redis, then
    passes the request on with `RateLimit-Policy` / `RateLimit` response fields added,
    or answers 429 itself. Never raises into the app: when Redis cannot decide, the
    policy fails open (this worker's share of the quota) or closed (503)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.policies: Sequence[RateLimitPolicy] = settings.rate_limit_policies
        self.policy_headers = {p.name: policy_header(p) for p in self.policies}
        self.exempt_paths = settings.rate_limit_exempt_paths
        self.clients = ClientIdentifier(settings)
        self.key_prefix = settings.REDIS_KEY_PREFIX + "ratelimit:"
        self.timeout = settings.REDIS_TIMEOUT_SECONDS
        self.max_timeout = settings.redis_call_max_seconds
        # Per worker (Starlette builds the middleware in the worker, on first use).
        self.local = LocalLimiter(settings.GUNICORN_WORKERS or default_workers())
        self.errors = ThrottledLog(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        policy = next(p for p in self.policies if p.matches(scope["method"], scope["path"]))
        key = f"{self.key_prefix}{policy.name}:{self.clients.identify(scope)}"
        resources = _resources(scope)
        breaker = resources.redis_breaker
        if not breaker.allow():  # Redis failed repeatedly: do not wait on it again yet
            await self.unavailable(policy, key, CircuitOpen(), scope, receive, send)
            return
        try:
            # Bounds the whole call (pool, connect, round-trip), not only a socket read;
            # time the event loop spends on other requests does not count (issue 18).
            async with lag_tolerant_deadline(self.timeout, self.max_timeout):
                decision = await acquire(_client(resources), key, policy)
        except (RedisError, OSError, TimeoutError) as exc:
            breaker.record_failure()
            await self.unavailable(policy, key, exc, scope, receive, send)
            return
        breaker.record_success()
        headers = [
            (b"ratelimit-policy", self.policy_headers[policy.name]),
            (b"ratelimit", limit_header(policy, decision)),
        ]
        if not decision.allowed:
            count(RATE_LIMIT_DECISIONS, policy.name, "limited")
            await self.refuse(policy, decision, headers, scope, receive, send)
            return
        count(RATE_LIMIT_DECISIONS, policy.name, "allowed")

        async def send_with_ratelimit_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.app(scope, receive, send_with_ratelimit_headers)

    async def refuse(
        self,
        policy: RateLimitPolicy,
        decision: Decision,
        headers: list[tuple[bytes, bytes]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        per = f"{policy.window_seconds} s"
        response = problem_response(
            HTTPStatus.TOO_MANY_REQUESTS,
            detail=f"more than {policy.quota} requests in {per} (policy {policy.name!r}); "
            f"retry in {decision.reset_seconds} s",
            slug="rate-limited",
            instance=scope["path"],
            headers={"Retry-After": str(decision.reset_seconds)},
        )
        response.raw_headers.extend(headers)
        await response(scope, receive, send)

    async def unavailable(
        self,
        policy: RateLimitPolicy,
        key: str,
        exc: BaseException,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Redis failed or was slower than REDIS_TIMEOUT_SECONDS for this request, or
        the circuit breaker skipped the call (`CircuitOpen`: not counted as an error).
        Failing open, this worker decides alone (`LocalLimiter`): admitted requests are
        counted `fail_open` and carry no RateLimit fields (they describe the shared
        quota, which was not consulted); refused ones are a 429 counted `limited`."""
        if not isinstance(exc, CircuitOpen):
            count(DEPENDENCY_ERRORS, "redis", "ratelimit")
        mode = "fail_open" if policy.fail_open else "fail_closed"
        error = "timeout" if isinstance(exc, TimeoutError) else repr(exc)
        self.errors.warning("rate limiter cannot reach Redis (%s), %s", error, mode)
        if policy.fail_open:
            admitted, retry_after = self.local.acquire(key, policy)
            count(RATE_LIMIT_DECISIONS, policy.name, "fail_open" if admitted else "limited")
            if admitted:
                await self.app(scope, receive, send)
                return
            share = self.local.share(policy)
            response = problem_response(
                HTTPStatus.TOO_MANY_REQUESTS,
                detail=f"more than {share} requests in {policy.window_seconds} s on this "
                f"worker while the shared limiter is unavailable (policy {policy.name!r}); "
                f"retry in {retry_after} s",
                slug="rate-limited",
                instance=scope["path"],
                headers={"Retry-After": str(retry_after)},
            )
            await response(scope, receive, send)
            return
        count(RATE_LIMIT_DECISIONS, policy.name, "fail_closed")
        response = problem_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            detail="the rate limiter is unavailable; retry later",
            slug="dependency-unavailable",
            instance=scope["path"],
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
        )
        await response(scope, receive, send)


_FIELD_HEADERS = {
    "RateLimit-Policy": 'The policy that applied, e.g. `"default";q=100;w=60`',
    "RateLimit": 'Quota left and seconds until more is available, e.g. `"default";r=0;t=17`',
    "Retry-After": "Seconds until a retry is allowed (equals `t`)",
}


def document_rate_limits(openapi: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Add the limiter's 429 (and its 503 where the policy fails closed) to every
    operation it covers, so the OpenAPI document says what the server can answer."""
    if not settings.RATE_LIMIT_ENABLED:
        return openapi
    exempt = settings.rate_limit_exempt_paths
    policies = settings.rate_limit_policies
    headers = {
        name: {"description": text, "schema": {"type": "string"}}
        for name, text in _FIELD_HEADERS.items()
    }
    for path, path_item in openapi.get("paths", {}).items():
        if path in exempt:
            continue
        for method, operation in path_item.items():
            responses = operation.setdefault("responses", {})
            responses.setdefault("429", {"description": "Too Many Requests", "headers": headers})
            policy = next(p for p in policies if p.matches(method.upper(), path))
            if not policy.fail_open:
                responses.setdefault("503", {"description": "Service Unavailable"})
    return openapi


def _client(resources: Resources) -> Redis | AutoPipeline:
    """The traced client when this request's trace is recorded (its Redis span joins
    the trace), else the implicitly pipelined one (app/ratelimit/autopipeline.py): most requests
    are not sampled, and batching their commands is where the limiter's cost goes down."""
    if trace.get_current_span().is_recording():
        return resources.redis
    return resources.redis_pipeline


def _resources(scope: Scope) -> Resources:
    """The worker's Redis client and breaker, opened by the lifespan (which always
    runs: the worker class sets `lifespan="on"`)."""
    resources: Resources = scope["state"]["resources"]
    return resources
