"""Depth videos from video files and cameras (OpenCV), written at the source's frame rate.

The output is written under a hidden temporary name and renamed when it is finalised, so a
crash never leaves a half-written video under its name. Ctrl-C stops at the frame being
processed and finalises the file: a shorter, playable video. Every video's flicker figure is
measured (``runtime.align.stabilize``); ``stabilize=True`` holds relative depth on one scale.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from commands.errors import InputError, OutputError

from ..align import FlickerMeter, Stabilizer
from ..align.frame import disparity_of
from ..metric import OutputKind
from ..visualize import colorize
from .files import atomic_write

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
# MPEG-4 Part 2 is the codec every OpenCV build (the pip wheels' FFmpeg included) can write.
FOURCC = "mp4v"
DEFAULT_FPS = 30.0


@dataclass
class VideoSummary:
    frames: int
    fps: float  # the output's frame rate
    seconds: float
    interrupted: bool
    fps_reported: bool  # False: the source gave no frame rate and DEFAULT_FPS was used
    interrupt: BaseException | None = None  # what stopped it: KeyboardInterrupt, or Terminated (SIGTERM)
    flicker: float | None = None  # of the depth written (runtime.align.stabilize)
    flicker_unstabilized: float | None = None  # of the model's output, when stabilised

    @property
    def processing_fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Hold back OpenCV's and FFmpeg's own messages while a capture opens: the ``InputError`` says
    what failed. OpenCV reads OPENCV_FFMPEG_LOGLEVEL once, when FFmpeg is first used; 8 is
    AV_LOG_FATAL, which silences "moov atom not found" and the like (a user's own setting wins)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def open_capture(source: str | os.PathLike | int) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture`` for a file path or a camera index, else ``InputError``."""
    if isinstance(source, int):
        with _quiet_opencv():
            capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise InputError(f"cannot open camera {source}: no such device, or it is in use")
        return capture
    path = Path(source)
    if not path.is_file():
        raise InputError(f"no such video file: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb"):  # permissions: FFmpeg would only say it cannot open the file
            pass
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes): no video in it")
    with _quiet_opencv():
        capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        if _mp4_without_index(path):
            raise InputError(
                f"cannot open {path}: an MP4/MOV file without its index ('moov' box), the mark of a recording "
                "that was never finalised (the recorder was killed or its disk filled); no frame can be read"
            )
        raise InputError(
            f"cannot open {path} as a video: not a container and codec this OpenCV build reads, or damaged"
        )
    return capture


def _mp4_without_index(path: Path) -> bool:
    """Whether ``path`` is an ISO media file (MP4, MOV) whose top-level boxes hold no 'moov'."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        position, types = 0, []
        while position + 8 <= size and len(types) < 1000:
            handle.seek(position)
            length, kind = struct.unpack(">I4s", handle.read(8))
            if length == 1 and position + 16 <= size:  # a 64-bit size follows
                (length,) = struct.unpack(">Q", handle.read(8))
            elif length == 0:  # the last box runs to the end of the file
                length = size - position
            if length < 8:
                break
            types.append(kind)
            position += length
    return bool(types) and types[0] in (b"ftyp", b"mdat", b"wide", b"free") and b"moov" not in types


def readable_frames(path: str | os.PathLike) -> int:
    """How many frames OpenCV can read back from a video file (0 when it cannot open it)."""
    with _quiet_opencv():
        capture = cv2.VideoCapture(str(path))
    try:
        count = 0
        while capture.isOpened() and capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def frame_count(capture: cv2.VideoCapture) -> int | None:
    """The number of frames a video file declares; ``None`` for cameras and streams that do not say."""
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return count if count > 0 else None


def source_fps(capture: cv2.VideoCapture) -> tuple[float, bool]:
    """The capture's frame rate and whether it reported one (else :data:`DEFAULT_FPS`)."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    if fps and np.isfinite(fps) and 0 < fps < 1000:
        return float(fps), True
    return DEFAULT_FPS, False


def depth_frame(
    image: np.ndarray,
    depth: np.ndarray,
    colormap: str,
    side_by_side: bool,
    kind: str = "relative",
    limits: tuple[float | None, float | None] = (None, None),
) -> np.ndarray:
    """The colourised depth (near bright, for either ``kind``), or the input and it side by side, as one BGR image."""
    coloured = colorize(depth, colormap, *limits, kind=kind)
    if not side_by_side:
        return coloured
    left = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    return np.concatenate([left, coloured], axis=1)


