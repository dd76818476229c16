"""A Video Depth Anything stream's cache bookkeeping as a plan of slot copies, one plan per frame,
and everything a device needs to run that plan with strided 2-D copies.

The window and the waiting frames are laid out as ``runtime.video_state`` describes: each cache
``(tokens, SLOTS, C)``, its waiting frames ``(tokens, WAITING, C)``, the frame's hidden state
``(tokens, 1, C)``, all float32. ``frame_plan(k)`` is what frame ``k`` (counted from the stream's
start) moves after it ran: a tuple of ``Copy`` (whole slot to whole slot, in order).
``run_plan`` executes it on numpy arrays (the CPU backends' cache, ``HostCache``); ``copy_2d``
turns one copy into the arguments of ``cudaMemcpy2DAsync`` for buffers in that layout, and
``memcpy_2d`` is those arguments executed on flat byte arrays as the CUDA Runtime API documents
``cudaMemcpy2D``: "Copies a matrix (height rows of width bytes each) from the memory area pointed
to by src to the memory area pointed to by dst [...] dpitch and spitch are the widths in memory in
bytes of the 2D arrays pointed to by dst and src, including any padding added to the end of each
row. The memory areas may not overlap. width must not exceed either dpitch or spitch." (CUDA
Runtime API, Memory Management, cudaMemcpy2D / cudaMemcpy2DAsync). A slot of a cache is therefore
``tokens`` rows of ``C * 4`` bytes at pitch ``SLOTS * C * 4`` starting ``slot * C * 4`` bytes in.

No copy of a plan reads and writes the same buffer (hidden to cache, cache to waiting, waiting to
cache), so the device copies never overlap, as ``cudaMemcpy2D`` requires.

Python 3.8 clean: it runs on JetPack 5.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

WINDOW = 32  # positions: the first frame, the frame 41 back, the last 29, the new frame
SLOTS = WINDOW - 1  # the cache the network reads: 31 frames
RECENT = WINDOW - 3  # 29, in a ring at slots 2..30
WAITING = 11  # the frames 40..30 back: the official list holds 42 = 1 + 41
FLOAT = 4  # bytes of a float32

HIDDEN, CACHE, QUEUE = "hidden", "cache", "waiting"  # the three buffers of one cache
SLOTS_OF = {HIDDEN: 1, CACHE: SLOTS, QUEUE: WAITING}


class Copy(NamedTuple):
    """One whole slot copied: ``src`` buffer's slot ``src_slot`` to ``dst``'s slot ``dst_slot``."""

    src: str
    src_slot: int
    dst: str
    dst_slot: int


class Copy2D(NamedTuple):
    """``cudaMemcpy2DAsync(dst + dst_offset, dpitch, src + src_offset, spitch, width, height)``, the
    buffers named (``HIDDEN``, ``CACHE``, ``QUEUE``), offsets, pitches and width in bytes."""

    dst: str
    dst_offset: int
    dpitch: int
    src: str
    src_offset: int
    spitch: int
    width: int
    height: int


def frame_plan(k: int) -> tuple:
    """The copies after frame ``k`` of a stream ran. The first frame fills every slot of the window
    and of the waiting queue with itself (the official list starts as 32 copies of it). Each later
    one moves three slots, in this order: the oldest waiting frame (``k - 40``) to slot 1, the frame
    leaving the ring (``k - 29``) into the waiting slot that freed, the new frame into the ring."""
    if k < 0:
        raise ValueError(f"a stream's frames count from 0, got {k}")
    if k == 0:
        return tuple(Copy(HIDDEN, 0, CACHE, s) for s in range(SLOTS)) + tuple(
            Copy(HIDDEN, 0, QUEUE, s) for s in range(WAITING)
        )
    ring, queue = 2 + k % RECENT, (k - RECENT) % WAITING
    return (Copy(QUEUE, queue, CACHE, 1), Copy(CACHE, ring, QUEUE, queue), Copy(HIDDEN, 0, CACHE, ring))


def buffer_shapes(cache_shape: Sequence[int]) -> dict[str, tuple]:
    """The shapes of one cache's three buffers from the graph's cache input ``(tokens, SLOTS, ...)``."""
    tokens, rest = int(cache_shape[0]), tuple(int(d) for d in cache_shape[2:])
    return {name: (tokens, slots, *rest) for name, slots in SLOTS_OF.items()}


def run_plan(plan: Sequence[Copy], buffers: dict[str, np.ndarray]) -> None:
    """Execute ``plan`` on one cache's numpy buffers (``HIDDEN``, ``CACHE``, ``QUEUE``), in place."""
    for op in plan:
        buffers[op.dst][:, op.dst_slot] = buffers[op.src][:, op.src_slot]


