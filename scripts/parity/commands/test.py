"""`parity test`: the test suite (make test, CI's last step): pytest from the project's
venv, in the repository, whatever directory it was started from.

    parity test                                         # everything
    parity test tests/test_orders.py -k idempotent -x   # pytest's arguments pass through
    parity test --help-pytest                           # pytest's own options

The tests run against real Postgres, Redis and Gunicorn: the local Postgres and Redis
that `make test` starts first (scripts/ensure_services.sh). Under PARITY_STRICT_SKIPS=1
(CI) a test that would skip for a missing tool fails instead (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys

from parity.harness.repo import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] in (["-h"], ["--help"]):
        # As argparse would answer: `-h` here is ours; pytest's is --help-pytest.
        print(f"usage: parity test [PYTEST ARGUMENTS]\n\n{__doc__}")
        raise SystemExit(0)
    if arguments[:1] == ["--help-pytest"]:
        arguments = ["--help", *arguments[1:]]
    command = [sys.executable, "-m", "pytest", *arguments]
    return subprocess.run(command, cwd=REPO_ROOT, check=False).returncode
