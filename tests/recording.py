"""A real backend whose model calls are recorded, handed to ``DepthPredictor.from_backend`` (the
predictor's public seam for a backend): tests count batches without touching private attributes."""

from __future__ import annotations

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
