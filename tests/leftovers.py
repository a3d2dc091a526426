"""What a test session leaves behind must be nothing: no database, no Redis key, no file
in the repository or the temporary directory that the session (or a tool it ran)
created. tests/conftest.py snapshots before the first test and fails the session at the
end if something new is still there.

Only what this run can have made counts, so another process on the machine (a second
test session, `make run`, a benchmark) does not fail it:

- databases and Redis keys that did not exist at the start and are named as the suite
  and the scripts name theirs: with this session's pid (`unique_name`:
  `parity_test_<pid>_<hex>`), or starting with `parity` (the scripts' databases and
  prefixes, Redis' default prefix `parity:`) or the `app` database, except those that
  carry the pid of another process still running (a second test session);
- temporary files: the tests run with a TMPDIR of its own (inherited by every script
  and server they start), so anything left in it is ours; it is removed at the end
  either way. pytest's own `tmp_path` directories stay where pytest keeps them;
- repository files: new ignored files (results/, .env, ...) and new untracked files
  other than source (*.py, *.md), which someone may be writing meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.engine import make_url

from tests.helpers import run

REPO_ROOT = Path(__file__).resolve().parents[1]
# A pid followed by a random hex tag, as in `parity_test_4242_1a2b3c4d`.
PID_IN_NAME = re.compile(r"(?<![0-9])([0-9]+)_[0-9a-f]{6,}")
NOT_REPOSITORY_FILES = (".venv/", ".tools/", ".mypy_cache/", ".ruff_cache/", ".pytest_cache/")


@contextmanager
def private_tmpdir() -> Iterator[Path]:
    """Point TMPDIR (this process, and every child it starts) at a fresh directory, and
    back on exit, removing it. pytest's `tmp_path` root stays where it was."""
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    previous = os.environ.get("TMPDIR")
    path = Path(tempfile.mkdtemp(prefix="parity-tests-"))
    # As /tmp: the throwaway servers run as `postgres` (when we are root) and make their
    # directories in here.
    path.chmod(0o1777)
    os.environ["TMPDIR"] = str(path)
    tempfile.tempdir = None  # gettempdir() caches its first answer
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        tempfile.tempdir = None
        shutil.rmtree(path, ignore_errors=True)


def _ours(name: str) -> bool:
    """Whether a new database or key is one this session (or a script it ran) made."""
    match = PID_IN_NAME.search(name)
    if match is not None and int(match[1]) == os.getpid():
        return True
    if not (name.startswith("parity") or name == "app"):
        return False
    # A pid of another process still running: a second test session, a script.
    return match is None or not Path(f"/proc/{match[1]}").exists()


async def _databases(server_url: str) -> set[str]:
    dsn = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await connection.fetch("SELECT datname FROM pg_database")
    finally:
        await connection.close()
    return {row["datname"] for row in rows}


def _redis_keys(redis_url: str) -> set[str]:
    redis = Redis.from_url(redis_url)
    try:
        return {key.decode(errors="replace") for key in redis.scan_iter(count=1000)}
    finally:
        redis.close()


def _repository_files() -> set[str]:
    def others(*options: str) -> set[str]:
        result = run(
            ["git", "ls-files", "--others", *options],
            check=True,
        )  # fmt: skip
        return {
            path
            for path in result.stdout.splitlines()
            if not path.startswith(NOT_REPOSITORY_FILES) and "__pycache__/" not in path
        }

    ignored = others("--ignored", "--exclude-standard")
    untracked = {p for p in others("--exclude-standard") if not p.endswith((".py", ".md"))}
    return ignored | untracked


def _new(before: set[str] | None, after: set[str] | None) -> set[str]:
    return after - before if before is not None and after is not None else set()


@dataclass
class Snapshot:
    databases: set[str] | None  # None: the server did not answer (nothing to compare)
    redis_keys: set[str] | None
    repository_files: set[str]


class LeftoverCheck:
    """`check = LeftoverCheck(...)` before the session, `check.problems()` after it."""

    def __init__(self, *, server_url: str, redis_url: str, tmpdir: Path) -> None:
        self.server_url = server_url
        self.redis_url = redis_url
        self.tmpdir = tmpdir
        self.before = self.snapshot()

    def snapshot(self) -> Snapshot:
        try:
            databases: set[str] | None = asyncio.run(_databases(self.server_url))
        except (OSError, asyncpg.PostgresError):
            databases = None  # a session of tests that need no Postgres
        try:
            keys: set[str] | None = _redis_keys(self.redis_url)
        except RedisError:
            keys = None
        return Snapshot(databases, keys, _repository_files())

    def problems(self) -> list[str]:
        """What the session left behind, one line per kind."""
        after = self.snapshot()
        found = []
        databases = sorted(
            name for name in _new(self.before.databases, after.databases) if _ours(name)
        )
        if databases:
            found.append(f"databases: {', '.join(databases)}")
        keys = sorted(key for key in _new(self.before.redis_keys, after.redis_keys) if _ours(key))
        if keys:
            prefixes = sorted({key.split(":", 1)[0] for key in keys})
            found.append(f"{len(keys)} Redis keys under {', '.join(prefixes)} (e.g. {keys[0]})")
        files = sorted(after.repository_files - self.before.repository_files)
        if files:
            found.append(f"repository files: {', '.join(files[:10])}")
        temporary = sorted(path.name for path in self.tmpdir.iterdir())
        if temporary:
            found.append(f"temporary files (TMPDIR): {', '.join(temporary[:10])}")
        return found
