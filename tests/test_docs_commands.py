"""Every shell command shown in README.md and docs/*.md works as written, in a fresh shell
after the README's set-up command: no `python` that Debian lacks, no tool outside the
venv, no option that no longer exists.

Each command in a ```sh block is matched by exactly one rule below:

- run: it runs, with bounded options appended where it is long-running (argparse and
  make keep the last value, so the documented options are still parsed and used);
- served: it needs the API of `make run`, which this module starts as documented (on a
  free port, with a database of its own) and points the command at;
- elsewhere: a daemon or a Docker-only command, with the reason and the test that
  exercises the same thing; that test must exist.

A command no rule matches fails the test, so the docs cannot drift from what is checked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from parity.harness.repo import REPO_ROOT
from parity.harness.stack import GunicornProcess, delete_redis_prefix, drop_database, free_port
from tests.conftest import REDIS_URL, SERVER_URL, unique_name
from tests.helpers import run, stop_process_group, wait_until_answers

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)
# What README.md's commands assume: `make run` serving here.
DOCUMENTED_API = re.compile(r"(?:localhost|127\.0\.0\.1):8000")
COMMAND_TIMEOUT_SECONDS = 240

# Long-running tools, cut to a few seconds. Appended after the documented options.
QUICK_TUNE = "--workers 1 --duration 2 --warmup 1 --users 4 --products 200"
QUICK_DEMO = "--duration 3 --users 4 --products 200 --no-prometheus"
QUICK_LOCUST = "-t 4s -u 4 -r 4"
QUICK_SHUTDOWN = "--clients 40 --min-in-flight 10 --slow-ms 800"


@dataclass(frozen=True)
class Rule:
    pattern: str  # a regular expression the whole command matches
    how: str  # "run", "served" or "elsewhere"
    bounded: str = ""  # "run"/"served": what is appended; "elsewhere": the reason
    exercised_by: str = ""  # "elsewhere": FILE::TEST (or FILE: a CI step's script)


DOCKER = "Docker only: the compose e2e (CI's `make e2e` step) builds and runs it"
RULES = [
    # --- the stack ------------------------------------------------------------------
    Rule(r"make run", "served", "(this module's server: started exactly so)"),
    Rule(r"export (DATABASE|REDIS)_URL=.*", "elsewhere",
         "names the reader's own hosts; `make run` itself is run above",
         "tests/test_docs_commands.py::test_make_run_serves_what_the_readme_shows"),
    Rule(r"make test", "elsewhere", "the suite itself: CI runs it as its last step",
         ".ci/run"),
    Rule(r"docker compose up|make (up|logs|down|up-offline)", "elsewhere", DOCKER,
         "scripts/parity/commands/e2e.py"),
    Rule(r"docker (build|run) .*", "elsewhere", DOCKER, "scripts/parity/commands/e2e.py"),
    Rule(r"make up && make demo DEMO_ARGS=--compose", "elsewhere", DOCKER,
         "scripts/parity/commands/e2e.py"),
    Rule(r".*--compose.*", "elsewhere", DOCKER, "scripts/parity/commands/e2e.py"),
    Rule(r"make lock-check", "elsewhere", "needs the package index: a CI step of its own",
         ".ci/run"),
    Rule(r"make lock|\.venv/bin/parity lock .*", "elsewhere",
         "rewrites the committed locks; `make lock-check` runs the same export elsewhere",
         ".ci/run"),
    Rule(r"(kubectl|kustomize|mkdir -p overlays).*", "elsewhere",
         "needs a cluster and a registry; the overlay these commands build is rendered",
         "tests/test_deploy_k8s.py::test_the_documented_overlay_sets_the_trusted_proxy_range"),
    # --- against the API of `make run` ----------------------------------------------
    Rule(r"curl .*", "served"),
    Rule(r"make loadtest.*", "served", f'LOCUST_ARGS+="{QUICK_LOCUST}"'),
    Rule(r"make demo DEMO_ARGS=\"--url .*\"", "served", f'DEMO_ARGS+="{QUICK_DEMO}"'),
    Rule(r"\.venv/bin/parity verify rate-limit --url .*", "served",
         "--requests 30"),
    # --- tools that start their own servers -----------------------------------------
    Rule(r"make tune.*", "run", f'TUNE_ARGS+="{QUICK_TUNE}"'),
    Rule(r"make demo", "run", f'DEMO_ARGS="{QUICK_DEMO}"'),
    Rule(r"make verify-shutdown", "run", f'VERIFY_SHUTDOWN_ARGS="{QUICK_SHUTDOWN}"'),
    Rule(r"\.venv/bin/parity tune --native.*", "run", QUICK_TUNE),
    Rule(r"\.venv/bin/parity verify rate-limit --native.*", "run"),
    Rule(r"\.venv/bin/parity bench rate-limit", "run",
         "--rounds 1 --duration 1"),
    Rule(r"\.venv/bin/parity chaos.*", "run", "--phase-seconds 2 --plot {tmp}/c.png"),
    Rule(r"\.venv/bin/parity verify shutdown --native.*", "run",
         QUICK_SHUTDOWN),
    Rule(r"\.venv/bin/parity verify shutdown --pid .*", "run",
         QUICK_SHUTDOWN),
]  # fmt: skip


@dataclass(frozen=True)
class Documented:
    document: str
    command: str

    @property
    def rule(self) -> Rule:
        matches = [rule for rule in RULES if re.fullmatch(rule.pattern, self.command)]
        assert matches, f"{self.document}: no rule says how to check `{self.command}`"
        return matches[0]


def commands_in(text: str) -> Iterator[str]:
    """The commands of every ```sh block: continuation lines joined, comments dropped."""
    for block in SHELL_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(shlex.split(line, comments=True, posix=False))
            if command:
                yield command


def documented_commands() -> list[Documented]:
    """Each command once, with the first document that shows it."""
    first: dict[str, Documented] = {}
    for path in DOCUMENTS:
        for command in commands_in(path.read_text()):
            first.setdefault(command, Documented(str(path.relative_to(REPO_ROOT)), command))
    return list(first.values())


def fresh_shell_env() -> dict[str, str]:
    """This environment without the venv on PATH, as a new terminal has it."""
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


def bounded(command: str, addition: str, tmp_path: Path) -> str:
    """`command` with `addition`: `VAR+="..."` extends that make variable's documented
    value (or sets it), anything else is appended as options."""
    addition = addition.format(tmp=tmp_path)
    variable = re.fullmatch(r'(\w+)\+?="(.*)"', addition)
    if variable is None:
        return f"{command} {addition}".strip()
    name, value = variable.groups()
    documented = re.search(rf'{name}=("[^"]*"|\S+)', command)
    if documented is None:
        return f'{command} {name}="{value}"'
    old = documented.group(1).strip('"')
    return command.replace(documented.group(0), f'{name}="{old} {value}"')


def run_in_fresh_shell(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(
        ["bash", "-c", command], env=env, timeout=COMMAND_TIMEOUT_SECONDS,
    )  # fmt: skip


def assert_succeeded(process: subprocess.CompletedProcess[str], command: str) -> None:
    assert process.returncode == 0, (
        f"`{command}` exited {process.returncode}\n--- stdout\n{process.stdout[-2500:]}"
        f"\n--- stderr\n{process.stderr[-2500:]}"
    )


# --- the API of `make run` ----------------------------------------------------------


@dataclass(frozen=True)
class MakeRun:
    base_url: str
    env: dict[str, str]  # for the commands that use it: its database and Redis prefix


@pytest.fixture(scope="module")
def make_run() -> Iterator[MakeRun]:
    """`make run` as the README shows it, on a free port, with a database and a Redis key
    prefix of its own (removed afterwards) instead of the default `app` and `parity:`."""
    port = free_port()
    database = unique_name("parity_test_make_run")
    database_url = SERVER_URL.rsplit("/", 1)[0] + f"/{database}"
    env = {
        **fresh_shell_env(),
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"{unique_name('parity-test-make-run')}:",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
    }
    # Its output goes to a file: a pipe nobody reads fills up with access-log lines and
    # then blocks the server.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in `finally`, after the server
    process = subprocess.Popen(
        ["make", "run"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_answers(f"{base_url}/ready", timeout=120, process=process)
        except AssertionError as exc:
            log.seek(0)
            raise AssertionError(
                f"make run: {exc}\n{log.read().decode(errors='replace')[-3000:]}"
            ) from None
        yield MakeRun(base_url, env)
    finally:
        try:
            stop_process_group(process)
        finally:
            log.close()
            delete_redis_prefix(REDIS_URL, env["REDIS_KEY_PREFIX"])
            drop_database(database_url)


def test_make_run_serves_what_the_readme_shows(make_run: MakeRun) -> None:
    """`make run` -> the catalogue it seeded answers, and /docs is there."""
    assert httpx.get(f"{make_run.base_url}/api/v1/products/1", timeout=5).status_code == 200
    assert httpx.get(f"{make_run.base_url}/docs", timeout=5).status_code == 200


# --- the specification --------------------------------------------------------------


def test_every_documented_command_has_exactly_one_way_to_be_checked() -> None:
    commands = documented_commands()
    assert len(commands) > 20  # the extraction found the blocks
    for documented in commands:
        rule = documented.rule
        if rule.how == "elsewhere":
            assert rule.bounded, rule
            assert rule.exercised_by, rule
            assert_exists(rule.exercised_by)


def assert_exists(reference: str) -> None:
    """`FILE::TEST` or `FILE` names something that is there."""
    path, _, test = reference.partition("::")
    text = (REPO_ROOT / path).read_text()
    assert not test or f"def {test}(" in text, f"{reference}: no such test"


def test_no_documented_command_uses_a_bare_python() -> None:
    """Fresh Debian has no `python`, and python3 lacks the dependencies: the tools run
    through the venv."""
    for documented in documented_commands():
        assert not re.match(r"python3? ", documented.command), documented
    for path in DOCUMENTS:
        inline = re.findall(r"`(?:python3? |\.venv/bin/python )scripts/[^`]*`", path.read_text())
        assert not inline, f"{path.name}: {inline}"


def checked(how: str) -> list[Documented]:
    return [documented for documented in documented_commands() if documented.rule.how == how]


@pytest.mark.gunicorn
@pytest.mark.slow
@pytest.mark.parametrize("documented", checked("served"), ids=lambda d: d.command[:60])
def test_a_command_against_make_run_works_as_written(
    documented: Documented, make_run: MakeRun, tmp_path: Path
) -> None:
    if documented.command == "make run":
        return  # the fixture is this command
    command = DOCUMENTED_API.sub(make_run.base_url.removeprefix("http://"), documented.command)
    if "://" not in command and "curl" not in command:
        command = f"{command} HOST={make_run.base_url}"
    command = with_outputs_in(bounded(command, documented.rule.bounded, tmp_path), tmp_path)
    assert_succeeded(run_in_fresh_shell(command, make_run.env), command)


@pytest.mark.gunicorn
@pytest.mark.slow
@pytest.mark.parametrize("documented", checked("run"), ids=lambda d: d.command[:60])
def test_a_command_that_starts_its_own_servers_works_as_written(
    documented: Documented, tmp_path: Path, gunicorn: Callable[..., GunicornProcess]
) -> None:
    command = bounded(documented.command, documented.rule.bounded, tmp_path)
    command = with_outputs_in(command, tmp_path)
    if "--pid" in command:
        # The reader's own Gunicorn, with the two settings docs/shutdown.md names.
        server = gunicorn(env={"DEMO_ENDPOINTS_ENABLED": "true", "RATE_LIMIT_ENABLED": "false"})
        command = command.replace('"$(cat gunicorn.pid)"', str(server.pid))
        command = command.replace("gunicorn.log", str(server.log_path))
        command = DOCUMENTED_API.sub(server.base_url.removeprefix("http://"), command)
    assert_succeeded(run_in_fresh_shell(command, fresh_shell_env()), command)


def with_outputs_in(command: str, tmp_path: Path) -> str:
    """Results a tool writes into the repository by default go to `tmp_path` instead."""
    if command.startswith("make demo"):
        return bounded(command, f'DEMO_ARGS+="--out {tmp_path}/demo"', tmp_path)
    if command.startswith("make loadtest"):
        return f"{command} LOADTEST_DIR={tmp_path}/loadtest"
    if command.startswith("make tune"):
        return bounded(command, f'TUNE_ARGS+="--out {tmp_path}/tune"', tmp_path)
    if command.startswith("make verify-shutdown"):
        return f"{command} RESULTS={tmp_path}"
    if "parity tune" in command:
        return f"{command} --out {tmp_path}/tune"
    if "parity bench rate-limit" in command:
        return f"{command} --plot {tmp_path}/bench.png"
    return command
