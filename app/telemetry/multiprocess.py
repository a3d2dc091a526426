"""The Prometheus multiprocess directory of one Gunicorn master.

prometheus_client decides at import time whether it runs in multiprocess mode (it
reads PROMETHEUS_MULTIPROC_DIR once), so gunicorn.conf.py calls `prepare_directory()`
before anything imports it; the workers, forked from the master, inherit both the
variable and the choice. This module therefore must not import prometheus_client at
module level.

Each master gets its own directory, because several masters run on one machine (tests,
the worker-count sweep) and files from another master would be summed into ours:

- PROMETHEUS_MULTIPROC_DIR set: that directory, created if missing and emptied of our
  `*.db` files at start (files of a previous run would be counted again, and
  `mark_process_dead` only removes live-gauge files). Only `*.db` files are removed, so
  pointing it at a shared directory by mistake deletes nothing else.
- unset: a fresh directory under /dev/shm (memory, like the heartbeat files) or the
  temp dir, removed when the master exits.

An exclusive lock on `<dir>/.lock`, held by the master (and, through fork, its
workers), refuses a second master on the same directory instead of silently mixing
counts; a stale lock cannot exist, the kernel drops it with the last process.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
# Which master prepared the directory, and whether it created it. Gunicorn re-reads
# gunicorn.conf.py on HUP: the directory must then be kept, not emptied under the
# running workers.
_OWNER_VAR = "PARITY_PROMETHEUS_MULTIPROC_OWNER"
_CREATED_VAR = "PARITY_PROMETHEUS_MULTIPROC_CREATED"
_SHM = Path("/dev/shm")  # noqa: S108 (tmpfs)
LOCK_NAME = ".lock"
# Shared by scrapes, exclusive while the master compacts dead workers' files
# (app/telemetry/metric_files.py).
COMPACTION_LOCK_NAME = ".compaction.lock"


class MultiprocessDirectoryError(RuntimeError):
    """The directory cannot be used; the message says why and what to do."""


@dataclass
class MultiprocessDirectory:
    path: Path
    created: bool
    _lock_fd: int | None = None

    def clean_up(self) -> None:
        """At master exit: remove the directory we created, else leave it empty."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            _remove_db_files(self.path)
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            (self.path / COMPACTION_LOCK_NAME).unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def is_multiprocess() -> bool:
    """True in a process whose metrics are aggregated from the directory's files."""
    return bool(os.environ.get(ENV_VAR))


def prepare_directory(environ: MutableMapping[str, str] = os.environ) -> MultiprocessDirectory:
    """Give this Gunicorn master its own, empty directory and export it in `environ`.

    Call before prometheus_client is imported; raises MultiprocessDirectoryError when
    it already was (single-process mode would be locked in) or the directory is taken.
    """
    pid = str(os.getpid())
    if environ.get(_OWNER_VAR) == pid and environ.get(ENV_VAR):  # HUP: config re-read
        return MultiprocessDirectory(Path(environ[ENV_VAR]), environ.get(_CREATED_VAR) == "1")
    _refuse_if_prometheus_client_imported()
    configured = environ.get(ENV_VAR, "").strip()
    if configured:
        path, created = Path(configured), False
        path.mkdir(parents=True, exist_ok=True)
    else:
        base = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
        path, created = Path(tempfile.mkdtemp(prefix="parity-prometheus-", dir=base)), True
    directory = MultiprocessDirectory(path, created, _lock(path))
    _remove_db_files(path)
    environ[ENV_VAR] = str(path)
    environ[_OWNER_VAR] = pid
    environ[_CREATED_VAR] = "1" if created else "0"
    return directory


def _refuse_if_prometheus_client_imported() -> None:
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise MultiprocessDirectoryError(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set, so "
            "each worker would only export its own counts; import it after "
            "app.telemetry.multiprocess.prepare_directory() (see gunicorn.conf.py)"
        )


def _lock(path: Path) -> int:
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MultiprocessDirectoryError(
            f"{ENV_VAR}={path} is in use by another running Gunicorn master; give each "
            "master its own directory (or leave the variable unset for a fresh one)"
        ) from None
    return fd


def _remove_db_files(path: Path) -> None:
    for file in path.glob("*.db"):
        file.unlink(missing_ok=True)
