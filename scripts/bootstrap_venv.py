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
import time
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
    files = [REPO_ROOT / "requirements.txt", REPO_ROOT / "requirements-dev.txt"]
    return install(target, files)


def pinned_count(files: list[Path]) -> int:
    return len(
        {line.split("==")[0] for path in files for line in path.read_text().splitlines()
         if "==" in line and not line.lstrip().startswith("#")}
    )  # fmt: skip


def install(target: Path, files: list[Path]) -> int:
    """pip install the pinned files, with a progress line every 25 packages instead of
    minutes of silence (or pip's hundreds of lines); pip's own output on failure."""
    total = pinned_count(files)
    print(f"installing {total} pinned packages into {target} (minutes the first time)",
          file=sys.stderr, flush=True)  # fmt: skip
    command = [str(target / "bin" / "python"), "-m", "pip", "--disable-pip-version-check",
               "install", "--progress-bar", "off"]  # fmt: skip
    for path in files:
        command += ["-r", str(path)]
    started, seen, output = time.monotonic(), 0, []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith(("Collecting ", "Requirement already satisfied")):
                seen += 1
                if seen % 25 == 0:
                    print(f"  {seen} of {total} …", file=sys.stderr, flush=True)
    if process.returncode != 0:
        sys.stderr.write("".join(output[-40:]))
        return process.returncode
    print(f"  all {total} installed in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
