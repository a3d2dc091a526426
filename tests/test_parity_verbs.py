"""The `make` verbs are `parity` commands: the Makefile holds one `parity` line per verb
(but the set-up that comes before the venv), and the thin commands behind the standard
tools (compose, loadtest, lint, test) run the command lines they print."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from parity.harness.repo import REPO_ROOT
from tests.deploy_tools import compose_cli
from tests.helpers import run

# Before `.venv/bin/parity` exists, or nothing to run: not parity's.
SET_UP_VERBS = {"help", "venv", "services", "tools", "clean"}
OFFLINE = "compose.yaml:compose.offline.yaml"


def makefile_recipes() -> dict[str, list[str]]:
    """Each target of the Makefile with its recipe lines (tab-indented)."""
    recipes: dict[str, list[str]] = {}
    current = None
    for line in (REPO_ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current is not None:
            recipes[current].append(line.strip())
        elif match := re.match(r"^([a-z0-9-]+):", line):
            current = match.group(1)
            recipes[current] = []
        else:
            current = None
    return recipes


def parity(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = run([sys.executable, "-m", "parity", *args], env=env, timeout=120)
    return result.returncode, result.stdout, result.stderr


def with_compose(command: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return {**environment, "COMPOSE": command}


# A stand-in CLI that prints the COMPOSE_FILE it was given and its arguments: what
# `parity compose` hands the real one.
ECHO_COMPOSE = 'sh -c \'echo "${COMPOSE_FILE:-unset}" "$@"\' compose'


def test_every_make_verb_is_one_parity_command_but_the_set_up() -> None:
    recipes = makefile_recipes()
    assert {"up", "up-offline", "down", "logs", "test", "lint", "format", "loadtest"} <= set(
        recipes
    )
    for verb, lines in recipes.items():
        if verb in SET_UP_VERBS or verb.startswith("$"):
            continue
        assert len(lines) == 1, f"make {verb}: {lines}"
        assert re.search(r"(^|\s)\$\(BIN\)/parity \S", lines[0]), f"make {verb}: {lines[0]}"


def test_compose_verbs_run_the_docker_compose_lines_they_print() -> None:
    status, out, err = parity("compose", "down", env=with_compose(ECHO_COMPOSE))
    assert status == 0, err
    assert out.split() == ["unset", "down", "--remove-orphans"]
    assert "$ sh -c" in err
    assert "down --remove-orphans" in err

    status, out, err = parity("compose", "logs", "--offline", "api", "lb",
                              env=with_compose(ECHO_COMPOSE))  # fmt: skip
    assert status == 0, err
    assert out.split() == [OFFLINE, "logs", "--follow", "--tail=100", "api", "lb"]
    assert err.startswith(f"$ COMPOSE_FILE={OFFLINE} ")


def test_compose_without_its_cli_names_the_command_and_the_fix() -> None:
    status, _, err = parity("compose", "ps", env=with_compose("/nonexistent/compose"))
    assert status == 127
    assert "'/nonexistent/compose' not found" in err
    assert "make tools" in err


def test_compose_ps_asks_the_real_engine_about_the_offline_stack() -> None:
    """A project nobody started: Compose answers with an empty table, not an error."""
    environment = with_compose(shlex.join(compose_cli()))
    environment["COMPOSE_PROJECT_NAME"] = "parity-test-never-started"
    status, out, err = parity("compose", "ps", "--offline", env=environment)
    assert status == 0, err
    assert out.splitlines()[0].split()[:2] == ["NAME", "IMAGE"]
    assert len(out.splitlines()) == 1


def test_loadtest_hands_locust_its_options_and_a_bad_value_is_named(tmp_path: Path) -> None:
    status, _, err = parity("loadtest", "--shape", "nosuch", "--out", str(tmp_path),
                            "--host", "http://127.0.0.1:9", "-t", "5s")  # fmt: skip
    assert status == 2
    assert "--tags mixed --shape nosuch" in err  # the command line it printed
    assert "argument --shape: invalid choice: 'nosuch'" in err
    assert "report:" not in err  # no report was written, none is announced


def test_loadtest_with_no_api_says_so_at_once(tmp_path: Path) -> None:
    status, _, err = parity("loadtest", "--out", str(tmp_path), "--host",
                            "http://127.0.0.1:9", "-t", "2m")  # fmt: skip
    assert status == 1
    assert "no API answers at http://127.0.0.1:9" in err


def test_test_runs_pytest_with_its_arguments_from_any_directory(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "parity", "test", "tests/test_problem.py", "-q",
                  "-p", "no:cacheprovider"], cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout)
