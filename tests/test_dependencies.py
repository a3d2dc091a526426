"""The dependency locks: pyproject.toml is the source, requirements*.txt its hash-checked
exports, and the venv the tests run in is exactly the development lock.

Whether the exports are what `uv pip compile` makes of pyproject.toml today needs the
package index, so CI checks that separately (`make lock-check`); these tests check
everything that can be read offline.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app import __version__
from parity.harness.repo import REPO_ROOT
from tests.helpers import pinned_version

RUNTIME_LOCK = REPO_ROOT / "requirements.txt"
DEV_LOCK = REPO_ROOT / "requirements-dev.txt"
# `name==version ; marker \` (the marker only where a pin applies to some platforms)
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>[^\s;\\]+)(?:\s*;\s*(?P<marker>[^\\]+))?"
)


# What Python 3.11's venv module installs besides pip; `uv pip sync` leaves these seed
# packages alone (pip is pinned, so it is synced like the rest).
VENV_SEED_PACKAGES = {"setuptools", "wheel"}
# The project itself, installed editable by `make venv` (app/ and the `parity` command).
PROJECT = "parity"


def pins(lock: Path) -> dict[str, tuple[str, list[str], str | None]]:
    """{normalized name: (version, sha256 hashes, environment marker)} of a lock."""
    found: dict[str, tuple[str, list[str], str | None]] = {}
    current = ""
    for line in lock.read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match["name"])
            marker = match["marker"].strip() if match["marker"] else None
            found[current] = (match["version"], [], marker)
        elif current and (digest := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            found[current][1].append(digest.group(1))
    return found


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def group_requirements(group: str) -> list[Requirement]:
    groups = pyproject()["dependency-groups"]
    assert isinstance(groups, dict)
    requirements: list[Requirement] = []
    for entry in groups[group]:
        if isinstance(entry, dict):
            requirements += group_requirements(entry["include-group"])
        else:
            requirements.append(Requirement(entry))
    return requirements


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_every_pin_carries_hashes(lock: Path) -> None:
    locked = pins(lock)
    assert len(locked) > 40
    assert [name for name, (_, hashes, _) in locked.items() if not hashes] == []


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_locks_name_no_package_index(lock: Path) -> None:
    """Where packages come from is each machine's pip/uv configuration, never the lock."""
    text = lock.read_text()
    assert "://" not in text
    assert not re.search(r"^\s*--(extra-)?index-url|^\s*--find-links", text, re.M)


def test_the_development_lock_pins_the_runtime_exactly_as_the_image_does() -> None:
    """The venv the tests run in has the versions the Dockerfile installs."""
    runtime, development = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    differing = {
        name: (spec[0], development.get(name, ("missing",))[0])
        for name, spec in runtime.items()
        if development.get(name, ("missing", [], None))[:2] != spec[:2]
    }
    assert differing == {}


def test_every_declared_dependency_is_pinned_within_its_declared_range() -> None:
    """What pyproject.toml declares is in the locks, at a version it allows (a quick,
    offline part of `make lock-check`)."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    declared = [(Requirement(entry), RUNTIME_LOCK) for entry in project["dependencies"]]
    declared += [(requirement, DEV_LOCK) for requirement in group_requirements("dev")]
    outside = []
    for requirement, lock in declared:
        version = pins(lock).get(canonicalize_name(requirement.name), ("missing",))[0]
        if version == "missing" or not requirement.specifier.contains(version, prereleases=True):
            outside.append(f"{requirement} in {lock.name}: {version}")
    assert outside == []


def test_the_venv_is_exactly_the_development_lock() -> None:
    """`make venv` (uv pip sync) installed every pin for this platform at its version."""
    wrong = []
    for name, (version, _, marker) in pins(DEV_LOCK).items():
        if marker is not None and not Marker(marker).evaluate():
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong.append(f"{name}: locked {version}, installed {installed}")
    locked = pins(DEV_LOCK)
    for distribution in metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        if name not in locked and name not in VENV_SEED_PACKAGES | {PROJECT}:
            wrong.append(f"{name}: installed {distribution.version}, not in the lock")
    assert wrong == []


def test_the_image_installs_the_runtime_lock_hash_checked() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    install = re.search(r"pip install [^&]*-r /tmp/requirements.txt", dockerfile)
    assert install, "the Dockerfile no longer installs requirements.txt"
    for option in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        assert option in install.group(0)
    assert "COPY requirements.txt /tmp/requirements.txt" in dockerfile


def test_private_api_leans_are_bounded_where_they_are_declared() -> None:
    """uvicorn, prometheus_client and OpenTelemetry are used through internals checked
    against one minor version (app/http_protocol.py, app/telemetry/metric_files.py,
    app/telemetry/otel_internals.py): an upgrade
    past it must be a decision, not a `make lock --upgrade` side effect."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    bounded = {
        canonicalize_name(Requirement(entry).name): Requirement(entry).specifier
        for entry in project["dependencies"]
    }
    assert pinned_version(RUNTIME_LOCK, "uvicorn") in bounded["uvicorn"]
    assert not bounded["uvicorn"].contains("0.55.0")
    assert pinned_version(RUNTIME_LOCK, "prometheus-client") in bounded["prometheus-client"]
    assert not bounded["prometheus-client"].contains("0.27.0")
    for otel in ("opentelemetry-api", "opentelemetry-sdk"):  # app/telemetry/otel_internals.py
        assert pinned_version(RUNTIME_LOCK, otel) in bounded[otel]
        assert not bounded[otel].contains("1.46.0")
    assert pinned_version(RUNTIME_LOCK, "sqlalchemy") in bounded["sqlalchemy"]
    assert not bounded["sqlalchemy"].contains("2.2.0")  # app/telemetry/database.py
    sqlalchemy_tracing = "opentelemetry-instrumentation-sqlalchemy"
    assert pinned_version(RUNTIME_LOCK, sqlalchemy_tracing) in bounded[sqlalchemy_tracing]
    assert not bounded[sqlalchemy_tracing].contains("0.67b0")


def test_the_version_is_the_same_wherever_it_is_written() -> None:
    """pyproject.toml, app.__version__ (OpenAPI, app_info, service.version) and the image
    tag the k8s base deploys."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    kustomization = (REPO_ROOT / "k8s" / "kustomization.yaml").read_text()
    (tag,) = re.findall(r"^\s*newTag:\s*(\S+)", kustomization, re.M)
    assert project["version"] == __version__ == tag
