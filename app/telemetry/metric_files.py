"""Compacting dead workers' multiprocess metric files, and scrapes that never see a
compaction half done.

prometheus_client keeps every dead worker's counter and histogram files, so their
counts survive recycling, and a scrape reads all of them: 50 recycles left 113 files and
a 20 ms scrape (issue 18), growing with every recycle. When a worker exits, the master
(gunicorn.conf.py's `child_exit`) folds the counter, histogram and summary files of
every pid that is no longer a worker into one archive file per type, summing values
key by key, and deletes them; live gauges of dead pids are deleted as
`mark_process_dead` does. Totals stay exact; the files are the live workers' plus one
archive per type.

Scrapes run in workers, so the two are kept apart with a lock file: a scrape holds it
shared while it lists and reads the files, the master holds it exclusive while it
replaces the archive and deletes what it merged. The master never waits long for it (a
stopped worker could hold it forever): it gives up after COMPACTION_LOCK_WAIT_SECONDS
and the next worker exit compacts what was left.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Metric

# The private part of prometheus_client this module relies on: its file format, read and
# written with its own MmapedDict. Checked against prometheus_client 0.26.0;
# tests/test_metric_files.py fails when another version is installed, so an upgrade
# re-checks this (a round trip through the collector proves the format still holds).
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from app.telemetry.multiprocess import COMPACTION_LOCK_NAME

PROMETHEUS_CLIENT_CHECKED = "0.26.0"

logger = logging.getLogger(__name__)

LOCK_NAME = COMPACTION_LOCK_NAME
ARCHIVE_ID = "archive"  # in place of a pid: counter_archive.db
# Values of these types add up across processes, so a dead worker's can be summed into
# one file. Gauges cannot: their modes (livesum, max, mostrecent...) differ.
SUMMED_TYPES = ("counter", "histogram", "summary")
COMPACTION_LOCK_WAIT_SECONDS = 1.0


def compact_dead_workers(directory: Path, live_pids: Collection[int]) -> int:
    """Fold the files of every pid not in `live_pids` into the archives; returns how
    many files were removed (0 as well when the lock was not free in time)."""
    dead = _dead_files(directory, set(live_pids))
    if not dead:
        return 0
    with _exclusive_lock(directory) as locked:
        if not locked:
            logger.warning(
                "metric files of dead workers not compacted: a scrape held the lock for "
                "%.1fs; the next worker exit retries",
                COMPACTION_LOCK_WAIT_SECONDS,
            )
            return 0
        by_type: dict[str, list[Path]] = defaultdict(list)
        for path in dead:
            by_type[path.name.split("_", 1)[0]].append(path)
        for kind in SUMMED_TYPES:
            if by_type[kind]:
                _merge_into_archive(directory, kind, by_type[kind])
        for path in dead:
            path.unlink(missing_ok=True)
    return len(dead)


def _dead_files(directory: Path, live_pids: set[int]) -> list[Path]:
    """Summed-type files and live-gauge files whose pid is not alive. Other gauge modes
    (none here) keep their files: a dead pid's value may still be meant to show."""
    dead = []
    for path in directory.glob("*.db"):
        kind, _, rest = path.name.partition("_")
        pid = rest.removesuffix(".db").rsplit("_", 1)[-1]
        if not pid.isdigit() or int(pid) in live_pids:
            continue  # an archive, or a live process's
        if kind in SUMMED_TYPES or rest.startswith("live"):
            dead.append(path)
    return dead


def _merge_into_archive(directory: Path, kind: str, files: Iterable[Path]) -> None:
    """Sum the archive and `files` key by key, into a new archive swapped in at once:
    a master killed half-way leaves the old archive whole."""
    archive = directory / f"{kind}_{ARCHIVE_ID}.db"
    totals: dict[str, float] = defaultdict(float)
    stamps: dict[str, float] = defaultdict(float)
    for path in (archive, *files) if archive.exists() else files:
        values = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
        for key, value, stamp, _ in values:
            totals[key] += value
            stamps[key] = max(stamps[key], stamp)
    staging = directory / f"{kind}_{ARCHIVE_ID}.db.new"  # not *.db: no scrape reads it
    staging.unlink(missing_ok=True)
    written = MmapedDict(str(staging))  # type: ignore[no-untyped-call]
    try:
        for key, value in totals.items():
            written.write_value(key, value, stamps[key])  # type: ignore[no-untyped-call]
    finally:
        written.close()  # type: ignore[no-untyped-call]
    os.replace(staging, archive)


@contextmanager
def _exclusive_lock(directory: Path) -> Iterator[bool]:
    # Opened for this compaction only: a descriptor the master kept open would be
    # inherited by the workers it forks, and flock() on a shared open file is no lock.
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + COMPACTION_LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        yield True
    finally:
        os.close(fd)  # releases the lock


class LockedMultiProcessCollector(MultiProcessCollector):
    """prometheus_client's collector, reading the files under the shared lock so a
    compaction is either all seen or not at all (never a dead worker's file counted
    both in the archive and on its own, nor a file gone between listing and reading)."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        self._lock_path = Path(path) / LOCK_NAME
        super().__init__(registry, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # a compaction takes milliseconds
            return list(super().collect())  # type: ignore[no-untyped-call]
        finally:
            os.close(fd)
