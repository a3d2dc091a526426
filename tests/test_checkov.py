"""checkov, the policy scanner many users run on their deploy assets, on ours: every
Dockerfile (its `dockerfile` framework) and the Kubernetes manifests as they are applied
(`kubectl kustomize` of the base plus the NetworkPolicy component, its `kubernetes`
framework). No check may fail: each one we do not meet is skipped in .checkov.yaml with
its reason, and a skip that nothing needs any more fails too.

Offline: no API key, `--skip-download` (no guidelines or policies from the platform),
BC_SKIP_MAPPING and CKV_SKIP_PACKAGE_UPDATE_CHECK (no look-ups on PyPI). `make tools`
installs checkov in its own venv (scripts/install_deploy_tools.sh)."""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from parity.harness.repo import REPO_ROOT
from tests.deploy_tools import require, run_tool
from tests.helpers import run
from tests.test_deploy_k8s import base_with_component

# Where `make tools` installs it (scripts/install_deploy_tools.sh; PARITY_CHECKOV_VENV
# moves it, there and here).
CHECKOV_VENV = Path(
    os.environ.get("PARITY_CHECKOV_VENV", Path.home() / ".cache" / "parity" / "checkov")
)
CHECKOV = CHECKOV_VENV / "bin" / "checkov"
CONFIG = REPO_ROOT / ".checkov.yaml"
DOCKERFILES = sorted([REPO_ROOT / "Dockerfile", *REPO_ROOT.glob("docker/**/Dockerfile")])
FRAMEWORKS = ("dockerfile", "kubernetes")
# A bad Dockerfile, for proof that checkov is no no-op here: root, `latest`, no health check.
BAD_DOCKERFILE = 'FROM python:latest\nRUN pip install flask\nCMD ["flask", "run"]\n'


def checkov() -> str:
    if not (CHECKOV.is_file() and os.access(CHECKOV, os.X_OK)):
        pytest.skip(f"checkov not installed at {CHECKOV}: run `make tools`")
    return str(CHECKOV)


