"""Where the API under test runs, chosen by one option group that every command shares.

    --native        start it here: Gunicorn with gunicorn.conf.py against the local
                    Postgres and Redis (a database and Redis prefix of the run's own),
                    or, for a command that stops them, throwaway servers of its own
    --compose       the running `docker compose up` stack
    --url URL       alone: an API already running at URL (loopback only: load goes
                    nowhere else); with --compose or --pid: where that API answers
    --pid PID       a Gunicorn master someone else started, signalled by pid

A command names the kinds it supports and its default; `target_choice` turns the
parsed options into one `TargetChoice`, refusing a combination that means nothing with
a message naming it (exit 2, as argparse does), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import uuid
from collections.abc import Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from parity.harness.report import progress
from parity.harness.stack import (
    ComposeStack,
    GunicornProcess,
    NativeStack,
    StackError,
    child_pids,
    compose_api_url,
    delete_redis_prefix,
    iter_json_lines,
    scratch_database,
)
from parity.harness.throwaway import TemporaryPostgres, TemporaryRedis

Kind = Literal["native", "compose", "url", "pid"]
ALL_FLAGS: tuple[Kind, ...] = ("native", "compose", "pid")
LOOPBACK_PREFIXES = ("http://127.", "http://localhost", "http://[::1]")

DEFAULT_HELP: Mapping[Kind, str] = {
    "native": "start Gunicorn here (parity stack)",
    "compose": "the running `docker compose up` stack",
    "url": "an API already running at URL, e.g. http://127.0.0.1:8000 (loopback only)",
    "pid": "signal this running Gunicorn master",
}


@dataclass(frozen=True)
class TargetChoice:
    kind: Kind
    url: str | None = None  # the API's base URL, when it is not started here
    pid: int | None = None

    @property
    def native(self) -> bool:
        return self.kind == "native"


def add_target_options(
    parser: argparse.ArgumentParser,
    kinds: Collection[Kind],
    *,
    default: Kind | None = "native",
    help: Mapping[Kind, str] | None = None,
) -> argparse._MutuallyExclusiveGroup:
    """--native/--compose/--pid (one of them; `default` when none, required when None)
    and --url, for the `kinds` the command supports. `help` overrides a kind's line.
    Returns the exclusive group, for a command with a mode of its own beside them."""
    lines = {**DEFAULT_HELP, **(help or {})}
    group = parser.add_argument_group("where the API runs")
    exclusive = group.add_mutually_exclusive_group(required=default is None and "url" not in kinds)
    for kind in ("native", "compose"):
        if kind in kinds:
            suffix = " (the default)" if kind == default else ""
            exclusive.add_argument(f"--{kind}", action="store_true", help=lines[kind] + suffix)
    if "pid" in kinds:
        exclusive.add_argument("--pid", type=int, help=lines["pid"])
    if url_help := _url_help(kinds, lines):
        group.add_argument("--url", help=url_help)
    parser.set_defaults(target_kinds=tuple(kinds), target_default=default)
    return exclusive


def _url_help(kinds: Collection[Kind], lines: Mapping[Kind, str]) -> str:
    modified = [f"--{kind}" for kind in ("compose", "pid") if kind in kinds]
    parts = [lines["url"]] if "url" in kinds else []
    if modified:
        where = "/".join(modified)
        parts.append(f"with {where}: where it answers (default {compose_api_url()})")
    return "; ".join(parts)


def target_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TargetChoice:
    """The target the parsed options name, or parser.error naming what is wrong."""
    kinds: tuple[Kind, ...] = args.target_kinds
    url: str | None = getattr(args, "url", None)
    named: list[Kind] = [k for k in ALL_FLAGS if getattr(args, k, None) not in (None, False)]
    kind: Kind | None
    if named:
        kind = named[0]  # argparse's group lets at most one through
    elif url is not None and "url" in kinds:
        kind = "url"
    else:
        kind = args.target_default
    if kind is None:
        parser.error("say where the API runs: " + ", ".join(f"--{k}" for k in kinds))
    if url is not None and kind == "native":
        others = [f"--{k}" for k in ("compose", "pid") if k in kinds]
        goes_with = f"; it goes with {' or '.join(others)}" if others else ""
        parser.error(f"argument --url: not with --native (the API is started here){goes_with}")
    if kind == "url" and url is not None and not url.startswith(LOOPBACK_PREFIXES):
        parser.error(f"argument --url: {url!r} is not on this machine (loopback only)")
    if kind in ("compose", "pid"):
        url = url or compose_api_url()
    return TargetChoice(kind, url.rstrip("/") if url else None, getattr(args, "pid", None))


# --- the targets ---------------------------------------------------------------------


class Target(Protocol):
    """The API under test, wherever it runs: what a command may do to it. A capability
    a kind lacks raises StackError naming it (e.g. signalling an API known by URL)."""

    base_url: str
    description: str

    def send_signal(self, sig: signal.Signals) -> None: ...
    def running(self) -> bool: ...
    def exit_code(self) -> int | None: ...
    def log_records(self) -> list[dict[str, Any]] | None: ...
    def worker_pids(self) -> set[int]: ...
    def metrics_url(self) -> str | None: ...
    def stop_dependency(self, name: str) -> None: ...
    def start_dependency(self, name: str) -> None: ...
    def pause_dependency(self, name: str) -> None: ...  # hung: connections open, no answer
    def resume_dependency(self, name: str) -> None: ...
    def close(self) -> None: ...


SHARED_SERVERS = (
    "natively the API uses this machine's shared Postgres and Redis, which are never "
    "stopped (throwaway=True gives a native target servers of its own, as `parity chaos "
    "--native` runs)"
)


class NativeTarget:
    """A Gunicorn master started here via parity stack, with the project's config, on a
    database and Redis prefix of the run's own (`label` names them), removed by close().

    With `throwaway`, Postgres and Redis are servers of its own too (parity.harness.
    throwaway, on free ports, removed by close()): the only kind of native target whose
    dependencies may be stopped, started, paused and resumed, since the shared servers
    on 5432/6379 serve `make run`, the tests and whatever else runs on this machine."""

    def __init__(
        self,
        label: str,
        workers: int,
        env: Mapping[str, str],
        products: int,
        *,
        throwaway: bool = False,
    ) -> None:
        self.cleanup = ExitStack()
        self.servers: dict[str, TemporaryPostgres | TemporaryRedis] = {}
        try:
            starting = f"starting Gunicorn with {workers} workers"
            if throwaway:
                database_url, redis_env = self._on_throwaway_servers(label, products, starting)
            else:
                database_url, redis_env = self._on_shared_servers(label, products, starting)
            stack = NativeStack(database_url=database_url, env={**redis_env, **env})
            self.server: GunicornProcess = stack.start_gunicorn(workers=workers)
        except BaseException:
            self.cleanup.close()
            raise
        self.base_url = self.server.base_url
        self.description = f"native Gunicorn pid {self.server.pid} on {self.base_url}"

    def _on_shared_servers(
        self, label: str, products: int, starting: str
    ) -> tuple[str, dict[str, str]]:
        """A database and a Redis prefix of the run's own on this machine's servers."""
        prefix = f"parity-{label}-{uuid.uuid4().hex[:12]}:"
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.cleanup.callback(delete_redis_prefix, redis_url, prefix)
        progress(f"native: a database of its own, {starting}")
        database_url = self.cleanup.enter_context(scratch_database(label, products))
        return database_url, {"REDIS_KEY_PREFIX": prefix}

    def _on_throwaway_servers(
        self, label: str, products: int, starting: str
    ) -> tuple[str, dict[str, str]]:
        """Postgres and Redis of its own, dropped whole by close(): no prefix to delete,
        which a stopped Redis could not do anyway."""
        postgres = self.cleanup.enter_context(TemporaryPostgres())
        redis = self.cleanup.enter_context(TemporaryRedis())
        self.servers = {"postgres": postgres, "redis": redis}
        progress(f"native: throwaway Postgres :{postgres.port}, Redis :{redis.port}, {starting}")
        database_url = postgres.database_url("app")
        self.cleanup.enter_context(scratch_database(label, products, database_url))
        return database_url, {"REDIS_URL": redis.url, "REDIS_KEY_PREFIX": f"{label}:"}

    def send_signal(self, sig: signal.Signals) -> None:
        self.server.send_signal(sig)

    def running(self) -> bool:
        return self.server.process.poll() is None

    def exit_code(self) -> int | None:
        return self.server.process.poll()

    def log_records(self) -> list[dict[str, Any]] | None:
        return self.server.log_records()

    def worker_pids(self) -> set[int]:
        return set(self.server.worker_pids())

    def metrics_url(self) -> str | None:
        return self.server.base_url + "/metrics"

    def _own(self, name: str, action: str) -> TemporaryPostgres | TemporaryRedis:
        if not self.servers:
            raise StackError(f"cannot {action} {name}: {SHARED_SERVERS}")
        if name not in self.servers:
            raise StackError(f"cannot {action} {name}: the throwaway servers are postgres, redis")
        return self.servers[name]

    def _own_redis(self, name: str, action: str) -> TemporaryRedis:
        server = self._own(name, action)
        if not isinstance(server, TemporaryRedis):
            raise StackError(f"cannot {action} {name}: natively only Redis is hung (SIGSTOP)")
        return server

    def stop_dependency(self, name: str) -> None:
        self._own(name, "stop").stop()

    def start_dependency(self, name: str) -> None:
        self._own(name, "start").start()

    def pause_dependency(self, name: str) -> None:
        self._own_redis(name, "pause").pause()

    def resume_dependency(self, name: str) -> None:
        self._own_redis(name, "resume").resume()

    def close(self) -> None:
        """Stop Gunicorn, drop the database and the Redis keys (or the throwaway servers,
        a paused Redis resumed to be stopped); the log is removed (its records stay
        readable) unless keep_log() writes it back for a failed run."""
        self.server.stop(timeout=60)
        self.cleanup.close()

    def keep_log(self) -> None:
        self.server.log_path.write_text(self.server.log_text())
        progress(f"native: Gunicorn log kept at {self.server.log_path}")


class PidTarget:
    """A master someone else started: signalled by pid, logs from a file if given."""

    def __init__(self, pid: int, base_url: str, log_file: Path | None) -> None:
        self.pid, self.base_url, self.log_file = pid, base_url, log_file
        self.description = f"Gunicorn master pid {pid} at {base_url}"
        if not Path(f"/proc/{pid}").exists():
            raise StackError(f"no process with pid {pid}")

    def send_signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def running(self) -> bool:
        """Alive, and not a zombie: a master that exited stays in /proc until its
        parent (a shell, a supervisor, a test) reaps it."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"

    def exit_code(self) -> int | None:
        return None  # not our child: its exit status is not ours to read

    def log_records(self) -> list[dict[str, Any]] | None:
        if self.log_file is None:
            return None
        return list(iter_json_lines(self.log_file.read_text(errors="replace")))

    def worker_pids(self) -> set[int]:
        return set(child_pids(self.pid))

    def metrics_url(self) -> str | None:
        return self.base_url + "/metrics"

    def stop_dependency(self, name: str) -> None:
        raise StackError(f"cannot stop {name}: a master started elsewhere uses its own")

    def start_dependency(self, name: str) -> None:
        raise StackError(f"cannot start {name}: a master started elsewhere uses its own")

    def pause_dependency(self, name: str) -> None:
        raise StackError(f"cannot pause {name}: a master started elsewhere uses its own")

    def resume_dependency(self, name: str) -> None:
        raise StackError(f"cannot resume {name}: a master started elsewhere uses its own")

    def close(self) -> None:
        pass


