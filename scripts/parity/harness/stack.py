"""The one way to start the stack natively, shared by `make run`, every script's
`--native` mode and the tests: the same `gunicorn.conf.py` and app as the container,
against a local Postgres and Redis (`parity stack up|dev|prepare` is its command).
`--compose` targets drive a `docker compose` stack.

    stack = NativeStack(database_url=..., env={"REDIS_KEY_PREFIX": "t1:"})
    stack.prepare(products=1000)
    with stack.start_gunicorn(workers=2) as server:
        httpx.get(server.base_url + "/ready")
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from redis import Redis
from sqlalchemy.engine import make_url

from parity.harness.repo import REPO_ROOT

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/app"


class StackError(RuntimeError):
    """The stack could not be started or did not become ready; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --- Postgres ----------------------------------------------------------------------


def _asyncpg_dsn(database_url: str, database: str | None = None) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def _admin(database_url: str, statement: str, *args: object) -> Any:
    """Run `statement` on the server's maintenance database (`postgres`)."""
    connection = await asyncpg.connect(_asyncpg_dsn(database_url, "postgres"), timeout=5)
    try:
        return await connection.fetchval(statement, *args)
    finally:
        await connection.close()


def fetch_value(database_url: str, statement: str, *args: object) -> Any:
    """The first value of one query on the server's maintenance database (server
    settings, `pg_stat_activity`), for scripts that report on the server."""
    return asyncio.run(_admin(database_url, statement, *args))


def _quoted_name(database_url: str) -> str:
    name = make_url(database_url).database or ""
    return '"' + name.replace('"', '""') + '"'


def ensure_database(database_url: str) -> bool:
    """Create the database named in `database_url` unless it exists; True if created."""
    name = make_url(database_url).database
    exists = asyncio.run(_admin(database_url, "SELECT 1 FROM pg_database WHERE datname = $1", name))
    if not exists:
        asyncio.run(_admin(database_url, f"CREATE DATABASE {_quoted_name(database_url)}"))
    return not exists


def drop_database(database_url: str) -> None:
    asyncio.run(
        _admin(database_url, f"DROP DATABASE IF EXISTS {_quoted_name(database_url)} WITH (FORCE)")
    )


@contextmanager
def scratch_database(tool: str, products: int, database_url: str | None = None) -> Iterator[str]:
    """A migrated database with `products` products for one run of a tool; yields its URL.

    Unless the user named a database (`database_url`, from a `--database-url` option:
    prepared and left in place), it is one of the run's own on DATABASE_URL's server
    (default the local one), `parity_<tool>_<pid>_<random>`, dropped on exit: a tool
    never migrates or seeds a database it did not create (`make run` uses `app`)."""
    if database_url is not None:
        NativeStack(database_url=database_url).prepare(products=products)
        yield database_url
        return
    server = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"parity_{tool}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    ensure_database(url)
    try:
        migrate(url)
        if products:
            seed(url, products)
        yield url
    finally:
        drop_database(url)