def offline_env() -> dict[str, str]:
    """Nothing of the caller's environment (no BC_API_KEY, no PRISMA_API_URL, no
    LOG_LEVEL of ours, which checkov would read as its own) and no network look-up."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(BC_SKIP_MAPPING="TRUE", CKV_SKIP_PACKAGE_UPDATE_CHECK="TRUE")
    return env


def scan(
    files: list[Path], cwd: Path, *options: str, timeout: int = 300
) -> dict[str, dict[str, Any]]:
    """Run checkov on `files`; its reports by framework. `cwd` matters: checkov reads
    a .checkov.yaml found there unless --config-file names another."""
    command = [checkov(), "--skip-download", "--skip-results-upload", "--output", "json"]
    command += ["--framework", *FRAMEWORKS, *options]
    for path in files:
        command += ["--file", str(path)]
    result = run(
        command,
        cwd=cwd,
        env=offline_env(),
        timeout=timeout,
    )
    assert result.returncode in (0, 1), result.stdout[-4000:] + result.stderr[-4000:]
    output = json.loads(result.stdout)
    reports = output if isinstance(output, list) else [output]
    found = {}
    for report in reports:
        if "check_type" in report:  # an empty scan prints a summary without one
            found[report["check_type"]] = report["results"]
    return found


@functools.cache
def manifests(directory: Path) -> Path:
    """The rendered base plus the NetworkPolicy component, one YAML stream, as
    `kubectl apply -k` would send it."""
    kubectl = require("kubectl", "install kubectl (it carries kustomize)")
    overlay = base_with_component(directory / "overlay")
    result = run_tool([kubectl, "kustomize", overlay])
    assert result.returncode == 0, result.stderr
    path = directory / "rendered" / "parity.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.stdout)
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return manifests(tmp_path_factory.mktemp("checkov"))


@pytest.fixture(scope="module")
def results(rendered: Path) -> dict[str, dict[str, Any]]:
    """One scan of everything, with .checkov.yaml."""
    return scan([*DOCKERFILES, rendered], REPO_ROOT, "--config-file", str(CONFIG))


def describe(check: dict[str, Any]) -> str:
    lines = check.get("file_line_range", ["?", "?"])
    return (
        f"{check['check_id']} {check['check_name']}: {check['file_path']}:"
        f"{lines[0]}-{lines[1]} ({check['resource']})"
    )


def test_no_check_fails(results: dict[str, dict[str, Any]]) -> None:
    failed = [describe(c) for r in results.values() for c in r["failed_checks"]]
    assert not failed, "fix it, or skip it in .checkov.yaml with the reason:\n" + "\n".join(failed)
    for framework in FRAMEWORKS:
        assert results[framework].get("parsing_errors", []) == [], framework


def test_every_file_was_scanned(results: dict[str, dict[str, Any]], rendered: Path) -> None:
    """checkov saw each Dockerfile and each rendered workload: a file it could not parse
    would pass silently otherwise."""
    scanned = {
        (framework, Path(check["file_path"]).name if framework == "kubernetes" else "")
        for framework, report in results.items()
        for check in report["passed_checks"]
    }
    assert {framework for framework, _ in scanned} == set(FRAMEWORKS)
    dockerfile_paths = {
        Path(check["file_abs_path"]).resolve() for check in results["dockerfile"]["passed_checks"]
    }
    assert dockerfile_paths == {path.resolve() for path in DOCKERFILES}
    resources = {check["resource"] for check in results["kubernetes"]["passed_checks"]}
    for expected in ("Deployment.default.parity-api", "Job.default.parity-migrate"):
        assert expected in resources, sorted(resources)


def skips() -> dict[str, str]:
    """.checkov.yaml's skip-check entries and the reason written above each one (a
    comment block directly above the entry, or a comment on its line)."""
    config = yaml.safe_load(CONFIG.read_text())
    entries: list[str] = config.get("skip-check", [])
    reasons: dict[str, str] = {}
    comment: list[str] = []
    for line in CONFIG.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"-\s*(CKV\w+)\s*(?:#\s*(.*))?$", stripped)
        if match:
            reasons[match[1]] = " ".join([*comment, match[2] or ""]).strip()
        comment = []
    assert set(reasons) == set(entries), "one entry per line: `- CKV_...`"
    return reasons


def test_every_skip_says_why() -> None:
    for check_id, reason in skips().items():
        assert len(reason) >= 40, f"{check_id}: say why it is skipped, above its line"


def test_every_skip_is_still_needed_and_checkov_does_flag(rendered: Path, tmp_path: Path) -> None:
    """Without .checkov.yaml, each skipped check fails on our files (else the skip is
    stale: remove it), and a bad Dockerfile fails the checks it should."""
    bad = tmp_path / "bad" / "Dockerfile"
    bad.parent.mkdir()
    bad.write_text(BAD_DOCKERFILE)
    skipped = sorted(skips())
    proof = ["CKV_DOCKER_2", "CKV_DOCKER_3", "CKV_DOCKER_7"]
    found = scan(
        [*DOCKERFILES, rendered, bad], tmp_path, "--check", ",".join(sorted({*skipped, *proof}))
    )
    failed: dict[str, set[Path]] = {}
    for report in found.values():
        for check in report["failed_checks"]:
            failed.setdefault(check["check_id"], set()).add(Path(check["file_abs_path"]).resolve())
    ours = {path.resolve() for path in [*DOCKERFILES, rendered]}
    stale = [check_id for check_id in skipped if not failed.get(check_id, set()) & ours]
    assert not stale, f"skipped in .checkov.yaml but nothing fails them: {stale}"
    for check_id in proof:
        assert bad.resolve() in failed.get(check_id, set()), check_id


def test_inline_suppressions_say_why(results: dict[str, dict[str, Any]]) -> None:
    """A `checkov:skip=ID:reason` comment in a Dockerfile or manifest needs its reason."""
    for report in results.values():
        for check in report["skipped_checks"]:
            comment = check.get("check_result", {}).get("suppress_comment", "")
            assert len(comment) >= 20, describe(check)


def base_images(dockerfile: Path) -> list[str]:
    """Each FROM's image with the ARG defaults declared before it substituted (what a
    build without --build-arg uses); stage names stay as written."""
    defaults: dict[str, str] = {}
    images = []
    for line in dockerfile.read_text().splitlines():
        if match := re.match(r"ARG\s+(\w+)=(\S+)", line):
            defaults.setdefault(match[1], match[2])
        elif match := re.match(r"FROM\s+(\S+)", line, re.IGNORECASE):
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), match[1]))
    return images


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_base_images_have_a_tag_once_their_args_are_resolved(dockerfile: Path) -> None:
    """What CKV_DOCKER_7 (skipped in .checkov.yaml: checkov does not resolve ARGs)
    asks, checked on the ARG defaults: a tag, never `latest`."""
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
    images = base_images(dockerfile)
    assert images
    for image in images:
        assert "$" not in image, f"{image}: an ARG without a default"
        if image in stages or image == "scratch":
            continue
        assert ":" in image.rsplit("/", 1)[-1], f"{image} has no tag"
        assert not image.endswith(":latest"), image
