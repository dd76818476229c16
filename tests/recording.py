"""A real backend whose model calls are recorded (the batches it runs; how many run at once),
handed to ``DepthPredictor.from_backend`` (the predictor's public seam for a backend): tests count
calls without touching private attributes."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from runtime import DepthPredictor
from runtime.backends import backend_class, resolve_backend
from runtime.backends.base import describe_source


class Recorded:
    """``backend`` (one of ``runtime.backends``, its own numbers) with the shape of every batch it
    ran in ``batches``; everything else is the backend's."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.batches: list[tuple[int, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(tuple(batch.shape))
        return self.backend.infer(batch)

    @property
    def sizes(self) -> list[int]:
        """The batch size of every call."""
        return [shape[0] for shape in self.batches]


def recorded_predictor(model: Any, backend: str = "auto", spec: Any = None, **options: Any) -> tuple:
    """``(DepthPredictor, Recorded)`` for ``model`` on its real backend; ``spec`` replaces the
    backend's input spec (an engine's profile, for example) before the predictor takes it."""
    inner = backend_class(resolve_backend(model, backend))(model)
    if spec is not None:
        inner.input_spec = spec
    recorded = Recorded(inner)
    return DepthPredictor.from_backend(recorded, describe_source(model), **options), recorded


class Overlap:
    """How many model calls run at once inside a backend's own gate (its lock, or its
    ``max_concurrency`` slots): ``now`` and the ``most`` seen; and the ``shapes`` of their batches."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.shapes: list[tuple[int, ...]] = []
        self.lock = threading.Lock()

    def call(self, batch: Any) -> Overlap:
        with self.lock:
            self.shapes.append(tuple(batch.shape))
        return self

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def overlap_predictor(model: Any, backend: str = "auto", input_size: int = 518, **options: Any) -> tuple:
    """``(DepthPredictor, Overlap)``: ``model`` on its real backend, built with ``options`` (device,
    precision, streams, preprocess...) as a subclass whose model calls (``Backend._infer`` and
    ``_infer_on_device``, the hooks a backend implements and ``Backend`` runs inside its gate) are
    counted, then handed to ``DepthPredictor.from_backend``; no attribute of the predictor or its
    backend is replaced."""
    overlap = Overlap()
    base = backend_class(resolve_backend(model, backend))

    class Counted(base):  # type: ignore[valid-type, misc]
        def _infer(self, batch: np.ndarray) -> np.ndarray:
            with overlap.call(batch):
                return super()._infer(batch)

        def _infer_on_device(self, batch: Any) -> Any:
            with overlap.call(batch):
                return super()._infer_on_device(batch)

    counted = Counted(model, **options)
    return DepthPredictor.from_backend(counted, describe_source(model), input_size=input_size), overlap
