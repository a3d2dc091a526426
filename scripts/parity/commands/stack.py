"""`parity stack`: the native stack in the foreground, as `make run` and `make dev` start it.

parity stack up [--workers N] [--bind HOST:PORT] [--products N]
parity stack dev [--bind HOST:PORT]   # one process, reloads when app/ changes
parity stack prepare                  # create the database, migrate, seed
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import NoReturn

import asyncpg
from sqlalchemy.engine import make_url

from parity.harness.repo import REPO_ROOT
from parity.harness.stack import NativeStack, StackError


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parity stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("prepare", "create the database, migrate, seed"),
        ("up", "prepare, then run Gunicorn in the foreground"),
        ("dev", "prepare, then one Uvicorn process that restarts when app/ changes"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument(
            "--products", type=int, default=10_000, help="products to seed (default 10000)"
        )
        if name == "up":
            command.add_argument(
                "--workers", type=int, help="default: GUNICORN_WORKERS or one per CPU"
            )
        if name in ("up", "dev"):
            command.add_argument("--bind", help="default: GUNICORN_BIND or 127.0.0.1:8000")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    stack = NativeStack()
    masked = make_url(stack.database_url).render_as_string(hide_password=True)
    print(
        f"preparing {masked}: create if missing, migrate, seed {args.products} products",
        file=sys.stderr,
    )
    try:
        stack.prepare(products=args.products)
    except (StackError, OSError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "prepare":
        return 0
    env = {"DATABASE_URL": stack.database_url}
    if args.command == "dev":
        return exec_reloading_server(env, args.bind or os.environ.get("GUNICORN_BIND"))
    if args.workers:
        env["GUNICORN_WORKERS"] = str(args.workers)
    if args.bind:
        env["GUNICORN_BIND"] = args.bind
    if sys.stderr.isatty():
        print(serving_line(env.get("GUNICORN_BIND") or os.environ.get("GUNICORN_BIND")),
              file=sys.stderr)  # fmt: skip
    return exec_gunicorn(env)


def serving_line(bind: str | None) -> str:
    """One line for a person at a terminal before the JSON logs start."""
    address = bind or "127.0.0.1:8000"
    if address.startswith("unix:"):
        return f"serving on {address}; JSON logs follow (LOG_JSON=false for plain lines)"
    host, _, port = address.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    base = f"http://{host}:{port}"
    return (
        f"serving on {base}: API docs {base}/docs, metrics {base}/metrics, readiness "
        f"{base}/ready; JSON logs follow (LOG_JSON=false for plain lines)"
    )


def exec_reloading_server(env: Mapping[str, str], bind: str | None) -> NoReturn:
    """Replace this process with one Uvicorn process that restarts whenever a file under
    app/ changes (`make dev`). Not Gunicorn: its --reload restarts workers, not the
    master that imported the settings, and a development loop needs neither several
    workers nor the graceful-shutdown machinery. Plain log lines unless LOG_JSON is set."""
    host, _, port = (bind or "127.0.0.1:8000").rpartition(":")
    if sys.stderr.isatty():
        base = f"http://{host or '127.0.0.1'}:{port}"
        print(f"serving on {base} (API docs {base}/docs); restarts when a file under app/ "
              "changes", file=sys.stderr)  # fmt: skip
    os.chdir(REPO_ROOT)
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--reload", "--reload-dir", "app",
            "--host", host or "127.0.0.1", "--port", port, "--no-server-header"]  # fmt: skip
    environment = {"LOG_JSON": "false", **os.environ, **env}
    os.execve(sys.executable, argv, environment)  # noqa: S606


def exec_gunicorn(env: Mapping[str, str]) -> NoReturn:
    """Replace this process with Gunicorn, so Ctrl-C and TERM reach its master directly."""
    os.chdir(REPO_ROOT)
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
    os.execve(sys.executable, argv, {**os.environ, **env})  # noqa: S606
