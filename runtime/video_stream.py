"""``VideoStream``: Video Depth Anything frame by frame, carrying its cached hidden states.

One object per camera: ``push(frame, stamp)`` runs one frame through the model's stream step
(any backend whose model is a stream graph: PyTorch, ONNX Runtime, OpenVINO, TensorRT) and stores the
frame's hidden states for the next one (``runtime.video_state``). A late frame (older than the
last by ``max_gap`` or less) and a repeated stamp are refused; a gap longer than ``max_gap`` seconds,
forward or back (a clock that jumped back), or a new frame size starts the stream again and says so
(a log line, ``resets``). ``close()`` (or ``with``) frees its cache, GPU buffers with TensorRT;
``DepthPredictor.close`` closes the streams it made that are still open.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Iterable, Iterator

import numpy as np

from commands.errors import InputError

from . import preprocessing as pre
from .video_state import StreamState, stream_input_size

log = logging.getLogger(__name__)
_STREAMS = threading.Lock()  # guards each predictor's set of streams (made and closed from any thread)


class VideoStream:
    def __init__(
        self, predictor: Any, max_gap: float | None = 1.0, name: str = "stream", rgb: bool | None = None
    ) -> None:
        backend = predictor._backend
        backend.require_open()  # a closed predictor makes no stream
        if not backend.stream_names:
            raise InputError(f"{predictor._source} is not a Video Depth Anything stream model: use predict or stream")
        self.predictor, self.backend = predictor, backend
        self.rgb = predictor.rgb if rgb is None else rgb
        self.state = StreamState(max_gap, name, store=backend.stream_store)  # TensorRT: on the GPU
        self._size: tuple[int, int] | None = None
        # push and close take it: a close from another thread (DepthPredictor.close) waits for the
        # frame in flight, whose step has the cache's GPU buffers bound, instead of freeing them under it
        self._lock = threading.Lock()
        self.closed = False
        with _STREAMS:
            vars(predictor).setdefault("_video_streams", weakref.WeakSet()).add(self)  # close_streams

    @property
    def resets(self) -> list[tuple[int, str]]:
        """``(frame_number, reason)`` for every time the stream started again."""
        return self.state.resets

    def reset(self, reason: str = "") -> None:
        """Start again: the next frame is a first frame, at any stamp (after the frame in flight, if
        any: a reset from another thread, a clock-jump callback, waits for it)."""
        with self._lock:
            self.state.reset(reason)

    def close(self) -> None:
        """Free the stream's cache (GPU buffers with TensorRT), after the frame in flight if any; a
        later ``push`` is refused (open another stream with ``predictor.video_stream()``)."""
        with self._lock:
            self.closed = True
            self.state.close()

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def network_input(self, image: np.ndarray, rgb: bool) -> np.ndarray:
        """The official stream's input: the model's fixed size, or the keep-aspect resize with the
        short side at ``input_size`` (smaller for frames wider than 16:9)."""
        p = self.predictor
        if p.fixed_size is not None:
            return pre.prepare_fixed(image, p.fixed_size, rgb)
        height, width = image.shape[:2]
        return pre.prepare_dynamic(image, stream_input_size(height, width, p.input_size), rgb, p.max_long_side)

    def push(
        self, frame: np.ndarray, stamp: float | None = None, rgb: bool | None = None, stamp_ns: int | None = None
    ) -> np.ndarray:
        """Depth (``H x W`` float32, at the frame's size) for the next frame of the stream; its time
        ``stamp`` in seconds, or ``stamp_ns`` in integer nanoseconds (a ROS stamp, compared exactly)."""
        image = pre.check_image(frame)
        batch = self.network_input(image, self.rgb if rgb is None else rgb)
        with self._lock:
            if self.closed:
                raise InputError(
                    f"{self.state.name}: this Video Depth Anything stream was closed (by itself or by its "
                    "predictor's close()); open another with predictor.video_stream()"
                )
            self.state.admit(image.shape[:2], stamp, stamp_ns)
            slot_pos, cache = self.state.inputs(self.backend.stream_shapes(*batch.shape[2:]))
            outputs = self.backend.step(batch, slot_pos, cache)
            self.state.update(outputs[1:])
            depth = np.asarray(outputs[0]).reshape(batch.shape[2:])
        return pre.resize_depth(depth, *image.shape[:2])


def close_streams(predictor: Any) -> None:
    """Close every stream ``predictor`` made that is still about (``DepthPredictor.close``)."""
    with _STREAMS:
        streams = list(vars(predictor).get("_video_streams", ()))
    failed = None
    for stream in streams:  # each one, whatever another's close raised (a sticky CUDA error)
        try:
            stream.close()
        except Exception as exc:  # logged, and the first one raised once all are closed
            log.warning("closing Video Depth Anything stream %s failed: %s", stream.state.name, exc)
            failed = failed or exc
    if failed is not None:
        raise failed


def close_quietly(stream: VideoStream) -> None:
    """Close ``stream``, a failure logged rather than raised: cleanup after a pass, whose own error
    (or result) is what the caller needs (the cache's finalizer frees what this could not)."""
    try:
        stream.close()
    except Exception as exc:  # cleanup: logged, never in place of the pass's own outcome
        log.warning("closing Video Depth Anything stream %s failed: %s", stream.state.name, exc)


def first_frames(predictor: Any, images: Iterable[np.ndarray], rgb: bool) -> list:
    """Each image as the first frame of a stream of its own, closed at once (``predict_batch``)."""
    depths = []
    for image in images:
        with VideoStream(predictor, max_gap=None) as video:
            depths.append(video.push(image, rgb=rgb))
    return depths


def stream_frames(predictor: Any, frames: Iterable[np.ndarray], rgb: bool | None) -> Iterator[np.ndarray]:
    """The frames as one stream (``DepthPredictor.stream``), closed when the frames run out, the
    generator is closed or collected, or a frame fails."""
    with VideoStream(predictor, max_gap=None, rgb=rgb) as video:
        for frame in frames:
            yield video.push(frame)
