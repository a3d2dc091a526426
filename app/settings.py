"""All configuration, read once from the environment.

Field names are the environment variable names, so `grep DB_POOL_SIZE` finds the
setting, its default and every place (compose.yaml, k8s/, docs) that sets it.
A bad value stops the process at start with one line per variable
(`load_settings`), never a traceback and never the secret itself.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.proxy_trust import trusted_networks
from app.ratelimit.policy import RateLimitPolicy, parse_quota, parse_route_policies

PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]

_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# RFC 9110's token: what a method may be.
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")

# Values of these variables are never echoed back in an error message or a repr.
# (RATE_LIMIT_API_KEY_HASHES: hashes are no secret, but a key pasted in their place is.)
SECRET_FIELDS = frozenset({"DATABASE_URL", "REDIS_URL", "RATE_LIMIT_API_KEY_HASHES"})

# Where secrets are read from as files when SECRETS_DIR is not set: where compose mounts
# `secrets:` (docs/docker.md#secrets-as-files). k8s/ mounts its Secret one level below
# and says so (docs/kubernetes.md#secrets-as-files).
DEFAULT_SECRETS_DIR = "/run/secrets"

# After the drain timeout cuts requests off, how long they get to send their 503 before
# the lifespan shutdown starts (app/graceful_server.py). Part of the shutdown budget.
CUT_OFF_GRACE_SECONDS = 0.5

# How much longer than REDIS_TIMEOUT_SECONDS a Redis call may wait while the worker's
# event loop lags (the deadline moves by the loop's lateness, up to this much in all).
# Lag that long means the worker is saturated; a call still unanswered then fails, and
# the limiter falls back to its local bound (docs/rate-limiting.md).
REDIS_LAG_ALLOWANCE_SECONDS = 2.0


class Settings(BaseSettings):
    # populate_by_name: Settings(GUNICORN_WORKERS=...) by field name, beside its alias.
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, populate_by_name=True
    )

    # --- Service identity ----------------------------------------------------------
    SERVICE_NAME: str = Field("parity-api", min_length=1, max_length=64)

    # --- Secrets as files ------------------------------------------------------------
    # A directory of files named after settings (DATABASE_URL, REDIS_URL, ...), each
    # holding that setting's value (surrounding whitespace stripped): compose `secrets:`
    # and a Kubernetes Secret mounted as a volume put them there. A file is read only
    # when no variable sets its setting: a variable always wins. Unset: /run/secrets,
    # when it is a readable directory, else nothing. Set: it must be one, or the start
    # fails saying so (a mount that went wrong must not fall back to the defaults).
    # Empty: no files. Read from the variable only, never from a file of its own.
    SECRETS_DIR: str = DEFAULT_SECRETS_DIR

    # --- Postgres ------------------------------------------------------------------
    DATABASE_URL: str = Field("postgresql+asyncpg://postgres@127.0.0.1:5432/app", repr=False)
    # Per worker process: the server sees workers × (DB_POOL_SIZE + DB_MAX_OVERFLOW).
    DB_POOL_SIZE: int = Field(5, ge=1, le=200)
    DB_MAX_OVERFLOW: int = Field(5, ge=0, le=200)
    # How long a request waits for a pooled connection before it gets a 503.
    DB_POOL_TIMEOUT_SECONDS: PositiveSeconds = 2.0
    DB_CONNECT_TIMEOUT_SECONDS: PositiveSeconds = 2.0
    DB_STATEMENT_TIMEOUT_MS: int = Field(5000, ge=100, le=600_000)
    DB_POOL_RECYCLE_SECONDS: int = Field(1800, ge=1)

    # --- Redis ---------------------------------------------------------------------
    REDIS_URL: str = Field("redis://127.0.0.1:6379/0", repr=False)
    # Every key this service writes starts with this, so several services (or test
    # sessions) can share one Redis without colliding.
    REDIS_KEY_PREFIX: str = Field("parity:", max_length=64)
    # Redis is a cache and a limiter: a request waits at most this long on it while the
    # worker's event loop is responsive. Loop lag (other requests' CPU) does not count:
    # while the loop lags a call may wait up to REDIS_LAG_ALLOWANCE_SECONDS more
    # (app/deadline.py, docs/reliability.md).
    REDIS_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=10)] = 0.25
    REDIS_MAX_CONNECTIONS: int = Field(64, ge=1, le=10_000)
    CACHE_TTL_SECONDS: int = Field(60, ge=1, le=86_400)
    # The cache stores nothing while Redis's used_memory is above this share of its
    # maxmemory: the rest is the rate limiter's, whose keys must never be evicted for
    # cache entries (Redis runs noeviction; docs/rate-limiting.md#redis-memory). 1.0: no
    # bound of the cache's own. Redis without maxmemory: no bound either.
    CACHE_REDIS_MEMORY_SHARE: Annotated[float, Field(gt=0, le=1)] = 0.5
    # Circuit breaker shared by the cache and the rate limiter (app/breaker.py): after
    # this many Redis failures in a row, skip Redis for this long, then try one call.
    REDIS_BREAKER_FAILURES: int = Field(3, ge=1, le=1000)
    REDIS_BREAKER_RESET_SECONDS: Annotated[float, Field(gt=0, le=600)] = 5.0

    # --- Rate limiting (docs/rate-limiting.md) ------------------------------------
    RATE_LIMIT_ENABLED: bool = True
    # QUOTA/WINDOW: at most QUOTA requests in any WINDOW (e.g. 100/60s, 1000/1h), per
    # client, for every route no override matches.
    RATE_LIMIT_DEFAULT: str = "100/60s"
    # Overrides, ";"-separated, first match wins:
    # NAME=QUOTA/WINDOW [METHODS] [/PATH-PREFIX] [fail=open|closed]
    # Writes fail closed: an unchecked write costs a transaction, a stock update, an order.
    RATE_LIMIT_ROUTES: str = "writes=20/60s POST,PUT,PATCH,DELETE /api/ fail=closed"
    # Exact paths never limited (probes and scrapes must not be throttled).
    RATE_LIMIT_EXEMPT_PATHS: str = "/health,/ready,/metrics"
    # A client sending this header with a key listed in RATE_LIMIT_API_KEY_HASHES is
    # limited by that key, others by their address as seen through FORWARDED_ALLOW_IPS
    # (app/client_identity.py). Empty: always by address.
    RATE_LIMIT_KEY_HEADER: str = Field("X-API-Key", pattern=r"^[A-Za-z0-9-]*$", max_length=64)
    # The issued API keys, as comma-separated SHA-256 hex digests (`python -m
    # app.client_identity` issues one). A key not listed is ignored: were any key an
    # identity, a client would get a fresh quota per made-up key (issue 18). Empty: no
    # key is verified, every client is its address.
    RATE_LIMIT_API_KEY_HASHES: str = Field("", repr=False)
    # Redis unavailable or slower than REDIS_TIMEOUT_SECONDS, for policies without a
    # fail= of their own: true (fail open) decides in the worker, each worker admitting
    # quota ÷ workers of a client per window (never unlimited); false answers 503.
    RATE_LIMIT_FAIL_OPEN: bool = True

    # --- Orders --------------------------------------------------------------------
    # An Idempotency-Key belongs to the client that sent it (its identity, as the rate
    # limiter's) for this long: a retry within it replays the order, the same key
    # after it places a new one (the IETF Idempotency-Key draft's expiry; no cleanup
    # job: an expired key is released when it is reused, app/orders/service.py).
    IDEMPOTENCY_KEY_TTL_HOURS: int = Field(24, ge=1, le=24 * 365)

    # --- Health --------------------------------------------------------------------
    READY_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=30)] = 1.0

    # --- Input and resource limits (docs/reliability.md explains each number) -------
    # Larger bodies get 413 before the app reads them. The largest valid body, a product
    # whose 10,000-character description is written as escaped surrogate pairs (12 bytes
    # a character), is ~122 KB: twice that, rounded.
    MAX_REQUEST_BODY_BYTES: int = Field(262_144, ge=1024, le=1_073_741_824)
    # A request still running after this long is cancelled (its database statement
    # too) and answered 504. Above the slowest legitimate path (pool wait 2 s + one
    # statement 5 s), below the drain budget of a graceful shutdown.
    REQUEST_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=600)] = 10.0
    # Request line + headers must arrive within this long (slowloris), and total at
    # most this many bytes (httptools itself has no limit).
    HEADER_READ_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=600)] = 10.0
    MAX_REQUEST_HEADER_BYTES: int = Field(32_768, ge=1024, le=1_048_576)

    # --- Gunicorn (read by gunicorn.conf.py) ----------------------------------------
    # Loopback natively: the writable API and /docs are not open to the network. The image
    # sets 0.0.0.0:8000 in its environment (a container is reached through its ports).
    GUNICORN_BIND: str = "127.0.0.1:8000"
    # A second listener for /health, /ready and /metrics only, which those two leave
    # off the public one (app/listeners.py): e.g. 0.0.0.0:9000, which the image sets, for
    # the load balancer's checks, the kubelet and Prometheus; compose's lb, the
    # published ports and the k8s Service expose only GUNICORN_BIND. Empty: one listener
    # serves everything (natively).
    INTERNAL_BIND: str = ""
    # None: one worker per CPU actually available to the process (see app/worker.py).
    # WEB_CONCURRENCY, the PaaS and image convention, when GUNICORN_WORKERS is not set.
    GUNICORN_WORKERS: int | None = Field(
        None, ge=1, le=256, validation_alias=AliasChoices("GUNICORN_WORKERS", "WEB_CONCURRENCY")
    )
    GUNICORN_TIMEOUT: int = Field(30, ge=1, le=3600)
    GUNICORN_GRACEFUL_TIMEOUT: int = Field(30, ge=1, le=3600)
    GUNICORN_KEEPALIVE: int = Field(75, ge=0, le=3600)
    GUNICORN_MAX_REQUESTS: int = Field(100_000, ge=0)
    GUNICORN_MAX_REQUESTS_JITTER: int = Field(10_000, ge=0)
    # Open connections per worker (Uvicorn's limit_concurrency): beyond it the
    # longest-idle connections are closed to make room, and a request is answered 503
    # at once (instead of queueing) only when every other connection is busy
    # (app/connections.py). Keep it above the connection pools of the proxies in front,
    # whose idle connections would otherwise be closed under load; each connection
    # costs a file descriptor and some kilobytes.
    GUNICORN_WORKER_CONNECTIONS: int = Field(1000, ge=1, le=100_000)
    # A direct client (a peer not in FORWARDED_ALLOW_IPS) may hold this many busy
    # connections to each worker; its next one closes its own longest-idle connection,
    # or gets a 503 problem when none is idle. Far above what one client needs (browsers
    # open 6 per host, HTTP client pools 10-100), far below GUNICORN_WORKER_CONNECTIONS,
    # so one address cannot take a worker. Proxies in FORWARDED_ALLOW_IPS are not capped.
    WORKER_CONNECTIONS_PER_ADDRESS: int = Field(128, ge=1, le=100_000)
    # A direct client's idle keep-alive connection closes after this long; a trusted
    # proxy's after GUNICORN_KEEPALIVE (which must outlast the proxy's own idle timeout).
    # Connections held idle by one direct client last seconds, not a minute; above a
    # 15 s scrape interval, so a scraper reusing its connection never races the close.
    DIRECT_CLIENT_KEEPALIVE_SECONDS: int = Field(20, ge=0, le=3600)
    # Kernel accept queue of the listening socket (capped by net.core.somaxconn).
    GUNICORN_BACKLOG: int = Field(2048, ge=1, le=65_535)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed: addresses or CIDR
    # networks, comma-separated. Set it to the proxy in front (compose: lb's address;
    # k8s: the ingress controller's range), or all its clients share one rate-limit
    # identity (the master warns at start, app/proxy_trust.py). Never "*" by default:
    # with "*" Uvicorn believes the left-most address, which any client can write.
    FORWARDED_ALLOW_IPS: str = "127.0.0.1,::1"

    # --- Security ------------------------------------------------------------------
    # /docs, /redoc and /openapi.json. The schema describes public routes only; turn it
    # off where you do not want the API surface browsable.
    DOCS_ENABLED: bool = True
    # Browser origins allowed to call the API (CORS); empty = no CORS headers at all.
    # Comma-separated: CORS_ALLOW_ORIGINS=https://app.example.com,https://admin.example.com
    CORS_ALLOW_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    CORS_ALLOW_CREDENTIALS: bool = False
    # Strict-Transport-Security max-age, sent on HTTPS requests only (behind a TLS
    # proxy: X-Forwarded-Proto from a FORWARDED_ALLOW_IPS peer). 0 = never sent.
    HSTS_MAX_AGE_SECONDS: int = Field(0, ge=0, le=63_072_000)

    # --- Shutdown (app/graceful_server.py, docs/shutdown.md) ----------------------
    # After SIGTERM, keep serving this long while /ready answers 503, so load balancers
    # stop routing here first (the in-process preStop sleep). 0 natively; 5 in
    # compose.yaml and k8s/, where endpoints take seconds to update.
    SHUTDOWN_DELAY_SECONDS: Annotated[float, Field(ge=0, le=300)] = 0.0
    # Then stop accepting and let in-flight requests finish for at most this long
    # (read by GracefulServer alone); what is still running is cut off with a 503.
    SHUTDOWN_DRAIN_TIMEOUT_SECONDS: PositiveSeconds = 20.0
    # Then the lifespan shutdown (DB pool, Redis, span flush) gets at most this long.
    SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=60)] = 3.0

    # --- Demo and test features (off by default) -----------------------------------
    # GET /api/v1/demo/slow?ms= holds a request in flight (shutdown and load tests).
    DEMO_ENDPOINTS_ENABLED: bool = False

    # --- Logging -------------------------------------------------------------------
    LOG_LEVEL: Literal["debug", "info", "warning", "error"] = "info"
    LOG_JSON: bool = True

    # --- Telemetry (docs/observability.md) -------------------------------------------
    # Prometheus metrics and GET /metrics.
    METRICS_ENABLED: bool = True
    # One JSON line per request (logger app.access). The largest single per-request cost
    # of the telemetry (parity bench telemetry): off when a proxy logs requests.
    ACCESS_LOG_ENABLED: bool = True
    # The standard OpenTelemetry switch: true turns tracing off entirely (no provider,
    # no export thread, no instrumentation, nothing per request). Endpoint, sampler,
    # batch sizes: the other OTEL_* variables, read by the SDK itself.
    OTEL_SDK_DISABLED: bool = False
    # The HTTP methods that keep their name in metrics and spans (comma-separated, case-
    # sensitive; the OpenTelemetry conventions' variable): any other is `_OTHER`, so
    # made-up methods cannot create series. Empty: the nine of RFC 9110 and PATCH.
    OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS: str = Field("", max_length=1000)
    # Callers whose W3C trace context (`traceparent`: trace id and sampled flag) is
    # continued: addresses or CIDR networks, comma-separated, matched against the client
    # address as seen through FORWARDED_ALLOW_IPS; `*` for every caller. Anyone else's
    # request starts a new trace, sampled at our own ratio and linked to the one it
    # claimed: a client must not decide that it is traced (issue 18). Empty (default):
    # no caller; set it to the traced services that call this one.
    TRACE_CONTEXT_TRUSTED_CALLERS: str = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' order, highest first: keyword arguments, variables, then
        files in SECRETS_DIR (the keyword argument, the variable, or the default)."""
        init_kwargs: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
        explicit = init_kwargs.get("SECRETS_DIR", os.environ.get("SECRETS_DIR"))
        directory = DEFAULT_SECRETS_DIR if explicit is None else str(explicit)
        files = SecretFiles(settings_cls, directory, required=explicit is not None)
        return init_settings, env_settings, dotenv_settings, files

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url_uses_asyncpg(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError("not a database URL") from exc
        if url.drivername != "postgresql+asyncpg":
            raise ValueError(f"driver must be postgresql+asyncpg (got {url.drivername!r})")
        if not url.database:
            raise ValueError("the URL names no database")
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("GUNICORN_BIND")
    @classmethod
    def _bind_is_host_port_or_unix(cls, value: str) -> str:
        if value.startswith("unix:"):
            return value
        if _tcp_port(value) is None:
            raise ValueError("must be HOST:PORT (e.g. 0.0.0.0:8000) or unix:PATH")
        return value

    @field_validator("INTERNAL_BIND")
    @classmethod
    def _internal_bind_is_host_port(cls, value: str) -> str:
        # TCP only: the listener is told apart by its port (app/listeners.py).
        if value and _tcp_port(value) is None:
            raise ValueError("must be HOST:PORT (e.g. 0.0.0.0:9000), or empty")
        return value

    @field_validator("FORWARDED_ALLOW_IPS", "TRACE_CONTEXT_TRUSTED_CALLERS")
    @classmethod
    def _trusted_peers_are_networks(cls, value: str) -> str:
        trusted_networks(value)
        return value

    @field_validator("RATE_LIMIT_DEFAULT")
    @classmethod
    def _default_quota_parses(cls, value: str) -> str:
        parse_quota(value)
        return value

    @field_validator("RATE_LIMIT_ROUTES")
    @classmethod
    def _route_policies_parse(cls, value: str) -> str:
        parse_route_policies(value)
        return value

    @field_validator("RATE_LIMIT_API_KEY_HASHES")
    @classmethod
    def _key_hashes_are_sha256_digests(cls, value: str) -> str:
        for digest in _split(value, ","):
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError(
                    "must be SHA-256 hex digests (64 characters 0-9a-f), comma-separated; "
                    "`python -m app.client_identity` prints a key and its digest"
                )
        return value

    @field_validator("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS")
    @classmethod
    def _known_methods_are_tokens(cls, value: str) -> str:
        for method in _split(value, ","):
            if not _HTTP_TOKEN.fullmatch(method):
                raise ValueError(f"{method!r} is not an HTTP method (RFC 9110 token)")
        return value

    @property
    def http_known_methods(self) -> frozenset[str] | None:
        """The methods OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS names, or None: the default."""
        return frozenset(_split(self.OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS, ",")) or None

    @property
    def rate_limit_api_key_hashes(self) -> frozenset[str]:
        return frozenset(digest.lower() for digest in _split(self.RATE_LIMIT_API_KEY_HASHES, ","))

    @field_validator("RATE_LIMIT_EXEMPT_PATHS")
    @classmethod
    def _exempt_paths_are_paths(cls, value: str) -> str:
        for path in _split(value, ","):
            if not path.startswith("/"):
                raise ValueError(f"{path!r} is not a path (must start with /)")
        return value

    @property
    def rate_limit_policies(self) -> tuple[RateLimitPolicy, ...]:
        """The overrides in the order written, then the default (which matches anything);
        a policy without `fail=` fails as RATE_LIMIT_FAIL_OPEN says."""
        default = RateLimitPolicy("default", *parse_quota(self.RATE_LIMIT_DEFAULT))
        policies = (*parse_route_policies(self.RATE_LIMIT_ROUTES), default)
        return tuple(
            replace(p, fail_open=self.RATE_LIMIT_FAIL_OPEN) if p.fail_open is None else p
            for p in policies
        )

    @property
    def rate_limit_exempt_paths(self) -> frozenset[str]:
        return frozenset(_split(self.RATE_LIMIT_EXEMPT_PATHS, ","))

    @field_validator("CORS_ALLOW_ORIGINS", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return _split(value, ",")
        return value

    @field_validator("CORS_ALLOW_ORIGINS")
    @classmethod
    def _origins_are_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return value

    @model_validator(mode="after")
    def _no_credentials_for_any_origin(self) -> Self:
        # Browsers refuse `*` with credentials; a server that echoes any Origin back
        # instead would hand every website the user's session.
        if self.CORS_ALLOW_CREDENTIALS and "*" in self.CORS_ALLOW_ORIGINS:
            raise ValueError(
                "CORS_ALLOW_CREDENTIALS=true cannot be combined with CORS_ALLOW_ORIGINS=*: "
                "list the origins"
            )
        return self

    @model_validator(mode="after")
    def _requests_finish_within_the_shutdown_budget(self) -> Self:
        if self.REQUEST_TIMEOUT_SECONDS >= self.GUNICORN_GRACEFUL_TIMEOUT:
            raise ValueError(
                "REQUEST_TIMEOUT_SECONDS must be below GUNICORN_GRACEFUL_TIMEOUT, or a "
                "graceful shutdown kills requests the timeout would have let finish"
            )
        return self

    @model_validator(mode="after")
    def _shutdown_fits_in_graceful_timeout(self) -> Self:
        """Gunicorn SIGKILLs workers `GUNICORN_GRACEFUL_TIMEOUT` seconds after TERM: a
        shutdown that needs longer loses its in-flight requests and its queued spans."""
        if self.shutdown_budget_seconds >= self.GUNICORN_GRACEFUL_TIMEOUT:
            raise ValueError(
                "SHUTDOWN_DELAY_SECONDS + SHUTDOWN_DRAIN_TIMEOUT_SECONDS + "
                f"{CUT_OFF_GRACE_SECONDS} + SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS = "
                f"{self.shutdown_budget_seconds:g} s must stay below "
                f"GUNICORN_GRACEFUL_TIMEOUT ({self.GUNICORN_GRACEFUL_TIMEOUT} s), "
                "else Gunicorn kills workers mid-shutdown (docs/shutdown.md)"
            )
        return self

    @model_validator(mode="after")
    def _internal_listener_is_another_port(self) -> Self:
        public = _tcp_port(self.GUNICORN_BIND)
        if self.internal_port is not None and self.internal_port == public:
            raise ValueError(
                f"INTERNAL_BIND ({self.INTERNAL_BIND}) must use another port than "
                f"GUNICORN_BIND ({self.GUNICORN_BIND}): the listeners are told apart by port"
            )
        return self

    @property
    def internal_port(self) -> int | None:
        """The port of the probes-and-metrics listener, None when there is none."""
        return _tcp_port(self.INTERNAL_BIND) if self.INTERNAL_BIND else None

    @property
    def shutdown_budget_seconds(self) -> float:
        """The longest a worker's shutdown takes from SIGTERM to exit."""
        return (
            self.SHUTDOWN_DELAY_SECONDS
            + self.SHUTDOWN_DRAIN_TIMEOUT_SECONDS
            + CUT_OFF_GRACE_SECONDS
            + self.SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS
        )

    @property
    def redis_call_max_seconds(self) -> float:
        """The longest a request waits on Redis: REDIS_TIMEOUT_SECONDS, plus at most
        REDIS_LAG_ALLOWANCE_SECONDS while the event loop lags (app/deadline.py)."""
        return self.REDIS_TIMEOUT_SECONDS + REDIS_LAG_ALLOWANCE_SECONDS

    @property
    def redis_socket_timeout_seconds(self) -> float:
        """redis-py's own connect and read timeouts: a backstop behind our deadline, and
        looser than it. redis-py times with the wall clock, so at REDIS_TIMEOUT_SECONDS
        it would turn loop lag into Redis failures (it cancels a read whose answer has
        just arrived) and drop the connection too."""
        return self.redis_call_max_seconds + self.REDIS_TIMEOUT_SECONDS

    @property
    def database_url_masked(self) -> str:
        return make_url(self.DATABASE_URL).render_as_string(hide_password=True)

    @property
    def db_connections_per_worker(self) -> int:
        return self.DB_POOL_SIZE + self.DB_MAX_OVERFLOW


def _tcp_port(bind: str) -> int | None:
    """`HOST:PORT` -> PORT; None for anything else (a unix: socket, a typo)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return int(port)


def _split(value: str, separator: str) -> list[str]:
    return [part.strip() for part in value.split(separator) if part.strip()]


class SecretsDirError(SettingsError):
    """SECRETS_DIR is set but unusable, or a file in it cannot be read. Its message
    names the path and the reason, never a value."""


class SecretFiles(SecretsSettingsSource):
    """pydantic-settings' secrets directory, with errors that say what to fix: a
    SECRETS_DIR that was set (`required`) but is no readable directory, or a file named
    after a setting that cannot be read (a secret mounted for another uid), stops the
    start with SecretsDirError; the default directory, when absent or unreadable, is
    skipped (natively there is none)."""

    def __init__(self, settings_cls: type[BaseSettings], directory: str, *, required: bool):
        super().__init__(settings_cls, secrets_dir=directory or None)
        self.directory = directory
        self.required = required

    def __call__(self) -> dict[str, Any]:
        if not self.directory:
            return {}
        try:
            usable = Path(self.directory).is_dir() and os.access(self.directory, os.R_OK | os.X_OK)
        except OSError:
            usable = False
        if not usable:
            if self.required:
                raise SecretsDirError(
                    f"SECRETS_DIR={self.directory!r} is not a readable directory (set it "
                    "to where the secrets are mounted, or to an empty value for none)"
                )
            return {}
        try:
            values = super().__call__()
        except (OSError, SettingsError) as exc:
            # pydantic-settings wraps what a field's lookup raised in a SettingsError.
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if not isinstance(cause, OSError):
                raise
            raise SecretsDirError(
                f"SECRETS_DIR={self.directory!r}: cannot read {cause.filename or 'it'} "
                f"({cause.strerror}); the files must be readable by uid {os.getuid()}"
            ) from None
        values.pop("SECRETS_DIR", None)  # where to look is never itself read from a file
        return values


def secret_file_names(directory: str | None = None) -> frozenset[str]:
    """The settings a file in the secrets directory would set (best effort, for error
    messages: a value that came from a secrets file is never echoed)."""
    if directory is None:
        directory = os.environ.get("SECRETS_DIR", DEFAULT_SECRETS_DIR)
    try:
        return frozenset(name for name in os.listdir(directory) if name in Settings.model_fields)
    except OSError:
        return frozenset()


def describe_errors(error: ValidationError, hidden: frozenset[str] = SECRET_FIELDS) -> list[str]:
    """One line per bad variable: its name, what is wrong and, unless secret (`hidden`),
    the value."""
    lines = []
    for item in error.errors(include_url=False):
        name = _variable(".".join(str(part) for part in item["loc"])) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        # A rule across variables has no loc, and its input is *every* variable,
        # secrets included: never echo that.
        if not item["loc"] or name in hidden or "input" not in item:
            lines.append(f"invalid configuration: {name}: {message}")
        else:
            lines.append(f"invalid configuration: {name}={item['input']!r}: {message}")
    return lines


def _variable(field: str) -> str:
    """The environment variable that gave `field` its value: its own name, or the first
    alias that is set (WEB_CONCURRENCY for GUNICORN_WORKERS)."""
    info = Settings.model_fields.get(field)
    choices = getattr(info.validation_alias, "choices", []) if info else []
    names = [choice for choice in choices if isinstance(choice, str)]
    return next((name for name in names if name in os.environ), field)


def load_settings() -> Settings:
    """Read the environment and the secrets directory; on a bad value, print what is
    wrong and exit with status 2. A value read from a file is never echoed."""
    try:
        return Settings()
    except ValidationError as exc:
        for line in describe_errors(exc, SECRET_FIELDS | secret_file_names()):
            print(line, file=sys.stderr)
        raise SystemExit(2) from None
    except SecretsDirError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def process_settings() -> Settings:
    """This process's settings, read once (`load_settings`) the first time it asks.

    A Gunicorn worker asks after the fork, once Gunicorn has applied `raw_env`: its
    server (app/worker.py) and its app (app/main.py) then share one Settings. Keyed by
    the process id, so a forked child never inherits its parent's copy: the master reads
    them afresh at every configuration load instead (gunicorn.conf.py, again on SIGHUP,
    which is how new workers see rotated secret files)."""
    return _settings_of_process(os.getpid())


@functools.cache
def _settings_of_process(pid: int) -> Settings:
    return load_settings()
