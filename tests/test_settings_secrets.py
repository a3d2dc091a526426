"""Secrets as files (SECRETS_DIR, app/settings.py): the real Settings read a file named
after a setting when no variable sets it, a variable wins over the file, a directory
that was asked for but is missing or unreadable stops the start with one line, and a
value read from a file is never echoed. The layouts are the ones compose `secrets:` and
a Kubernetes Secret volume produce."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

import app.settings
from app.settings import SECRET_FIELDS, SecretsDirError, Settings, load_settings
from parity.harness.repo import REPO_ROOT
from parity.harness.stack import GunicornProcess
from tests.deploy_tools import compose_cli, run_tool
from tests.helpers import run_gunicorn

FILE_URL = "postgresql+asyncpg://parity:from-a-file@db.example:5432/parity"
ENV_URL = "postgresql+asyncpg://parity:from-the-env@db.example:5432/parity"
DOCKER_DOC = REPO_ROOT / "docs" / "docker.md"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting of the caller's shell (or CI's) decides a test here."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def secrets_dir(tmp_path: Path, **files: str) -> Path:
    """A directory like compose's /run/secrets: one file per secret, written the way
    `echo value > file` does (a trailing newline)."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    for name, value in files.items():
        (directory / name).write_text(value + "\n")
    return directory


def test_a_file_named_after_a_setting_sets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = secrets_dir(tmp_path, DATABASE_URL=FILE_URL, REDIS_URL="redis://cache:6380/1")
    monkeypatch.setenv("SECRETS_DIR", str(directory))
    settings = Settings()
    assert settings.DATABASE_URL == FILE_URL  # the trailing newline is stripped
    assert settings.REDIS_URL == "redis://cache:6380/1"
    assert str(directory) == settings.SECRETS_DIR


def test_a_variable_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings' order: keyword arguments, then variables, then secret files.
    An operator can always override a mounted secret for one run."""
    monkeypatch.setenv("SECRETS_DIR", str(secrets_dir(tmp_path, DATABASE_URL=FILE_URL)))
    monkeypatch.setenv("DATABASE_URL", ENV_URL)
    assert Settings().DATABASE_URL == ENV_URL
    other = "postgresql+asyncpg://parity:argument@db.example:5432/parity"
    assert other == Settings(DATABASE_URL=other).DATABASE_URL


def test_a_keyword_argument_chooses_the_directory(tmp_path: Path) -> None:
    directory = secrets_dir(tmp_path, DATABASE_URL=FILE_URL)
    assert Settings(SECRETS_DIR=str(directory)).DATABASE_URL == FILE_URL


def test_a_kubernetes_secret_volume_is_read(tmp_path: Path) -> None:
    """The kubelet's layout: each key a symlink to ..data/KEY, ..data a symlink to a
    timestamped directory (swapped atomically on update). Every link stays inside the
    mount, so pydantic-settings follows it."""
    directory = tmp_path / "parity-api"
    version = directory / "..2026_12_07_03_00_00.123456789"
    version.mkdir(parents=True)
    (version / "DATABASE_URL").write_text(FILE_URL)
    (version / "REDIS_URL").write_text("redis://redis:6379/0")
    (directory / "..data").symlink_to(version.name)
    for key in ("DATABASE_URL", "REDIS_URL"):
        (directory / key).symlink_to(f"..data/{key}")
    settings = Settings(SECRETS_DIR=str(directory))
    assert settings.DATABASE_URL == FILE_URL
    assert settings.REDIS_URL == "redis://redis:6379/0"


def test_files_not_named_after_a_setting_are_ignored(tmp_path: Path) -> None:
    """Compose and Kubernetes may put other files there; the names are case-sensitive,
    like the variables."""
    directory = secrets_dir(tmp_path, database_url=FILE_URL, postgres_password="x")
    default = Settings.model_fields["DATABASE_URL"].get_default()
    assert default == Settings(SECRETS_DIR=str(directory)).DATABASE_URL


def test_the_directory_is_never_read_from_a_file(tmp_path: Path) -> None:
    directory = secrets_dir(tmp_path, SECRETS_DIR="/elsewhere", DATABASE_URL=FILE_URL)
    settings = Settings(SECRETS_DIR=str(directory))
    assert str(directory) == settings.SECRETS_DIR
    assert settings.DATABASE_URL == FILE_URL


def test_the_default_directory_is_used_when_it_exists_and_skipped_when_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, SECRETS_DIR is /run/secrets (compose's mount point): read when it is
    there, silently skipped when not (a native run has none)."""
    directory = secrets_dir(tmp_path, DATABASE_URL=FILE_URL)
    monkeypatch.setattr(app.settings, "DEFAULT_SECRETS_DIR", str(directory))
    assert Settings().DATABASE_URL == FILE_URL
    monkeypatch.setattr(app.settings, "DEFAULT_SECRETS_DIR", str(tmp_path / "absent"))
    assert Settings().DATABASE_URL != FILE_URL
    assert Settings.model_fields["SECRETS_DIR"].default == "/run/secrets"


