"""``VideoStream``: Video Depth Anything frame by frame, carrying its cached hidden states.

One object per camera: ``push(frame, stamp)`` runs one frame through the model's stream step
(any backend whose model is a stream graph: PyTorch, ONNX Runtime, OpenVINO, TensorRT) and stores the
frame's hidden states for the next one (``runtime.video_state``). Frames out of time order are
refused; a gap longer than ``max_gap`` seconds or a new frame size starts the stream again and
says so (a log line, ``resets``). ``close()`` (or ``with``) frees its cache, GPU buffers with TensorRT;
``DepthPredictor.close`` closes the streams it made that are still open.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable, Iterator

import numpy as np

from commands.errors import InputError

from . import preprocessing as pre
from .video_state import StreamState, stream_input_size


class VideoStream:
    def __init__(
        self, predictor: Any, max_gap: float | None = 1.0, name: str = "stream", rgb: bool | None = None
    ) -> None:
        backend = predictor._backend
        if not backend.stream_names:
            raise InputError(f"{predictor._source} is not a Video Depth Anything stream model: use predict or stream")
        self.predictor, self.backend = predictor, backend
        self.rgb = predictor.rgb if rgb is None else rgb
        self.state = StreamState(max_gap, name, store=backend.stream_store)  # TensorRT: on the GPU
        self._size: tuple[int, int] | None = None
        vars(predictor).setdefault("_video_streams", weakref.WeakSet()).add(self)  # close_streams

    @property
    def resets(self) -> list[tuple[int, str]]:
        """``(frame_number, reason)`` for every time the stream started again."""
        return self.state.resets

    def reset(self, reason: str = "") -> None:
        self.state.reset(reason)

    def close(self) -> None:
        """Free the stream's cache (GPU buffers with TensorRT); a later frame starts the stream again."""
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

    def push(self, frame: np.ndarray, stamp: float | None = None, rgb: bool | None = None) -> np.ndarray:
        """Depth (``H x W`` float32, at the frame's size) for the next frame of the stream."""
        image = pre.check_image(frame)
        batch = self.network_input(image, self.rgb if rgb is None else rgb)
        self.state.admit(image.shape[:2], stamp)
        slot_pos, cache = self.state.inputs(self.backend.stream_shapes(*batch.shape[2:]))
        outputs = self.backend.step(batch, slot_pos, cache)
        self.state.update(outputs[1:])
        return pre.resize_depth(np.asarray(outputs[0]).reshape(batch.shape[2:]), *image.shape[:2])


def close_streams(predictor: Any) -> None:
    """Close every stream ``predictor`` made that is still about (``DepthPredictor.close``)."""
    for stream in list(vars(predictor).get("_video_streams", ())):
        stream.close()


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
