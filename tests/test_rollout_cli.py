"""parity rollout (`make rollout`) as a CLI: help, bad arguments named, and a loud
NOT RUN when there is no stack to roll (the full run is the compose e2e's, against real
replicas behind the load balancer)."""

from __future__ import annotations

import os
import sys

from tests.helpers import run, run_parity


def test_help_says_what_is_measured() -> None:
    result = run_parity("rollout", "--help", timeout=60)
    assert result.returncode == 0
    for text in ("--count", "--concurrency", "--json", "client-visible", "pool"):
        assert text in result.stdout, text


def test_bad_arguments_are_named() -> None:
    result = run_parity("rollout", "--concurrency", "0", timeout=60)
    assert result.returncode == 2
    assert "--concurrency" in result.stderr
    assert "'0' must be between 1 and 64" in result.stderr


def test_without_a_running_stack_it_says_not_run() -> None:
    """A project with no api container (or no engine at all): exit 3, nothing touched."""
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "parity-rollout-test-no-such-stack"}
    result = run(
        [sys.executable, "-m", "parity", "rollout"],
        env=env,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "rollout NOT RUN" in result.stderr
