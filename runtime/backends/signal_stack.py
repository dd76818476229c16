"""The calling thread's alternate signal stack, put right where a library left it in freed memory.

OpenVINO's Cores (2026.4 on a CPU with AMX) each give the thread that compiles on them an alternate
signal stack of their own and put back, when freed, the one they found: Cores freed in the order
they were made leave the thread's alternate stack in unmapped memory, and the next signal Python
handles on that thread (a DataLoader worker's SIGCHLD, SIGTERM, Ctrl-C) kills the process with
SIGSEGV and no trace. This toolkit keeps one Core per process (``openvino_core``); NNCF makes its own,
so its calls run inside :func:`alternate_stack_kept`. Linux only; elsewhere nothing is done.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from collections.abc import Iterator

SS_DISABLE = 2  # <bits/sigstack.h>
STACK_BYTES = 256 * 1024  # room for a signal frame with AVX-512 and AMX state, and Python's handler
_kept: list = []  # stacks handed to threads; never freed, as a thread may still point at one


class _Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


def _mapped(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        for line in maps:
            low, high = (int(bound, 16) for bound in line.split(None, 1)[0].split("-"))
            if low <= address < high:
                return True
    return False


def mend_alternate_stack() -> bool:
    """Give the calling thread a fresh alternate signal stack if its present one lies in unmapped
    memory; ``True`` when one was given."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    current = _Stack()
    if libc.sigaltstack(None, ctypes.byref(current)) != 0 or current.flags & SS_DISABLE:
        return False
    if _mapped(current.sp or 0):
        return False
    memory = ctypes.create_string_buffer(STACK_BYTES)
    _kept.append(memory)
    fresh = _Stack(ctypes.addressof(memory), 0, STACK_BYTES)
    return libc.sigaltstack(ctypes.byref(fresh), None) == 0


@contextlib.contextmanager
def alternate_stack_kept() -> Iterator[None]:
    """Run a block that makes and frees OpenVINO Cores of its own (NNCF); mend the stack after."""
    try:
        yield
    finally:
        gc.collect()  # free what the block left in reference cycles now, not at a later signal
        mend_alternate_stack()
