"""The lock that gives an ``alone`` test the machine to itself under pytest-xdist, between real
processes: an ``alone`` test waits for the test another worker is running, and while it runs the
other worker starts nothing new; two ordinary tests run side by side."""

from __future__ import annotations

import queue
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.machine_share import RUN, lock_files, machine_share, remove_lock_files

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock between processes")

# A worker's test: takes its share, says so, holds it until told to go on.
WORKER = """
import sys
from tests.machine_share import machine_share
with machine_share(alone=ALONE):
    print("in", flush=True)
    sys.stdin.readline()
print("out", flush=True)
"""


STARTED: list = []  # killed after each test, whatever it asserted


def worker(alone: bool, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER.replace("ALONE", str(alone))],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    STARTED.append(proc)
    proc.lines = queue.Queue()  # what it prints, read as it comes
    threading.Thread(target=lambda: [proc.lines.put(line) for line in proc.stdout], daemon=True).start()
    return proc


def entered(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether ``proc`` printed "in" within ``seconds`` (its lock taken)."""
    try:
        return proc.lines.get(timeout=seconds) == "in\n"
    except queue.Empty:
        return False


def go_on(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0


@pytest.fixture
def run_env(monkeypatch):
    import os

    run = f"test-{uuid.uuid4().hex}"  # files of their own, apart from this run's own lock
    monkeypatch.setenv(RUN, run)
    yield dict(os.environ)
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    remove_lock_files(run)
    assert not any(path.exists() for path in lock_files(run))


def test_an_alone_test_waits_for_the_running_test_and_holds_back_the_next(run_env):
    running = worker(False, run_env)
    assert entered(running, 30)
    alone = worker(True, run_env)
    # 1 s: a lock that let it in would have let it in at once
    assert not entered(alone, 1.0), "the alone test started beside a running test"
    # a test that comes while the alone test waits does not start (nor, started, keep it waiting)
    later = worker(False, run_env)
    assert not entered(later, 1.0), "a test started while an alone test waited for the machine"
    go_on(running)
    assert entered(alone, 30)
    assert not entered(later, 1.0), "a test started beside the alone test"
    go_on(alone)
    assert entered(later, 30)
    go_on(later)


def test_ordinary_tests_run_side_by_side_and_outside_xdist_nothing_is_locked(run_env, monkeypatch):
    first, second = worker(False, run_env), worker(False, run_env)
    assert entered(first, 30) and entered(second, 30)
    go_on(first)
    go_on(second)
    monkeypatch.delenv(RUN)
    made = set(Path(tempfile.gettempdir()).glob("dav2-tests-*"))  # this run's own, under xdist
    with machine_share(alone=True):  # one process, one test at a time: no lock file, none taken
        assert set(Path(tempfile.gettempdir()).glob("dav2-tests-*")) == made