def write_depth_video(
    predictor: Any,
    source: str | os.PathLike | int | cv2.VideoCapture,
    output: str | os.PathLike,
    colormap: str = "inferno",
    side_by_side: bool = False,
    max_frames: int | None = None,
    progress: Callable[[int], Any] | None = None,
    stabilize: bool = False,
) -> VideoSummary:
    """Write the depth of every frame of ``source`` (a video file, camera index or opened capture) to ``output``.

    The output (an ``.mp4``) has the source's frame rate, or :data:`DEFAULT_FPS` when the
    source reports none (many cameras). ``predictor`` is a :class:`runtime.DepthPredictor`.
    ``stabilize``: relative depth on the scale of the frames before it, and its colours on one
    range that only widens, so neither values nor colours flicker.
    """
    kind: OutputKind = getattr(predictor, "output", OutputKind())
    stabilizer = Stabilizer() if stabilize else None
    meter = FlickerMeter()
    limits: list[float] = []  # a stabilised video's colour range: the widest of the frames' 1st/99th percentiles
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise InputError(f"depth videos are written as .mp4, got {output.name}")
    capture = source if isinstance(source, cv2.VideoCapture) else open_capture(source)
    name = "the capture" if isinstance(source, cv2.VideoCapture) else str(source)
    fps, reported = source_fps(capture)
    summary = VideoSummary(0, fps, 0.0, False, reported)
    start = time.perf_counter()

    def write(tmp: Path) -> None:
        # VideoWriter picks the container from the file name, so stage under the real suffix.
        staged = tmp.with_name(tmp.name + output.suffix)
        writer = None
        pending: deque = deque()

        def frames() -> Iterator[np.ndarray]:
            count = 0
            while max_frames is None or count < max_frames:
                ok, frame = capture.read()
                if not ok:
                    return
                count += 1
                pending.append(frame)
                yield frame

        try:
            try:
                stream = predictor.stream(frames(), stabilize=stabilizer) if stabilizer else predictor.stream(frames())
                for depth in stream:
                    image = pending.popleft()
                    meter.update(image, disparity_of(depth, kind))
                    if stabilizer is not None and np.isfinite(depth).any():
                        low, high = np.nanpercentile(depth[::4, ::4], [1, 99])
                        limits[:] = [min(low, limits[0]), max(high, limits[1])] if limits else [low, high]
                    panel = depth_frame(image, depth, colormap, side_by_side, kind.kind, tuple(limits) or (None, None))
                    if writer is None:
                        height, width = panel.shape[:2]
                        writer = cv2.VideoWriter(str(staged), cv2.VideoWriter_fourcc(*FOURCC), fps, (width, height))
                        if not writer.isOpened():
                            raise InputError(f"this OpenCV build cannot write {FOURCC} video to {output}")
                    writer.write(panel)
                    summary.frames += 1
                    if progress is not None:
                        progress(1)
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (commands.runner.Terminated)
                if writer is None:
                    raise
                summary.interrupted, summary.interrupt = True, exc
            if writer is None:
                raise InputError(f"no frames could be read from {name}")
            writer.release()
            # VideoWriter reports no write errors: a full disk leaves a file without its index.
            read = readable_frames(staged)
            if summary.interrupted and read == summary.frames + 1:  # Ctrl-C landed between write and count
                summary.frames = read
            if read != summary.frames:
                free = shutil.disk_usage(staged.parent).free
                raise OutputError(
                    errno.ENOSPC if free < 1 << 20 else errno.EIO,
                    f"the video writer wrote {summary.frames} frames but {read} can be read back "
                    f"({free / 2**20:.1f} MiB free on that file system)",
                    str(output),
                )
            os.replace(staged, tmp)
        finally:
            if writer is not None:
                writer.release()
            staged.unlink(missing_ok=True)

    try:
        atomic_write(output, write)
    finally:
        capture.release()
    summary.seconds = time.perf_counter() - start
    summary.flicker = meter.figure
    if stabilizer is not None:
        summary.flicker_unstabilized = stabilizer.flicker_in.figure
    return summary