class ComposeTarget:
    """The `api` service of a running `docker compose up`, however many replicas it has
    (a command that signals it and needs one says so itself). TERM goes the way a deploy
    sends it, `docker compose stop` (SIGTERM, then SIGKILL after stop_grace_period): a
    bare `kill -s TERM` would have the restart policy start the container again at
    once. HUP is `docker compose kill -s HUP`. A dependency it stopped or paused is
    running again after close(), even when the run was interrupted in between."""

    def __init__(self, base_url: str) -> None:
        self.stack = ComposeStack(base_url=base_url)
        self.base_url = base_url
        self.description = f"docker compose service {self.stack.service!r} at {base_url}"
        self._stopping: subprocess.Popen[bytes] | None = None
        self._disturbed: set[str] = set()  # services stopped or paused, restored by close()

    def send_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGTERM:
            self._stopping = self.stack.stop_in_background(self.stack.service)
        else:
            self.stack.send_signal(sig)

    def running(self) -> bool:
        return self.stack.service_state()[0] == "running"

    def exit_code(self) -> int | None:
        state, code = self.stack.service_state()
        return code if state == "exited" else None

    def log_records(self) -> list[dict[str, Any]] | None:
        return list(iter_json_lines(self.stack.logs()))

    def worker_pids(self) -> set[int]:
        return set(self.stack.worker_pids())

    def metrics_url(self) -> str | None:
        return None  # on each replica's internal listener, not published (Prometheus's)

    def stop_dependency(self, name: str) -> None:
        self._disturbed.add(name)  # before: an interrupted `docker compose stop` may stop it
        self.stack.stop_service(name)

    def start_dependency(self, name: str) -> None:
        self.stack.start_service(name)

    def pause_dependency(self, name: str) -> None:
        """The cgroup freezer: its port still accepts connections, nothing answers."""
        self._disturbed.add(name)
        self.stack.pause_service(name)

    def resume_dependency(self, name: str) -> None:
        self.stack.unpause_service(name)

    def close(self) -> None:
        if self._stopping is not None:
            self._stopping.wait(timeout=120)
        for name in sorted(self._disturbed):
            self._restore(name)

    def _restore(self, name: str) -> None:
        """Unfrozen if paused (a frozen container cannot be started), then started;
        neither fails when it is running already."""
        if self._paused(name):
            self.stack.unpause_service(name)
        self.stack.compose("start", name, check=False)

    def _paused(self, name: str) -> bool:
        result = self.stack.compose("ps", "--status", "paused", "--quiet", name, check=False)
        return bool(result.stdout.strip())


