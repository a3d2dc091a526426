"""Fixtures: a Postgres database and a Redis key prefix per test session, apps built
from `Settings`, and real Gunicorn masters on free ports.

Everything talks to the real Postgres and Redis (TEST_DATABASE_SERVER_URL, default
127.0.0.1:5432; TEST_REDIS_URL, default 127.0.0.1:6379). The session's database is created,
migrated with Alembic and dropped at the end; its Redis keys are deleted. The session
fails if it leaves any database, Redis key or file behind (`leaves_nothing_behind`).

The rate limiter is off in apps and servers built by these fixtures unless a test turns
it on (`RATE_LIMIT_ENABLED=True`): every test of a session shares one Redis prefix and
one client address, so unrelated tests would otherwise eat each other's quota. The
limiter's own tests (tests/test_ratelimit*.py) switch it on with policies of their own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.settings import Settings
from parity.harness.stack import (
    GunicornProcess,
    NativeStack,
    delete_redis_prefix,
    drop_database,
    ensure_database,
    migrate,
)
from tests.helpers import app_client
from tests.leftovers import LeftoverCheck, private_tmpdir

SERVER_URL = os.environ.get(
    "TEST_DATABASE_SERVER_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Tracing stays on in every test (spans, sampling, instrumentation), but nothing is sent
# unless a test says where: there is no collector here, and each worker would spend its
# shutdown budget retrying one. Tests of the export set OTEL_TRACES_EXPORTER=otlp.
os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
# The scripts the tests run take their servers from DATABASE_URL and REDIS_URL: point
# those at the test servers, never at what a user exported for `make run`. The scripts
# use only the server of DATABASE_URL (a database of their own on it); one that used the
# named database itself would create `parity_tests_unnamed`, which the session reports.
os.environ["DATABASE_URL"] = (
    make_url(SERVER_URL).set(database="parity_tests_unnamed").render_as_string(hide_password=False)
)
os.environ["REDIS_URL"] = REDIS_URL
# In CI every test must run: a skip (a missing tool, say) is a failure there.
STRICT_SKIPS = os.environ.get("PARITY_STRICT_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Under PARITY_STRICT_SKIPS=1 a skipped test fails, saying why it would have skipped."""
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"not verified (PARITY_STRICT_SKIPS=1 forbids skips): {reason}"


@pytest.fixture(scope="session", autouse=True)
def leaves_nothing_behind() -> Iterator[None]:
    """The session fails if it leaves a database, a Redis key, a repository file or a
    temporary file behind that it created (tests/leftovers.py says how it tells). Its
    temporary files (Gunicorn logs, the scripts' files) go to a TMPDIR of its own."""
    with private_tmpdir() as tmpdir:
        check = LeftoverCheck(server_url=SERVER_URL, redis_url=REDIS_URL, tmpdir=tmpdir)
        yield
        problems = check.problems()
    if problems:
        pytest.fail("the test session left behind:\n  " + "\n  ".join(problems), pytrace=False)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database for this test session, dropped afterwards."""
    url = (
        make_url(SERVER_URL)
        .set(database=unique_name("parity_test"))
        .render_as_string(hide_password=False)
    )
    ensure_database(url)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this session's own; its keys are deleted afterwards."""
    prefix = f"{unique_name('parity-test')}:"
    yield prefix
    delete_redis_prefix(REDIS_URL, prefix)


@pytest.fixture
def make_settings(database_url: str, redis_prefix: str) -> Callable[..., Settings]:
    """Settings for this session's database and Redis prefix, with overrides."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": redis_prefix,
            "RATE_LIMIT_ENABLED": False,
        }
        return Settings(**{**values, **overrides})

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as client:
        yield client


@pytest.fixture
def native_stack(database_url: str, redis_prefix: str) -> NativeStack:
    return NativeStack(
        database_url=database_url,
        env={
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": redis_prefix,
            "LOG_LEVEL": "info",
            "RATE_LIMIT_ENABLED": "false",
        },
    )


@pytest.fixture
def gunicorn(native_stack: NativeStack) -> Iterator[Callable[..., GunicornProcess]]:
    """Start real Gunicorn masters (`gunicorn(workers=2, env={...})`); all are stopped
    (TERM, then KILL) at the end of the test."""
    started: list[GunicornProcess] = []

    def start(**kwargs: Any) -> GunicornProcess:
        server = native_stack.start_gunicorn(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(timeout=30)
