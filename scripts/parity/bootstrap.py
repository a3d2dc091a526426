"""Create (or refresh) the project's virtualenv with the pinned requirements.

    PYTHONPATH=scripts python3 -m parity.bootstrap .venv

Checks the Python version first, so an old interpreter fails with a message rather
than halfway through an install. Then pip installs the pinned uv (hash-checked) and uv
makes the venv exactly requirements-dev.txt, the development lock exported from
pyproject.toml by `make lock` (docs/dependencies.md), and installs app/ and the tooling
editable, which gives the venv its `parity` command.

It runs before any venv exists, on the system Python, so it is not a `parity` command:
`make venv` runs it with PYTHONPATH=scripts, and it imports nothing but the standard
library and parity.harness's standard-library-only modules (repo, uv_settings).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from parity.harness.repo import REPO_ROOT
from parity.harness.uv_settings import uv_environment

DEV_LOCK = REPO_ROOT / "requirements-dev.txt"
SUMMARY_LINES = ("Resolved", "Prepared", "Uninstalled", "Installed", "Audited", "warning")
SUPPORTED = ((3, 11), (3, 12))


def missing_prerequisites() -> list[str]:
    """What the README's two commands need and this machine lacks, each with its fix."""
    missing = []
    try:
        import ensurepip  # noqa: F401 (Debian splits it out of python3 into python3-venv)
    except ImportError:
        missing.append("the venv module with pip (apt-get install python3-venv)")
    if shutil.which("git") is None:
        missing.append("git (apt-get install git)")
    if os.geteuid() != 0 and shutil.which("sudo") is None and not services_installed():
        missing.append("root or sudo, to install Postgres and Redis (or install them yourself)")
    return missing


def services_installed() -> bool:
    return shutil.which("redis-server") is not None and any(
        Path("/usr/lib/postgresql").glob("*/bin/postgres")
    )


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv")
    if sys.version_info[:2] not in SUPPORTED:
        found = ".".join(map(str, sys.version_info[:3]))
        print(
            f"error: Python 3.11 or 3.12 is required, {sys.executable} is {found}; "
            "run e.g. `make PYTHON=python3.12 test`",
            file=sys.stderr,
        )
        return 1
    if missing := missing_prerequisites():
        print(
            "error: missing before set-up: " + "; ".join(missing) + " (README, Quick start)",
            file=sys.stderr,
        )
        return 1
    if not (target / "bin" / "python").exists():
        print(f"creating {target} with Python {sys.version.split()[0]}", file=sys.stderr)
        venv.create(target, with_pip=True)
    if (status := install_uv(target)) != 0:
        return status
    if (status := sync(target)) != 0:
        return status
    return install_editable(target)


def install_editable(target: Path) -> int:
    """app/ and scripts/parity/ as an editable install (pyproject.toml's build-system),
    built by the pinned setuptools already in the venv: no other download."""
    python = str(target / "bin" / "python")
    command = [str(target / "bin" / "uv"), "pip", "install", "--python", python, "--no-deps",
               "--no-build-isolation", "--editable", str(REPO_ROOT)]  # fmt: skip
    result = subprocess.run(command, env=uv_environment(python), capture_output=True,
                            text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        return result.returncode
    print(f"  `{target}/bin/parity` installed (parity --help)", file=sys.stderr)
    return 0


def pinned_block(lock: Path, package: str) -> str:
    """The lock's lines for one package: its pin and the hash lines continuing it."""
    block: list[str] = []
    for line in lock.read_text().splitlines():
        if line.startswith(f"{package}==") or (block and block[-1].endswith("\\")):
            block.append(line)
        elif block:
            break
    if not block:
        raise SystemExit(f"error: {lock.name} pins no {package}; run `make lock`")
    return "\n".join(block) + "\n"


def install_uv(target: Path) -> int:
    """pip installs the pinned uv, hash-checked like everything after it."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="uv-pin-") as pin:
        pin.write(pinned_block(DEV_LOCK, "uv"))
        pin.flush()
        pip = [str(target / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        command = [*pip, "install", "--quiet", "--require-hashes", "--no-deps", "-r", pin.name]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
    return result.returncode


def sync(target: Path) -> int:
    """Make the venv exactly the development lock (runtime + every dependency group):
    `uv pip sync` installs what is missing, removes what is not pinned, checks every
    hash. Its summary lines (resolved, prepared, installed: a count and a time each) are
    the progress, as the whole sync takes seconds; its full output only on failure."""
    python = str(target / "bin" / "python")
    print(f"syncing {target} with {DEV_LOCK.name} ({pinned_count(DEV_LOCK)} pinned packages)",
          file=sys.stderr, flush=True)  # fmt: skip
    started, output = time.monotonic(), []
    command = [str(target / "bin" / "uv"), "pip", "sync", "--python", python,
               "--require-hashes", str(DEV_LOCK)]  # fmt: skip
    with subprocess.Popen(command, env=uv_environment(python), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith(SUMMARY_LINES):
                print("  " + line.rstrip(), file=sys.stderr, flush=True)
    if process.returncode != 0:
        sys.stderr.write("".join(output[-40:]))
        return process.returncode
    print(f"  in sync after {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


def pinned_count(lock: Path) -> int:
    return sum(1 for line in lock.read_text().splitlines() if re.match(r"[A-Za-z0-9_.-]+==", line))


if __name__ == "__main__":
    sys.exit(main())
