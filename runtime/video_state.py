"""The cached hidden states a Video Depth Anything stream carries from frame to frame.

The official streaming code (``video_depth_stream.py``, ``infer_video_depth_one``) keeps a list
of per-frame hidden states: the first frame's 32 times at the start, then each new frame
appended; once 42 are held, the second entry is dropped before each append. Frame ``k`` attends
to the entries ``[0, 1]`` and the last 29: the first frame (position 0), the frame 41 back
(position 1) and the last 29 frames (positions 2..30); itself at 31.

The same window in fixed memory: ``SLOTS`` = 42 slots, slot 0 the first frame, slots 1..41 a
ring of the last 41 frames (all holding the first frame at the start, as the official list
does). ``slot_positions()`` is the exported graph's ``slot_pos`` input; ``update()`` writes the
frame's hidden states (the graph's outputs) into their slot in place, so no frame copies the
whole cache. A plain ONNX Runtime or OpenVINO session runs the stream with these two calls.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from .errors import InputError

SLOTS = 42
WINDOW = 32  # positions: the first frame, the frame 41 back, the last 29, the new frame
RING = SLOTS - 1
RECENT = WINDOW - 3  # 29
# The official stream shrinks the network input of frames wider than 16:9 (memory).
WIDE_RATIO = 1.78

log = logging.getLogger("runtime.video")
# The exported stream graph's extra inputs (after the image) and outputs (after depth).
CACHES = 8  # two attention blocks in each of the four motion modules
STREAM_INPUTS = ("slot_pos", *(f"cache{i}" for i in range(CACHES)))
STREAM_OUTPUTS = tuple(f"hidden{i}" for i in range(CACHES))


def stream_input_size(height: int, width: int, input_size: int) -> int:
    """The short side the official stream resizes a ``height x width`` video to: ``input_size``,
    or less for frames wider than 16:9 (``input_size * 1.777 / ratio``, to a multiple of 14)."""
    ratio = max(height, width) / min(height, width)
    if ratio > WIDE_RATIO:
        return max(14, int(round(int(input_size * 1.777 / ratio) / 14) * 14))
    return input_size


def slot_positions(frame_index: int) -> np.ndarray:
    """``(SLOTS,)`` int64: each slot's position in frame ``frame_index``'s window, -1 if unused."""
    pos = np.full(SLOTS, -1, dtype=np.int64)
    if frame_index == 0:
        return pos
    pos[0] = 0
    pos[1 + frame_index % RING] = 1  # the frame 41 back (the first frame's copy early on)
    for p in range(2, WINDOW - 1):
        pos[1 + (frame_index - (WINDOW - 1) + p) % RING] = p
    return pos


class StreamState:
    """One stream's cache, frame count, frame size and last time stamp.

    ``max_gap``: seconds between frames beyond which the stream starts again (a bag or camera
    pause); ``None`` never. A size change also starts again. Each start after the first is
    logged and kept in ``resets`` as ``(frame_number, reason)``.
    """

    def __init__(self, max_gap: float | None = 1.0, name: str = "stream") -> None:
        if max_gap is not None and not (isinstance(max_gap, (int, float)) and max_gap > 0 and math.isfinite(max_gap)):
            raise InputError(f"max_gap must be a positive number of seconds or None, got {max_gap!r}")
        self.max_gap = max_gap
        self.name = name
        self.cache: list[np.ndarray] | None = None
        self.count = 0  # frames since the last start
        self.frames = 0  # frames in all
        self.size: tuple[int, int] | None = None
        self.stamp: float | None = None
        self.resets: list[tuple[int, str]] = []

    def reset(self, reason: str = "") -> None:
        """Start again: the next frame is a first frame (no cache)."""
        if reason:
            self.resets.append((self.frames, reason))
            log.warning("%s: Video Depth Anything state reset at frame %d: %s", self.name, self.frames, reason)
        self.cache, self.count = None, 0

    def admit(self, size: tuple[int, int], stamp: float | None = None) -> None:
        """Check a frame before it runs: out of order is refused; a gap or a size change resets."""
        if stamp is not None:
            stamp = float(stamp)
            if not math.isfinite(stamp):
                raise InputError(f"{self.name}: frame time stamp {stamp!r} is not a finite number of seconds")
            if self.stamp is not None and stamp <= self.stamp:
                raise InputError(
                    f"{self.name}: frame at t={stamp:.6f} s arrives after t={self.stamp:.6f} s; Video Depth "
                    "Anything streams need frames in time order (sort them, or reset the stream)"
                )
        if self.size is not None and tuple(size) != self.size:
            self.reset(f"frame size changed from {self.size[1]}x{self.size[0]} to {size[1]}x{size[0]}")
        elif (
            stamp is not None
            and self.stamp is not None
            and self.max_gap is not None
            and stamp - self.stamp > self.max_gap
        ):
            self.reset(f"{stamp - self.stamp:.3f} s since the last frame (more than max_gap={self.max_gap:g} s)")
        self.size = tuple(size)
        if stamp is not None:
            self.stamp = stamp

    def inputs(self, shapes: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``slot_pos`` and the eight cache arrays ``(tokens, SLOTS, C)`` for the next frame (zeros
        before the first)."""
        if self.cache is None:
            self.cache = [np.zeros(shape, dtype=np.float32) for shape in shapes]
            self.count = 0
        return slot_positions(self.count), self.cache

    def update(self, hidden: Sequence[np.ndarray]) -> None:
        """Store the frame's hidden states ``(tokens, 1, C)`` (the graph's outputs)."""
        assert self.cache is not None, "inputs() first"
        for cache, h in zip(self.cache, hidden):
            h = np.asarray(h, dtype=np.float32)
            if self.count == 0:
                cache[...] = h  # broadcast over the slots: the official list starts as copies
            else:
                cache[:, 1 + self.count % RING] = h[:, 0]
        self.count += 1
        self.frames += 1