def delete_redis_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix`: what a run or a test wrote to a shared Redis."""
    if not prefix:
        raise ValueError("refusing to delete every key: the prefix is empty")
    redis = Redis.from_url(redis_url)
    try:
        keys = list(redis.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            redis.delete(*keys[start : start + 1000])
    finally:
        redis.close()


def _run_module(args: list[str], env: Mapping[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"`python -m {' '.join(args)}` failed:\n{result.stderr.strip()}")


def migrate(database_url: str) -> None:
    """`alembic upgrade head`, exactly as a user or the compose `migrate` service runs it."""
    _run_module(["alembic", "upgrade", "head"], {"DATABASE_URL": database_url})


def seed(database_url: str, products: int) -> None:
    _run_module(
        ["app.seed", "--quiet", "--products", str(products)], {"DATABASE_URL": database_url}
    )


# --- Gunicorn ----------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc); none when it is gone."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in children.split()]


def stop_process(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, wait up to `timeout` seconds, SIGKILL if it overstays."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_answers(
    url: str,
    *,
    timeout: float,
    interval: float = 0.1,
    accept: Callable[[int], bool] = lambda status: status == 200,
    gone: Callable[[], str | None] | None = None,
) -> None:
    """The one wait-until-ready loop: GET `url` until its status is accepted (200 by
    default). StackError naming the last answer when the deadline passes, or at once
    with `gone()`'s message when it reports the server dead."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if gone is not None and (reason := gone()):
            raise StackError(reason)
        try:
            response = httpx.get(url, timeout=2)
            if accept(response.status_code):
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(interval)
    raise StackError(f"{url} not ready after {timeout:g}s ({last})")


@dataclass
class GunicornProcess:
    """A Gunicorn master started with the project's gunicorn.conf.py, logging to a file."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    env: dict[str, str]
    _log_file: Any = field(repr=False)
    # A log start_gunicorn made (no `log_path` given) is removed by stop(); its text
    # stays readable here, so a caller reads the log after the exit as before.
    owns_log: bool = False
    _stopped_log: str | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """Pids of the master's current worker processes."""
        return child_pids(self.pid)

    def wait_ready(self, timeout: float = 30.0, path: str = "/ready") -> None:
        """Poll `path` until it answers 200; raise StackError with the log tail if the
        master exits or the deadline passes."""

        def exited() -> str | None:
            if self.process.poll() is None:
                return None
            return f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}"

        try:
            wait_until_answers(self.base_url + path, timeout=timeout, gone=exited)
        except StackError as exc:
            if self.process.poll() is not None:
                raise
            raise StackError(f"{exc}:\n{self.log_tail()}") from None

    def booted_worker_pids(self) -> set[int]:
        """Pids of workers whose lifespan startup completed, from the log."""
        return {
            record["pid"]
            for record in self.log_records()
            if record.get("message") == "Application startup complete."
        }

    def wait_workers_booted(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` workers have completed their startup, so that a test
        spreading load over "all workers" really reaches all of them."""
        deadline = time.monotonic() + timeout
        while len(self.booted_worker_pids()) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"{count} workers did not boot in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def send_signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 60.0, *, keep_log: bool = False) -> int:
        """SIGTERM (graceful), wait, SIGKILL if it overstays; returns the exit code.
        A temporary log of our own is removed (its text kept in memory for log_text())
        unless `keep_log`; a log at a path the caller chose is always left in place."""
        stop_process(self.process, timeout)
        self._log_file.close()
        if self.owns_log and not keep_log and self._stopped_log is None:
            self._stopped_log = self.log_path.read_text(errors="replace")
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode

    def log_text(self) -> str:
        if self._stopped_log is not None:
            return self._stopped_log
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines; anything else (a stray print) is skipped."""
        records = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def __enter__(self) -> GunicornProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_gunicorn(
    env: Mapping[str, str],
    *,
    workers: int = 2,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
    app: str = "app.main:app",
) -> GunicornProcess:
    """Start `gunicorn app.main:app -c gunicorn.conf.py`; does not wait for readiness.
    `app` serves another ASGI app with the same configuration (the benchmarks' bare
    FastAPI app)."""
    port = port or free_port(host)
    owns_log = log_path is None
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    full_env = {
        **os.environ,
        "GUNICORN_WORKERS": str(workers),
        "GUNICORN_BIND": f"{host}:{port}",
        **env,
    }
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            app,
            "-c",
            "gunicorn.conf.py",
            *(extra_args or []),
        ],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return GunicornProcess(process, host, port, log_path, dict(env), log_file, owns_log)


@dataclass
class NativeStack:
    """Postgres database + migrations + seed + Gunicorn, all on this machine."""

    database_url: str = field(
        default_factory=lambda: os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    env: dict[str, str] = field(default_factory=dict)

    def prepare(self, products: int = 10_000) -> None:
        ensure_database(self.database_url)
        migrate(self.database_url)
        if products:
            seed(self.database_url, products)

    def app_env(self, **overrides: str) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, **self.env, **overrides}

    def start_gunicorn(
        self,
        *,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30.0,
        ready_path: str = "/ready",
        wait_booted: bool = True,
        **kwargs: Any,
    ) -> GunicornProcess:
        """Start Gunicorn against this stack's database, wait until every worker has
        booted and `ready_path` answers 200 (pass "/health" for a server that cannot be
        ready yet; `wait_booted=False` for an app that logs no boot lines)."""
        server = start_gunicorn(self.app_env(**(env or {})), workers=workers, **kwargs)
        try:
            if wait_booted:
                server.wait_workers_booted(workers, ready_timeout)
            server.wait_ready(ready_timeout, path=ready_path)
        except BaseException:
            server.stop(timeout=10)
            raise
        return server