def test_an_empty_value_turns_the_files_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = secrets_dir(tmp_path, DATABASE_URL=FILE_URL)
    monkeypatch.setattr(app.settings, "DEFAULT_SECRETS_DIR", str(directory))
    monkeypatch.setenv("SECRETS_DIR", "")
    assert Settings().DATABASE_URL != FILE_URL


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_directory_asked_for_must_exist(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SECRETS_DIR that was set but is missing (the mount went wrong) stops the start
    with one line naming it, instead of running on the default database URL."""
    path = tmp_path / "secrets"
    if kind == "a file":
        path.write_text("not a directory")
    monkeypatch.setenv("SECRETS_DIR", str(path))
    with pytest.raises(SecretsDirError, match="is not a readable directory"):
        Settings()
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"invalid configuration: SECRETS_DIR='{path}' is not a readable")


def run_load_settings_as_another_user(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """load_settings() in a fresh interpreter as uid 65534 when we are root (root reads
    any file), else as ourselves (the test then makes the file unreadable to us)."""
    other = 65534 if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-c", "from app.settings import load_settings; load_settings()"],
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        user=other,
        group=other,
    )


def test_an_unreadable_secret_file_is_a_clear_error() -> None:
    """A secret mounted for another uid (a host file of mode 0600 bind-mounted by
    compose, say): one line naming the file and the reason, exit 2, no traceback."""
    # Not under tmp_path (0700, root's when we are root): the other uid must reach the
    # directory, and be refused the file only.
    directory = Path(tempfile.mkdtemp(prefix="parity-secrets-"))
    try:
        directory.chmod(0o755)
        secret = directory / "DATABASE_URL"
        secret.write_text(FILE_URL)
        secret.chmod(0o000)
        result = run_load_settings_as_another_user({"SECRETS_DIR": str(directory)})
    finally:
        shutil.rmtree(directory)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"invalid configuration: SECRETS_DIR='{directory}': cannot read")
    assert str(secret) in line
    assert "Permission denied" in line
    assert "from-a-file" not in result.stderr


def test_a_bad_value_from_a_file_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither a secret (SECRET_FIELDS) nor any other value read from a file appears in
    the error; the repr hides the secrets."""
    directory = secrets_dir(
        tmp_path,
        DATABASE_URL="mysql://parity:hunter2secret@db/parity",
        LOG_LEVEL="hunter3secret",
    )
    monkeypatch.setenv("SECRETS_DIR", str(directory))
    with pytest.raises(SystemExit):
        load_settings()
    err = capsys.readouterr().err
    assert "invalid configuration: DATABASE_URL: driver must be postgresql+asyncpg" in err
    assert "invalid configuration: LOG_LEVEL: Input should be" in err
    assert "hunter2secret" not in err
    assert "hunter3secret" not in err

    (directory / "DATABASE_URL").write_text(FILE_URL)
    (directory / "LOG_LEVEL").write_text("debug")
    settings = Settings()
    assert settings.DATABASE_URL == FILE_URL
    assert "from-a-file" not in repr(settings)
    assert {"DATABASE_URL", "REDIS_URL"} <= SECRET_FIELDS


def test_gunicorn_reads_the_database_url_from_a_file(tmp_path: Path) -> None:
    """The process the image runs (gunicorn.conf.py loads the settings first) gets a
    secret from a file too: with a bad URL in the file it stops at start, exit 2, one
    line, the value not echoed."""
    directory = secrets_dir(tmp_path, DATABASE_URL="mysql://parity:hunter2secret@db/parity")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SECRETS_DIR": str(directory),
        "GUNICORN_BIND": "127.0.0.1:8999",
    }
    result = run_gunicorn(env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "invalid configuration: DATABASE_URL: driver must be postgresql+asyncpg (got 'mysql')"
    ]


