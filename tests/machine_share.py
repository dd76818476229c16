"""Tests marked ``alone`` measure the machine (its load, a profiled call's coverage): under
pytest-xdist (``make test`` runs two workers) they run with no test of another worker beside them.

A readers-writer lock over two ``flock`` files shared by the run's workers: every other test holds
the room shared; an ``alone`` test holds it exclusively, and holds the door while it waits, so the
other worker starts no new test and finishes the one it has (a writer is not starved by readers
that keep arriving). The lock spans the test's whole protocol, its fixtures' set-up and tear-down
included (the benchmark run ``tests/test_benchmark_report.py`` shares is made in a fixture).
Outside xdist, or without ``fcntl``, nothing is locked: one process runs one test at a time."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: no workers to keep apart from each other here
    fcntl = None

RUN = "PYTEST_XDIST_TESTRUNUID"  # set by pytest-xdist in each worker, the same for one run's workers


def lock_files(run: str) -> tuple[Path, Path]:
    base = Path(tempfile.gettempdir()) / f"dav2-tests-{run}"
    return base.with_suffix(".door"), base.with_suffix(".room")


@contextmanager
def machine_share(alone: bool) -> Iterator[None]:
    run = os.environ.get(RUN)
    if run is None or fcntl is None:
        yield
        return
    door_path, room_path = lock_files(run)
    with open(door_path, "a+b") as door, open(room_path, "a+b") as room:
        fcntl.flock(door, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(door, fcntl.LOCK_UN)
        try:
            yield
        finally:  # unlocked by name: a child forked by the test shares the locks until it exits
            fcntl.flock(room, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(door, fcntl.LOCK_UN)


def remove_lock_files(run: str | None) -> None:
    if run:
        for path in lock_files(run):
            path.unlink(missing_ok=True)