# --- docker compose ----------------------------------------------------------------

# COMPOSE_FILE for the stack without a registry: the local stand-in images.
OFFLINE_COMPOSE_FILES = "compose.yaml:compose.offline.yaml"


def compose_api_url() -> str:
    """Where compose publishes the API: 127.0.0.1 and `API_PORT` (compose.yaml's
    `${API_PORT:-8000}`, so the same variable that moved it finds it)."""
    return f"http://127.0.0.1:{os.environ.get('API_PORT') or 8000}"


@dataclass
class ComposeStack:
    """A stack started with `docker compose up`; the API published on 127.0.0.1.

    Which stack: Compose's own variables in the environment, as for any `docker compose`
    command typed in this directory (COMPOSE_FILE, e.g. compose.yaml:compose.offline.yaml,
    and COMPOSE_PROJECT_NAME), so a script drives the stack the user started."""

    base_url: str = field(default_factory=compose_api_url)
    service: str = "api"
    project_dir: Path = REPO_ROOT

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "compose", *args],
            cwd=self.project_dir,
            capture_output=True,
            text=True,
            check=check,
        )

    def send_signal(self, sig: signal.Signals) -> None:
        self.compose("kill", "-s", sig.name, self.service)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", self.service).stdout

    def service_state(self) -> tuple[str, int | None]:
        """The service container's state ("running", "exited", ...) and exit code, from
        `docker compose ps --all --format json` (one object, a list, or one per line)."""
        out = self.compose("ps", "--all", "--format", "json", self.service).stdout
        entries = ps_entries(out)
        if not entries:
            return "missing", None
        entry = entries[0]
        code = entry.get("ExitCode")
        return str(entry.get("State", "unknown")), int(code) if code is not None else None

    def container_count(self) -> int:
        """How many containers the service has, running or not (its replicas)."""
        out = self.compose("ps", "--all", "--quiet", self.service).stdout
        return len(out.split())

    def stop_service(self, name: str) -> None:
        self.compose("stop", name)

    def start_service(self, name: str) -> None:
        self.compose("start", name)

    def pause_service(self, name: str) -> None:
        """SIGSTOP-like freeze (the cgroup freezer): its port still accepts connections
        on the network, nothing answers, as with a hung process."""
        self.compose("pause", name)

    def unpause_service(self, name: str) -> None:
        self.compose("unpause", name)

    def stop_in_background(self, name: str) -> subprocess.Popen[bytes]:
        """`docker compose stop NAME` without waiting for it: the stop signal now, SIGKILL
        after the service's stop_grace_period, as a deploy does it. Unlike `kill -s TERM`,
        a stop is not undone by the restart policy. Wait on the returned process."""
        return subprocess.Popen(
            ["docker", "compose", "stop", name],
            cwd=self.project_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def worker_pids(self) -> list[int]:
        """Pids (inside the container) of Gunicorn's workers: the children of PID 1,
        which the exec-form CMD makes the master; what the demo routes report as `pid`."""
        result = self.compose(
            "exec", "-T", self.service, "cat", "/proc/1/task/1/children", check=False
        )
        return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []

    def recreate(self, env: Mapping[str, str], service: str | None = None) -> None:
        """Recreate one service (default: the API) with `env` set for compose's variable
        interpolation, e.g. {"GUNICORN_WORKERS": "4"} with compose.yaml's
        `GUNICORN_WORKERS: ${GUNICORN_WORKERS:-...}`; its dependencies are left alone."""
        result = subprocess.run(
            ["docker", "compose", "up", "--detach", "--no-deps", "--force-recreate",
             service or self.service],
            cwd=self.project_dir,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(
                f"docker compose up {service or self.service} failed:\n{result.stderr.strip()}"
            )

    def wait_ready(self, timeout: float = 60.0, path: str = "/health") -> None:
        """Poll the published API until `path` answers 200. /health, not /ready: the
        replicas answer /ready only on their internal listener, which is not published
        (app/listeners.py); the load balancer in front routes to ready replicas."""
        wait_until_answers(self.base_url + path, timeout=timeout, interval=0.5)


def ps_entries(text: str) -> list[dict[str, Any]]:
    """The containers of `docker compose ps --format json`, whichever shape this Compose
    prints: one object, a list, or one object per line (Compose >= 2.21)."""
    text = text.strip()
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
    return parsed if isinstance(parsed, list) else [parsed]


def iter_json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record
