"""Export requirements.txt and requirements-dev.txt from pyproject.toml, with hashes.

    .venv/bin/parity lock                          # make lock: re-export, keep pins
    .venv/bin/parity lock --upgrade-package fastapi  # move one pin
    .venv/bin/parity lock --upgrade                # move every pin
    .venv/bin/parity lock --check                  # make lock-check (CI)

pyproject.toml is the source: [project] dependencies for the runtime, the dependency
groups for the rest. `uv pip compile --universal --generate-hashes` writes the runtime
lock (what the Dockerfile installs, for Python 3.11 and 3.12 alike) and then the full
development lock, constrained by the runtime one so both pin the same versions. The
existing files are the resolver's preferences: a pin moves only when pyproject.toml no
longer allows it or an upgrade is asked for.

--check exports into a scratch directory and compares: it fails, naming the lines that
differ, when someone edited pyproject.toml without `make lock` or edited a lock by hand.
It needs the package index (the resolver reads it), as `make venv` does.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from parity.harness.repo import REPO_ROOT
from parity.harness.uv_settings import uv_environment

RUNTIME_LOCK = "requirements.txt"
DEV_LOCK = "requirements-dev.txt"
# (output file, what it exports beyond the runtime dependencies)
EXPORTS: tuple[tuple[str, list[str]], ...] = (
    (RUNTIME_LOCK, []),
    (DEV_LOCK, ["--group", "dev", "--constraint", RUNTIME_LOCK]),
)
COMPILE = ["pip", "compile", "pyproject.toml", "--universal", "--generate-hashes", "--quiet",
           "--custom-compile-command", "make lock"]  # fmt: skip


def uv_binary() -> str:
    """uv from the project's venv (pinned in requirements-dev.txt), else from PATH."""
    beside_python = Path(sys.executable).parent / "uv"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("uv")
    if found is None:
        sys.exit("error: uv not found: run `make venv` (it installs the pinned uv)")
    return found


def export(directory: Path, upgrade: list[str]) -> None:
    """Write both locks in `directory` (which holds pyproject.toml and the old locks)."""
    environment = uv_environment(sys.executable)
    for output, extra in EXPORTS:
        command = [uv_binary(), *COMPILE, *extra, *upgrade, "--output-file", output]
        result = subprocess.run(command, cwd=directory, env=environment, check=False,
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            sys.exit(f"error: exporting {output} failed (uv exit {result.returncode})")


def differences(committed: Path, exported: Path) -> list[str]:
    return list(
        difflib.unified_diff(
            committed.read_text().splitlines(), exported.read_text().splitlines(),
            f"{committed.name} (committed)", f"{exported.name} (from pyproject.toml)",
            lineterm="", n=1,
        )
    )  # fmt: skip


def check() -> int:
    with tempfile.TemporaryDirectory(prefix="parity-lock-") as scratch:
        directory = Path(scratch)
        for name in ("pyproject.toml", RUNTIME_LOCK, DEV_LOCK):
            shutil.copy2(REPO_ROOT / name, directory / name)
        export(directory, upgrade=[])
        stale = {
            name: lines
            for name, _ in EXPORTS
            if (lines := differences(REPO_ROOT / name, directory / name))
        }
    for name, lines in stale.items():
        print(f"{name} is out of sync with pyproject.toml:", file=sys.stderr)
        print("\n".join(lines[:40]), file=sys.stderr)
        if len(lines) > 40:
            print(f"  … {len(lines) - 40} more lines", file=sys.stderr)
    if stale:
        print("run `make lock` and commit the result", file=sys.stderr)
        return 1
    print(f"{RUNTIME_LOCK} and {DEV_LOCK} are in sync with pyproject.toml")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parity lock", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare, write nothing (CI)")
    mode.add_argument("--upgrade", action="store_true", help="move every pin to the newest")
    mode.add_argument("--upgrade-package", action="append", default=[], metavar="NAME",
                      help="move this package's pin (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.check:
        return check()
    upgrade = ["--upgrade"] if args.upgrade else []
    for name in args.upgrade_package:
        upgrade += ["--upgrade-package", name]
    export(REPO_ROOT, upgrade)
    print(f"wrote {RUNTIME_LOCK} and {DEV_LOCK} from pyproject.toml")
    return 0
