"""parity chaos as a CLI: help, and bad arguments named (the full run is what
tests/test_outages.py asserts, phase by phase)."""

from __future__ import annotations

import subprocess

from tests.helpers import run_parity


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_parity("chaos", *args, timeout=60)


def test_help_names_the_phases_and_the_targets() -> None:
    result = run("--help")
    assert result.returncode == 0
    for text in ("--native", "--compose", "--json", "--plot", "postgres down", "redis hung"):
        assert text in result.stdout, text


def test_bad_arguments_are_named() -> None:
    result = run("--phase-seconds", "0.5")
    assert result.returncode == 2
    assert "--phase-seconds 0.5: must be between 1 and 120" in result.stderr
