"""Throwaway Postgres and Redis servers on free loopback ports, for fault tests and
`parity chaos`: they can be stopped and started at will without touching the shared
services on 5432/6379.

    with TemporaryPostgres() as pg, TemporaryRedis() as redis:
        url = pg.database_url("app")     # postgresql+asyncpg://postgres@127.0.0.1:<port>/app
        pg.stop(); pg.start()            # same data dir, same port
        redis.stop(); redis.start()
        redis.pause(); redis.resume()    # SIGSTOP/SIGCONT: a hung, not a dead, Redis

Postgres refuses to run as root, so under root the servers run as the `postgres` OS user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from parity.harness.stack import StackError, free_port


def postgres_bindir() -> Path | None:
    """The newest installed server's bin dir (Debian layout), or wherever initdb is."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class TemporaryPostgres:
    """`initdb` into a temporary directory and `pg_ctl` a server on a free port."""

    def __init__(self, port: int | None = None) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise StackError("PostgreSQL server binaries not found (apt install postgresql)")
        self.bindir = bindir
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="parity-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            )
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)  # nothing left behind on failure
            raise

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*_as_server_user(), str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise StackError(f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}")

    def database_url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            options,
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects clients (like a crash from their side); `immediate` is harsher."""
        self._run("pg_ctl", "stop", "-w", "-t", "30", "-D", str(self.datadir), "-m", mode)

    def is_running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def cleanup(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


class TemporaryRedis:
    """`redis-server` on a free port, keeping nothing on disk; with `password`, clients
    must authenticate (the URL carries it)."""

    def __init__(self, port: int | None = None, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server not found (apt install redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # -NOAUTH: up, and wants the password
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a stopped process would not act on SIGTERM
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts TCP connections (the kernel completes the
        handshake into the listen backlog) but nothing answers: a hung Redis, which
        costs clients a timeout per call where a stopped one refuses at once."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> TemporaryRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
