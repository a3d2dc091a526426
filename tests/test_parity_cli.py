"""The `parity` command: one entry point for every tool, declared in pyproject.toml,
listing each command with one line; and the shape of the package behind it (commands
stand on the harness, never on each other; no sys.path tricks)."""

from __future__ import annotations

import ast
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from parity.cli import COMMANDS, Command, main
from parity.harness.repo import REPO_ROOT
from tests.helpers import run, run_parity

PACKAGE = REPO_ROOT / "scripts" / "parity"


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_help_lists_every_command_with_one_line() -> None:
    result = run_parity("--help")
    assert result.returncode == 0, result.stderr
    listed = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(listed) == len(COMMANDS)
    for command, line in zip(COMMANDS, listed, strict=True):
        assert line.startswith(command.words + " ")
        assert line[len(command.words) :].strip() == command.summary


def test_every_module_under_commands_is_a_listed_command() -> None:
    on_disk = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__"}
    assert on_disk == {command.module for command in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.words)
def test_each_command_answers_help_under_its_own_name(
    command: Command, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (the subprocess road is the test above): `parity WORDS --help`."""
    with pytest.raises(SystemExit) as exit_:
        main([*command.words.split(), "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: parity {command.words}")


def test_an_unknown_command_is_named_with_the_list() -> None:
    result = run_parity("verify", "everything")
    assert result.returncode == 2
    assert "unknown command 'verify everything'" in result.stderr
    assert "verify shutdown" in result.stderr


def test_the_console_script_is_declared_and_installed() -> None:
    """pyproject.toml declares it; `make venv` installs it next to the venv's Python."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"parity": "parity.cli:main"}
    script = Path(sys.executable).parent / "parity"
    assert shutil.which(str(script)), f"{script} missing: run `make venv`"
    result = run([str(script), "--help"], cwd=Path("/"))
    assert result.returncode == 0, result.stderr
    assert "verify shutdown" in result.stdout


def test_commands_never_import_one_another() -> None:
    for path in (PACKAGE / "commands").glob("*.py"):
        others = {m for m in imported_modules(path) if m.startswith("parity.commands")}
        assert not others, f"{path.name} imports {others}: move what it shares to the harness"


def test_the_harness_never_imports_a_command() -> None:
    for path in (PACKAGE / "harness").glob("*.py"):
        commands = {m for m in imported_modules(path) if m.startswith("parity.commands")}
        assert not commands, f"harness/{path.name} imports {commands}"


def test_no_python_file_manipulates_sys_path() -> None:
    offenders = []
    for root in ("app", "scripts", "tests"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            if "sys.path" in path.read_text() and path != Path(__file__):
                offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []


def test_no_loose_script_is_left_beside_the_package() -> None:
    """Every tool is a `parity` command: nothing to copy as a script in scripts/."""
    loose = sorted(p.name for p in (REPO_ROOT / "scripts").glob("*.py"))
    assert loose == []
