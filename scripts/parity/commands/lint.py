"""`parity lint`: ruff (lint and format check) and mypy --strict on app/ and the tooling
(make lint, a CI step); `parity lint --fix` applies ruff's fixes and formatting instead
(make format).

Every check runs even after one fails, so one run shows everything to fix; the last
line names the checks that failed. What they cover is pyproject.toml's [tool.ruff] and
[tool.mypy] (mypy: app/ and scripts/parity/, strict).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from parity.harness.repo import run_shown

CHECKS: tuple[tuple[str, list[str]], ...] = (
    ("ruff check", ["ruff", "check", "."]),
    ("ruff format", ["ruff", "format", "--check", "."]),
    ("mypy", ["mypy"]),
)
FIXES: tuple[tuple[str, list[str]], ...] = (
    ("ruff fixes", ["ruff", "check", "--fix", "."]),
    ("ruff format", ["ruff", "format", "."]),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parity lint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true",
                        help="apply ruff's fixes and formatting (make format)")  # fmt: skip
    return parser.parse_args(argv)


def run_step(name: str, arguments: list[str]) -> bool:
    # The tools of the interpreter running parity: the project's venv, pinned.
    command = [sys.executable, "-m", *arguments]
    return run_shown(command, shown=shlex.join(arguments)) == 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = FIXES if args.fix else CHECKS
    failed = [name for name, arguments in steps if not run_step(name, arguments)]
    if failed:
        print(f"lint: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"lint: {len(steps)} of {len(steps)} passed", file=sys.stderr)
    return 0
