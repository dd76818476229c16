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


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def current_stack() -> _Stack | None:
    """The calling thread's alternate signal stack as the kernel has it (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    stack = _Stack()
    return stack if _libc().sigaltstack(None, ctypes.byref(stack)) == 0 else None


def mend_alternate_stack() -> bool:
    """Give the calling thread a fresh alternate signal stack if its present one lies in unmapped
    memory; ``True`` when one was given."""
    current = current_stack()
    if current is None or current.flags & SS_DISABLE or _mapped(current.sp or 0):
        return False
    memory = ctypes.create_string_buffer(STACK_BYTES)
    _kept.append(memory)
    fresh = _Stack(ctypes.addressof(memory), 0, STACK_BYTES)
    return _libc().sigaltstack(ctypes.byref(fresh), None) == 0


@contextlib.contextmanager
def alternate_stack_kept() -> Iterator[None]:
    """Run a block that makes and frees OpenVINO Cores of its own (NNCF), then give the thread back
    the alternate stack it had before the block: a stack a freed Core put back may lie in memory
    that is unmapped, or mapped again for something else (a signal would then write over it).
    Cores the block leaves alive (or that an exception's traceback holds) are freed later and
    may still put back a stack of theirs; the unmapped case is mended again then, by the next
    block or by ``mend_alternate_stack``."""
    before = current_stack()
    try:
        yield
    finally:
        gc.collect()  # free what the block left in reference cycles now, not at a later signal
        after = current_stack()
        if before is not None and after is not None and (after.sp, after.size) != (before.sp, before.size):
            restored = _Stack(before.sp, before.flags & SS_DISABLE, before.size)
            _libc().sigaltstack(ctypes.byref(restored), None)
        mend_alternate_stack()
