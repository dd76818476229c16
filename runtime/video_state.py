"""The cached hidden states a Video Depth Anything stream carries from frame to frame.

The official streaming code (``video_depth_stream.py``, ``infer_video_depth_one``) keeps a list
of per-frame hidden states: the first frame's 32 times at the start, then each new frame
appended; once 42 are held, the second entry is dropped before each append. Frame ``k`` attends
to the entries ``[0, 1]`` and the last 29: the first frame (position 0), the frame 41 back
(position 1) and the last 29 frames (positions 2..30); itself at 31.

The same window in fixed memory, split in what the network reads and what waits:

- the window, ``SLOTS`` = 31 slots, the exported graph's cache inputs: slot 0 the first frame,
  slot 1 the frame 41 back, slots 2..30 a ring of the last 29 frames;
- the waiting frames, ``WAITING`` = 11 slots kept here only: the frames 40 to 30 back, each of
  which reaches position 1 in its turn.

All hold the first frame at the start, as the official list does. After each frame three slots
move (the new frame into the ring, the frame it replaces into the waiting ring, the oldest waiting
frame to slot 1), in place: no frame copies the cache, and the network attends to the 31 frames
of the window and nothing else. These moves are ``runtime.stream_plan.frame_plan``: numpy runs
them here (``HostCache``), a GPU backend on its own buffers (``stream_store``), the same plan.
``slot_positions()`` is the graph's ``slot_pos`` input and
``update()`` stores the graph's outputs: a plain ONNX Runtime or OpenVINO session runs the
stream with these two calls.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np

from commands.errors import InputError

from .stream_plan import RECENT, SLOTS, WAITING, WINDOW, HostCache, frame_plan

__all__ = [
    "CACHES", "RECENT", "SLOTS", "STREAM_INPUTS", "STREAM_OUTPUTS", "WAITING", "WIDE_RATIO", "WINDOW", "StampRefused",
    "StreamState",
    "slot_positions", "stream_input_size",
]  # fmt: skip

# The official stream shrinks the network input of frames wider than 16:9 (memory).
WIDE_RATIO = 1.78

log = logging.getLogger("runtime.video")


class StampRefused(InputError):
    """A frame whose stamp cannot follow the last one's (repeated, or a little older): that frame is
    left out, the stream goes on (the bag tool and the node skip it and say why)."""


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
    """``(SLOTS,)`` int64: each slot's position in frame ``frame_index``'s window (all -1 for a
    first frame: nothing cached)."""
    pos = np.full(SLOTS, -1, dtype=np.int64)
    if frame_index == 0:
        return pos
    pos[0], pos[1] = 0, 1
    for frame in range(frame_index - RECENT, frame_index):  # the last 29, oldest at position 2
        pos[2 + frame % RECENT] = frame - frame_index + SLOTS
    return pos


class StreamState:
    """One stream's cache, frame count, frame size and last time stamp.

    ``max_gap``: seconds between frames beyond which the stream starts again, forward (a bag or
    camera pause) or back (a clock that jumped back: a bag played in a loop, a restarted driver, a
    sim clock reset; as tf2_ros's buffer clears itself when time jumps back); ``None`` never, and a
    frame older than the last is then refused until ``reset()``. A size change also starts again.
    Each start after the first is logged and kept in ``resets`` as ``(frame_number, reason)``. A
    frame older than the last by ``max_gap`` or less (a late frame) is refused, and so is a second
    frame with the last one's stamp (the first of equal stamps is kept, as message_filters does).
    """

    def __init__(
        self, max_gap: float | None = 1.0, name: str = "stream", store: Callable[[list], Any] | None = None
    ) -> None:
        if max_gap is not None and not (isinstance(max_gap, (int, float)) and max_gap > 0 and math.isfinite(max_gap)):
            raise InputError(f"max_gap must be a positive number of seconds or None, got {max_gap!r}")
        self.max_gap = max_gap
        self.name = name
        # store(shapes): where the cache lives (HostCache: numpy; a backend's own: its device).
        self._new_store = store or HostCache
        self.store: Any = None
        self._stale = False  # reset since the store was last zeroed
        self.count = 0  # frames since the last start
        self.frames = 0  # frames in all
        self.size: tuple[int, int] | None = None
        self.stamp_ns: int | None = None  # the last frame's, exact
        self.resets: list[tuple[int, str]] = []

    @property
    def cache(self) -> list | None:
        """The window's arrays (a ``HostCache``), or ``None`` before the first frame or after a reset."""
        return None if self.store is None or self._stale else getattr(self.store, "cache", None)

    @property
    def waiting(self) -> list:
        return [] if self.store is None else getattr(self.store, "waiting", [])

    @property
    def stamp(self) -> float | None:
        """The last frame's stamp in seconds (``stamp_ns`` holds it exactly)."""
        return None if self.stamp_ns is None else self.stamp_ns / 1e9

    def reset(self, reason: str = "") -> None:
        """Start again: the next frame is a first frame (no cache), at any stamp."""
        if reason:
            self.resets.append((self.frames, reason))
            log.warning("%s: Video Depth Anything state reset at frame %d: %s", self.name, self.frames, reason)
        self._stale, self.count, self.stamp_ns = True, 0, None

    def admit(self, size: tuple[int, int], stamp: float | None = None, stamp_ns: int | None = None) -> None:
        """Check a frame before it runs: a gap of more than ``max_gap`` either way or a size change
        resets; a repeated stamp, or an older one within ``max_gap``, is refused. ``stamp`` in
        seconds, or ``stamp_ns`` in integer nanoseconds (a ROS stamp's sec and nanosec, a bag time:
        compared exactly, as message_filters does; float seconds of a 2020s clock cannot tell apart
        stamps ~240 ns apart)."""
        reason = ""
        ns = _stamp_ns(self.name, stamp, stamp_ns)
        if ns is not None and self.stamp_ns is not None:
            reason = self._stamp_gap(ns)
        if self.size is not None and tuple(size) != self.size:
            reason = f"frame size changed from {self.size[1]}x{self.size[0]} to {size[1]}x{size[0]}"
        if reason:
            self.reset(reason)
        self.size = tuple(size)
        if ns is not None:
            self.stamp_ns = ns

    def _stamp_gap(self, stamp: int) -> str:
        """Why the frame at ``stamp`` (ns) starts the stream again ("" when it does not);
        ``StampRefused`` for a frame that cannot follow the last one."""
        last, gap = self.stamp_ns, self.max_gap
        assert last is not None
        if stamp == last:
            raise StampRefused(
                f"{self.name}: a second frame at t={_seconds(stamp)} s (the same stamp as the last); left out, the "
                "first frame of a stamp is kept"
            )
        if stamp > last:
            ahead = (stamp - last) / 1e9
            return (
                ""
                if gap is None or ahead <= gap
                else f"{ahead:.3f} s since the last frame (more than max_gap={gap:g} s)"
            )
        back = last - stamp
        older = f"frame at t={_seconds(stamp)} s is {_seconds(back)} s older than the last (t={_seconds(last)} s)"
        if gap is None:
            raise StampRefused(
                f"{self.name}: {older}; this stream has no max_gap: call reset() to start it again from this frame, "
                "or give max_gap to start again on a jump back"
            )
        if back / 1e9 > gap:  # the clock jumped back: a looping bag, a restarted driver, a sim clock reset
            return f"time jumped back {back / 1e9:.3f} s (more than max_gap={gap:g} s)"
        raise StampRefused(
            f"{self.name}: {older}: left out (a late frame; a jump back of more than max_gap={gap:g} s starts the "
            "stream again)"
        )

    def inputs(self, shapes: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, Any]:
        """``slot_pos`` and the eight caches ``(tokens, SLOTS, C)`` for the next frame (zeros before
        the first): the store's, made once per stream and size (another size makes a new one, a
        reset zeroes it)."""
        shapes = [tuple(int(d) for d in s) for s in shapes]
        if self.store is None or self.store.shapes != shapes:
            if self.store is not None:
                self.store.close()
            self.store, self._stale, self.count = None, False, 0
            self.store = self._new_store(shapes)
        elif self._stale:
            self.store.zero()
            self._stale = False
        return slot_positions(self.count), self.store.inputs()

    def update(self, hidden: Sequence[Any]) -> None:
        """Store the frame's hidden states ``(tokens, 1, C)`` (the graph's outputs): this frame's
        plan of slot copies (``runtime.stream_plan.frame_plan``) run by the store."""
        assert self.store is not None and not self._stale, "inputs() first"
        self.store.apply(frame_plan(self.count), hidden)
        self.count += 1
        self.frames += 1

    def close(self) -> None:
        """Free the store (a device's buffers); the next frame makes a new one."""
        if self.store is not None:
            self.store.close()
        self.store, self.count = None, 0


def _stamp_ns(name: str, stamp: float | None, stamp_ns: int | None) -> int | None:
    """A frame's stamp in integer nanoseconds, from seconds or nanoseconds (one of them at most)."""
    if stamp is not None and stamp_ns is not None:
        raise InputError(f"{name}: give a frame's stamp in seconds or in nanoseconds (stamp_ns), not both")
    if stamp_ns is not None:
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)):
            raise InputError(f"{name}: stamp_ns must be an integer number of nanoseconds, got {stamp_ns!r}")
        return int(stamp_ns)
    if stamp is None:
        return None
    seconds = float(stamp)
    if not math.isfinite(seconds):
        raise InputError(f"{name}: frame time stamp {stamp!r} is not a finite number of seconds")
    return round(seconds * 1e9)


def _seconds(ns: int) -> str:
    """Nanoseconds as seconds, exactly: six decimals at least, nine when the stamp needs them."""
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    fraction = f"{ns % 1_000_000_000:09d}"
    return f"{sign}{ns // 1_000_000_000}.{fraction[:6]}{fraction[6:].rstrip('0')}"
