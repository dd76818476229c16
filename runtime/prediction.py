"""What a prediction carries besides depth: the per-pixel outputs some networks have after it.

A Depth Anything 3 network has one: the mono and metric networks a sky map, the any-view networks
a depth confidence. Artefacts carry them as outputs after ``depth`` (the PyTorch module's tuple, the
exported ONNX's and OpenVINO IR's extra outputs, named as here), and ``DepthPredictor`` returns a
:class:`Prediction`: the depth map as before (an ``ndarray``), with ``sky`` (a boolean mask) and
``confidence`` (float32) at the same resolution. Models without them return plain arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SKY = "sky"
DEPTH_CONF = "depth_conf"
EXTRA_OUTPUTS = (SKY, DEPTH_CONF)  # the only outputs an artefact may carry after depth
# The official sky step's threshold (``compute_sky_mask``): sky map values at or above it are sky,
# the pixels whose depth that step replaces with a far value (train.models.da3.model.SKY_THRESHOLD).
SKY_THRESHOLD = 0.3


class Prediction(np.ndarray):
    """An ``H x W`` float32 depth map with the model's other outputs at its resolution:
    ``sky`` (bool, ``True`` = sky: the official sky step's pixels, whose depth is the step's far
    value, not a measurement) and ``confidence`` (the network's depth confidence, >= 1, larger =
    surer), each ``None`` where the model has no such output. Anything derived from it (a slice, a
    product) is a plain depth array without them."""

    sky: np.ndarray | None
    confidence: np.ndarray | None

    def __new__(cls, depth: np.ndarray, sky: np.ndarray | None = None, confidence: np.ndarray | None = None) -> Any:
        out = np.asarray(depth, dtype=np.float32).view(cls)
        for name, value in (("sky", sky), ("confidence", confidence)):
            if value is not None and np.shape(value) != out.shape:
                raise ValueError(f"{name} has shape {np.shape(value)}, the depth {out.shape}")
        out.sky = None if sky is None else np.asarray(sky, dtype=bool)
        out.confidence = None if confidence is None else np.asarray(confidence, dtype=np.float32)
        return out

    def __array_finalize__(self, obj: Any) -> None:
        self.sky = self.confidence = None  # a view (reshape, copy): another map

    def __getitem__(self, key: Any) -> Any:  # a slice: a plain array (its sky would not match it)
        return self.view(np.ndarray)[key]

    def __array_wrap__(self, out: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # arithmetic and reductions (d * 2, d.mean()): plain arrays and numbers, not Predictions;
        # in place (d *= 2) the Prediction itself, its sky and confidence kept
        if out is self:
            return self
        out = np.asarray(out)
        return out[()] if return_scalar or out.ndim == 0 else out

    def __reduce__(self) -> Any:  # pickled as its depth, sky and confidence
        return (Prediction, (np.asarray(self), self.sky, self.confidence))

    @property
    def depth(self) -> np.ndarray:
        """The depth map as a plain array (the same memory)."""
        return self.view(np.ndarray)


def sky_mask(sky_map: np.ndarray) -> np.ndarray:
    """Sky pixels of a sky map as the official sky step picks them (``>= SKY_THRESHOLD``)."""
    return np.asarray(sky_map) >= SKY_THRESHOLD


def assemble(maps: dict[str, np.ndarray]) -> np.ndarray:
    """One image's maps by output name (each at the image's size) as its depth, a
    :class:`Prediction` with the sky mask and depth confidence where the model has them."""
    if len(maps) == 1:
        return maps["depth"]
    sky = maps.get(SKY)
    return Prediction(maps["depth"], None if sky is None else sky_mask(sky), maps.get(DEPTH_CONF))


def with_outputs(depth: np.ndarray, like: Any) -> np.ndarray:
    """``depth`` with the other outputs of ``like`` (a :class:`Prediction`), or as it is."""
    sky, confidence = getattr(like, "sky", None), getattr(like, "confidence", None)
    if sky is None and confidence is None:
        return depth
    return Prediction(depth, sky, confidence)


def extras_of(names: Any, path: Any) -> tuple[str, ...]:
    """The extra outputs of a model whose outputs are ``names`` (depth first): ``ValueError`` for an
    output that is neither depth's nor one of ``EXTRA_OUTPUTS``."""
    names = tuple(str(n) for n in names)
    unknown = [n for n in names[1:] if n not in EXTRA_OUTPUTS]
    if not names or unknown:
        raise ValueError(
            f"{path}: expected one depth output (and optionally {' and '.join(EXTRA_OUTPUTS)} after it), "
            f"got outputs {', '.join(names) or 'none'}"
        )
    return names[1:]