# --- compose: the documented override (docs/docker.md#secrets-as-files) --------------


def test_after_sighup_new_workers_read_a_rotated_file(
    tmp_path: Path, gunicorn: Callable[..., GunicornProcess]
) -> None:
    """1. a file sets RATE_LIMIT_DEFAULT=100/60s  2. it is rewritten to 50/60s
    3. SIGHUP -> the new workers read it (each worker reads its settings once, after the
    fork); the old ones drained and the master kept running."""
    directory = secrets_dir(tmp_path, RATE_LIMIT_DEFAULT="100/60s")
    server = gunicorn(workers=1, env={"SECRETS_DIR": str(directory), "RATE_LIMIT_ENABLED": "true"})
    path = "/api/v1/products?limit=1"
    assert httpx.get(server.base_url + path).headers["ratelimit-policy"] == '"default";q=100;w=60'
    old_workers = set(server.worker_pids())
    (directory / "RATE_LIMIT_DEFAULT").write_text("50/60s\n")
    server.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while set(server.worker_pids()) & old_workers or not server.worker_pids():
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)
    server.wait_ready(30)
    assert httpx.get(server.base_url + path).headers["ratelimit-policy"] == '"default";q=50;w=60'
    assert server.process.poll() is None


def documented_override() -> str:
    section = DOCKER_DOC.read_text().split("## Secrets as files", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = re.findall(r"```yaml\n(.*?)```", section, re.S)
    (block,) = [b for b in blocks if "secrets:" in b]
    return block


def test_the_documented_compose_override_mounts_the_url_as_a_file(tmp_path: Path) -> None:
    """docs/docker.md's compose.override.yaml, resolved by the real Compose CLI over
    compose.yaml: the api, migrate and seed containers get DATABASE_URL as the file
    /run/secrets/DATABASE_URL (SECRETS_DIR's default) and no longer as a variable,
    which would win over the file."""
    override = tmp_path / "compose.override.yaml"
    override.write_text(documented_override())
    # The secret's file, relative to the project directory (compose.yaml's), as the
    # page says to create it; the test writes its own and points the override at it.
    secret = tmp_path / "database_url"
    secret.write_text(FILE_URL + "\n")
    text = override.read_text()
    assert "file: ./secrets/database_url" in text
    override.write_text(text.replace("./secrets/database_url", str(secret)))
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = run_tool(
        [
            *compose_cli(),
            "-f",
            str(REPO_ROOT / "compose.yaml"),
            "-f",
            str(override),
            "--env-file",
            str(empty),
            "config",
            "--format",
            "json",
        ],
        env={key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ},
    )
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert model["secrets"]["database_url"]["file"] == str(secret)
    for name in ("api", "migrate", "seed"):
        service = model["services"][name]
        assert "DATABASE_URL" not in service["environment"], name
        (mounted,) = service["secrets"]
        assert (mounted["source"], mounted["target"]) == ("database_url", "DATABASE_URL")
        # The default directory: compose mounts at /run/secrets/<target>.
        assert "SECRETS_DIR" not in service["environment"], name
    assert (
        "DATABASE_URL"
        in yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["x-api-base"]["environment"]
    )
