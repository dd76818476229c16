"""The small protocol every backend implements: load, ``infer(array) -> array``, ``close``.

Backends only run tensors. The public ``infer`` checks the batch against the model's own
input spec (dtype, rank, channels, fixed sizes, multiples of 14) and serialises calls, then
hands over to the backend's ``_infer``; pre- and post-processing live in the predictor.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from commands.errors import InputError, ModelFileError

from ..metric import OutputKind
from ..preprocessing import PATCH_SIZE
from ..stream_plan import HostCache
from .profiling import Profile


@dataclass(frozen=True)
class InputSpec:
    """Name and ``(N, 3, H, W)`` shape of the model input; ``None`` marks a dynamic dimension.

    ``batch_range``: the fewest and most images one call takes where the model bounds a dynamic
    batch (a TensorRT engine's optimisation profile); a fixed batch is its own range."""

    name: str
    shape: tuple[int | None, int | None, int | None, int | None]
    batch_range: tuple[int, int] | None = None

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """The fixed ``(H, W)`` of a static-shape model, ``None`` when either side is dynamic."""
        height, width = self.shape[2], self.shape[3]
        return (height, width) if height is not None and width is not None else None

    @property
    def min_batch(self) -> int:
        """The fewest images a call takes: shorter batches are padded up to it."""
        if self.shape[0] is not None:
            return self.shape[0]
        return self.batch_range[0] if self.batch_range else 1

    @property
    def max_batch(self) -> int | None:
        """The most images a call takes; ``None``: any number."""
        if self.shape[0] is not None:
            return self.shape[0]
        return self.batch_range[1] if self.batch_range else None


def check_depth_output(model: object, dims: Sequence[object]) -> None:
    """``ModelFileError`` unless an output of shape ``dims`` (a dynamic dimension: ``None``, a name or
    -1) is a depth model's: ``(N, H, W)`` or ``(N, 1, H, W)``, one map per image. A classifier's
    logits or an image-to-image model would otherwise be published as depth."""
    shape = [d if isinstance(d, int) and d >= 0 else None for d in dims]
    if len(shape) == 3 or (len(shape) == 4 and shape[1] in (1, None)):
        return
    shown = "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
    raise ModelFileError(
        f"{describe_source(model)}: its output has shape {shown}, not a depth map: a depth model outputs "
        "(N, H, W) or (N, 1, H, W), one map per image; pass a depth model (relative or metric)"
    )


def check_streams(streams: object) -> int:
    """``streams`` (how many model calls a backend runs at once) if it is a positive integer."""
    if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
        raise ValueError(f"streams must be a positive integer (model calls run at once), got {streams!r}")
    return streams


def describe_source(model: Any) -> str:
    return str(model) if isinstance(model, (str, Path)) else type(model).__name__


class Backend(ABC):
    """Subclasses set ``input_spec`` (read from the model itself), ``device`` and ``precision``."""

    name: ClassVar[str]
    input_spec: InputSpec
    device: str
    precision: str
    # How many calls may usefully run at once (OpenVINO: its infer requests); others serialise.
    max_concurrency: int = 1
    # True where the model takes uint8 (N, H, W, 3) BGR frames and pre-processes them itself.
    takes_images: bool = False
    # Pre- and post-processing as torch ops on the model's device (``torch_pre``), or None.
    pipeline: Any = None
    # The weights' licence, from the artefact's sidecar or the checkpoint (see train.models.checkpoint).
    licence: str = "unknown"
    # What the model outputs, as the artefact says it (None: it says nothing; the predictor decides).
    output_kind: OutputKind | None = None
    # The model family and variant (``depth-anything-v2``/``vits``, ``depth-anything-3``/``da3-small``),
    # from the artefact's metadata or the checkpoint; ``unknown`` where it says nothing.
    family: str = "unknown"
    variant: str = "unknown"
    # A Video Depth Anything stream model: its inputs after the image (``runtime.video_state``).
    stream_names: tuple = ()
    # Per-pixel outputs after depth (``runtime.prediction.EXTRA_OUTPUTS``: a DA3 network's sky
    # map or depth confidence), which ``infer_outputs`` returns by name.
    extra_outputs: tuple = ()

    def read_identity(self, *sources: Any) -> None:
        """``licence``, ``family`` and ``variant`` from the first of ``sources`` (ONNX metadata, rt_info,
        a sidecar: mappings) that holds each; an artefact from before ``family`` existed with an
        ``encoder`` is Depth Anything V2."""
        for key in ("licence", "family", "variant"):
            found = next((str(m[key]) for m in sources if m and m.get(key)), None)
            if found is not None:
                setattr(self, key, found)
        if self.family == "unknown":
            encoder = next((str(m["encoder"]) for m in sources if m and m.get("encoder")), None)
            if encoder is not None:
                self.family, self.variant = "depth-anything-v2", encoder

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: threading.BoundedSemaphore | None = None
        self._closed = False

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a checked ``(N, 3, H, W)`` float32 batch, return ``(N, H, W)`` float32."""

    def model_path(self, model: object, loads: str, kind: str) -> Path:
        """The file a file-only backend opens: ``loads`` names its formats, ``kind`` the file."""
        if not isinstance(model, (str, Path)):
            raise ModelFileError(f"the {self.name} backend loads {loads}")
        path = Path(model)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such {kind}")
        return path

    def check_batch(self, batch: object) -> np.ndarray:
        if self.takes_images:
            if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
                got = f"{batch.dtype} {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
                raise InputError(f"{self.name} backend with pre-processing inside takes (N, H, W, 3) uint8, got {got}")
            return np.ascontiguousarray(batch)
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            got = batch.dtype if isinstance(batch, np.ndarray) else type(batch).__name__
            raise InputError(f"{self.name} backend expects a float32 numpy batch, got {got}")
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise InputError(f"{self.name} backend expects an (N, 3, H, W) batch, got shape {batch.shape}")
        height, width = batch.shape[2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise InputError(f"batch height and width must be multiples of {PATCH_SIZE}, got {height}x{width}")
        for axis, (want, got) in enumerate(zip(self.input_spec.shape, batch.shape)):  # both rank 4 here
            if want is not None and want != got:
                raise InputError(
                    f"model input {self.input_spec.name!r} is fixed at {self.input_spec.shape}, "
                    f"got {batch.shape} (axis {axis}); export a dynamic model for other sizes"
                )
        return np.ascontiguousarray(batch)

    def _gate(self) -> contextlib.AbstractContextManager:
        """One call at a time, or up to ``max_concurrency`` for backends that run several at once
        (each manages what a call holds: OpenVINO's infer requests, TensorRT's contexts)."""
        if self.max_concurrency == 1:
            return self._lock
        with self._lock:
            if self._slots is None:
                self._slots = threading.BoundedSemaphore(self.max_concurrency)
        return self._slots

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        with self._gate():
            if self._closed:
                raise RuntimeError(f"the {self.name} backend was closed")
            out = self._infer(batch)
        return out.reshape(batch.shape[0], *out.shape[-2:]).astype(np.float32, copy=False)

    def infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``infer`` with the model's ``extra_outputs`` too: ``{"depth": ..., name: ...}``, each ``(N, H, W)``."""
        batch = self.check_batch(batch)
        with self._gate():
            if self._closed:
                raise RuntimeError(f"the {self.name} backend was closed")
            outs = self._infer_outputs(batch)
        return {k: v.reshape(batch.shape[0], *v.shape[-2:]).astype(np.float32, copy=False) for k, v in outs.items()}

    def _infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"depth": self._infer(batch)}

    def step(self, batch: np.ndarray, slot_pos: np.ndarray, caches: list) -> list:
        """One frame of a stream model: ``[depth (1, h, w), hidden0..7]`` (see ``runtime.video_stream``)."""
        batch = self.check_batch(batch)
        with self._gate():
            if self._closed:
                raise RuntimeError(f"the {self.name} backend was closed")
            return self._step(batch, slot_pos, caches)

    def _step(self, batch: np.ndarray, slot_pos: np.ndarray, caches: list) -> list:
        raise NotImplementedError(f"the {self.name} backend runs no stream models")

    def stream_shapes(self, height: int, width: int) -> list:
        """The cache tensors' shapes for an ``height x width`` network input."""
        raise NotImplementedError(f"the {self.name} backend runs no stream models")

    def stream_store(self, shapes: list) -> Any:
        """Where a stream's cache lives between frames (``runtime.video_state.StreamState``): numpy
        here; a GPU backend keeps it in device buffers of its own."""
        return HostCache(shapes)

    def infer_on_device(self, batch: Any) -> Any:
        """Run a ``(N, 3, H, W)`` batch that ``pipeline`` made on the device; ``(N, H, W)`` there."""
        with self._gate():
            if self._closed:
                raise RuntimeError(f"the {self.name} backend was closed")
            return self._infer_on_device(batch)

    def _infer_on_device(self, batch: Any) -> Any:
        raise NotImplementedError(f"the {self.name} backend has no pre-processing on its device")

    def profile(self, batch: np.ndarray, calls: int = 3) -> Profile:
        """Layer timings of ``calls`` model calls on ``batch`` (after one warm-up) from the
        backend's own profiler, in a pass of their own: see ``runtime.backends.profiling``."""
        batch = self.check_batch(batch)
        with self._gate():
            if self._closed:
                raise RuntimeError(f"the {self.name} backend was closed")
            return self._profile(batch, calls)

    def _profile(self, batch: np.ndarray, calls: int) -> Profile:
        raise NotImplementedError(f"the {self.name} backend has no profiler")

    def versions(self) -> dict[str, str]:
        return {}

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "input_name": self.input_spec.name,
            "input_shape": list(self.input_spec.shape),
            "licence": self.licence,
            "family": self.family,
            "variant": self.variant,
            **({"extra_outputs": list(self.extra_outputs)} if self.extra_outputs else {}),
            "versions": self.versions(),
        }

    def _release(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Free library resources; called once by ``close``."""

    def require_open(self) -> None:
        """``RuntimeError`` (one line) once the backend is closed: for calls that would reach a freed model."""
        if self._closed:
            raise RuntimeError(f"the {self.name} backend was closed")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