def copy_2d(op: Copy, cache_shape: Sequence[int]) -> Copy2D:
    """``op`` as one strided 2-D copy between C-contiguous float32 buffers of ``buffer_shapes``:
    a slot is ``tokens`` rows of ``C * 4`` bytes, one row every ``slots * C * 4`` bytes."""
    tokens = int(cache_shape[0])
    width = int(np.prod(cache_shape[2:], dtype=np.int64)) * FLOAT
    for name, slot in ((op.src, op.src_slot), (op.dst, op.dst_slot)):
        if not 0 <= slot < SLOTS_OF[name]:
            raise ValueError(f"{name} has {SLOTS_OF[name]} slots, no slot {slot}")
    if op.src == op.dst:
        raise ValueError(f"{op}: a copy within one buffer overlaps, which cudaMemcpy2D does not allow")
    return Copy2D(
        op.dst, op.dst_slot * width, SLOTS_OF[op.dst] * width, op.src, op.src_slot * width, SLOTS_OF[op.src] * width,
        width, tokens,
    )  # fmt: skip


def memcpy_2d(
    dst: np.ndarray, dpitch: int, src: np.ndarray, spitch: int, width: int, height: int, dst_offset: int = 0,
    src_offset: int = 0,
) -> None:  # fmt: skip
    """``cudaMemcpy2D(dst + dst_offset, dpitch, src + src_offset, spitch, width, height)`` on flat
    ``uint8`` arrays (addresses are byte offsets): row ``r``'s ``width`` bytes from ``src_offset + r * spitch`` to
    ``dst_offset + r * dpitch``. What the documentation forbids is refused: ``width`` over a pitch
    (``cudaErrorInvalidValue``), overlapping areas, and bytes past either buffer."""
    if dst.dtype != np.uint8 or src.dtype != np.uint8 or dst.ndim != 1 or src.ndim != 1:
        raise ValueError("memcpy_2d copies between flat uint8 arrays")
    if width > dpitch or width > spitch:
        raise ValueError(f"width {width} exceeds dpitch {dpitch} or spitch {spitch}")
    if height == 0 or width == 0:
        return
    d_end, s_end = dst_offset + (height - 1) * dpitch + width, src_offset + (height - 1) * spitch + width
    if min(dst_offset, src_offset) < 0 or d_end > dst.size or s_end > src.size:
        raise ValueError(f"a copy of {height} rows of {width} bytes runs past a buffer")
    if np.shares_memory(dst[dst_offset:d_end], src[src_offset:s_end]):
        raise ValueError("the memory areas of a 2-D copy may not overlap")
    strided = np.lib.stride_tricks.as_strided
    rows = strided(dst[dst_offset:], shape=(height, width), strides=(dpitch, 1), writeable=True)
    rows[...] = strided(src[src_offset:], shape=(height, width), strides=(spitch, 1), writeable=False)


def run_plan_2d(plan: Sequence[Copy], cache_shape: Sequence[int], flat: dict[str, np.ndarray]) -> None:
    """``plan`` executed as ``copy_2d``'s copies on flat byte buffers (``memcpy_2d``): what a device
    runs with ``cudaMemcpy2DAsync``, here on the host."""
    for op in plan:
        c = copy_2d(op, cache_shape)
        memcpy_2d(flat[c.dst], c.dpitch, flat[c.src], c.spitch, c.width, c.height, c.dst_offset, c.src_offset)


def nbytes(shape: Sequence[int], itemsize: int = FLOAT) -> int:
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def plan_bytes(cache_shapes: Sequence[tuple], k: int) -> int:
    """Bytes the plan of frame ``k`` copies over all caches (on a GPU: device to device, no bus)."""
    plan = frame_plan(k)
    return sum(sum(copy_2d(op, s).width * copy_2d(op, s).height for op in plan) for s in cache_shapes)


class HostCache:
    """The cache in numpy: the window (the graph's cache inputs) and the waiting frames, zeros
    until the first frame; ``apply`` runs a frame's plan with its hidden states."""

    def __init__(self, shapes: Sequence[tuple]) -> None:
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.cache = [np.zeros(buffer_shapes(s)[CACHE], dtype=np.float32) for s in self.shapes]
        self.waiting = [np.zeros(buffer_shapes(s)[QUEUE], dtype=np.float32) for s in self.shapes]

    def zero(self) -> None:
        for array in (*self.cache, *self.waiting):
            array[...] = 0

    def inputs(self) -> list:
        return self.cache

    def apply(self, plan: Sequence[Copy], hidden: Sequence[np.ndarray]) -> None:
        for cache, waiting, h in zip(self.cache, self.waiting, hidden):
            run_plan(plan, {HIDDEN: np.asarray(h, dtype=np.float32), CACHE: cache, QUEUE: waiting})

    def close(self) -> None:
        pass
