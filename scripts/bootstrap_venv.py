"""Create (or refresh) the project's virtualenv with the pinned requirements.

    python3 scripts/bootstrap_venv.py .venv

Checks the Python version first, so an old interpreter fails with a message rather
than halfway through an install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    pip = [str(target / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    requirements = [
        "-r",
        str(REPO_ROOT / "requirements.txt"),
        "-r",
        str(REPO_ROOT / "requirements-dev.txt"),
    ]
    return subprocess.call([*pip, "install", *requirements])


if __name__ == "__main__":
    sys.exit(main())
