"""Rate limiting shared by every worker and replica: a sliding-window log in Redis.

Each (policy, client) pair has one Redis list holding the arrival times of the requests
it was *allowed* in the last window, newest first. One Lua script, run atomically by
Redis, drops the times that left the window, counts the rest, and admits the request
if fewer than the quota remain, all against Redis' own clock (`TIME`): one round-trip
per request, no race between workers, and app-host clocks do not matter.

The guarantee is exact: in any interval of `window` seconds at most `quota` requests
of one client are allowed, and a client that sends more than `quota` requests within
one window gets exactly `quota` of them through, whichever workers answered. Refused
requests are not recorded, so hammering does not extend a lock-out. Why not GCRA or a
fixed window: docs/rate-limiting.md. Who "one client" is: app/client_identity.py (an
API key this service issued, else the address).

    RateLimitMiddleware   pure ASGI; answers 429 (or 503 when failing closed) itself
     ├── acquire()        one EVALSHA of SLIDING_WINDOW_LOG -> Decision, within a
     │                    deadline loop lag does not spend (app/deadline.py)
     │                    (pipelined with other requests' under load: app/autopipeline.py)
     └── LocalLimiter     when Redis cannot decide and the policy fails open: this
                          worker's share of the quota (app/local_limiter.py)
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from opentelemetry import trace
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.autopipeline import AutoPipeline
from app.breaker import CircuitOpen
from app.client_identity import ClientIdentifier
from app.deadline import lag_tolerant_deadline
from app.deps import Resources
from app.local_limiter import LocalLimiter
from app.problem import problem_response
from app.settings import RateLimitPolicy, Settings
from app.telemetry.logging import ThrottledLog
from app.telemetry.metrics import DEPENDENCY_ERRORS, RATE_LIMIT_DECISIONS, count
from app.worker import default_workers

logger = logging.getLogger(__name__)

# KEYS[1] the client's log; ARGV[1] quota, ARGV[2] window in ms, ARGV[3] "now" in ms
# (empty: Redis' clock; tests pass one to step through window edges exactly).
# Returns {allowed 0|1, remaining, ms until the oldest logged request leaves the window}.
# Times are whole milliseconds: 13 digits, which Lua's doubles and its %.14g number
# formatting both carry exactly.
SLIDING_WINDOW_LOG = """
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local quota = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local key = KEYS[1]
-- The oldest time still in the window once the loop ends (false: the log is empty).
local oldest
while true do
  oldest = redis.call('LINDEX', key, -1)
  if not oldest or tonumber(oldest) > now - window then break end
  redis.call('RPOP', key)
end
local used = redis.call('LLEN', key)
local allowed = 0
if used < quota then
  redis.call('LPUSH', key, now)
  redis.call('PEXPIRE', key, window)
  used = used + 1
  allowed = 1
  -- LPUSH adds at the head: the oldest stays what the loop found, unless the log was
  -- empty (one LINDEX less per call: the script's Redis time x 0.83).
  if not oldest then oldest = now end
end
local wait = window
if oldest then wait = tonumber(oldest) + window - now end
return {allowed, math.max(quota - used, 0), math.min(math.max(wait, 0), window)}
"""
SLIDING_WINDOW_LOG_SHA = hashlib.sha1(SLIDING_WINDOW_LOG.encode()).hexdigest()  # noqa: S324

# Redis unavailable and failing closed: how long we suggest the client waits.
UNAVAILABLE_RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    # Seconds until more quota becomes available (rounded up): the draft's `t`, and
    # Retry-After when refused.
    reset_seconds: int


async def acquire(
    redis: Redis | AutoPipeline, key: str, policy: RateLimitPolicy, now_ms: int | None = None
) -> Decision:
    """Count one request of `key` against `policy`, atomically, in one round-trip."""
    args = (policy.quota, policy.window_seconds * 1000, "" if now_ms is None else now_ms)
    try:
        reply = await redis.execute_command("EVALSHA", SLIDING_WINDOW_LOG_SHA, 1, key, *args)
    except NoScriptError:  # first call on this server (or after a restart): load it
        reply = await redis.execute_command("EVAL", SLIDING_WINDOW_LOG, 1, key, *args)
    allowed, remaining, wait_ms = (int(value) for value in reply)
    return Decision(bool(allowed), remaining, math.ceil(wait_ms / 1000))


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
    the trace), else the implicitly pipelined one (app/autopipeline.py): most requests
    are not sampled, and batching their commands is where the limiter's cost goes down."""
    if trace.get_current_span().is_recording():
        return resources.redis
    return resources.redis_pipeline


def _resources(scope: Scope) -> Resources:
    """The worker's Redis client and breaker, opened by the lifespan (which always
    runs: the worker class sets `lifespan="on"`)."""
    resources: Resources = scope["state"]["resources"]
    return resources
