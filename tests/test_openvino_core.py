"""One OpenVINO Core per process: Cores freed in the order they were made leave the compiling
thread's alternate signal stack in unmapped memory (OpenVINO 2026.4, CPU device), and the next
signal Python handles there kills the process with SIGSEGV and no trace. Seen on this project's
CI: a DataLoader worker's SIGCHLD in tests/test_pseudo_label.py, after the OpenVINO tests."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("openvino")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux)")

# Two models loaded and dropped in the order they were loaded, then a signal handled in Python.
PROBE = """
import ctypes, gc, os, signal, sys
import numpy as np


class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


def alternate_stack():
    stack = Stack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
    return stack


def alternate_stack_mapped():
    stack = alternate_stack()
    if stack.flags & 2:  # SS_DISABLE: no alternate stack, nothing to dangle
        return True
    for line in open("/proc/self/maps"):
        low, high = (int(bound, 16) for bound in line.split()[0].split("-"))
        if low <= (stack.sp or 0) < high:
            return True
    return False

from runtime.backends.openvino import import_openvino

ov = import_openvino()
from openvino import opset13 as ops

image = ops.parameter([1, 3, 28, 28], np.float32, name="image")
depth = ops.reduce_mean(image, ops.constant(np.int64([1])), keep_dims=False)
ov.save_model(ov.Model([depth], [image], "mean"), sys.argv[2])
if sys.argv[1] == "backends":
    from runtime.backends.openvino import OpenVINOBackend

    first = OpenVINOBackend(sys.argv[2], cache_dir=None)
    second = OpenVINOBackend(sys.argv[2], cache_dir=None)
    first.infer(np.zeros((1, 3, 28, 28), np.float32))
    first.close()
    second.close()
    del first, second
    gc.collect()
elif sys.argv[1] == "cores":  # OpenVINO's own Cores, one per model, as NNCF makes them
    before = alternate_stack().sp
    first = ov.Core().compile_model(sys.argv[2], "CPU")
    if alternate_stack().sp == before:
        sys.exit(print("untouched"))
    second = ov.Core().compile_model(sys.argv[2], "CPU")
    del first
    gc.collect()
    del second
    gc.collect()
else:  # the same, inside the block NNCF's calls run in
    from runtime.backends.signal_stack import alternate_stack_kept

    before = alternate_stack().sp
    with alternate_stack_kept():
        first = ov.Core().compile_model(sys.argv[2], "CPU")
        second = ov.Core().compile_model(sys.argv[2], "CPU")
        del first
        gc.collect()
        del second
    print("same" if alternate_stack().sp == before else "other", flush=True)
print("mapped" if alternate_stack_mapped() else "dangling", flush=True)
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive", flush=True)
"""


def run_probe(mode: str, tmp_path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-X", "faulthandler", "-c", PROBE, mode, str(tmp_path / "mean.xml")]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_models_freed_in_load_order_leave_the_alternate_stack_and_signals_alone(tmp_path):
    run = run_probe("backends", tmp_path)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-1500:]}"
    assert run.stdout.split() == ["mapped", "handled", "alive"]


def test_cores_made_by_another_library_are_mended_after_its_call(tmp_path):
    run = run_probe("kept", tmp_path)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-1500:]}"
    # The stack the thread had before the block, not merely a mapped one: a freed Core's stack
    # can be mapped again for something else, and a signal would write over that.
    assert run.stdout.split() == ["same", "mapped", "handled", "alive"]


def test_the_hazard_the_shared_core_avoids_is_real(tmp_path):
    """OpenVINO's own behaviour, so the test above is known to test something: when a release
    no longer crashes here, the shared Core may stay, but this test and the docstrings go."""
    run = run_probe("cores", tmp_path)
    if run.stdout.split() == ["untouched"]:
        pytest.skip("OpenVINO leaves this CPU's alternate signal stack alone (seen changed on a CPU with AMX)")
    assert run.stdout.split()[:1] == ["dangling"] and run.returncode == -signal.SIGSEGV, (
        f"two OpenVINO Cores freed in load order no longer crash a signal handler (exit {run.returncode}): "
        "update runtime.backends.openvino.openvino_core's docstring and drop this test"
    )