class UrlTarget:
    """An API someone else runs, known only by its address: load it, read its metrics;
    nothing to signal, no log, no dependency to stop."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.description = f"the API at {base_url}"

    def _cannot(self, what: str) -> StackError:
        return StackError(f"cannot {what} an API known only by --url; use --pid or --native")

    def send_signal(self, sig: signal.Signals) -> None:
        raise self._cannot(f"send {sig.name} to")

    def running(self) -> bool:
        raise self._cannot("watch the process of")

    def exit_code(self) -> int | None:
        return None

    def log_records(self) -> list[dict[str, Any]] | None:
        return None

    def worker_pids(self) -> set[int]:
        raise self._cannot("list the workers of")

    def metrics_url(self) -> str | None:
        return self.base_url + "/metrics"

    def stop_dependency(self, name: str) -> None:
        raise self._cannot(f"stop the {name} of")

    def start_dependency(self, name: str) -> None:
        raise self._cannot(f"start the {name} of")

    def pause_dependency(self, name: str) -> None:
        raise self._cannot(f"pause the {name} of")

    def resume_dependency(self, name: str) -> None:
        raise self._cannot(f"resume the {name} of")

    def close(self) -> None:
        pass


def open_target(
    choice: TargetChoice,
    *,
    label: str,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    products: int = 100,
    log_file: Path | None = None,
    throwaway: bool = False,
) -> Target:
    """The Target `choice` names; native: started now (`label`, `workers`, `env`,
    `products`; on throwaway servers of its own with `throwaway`), the others attached
    to."""
    if choice.kind == "native":
        return NativeTarget(label, workers, env or {}, products, throwaway=throwaway)
    assert choice.url is not None  # target_choice fills it for every other kind
    if choice.kind == "compose":
        return ComposeTarget(choice.url)
    if choice.kind == "pid":
        assert choice.pid is not None
        return PidTarget(choice.pid, choice.url, log_file)
    return UrlTarget(choice.url)
