"""docs/architecture.md is a map of app/ and of the tools' harness that stays true:
every module is on it, and every path it names exists."""

from __future__ import annotations

import re

from parity.harness.repo import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "architecture.md"
NAMED_PATH = re.compile(r"\b((?:app|scripts)/[\w/]*[\w.]+(?:\.py)?/?)")


def modules_of_app() -> list[str]:
    return sorted(
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "app").rglob("*.py")
        if path.name != "__init__.py" and "migrations" not in path.parts
    )


def test_every_module_of_the_app_is_on_the_page() -> None:
    """By its path, or by its name in the row of its package (`app/ratelimit/`)."""
    text = PAGE.read_text()
    missing = [
        module
        for module in modules_of_app()
        if module not in text
        and not (module.rsplit("/", 1)[0] + "/" in text and module.rsplit("/", 1)[1] in text)
    ]
    assert not missing, f"docs/architecture.md does not say where these belong: {missing}"


def test_every_path_the_page_names_exists() -> None:
    named = set(NAMED_PATH.findall(PAGE.read_text()))
    assert "app/main.py" in named
    gone = sorted(path for path in named if not (REPO_ROOT / path.rstrip("/")).exists())
    assert not gone, f"docs/architecture.md names paths that do not exist: {gone}"


HARNESS = REPO_ROOT / "scripts" / "parity" / "harness"
NAMED_HARNESS_MODULE = re.compile(r"`harness/(\w+\.py)`")


def test_every_harness_module_is_on_the_page_and_exists() -> None:
    """The tools' table names each shared module once, by `harness/NAME.py`."""
    text = PAGE.read_text()
    on_disk = {path.name for path in HARNESS.glob("*.py") if path.name != "__init__.py"}
    named = set(NAMED_HARNESS_MODULE.findall(text))
    assert on_disk - named == set(), "harness modules docs/architecture.md does not place"
    assert named - on_disk == set(), "docs/architecture.md names harness modules that are gone"
