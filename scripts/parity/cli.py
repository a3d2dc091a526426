"""`parity`: one entry point for every tool of the repository (declared in pyproject.toml
as the console script; `python -m parity` is the same).

    parity --help                 # every command, one line each
    parity verify shutdown --help # one command's options

A command is a module of parity.commands with `main(argv) -> int`; it is imported only
when it runs, so `parity --help` stays instant and a command's heavy imports (locust,
matplotlib, the app) cost nothing to the others.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Command:
    words: str  # what a user types after `parity`
    module: str  # under parity.commands
    summary: str  # one line for `parity --help`


COMMANDS: tuple[Command, ...] = (
    Command("stack", "stack", "the native stack: prepare | up (Gunicorn on :8000) | dev (reload)"),
    Command("compose", "compose", "the Docker stack: up [--offline] | down | logs | ps"),
    Command("images", "images", "build the offline stand-in images compose.offline.yaml runs"),
    Command("e2e", "e2e", "the compose stack end to end on the real engine (CI runs it)"),
    Command("rollout", "rollout", "replace every compose api replica under load; errors, p99"),
    Command("verify shutdown", "verify_shutdown", "SIGTERM/SIGHUP under load: no request lost"),
    Command("verify rate-limit", "verify_rate_limit", "quotas hold across workers and replicas"),
    Command("verify dashboards", "verify_dashboards", "every dashboard and rule query has data"),
    Command("chaos", "chaos", "stop, hang and restart Postgres and Redis under load"),
    Command("tune", "tune", "sweep Gunicorn worker counts; table, plot, recommendation"),
    Command("loadtest", "loadtest", "headless Locust: one scenario and shape; CSV + HTML"),
    Command("demo", "demo", "steady mixed load and the URLs of dashboards, metrics, a trace"),
    Command("bench middleware", "bench_middleware", "the middleware tax: full app vs bare"),
    Command("bench routes", "bench_routes", "realistic routes: rate and latency per route"),
    Command("bench rate-limit", "bench_rate_limit", "the rate limiter's cost, on vs off"),
    Command("bench orders", "bench_orders", "the order route against its own SQL in pgbench"),
    Command("bench memory", "bench_memory", "memory and start-up; --compare across Pythons"),
    Command("bench telemetry", "bench_telemetry", "in-process cost of tracing, logs, metrics"),
    Command("bench autopipeline", "bench_autopipeline", "the limiter's Redis batching"),
    Command("dashboards", "dashboards", "regenerate the Grafana dashboards (--check: stale?)"),
    Command("lock", "lock", "export requirements*.txt from pyproject.toml (--check in CI)"),
    Command("audit", "audit", "pip-audit the pinned requirements"),
    Command("lint", "lint", "ruff and mypy --strict (--fix: apply ruff's fixes, format)"),
    Command("test", "test", "the test suite (pytest; its arguments pass through)"),
)


class _Main(Protocol):
    def __call__(self, argv: list[str] | None = None, /) -> int: ...


def usage() -> str:
    width = max(len(command.words) for command in COMMANDS)
    lines = [
        "usage: parity COMMAND [options]   (parity COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {c.words:<{width}}  {c.summary}" for c in COMMANDS]
    return "\n".join(lines)


def find(argv: Sequence[str]) -> tuple[Command, list[str]] | None:
    """The command named by the first one or two words, and the rest of argv."""
    for command in COMMANDS:
        words = command.words.split()
        if list(argv[: len(words)]) == words:
            return command, list(argv[len(words) :])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    found = find(args)
    if found is None:
        print(f"parity: unknown command {' '.join(args[:2])!r}\n\n{usage()}", file=sys.stderr)
        return 2
    command, rest = found
    run: _Main = importlib.import_module(f"parity.commands.{command.module}").main
    return run(rest)
