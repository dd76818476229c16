"""A Video Depth Anything stream checked frame by frame against its reference, on any backend.

A stream's reference (``runtime.reference``'s file, its ``meta`` saying ``stream``) holds a few
consecutive frames (a photograph panning sideways) and the FP32 depth of each, computed with the
cache carried from frame to frame. The check runs the frames in order through the backend's
``step`` with the cache carried the same way (``runtime.video_state.StreamState``) and scores each
frame's depth; the worst frame is held to the precision's tolerance (``runtime.reference.score``).
A wrong cache carry, a wrong ``slot_pos`` or a broken motion module shows from the second frame on,
which a single-image check (every frame a first frame) cannot see; how far it shows depends on the
weights, and FP16's bound (0.1) is coarse: on the test weights a cache one frame stale is over it,
a reversed ``slot_pos`` only over FP32's (``export.trt.stream.FRAMES`` says the figures).

``check_backend`` is what ``python -m runtime.verify`` and ``export.trt``'s engine check call: the
frame-by-frame check for a stream reference, ``verify_backend`` for any other.

Python 3.8 clean: it runs on JetPack 5.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from .reference import Reference, ReferenceFileError, score, verify_backend
from .verify_result import VerifyResult
from .video_state import StreamState

STREAM = "stream"  # the reference meta's key: {"layout": ..., "frames": N, "cache": ...}
LAYOUT = "video-depth-anything-31"  # the cache layout of runtime.video_state (a 31-frame window)
CARRIED = "carried from frame to frame (runtime.video_state.StreamState), starting empty"

Step = Callable[[np.ndarray, np.ndarray, list], Sequence[np.ndarray]]  # -> [depth, hidden0..7]


def stream_meta(frames: int) -> dict:
    """The ``stream`` entry of a stream reference's meta."""
    return {STREAM: {"layout": LAYOUT, "frames": int(frames), "cache": CARRIED}}


def is_stream_reference(reference: Reference) -> bool:
    return isinstance(reference.meta.get(STREAM), dict)


def stream_depths(step: Step, shapes: Sequence[tuple], batches: Sequence[np.ndarray]) -> list:
    """Depth per frame from ``step(image, slot_pos, caches) -> [depth, hidden...]``, the frames in
    order and the cache carried (a fresh stream: the first frame finds it empty)."""
    state, depths = StreamState(max_gap=None), []
    for batch in batches:
        slot_pos, cache = state.inputs(shapes)
        outputs = step(batch, slot_pos, cache)
        state.update(outputs[1:])
        depths.append(np.asarray(outputs[0]))
    return depths


def verify_stream_backend(backend: Any, reference: Reference) -> VerifyResult:
    """Run a stream reference's frames through ``backend.step`` (any ``runtime.backends`` backend
    of a stream model) with the cache carried, and score every frame; the worst one is judged."""
    if not is_stream_reference(reference):
        raise ReferenceFileError(
            f"{reference.path or 'the reference'} holds single images, not a stream's frames: pass the stream "
            "model's own reference (--reference FILE), or export the stream again"
        )
    if not backend.stream_names:
        raise ReferenceFileError(
            f"{reference.path or 'the reference'} holds a Video Depth Anything stream's frames but the model "
            "is not a stream graph: pass the model's own reference (--reference FILE)"
        )
    reference.fits(backend.input_spec.fixed_hw)
    started = time.perf_counter()
    batches = reference.inputs()
    shapes = backend.stream_shapes(*batches[0].shape[2:])
    depths = stream_depths(backend.step, shapes, batches)
    info = backend.info()
    result = score(reference, [np.asarray(d).reshape(d.shape[-2:]) for d in depths], info.get("precision"))
    result.seconds = time.perf_counter() - started
    result.ran = {k: info.get(k) for k in ("backend", "device", "precision")}
    return result


def check_backend(backend: Any, reference: Reference) -> VerifyResult:
    """The check of ``backend`` against ``reference``: frame by frame for a stream's, else per image."""
    if is_stream_reference(reference) or backend.stream_names:
        return verify_stream_backend(backend, reference)
    return verify_backend(backend, reference)
