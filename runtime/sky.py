"""The mono and metric Depth Anything 3 networks' sky step, in numpy: where an artefact leaves the
step to the runtime (a TensorRT engine: TensorRT's TopK cannot sort every pixel of an image), the
runtime applies it to the network's raw depth at network resolution, before any resize, with the
numbers of the in-graph step (``train.models.da3.model.sky_to_far``, the official semantics): sky
pixels (sky map ``>= 0.3``) get the 0.99 quantile, linearly interpolated, of the other pixels'
depth, per image, only where more than 10 pixels are sky and more than 10 are not.

An artefact says the step is the runtime's with ``sky_step: "runtime"`` in its sidecar (and the
ONNX metadata of the graph it was built from); one without that fact keeps its old meaning: the
step, if any, is in the graph. Python 3.8 clean, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .metadata import onnx_metadata, read_sidecar
from .prediction import SKY, SKY_THRESHOLD

SKY_STEP = "sky_step"  # the sidecar/metadata key
RUNTIME = "runtime"  # its value where the runtime applies the step
SKY_MIN_PIXELS = 10  # as many or fewer sky (or non-sky) pixels: the depth is left as it is
SKY_QUANTILE = 0.99


def runtime_sky_step(meta: Mapping[str, Any] | None) -> bool:
    """Whether an artefact's metadata (sidecar or ONNX metadata) leaves the sky step to the runtime."""
    return (meta or {}).get(SKY_STEP) == RUNTIME


def sky_step_refusal(path: Any, tool: str, meta: Mapping[str, Any] | None = None) -> str | None:
    """The one line that refuses ``path`` to ``tool`` (OpenVINO, an IR conversion, INT8
    quantization: none applies the sky step) where the file leaves the DA3 sky step to the
    runtime, by its sidecar (``meta`` when already read) or, for an ONNX, its metadata; ``None``
    where it does not. Each caller raises it as its own error, with its own exit code."""
    path = Path(path)
    facts = dict((read_sidecar(path) or {}) if meta is None else meta)
    facts.update(onnx_metadata(path) if path.suffix == ".onnx" else {})
    if not runtime_sky_step(facts):
        return None
    return (
        f"{path} leaves the Depth Anything 3 sky step to the runtime (export.trt's TensorRT-ready graph) "
        f"and {tool} does not apply it: use the ONNX export it was cut from, or run this file with ONNX Runtime"
    )


def check_runtime_sky_step(meta: Mapping[str, Any] | None, extra_outputs: Any, path: Any) -> bool:
    """``runtime_sky_step``, with ``ValueError`` where the metadata says so but the model has no
    ``sky`` output to apply it with."""
    if not runtime_sky_step(meta):
        return False
    if SKY not in tuple(extra_outputs):
        raise ValueError(
            f"{path}: its metadata leaves the sky step to the runtime but it has no {SKY!r} output; "
            "the model and its metadata are of different builds"
        )
    return True


def sky_to_far(depth: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """The sky step on ``depth`` and ``sky`` maps, ``(H, W)`` or batch-first ``(B, ..., H, W)`` of
    one size (each image on its own), in float32 arithmetic as the in-graph step: a new array of
    ``depth``'s shape."""
    depth = np.asarray(depth, dtype=np.float32)
    sky = np.asarray(sky)
    if depth.size != sky.size or depth.ndim < 2:
        raise ValueError(f"depth {depth.shape} and sky {sky.shape} are not maps of one size")
    flat = depth.reshape(-1, depth.shape[-2] * depth.shape[-1]).copy()
    non_sky = (sky < SKY_THRESHOLD).reshape(flat.shape)
    for image, keep in zip(flat, non_sky):
        n = int(keep.sum())
        if n <= SKY_MIN_PIXELS or image.size - n <= SKY_MIN_PIXELS:
            continue
        rank = np.float32(SKY_QUANTILE) * np.float32(n - 1)
        below, above = int(np.floor(rank)), int(np.ceil(rank))
        ordered = np.partition(image[keep], (below, above))
        low, high = ordered[below], ordered[above]
        weight = rank - np.float32(below)
        # torch.lerp's two-sided form (the exported graph's), so the numbers are the same
        far = low + weight * (high - low) if weight < 0.5 else high - (high - low) * (np.float32(1) - weight)
        image[~keep] = far
    return flat.reshape(depth.shape)


def apply_sky_step(outputs: Mapping[str, np.ndarray]) -> dict:
    """A model's outputs by name (``depth`` and ``sky``, batch-first) with the step applied to depth."""
    out = dict(outputs)
    out["depth"] = sky_to_far(out["depth"], out[SKY])
    return out
