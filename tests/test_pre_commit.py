"""The pre-commit hooks: local tools only (they work offline, at the pinned versions),
clean on the repository, and they do stop a bad commit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from parity.harness.repo import REPO_ROOT
from tests.helpers import run

CONFIG = REPO_ROOT / ".pre-commit-config.yaml"
PRE_COMMIT = REPO_ROOT / ".venv" / "bin" / "pre-commit"
# Any attempt to fetch a hook or a package would go here and fail at once.
NO_NETWORK = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "GIT_TERMINAL_PROMPT": "0",
}


def run_pre_commit(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    if not PRE_COMMIT.exists():
        pytest.skip("pre-commit is not installed: run `make venv`")
    env = {**os.environ, **NO_NETWORK, "PRE_COMMIT_HOME": str(home), "NO_COLOR": "1"}
    return run([str(PRE_COMMIT), *args, "--color", "never"], cwd=cwd, env=env, timeout=300)


def test_every_hook_is_a_local_tool_from_the_venv() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    hooks = config["repos"][0]["hooks"]
    assert {hook["id"] for hook in hooks} >= {"ruff", "ruff-format", "mypy", "hadolint"}
    for hook in hooks:
        assert hook["language"] == "system", hook["id"]
        tool = REPO_ROOT / hook["entry"].split()[0]
        assert tool.is_relative_to(REPO_ROOT / ".venv" / "bin"), hook["id"]
        assert tool.exists(), f"{hook['id']}: {tool} is not installed by `make venv`"


def test_the_repository_passes_every_hook_offline(tmp_path: Path) -> None:
    result = run_pre_commit("run", "--all-files", cwd=REPO_ROOT, home=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failed" not in result.stdout


def test_the_hooks_stop_a_bad_python_file_and_a_bad_dockerfile(tmp_path: Path) -> None:
    """A scratch repository with the same hooks and tools: an unused import and an
    unpinned base image are refused."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(CONFIG, work / CONFIG.name)
    (work / ".venv").symlink_to(REPO_ROOT / ".venv")
    (work / "bad.py").write_text("import os\n")
    (work / "Dockerfile").write_text('FROM python:latest\nCMD ["python"]\n')
    run(["git", "init", "-q", str(work)], check=True)
    run(["git", "-C", str(work), "add", "-A"], check=True)
    result = run_pre_commit("run", "--all-files", cwd=work, home=tmp_path / "home")
    assert result.returncode == 1, result.stdout
    failed = {line.split(".")[0] for line in result.stdout.splitlines() if "Failed" in line}
    assert failed == {"ruff check", "hadolint (Dockerfile, docker/*/Dockerfile)"}, result.stdout
