"""All configuration, read once from the environment.

Field names are the environment variable names, so `grep DB_POOL_SIZE` finds the
setting, its default and every place (compose.yaml, k8s/, docs) that sets it.
A bad value stops the process at start with one line per variable
(`load_settings`), never a traceback and never the secret itself.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]

# Values of these variables are never echoed back in an error message or a repr.
SECRET_FIELDS = frozenset({"DATABASE_URL", "REDIS_URL"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    # --- Service identity ----------------------------------------------------------
    SERVICE_NAME: str = Field("parity-api", min_length=1, max_length=64)

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
    # Redis is a cache and a limiter: a request never waits longer than this on it.
    REDIS_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=10)] = 0.25
    REDIS_MAX_CONNECTIONS: int = Field(64, ge=1, le=10_000)
    CACHE_TTL_SECONDS: int = Field(60, ge=1, le=86_400)

    # --- Health --------------------------------------------------------------------
    READY_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=30)] = 1.0

    # --- Gunicorn (read by gunicorn.conf.py) ----------------------------------------
    GUNICORN_BIND: str = "0.0.0.0:8000"
    # None: one worker per CPU actually available to the process (see app/worker.py).
    GUNICORN_WORKERS: int | None = Field(None, ge=1, le=256)
    GUNICORN_TIMEOUT: int = Field(30, ge=1, le=3600)
    GUNICORN_GRACEFUL_TIMEOUT: int = Field(30, ge=1, le=3600)
    GUNICORN_KEEPALIVE: int = Field(75, ge=0, le=3600)
    GUNICORN_MAX_REQUESTS: int = Field(100_000, ge=0)
    GUNICORN_MAX_REQUESTS_JITTER: int = Field(10_000, ge=0)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed. Never "*" by
    # default: with "*" any client can claim any address.
    FORWARDED_ALLOW_IPS: str = "127.0.0.1,::1"

    # --- Logging -------------------------------------------------------------------
    LOG_LEVEL: Literal["debug", "info", "warning", "error"] = "info"
    LOG_JSON: bool = True

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
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT (e.g. 0.0.0.0:8000) or unix:PATH")
        return value

    @property
    def database_url_masked(self) -> str:
        return make_url(self.DATABASE_URL).render_as_string(hide_password=True)

    @property
    def db_connections_per_worker(self) -> int:
        return self.DB_POOL_SIZE + self.DB_MAX_OVERFLOW


def describe_errors(error: ValidationError) -> list[str]:
    """One line per bad variable: its name, what is wrong and, unless secret, the value."""
    lines = []
    for item in error.errors(include_url=False):
        name = ".".join(str(part) for part in item["loc"]) or "settings"
        message = item["msg"].removeprefix("Value error, ")
        if name in SECRET_FIELDS or "input" not in item:
            lines.append(f"invalid configuration: {name}: {message}")
        else:
            lines.append(f"invalid configuration: {name}={item['input']!r}: {message}")
    return lines


def load_settings() -> Settings:
    """Read the environment; on a bad value, print what is wrong and exit with status 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for line in describe_errors(exc):
            print(line, file=sys.stderr)
        raise SystemExit(2) from None
