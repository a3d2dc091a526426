"""Where the repository is: every tool reads and writes files relative to its root,
whatever directory it was started from."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# parity.harness.repo -> the checkout's root
REPO_ROOT = Path(__file__).resolve().parents[3]


def run_shown(
    command: list[str], *, env: Mapping[str, str] | None = None, shown: str | None = None
) -> int:
    """Run `command` from the repository root after printing it (`$ ...` on stderr, or
    `shown`, the line a user would type), so a thin command teaches the real one;
    its exit status. `env` is added to this process's environment."""
    print(f"$ {shown or shlex.join(command)}", file=sys.stderr, flush=True)
    environment = {**os.environ, **env} if env else None
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, check=False).returncode
