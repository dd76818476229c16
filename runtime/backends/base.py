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
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError, ModelFileError
from ..metric import OutputKind
from ..preprocessing import PATCH_SIZE


@dataclass(frozen=True)
class InputSpec:
    """Name and ``(N, 3, H, W)`` shape of the model input; ``None`` marks a dynamic dimension."""

    name: str
    shape: tuple[int | None, int | None, int | None, int | None]

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """The fixed ``(H, W)`` of a static-shape model, ``None`` when either side is dynamic."""
        height, width = self.shape[2], self.shape[3]
        return (height, width) if height is not None and width is not None else None

    @property
    def max_batch(self) -> int | None:
        return self.shape[0]


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
    # The weights' licence, from the artefact's sidecar or the checkpoint (see train.models.checkpoint).
    licence: str = "unknown"
    # What the model outputs, as the artefact says it (None: it says nothing; the predictor decides).
    output_kind: OutputKind | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
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

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        # Backends that can serve several callers at once (OpenVINO's infer requests) manage
        # their own resources; the others run one call at a time.
        with self._lock if self.max_concurrency == 1 else contextlib.nullcontext():
            if self._closed:
                raise RuntimeError(f"the {self.name} backend was closed")
            out = self._infer(batch)
        return out.reshape(batch.shape[0], *out.shape[-2:]).astype(np.float32, copy=False)

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
            "versions": self.versions(),
        }

    def _release(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Free library resources; called once by ``close``."""

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
