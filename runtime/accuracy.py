"""The two ways this project measures one output against a reference, numpy only: the runtime
checks artefacts against their references with them (``runtime.verify``), without PyTorch.

- ``MAX_REL_STD``, ``max|a - b| / std(ref)``: the gate of every FP32/FP16 artefact, the parity
  tests, the sidecars and the CLIs' reports (``compare``).
- ``ABS_REL_ALIGNED``: AbsRel after least-squares scale-and-shift alignment in disparity space,
  mean over images: INT8 artefacts' accuracy budget and the benchmark's accuracy columns
  (``depth_metrics``, ``abs_rel``), the zero-shot protocol Depth Anything and MiDaS report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_REL_STD = "max|a-b|/std(ref)"
ABS_REL_ALIGNED = "AbsRel vs FP32 after least-squares scale-and-shift alignment, mean over held-out images"

# FP32 vs FP32 on the verification photo, measured with the parity weights: vits 6.5e-5 to
# 9.3e-5, vitb 1.1e-4 to 1.6e-4, vitl 1.4e-4 (518x518 and the dynamic check sizes). Error grows
# with depth; a damaged model (one weight tensor 10 % off) is off by 1e-2 or more.
FP32_TOLERANCE = 5e-4
# FP16 against FP32 by MAX_REL_STD: FP16-compressed IRs measured 9e-3 to 1.9e-2 on vits (98 to
# 518 pixels); a wrong engine (NVIDIA/TensorRT#4723, a sign-flipped weight) is off by 1 or more.
FP16_TOLERANCE = 0.1
DEFAULT_ACCURACY_BUDGET = 0.01  # an INT8 artefact's AbsRel against FP32, unless asked otherwise


def precision_rule(precision: str, budget: float | None = None) -> tuple[str, float]:
    """The metric and tolerance an artefact of ``precision`` is held to against FP32."""
    if "int8" in precision:
        return ABS_REL_ALIGNED, float(budget if budget is not None else DEFAULT_ACCURACY_BUDGET)
    if "fp16" in precision or "bf16" in precision:
        return MAX_REL_STD, FP16_TOLERANCE
    return MAX_REL_STD, FP32_TOLERANCE


@dataclass
class Comparison:
    """How far an output is from a reference; ``max_rel_std`` is the metric gates use."""

    max_abs: float
    mean_abs: float
    max_rel: float  # max |a - b| / max |ref|
    max_rel_std: float  # max |a - b| / std(ref): MAX_REL_STD

    def __str__(self) -> str:
        return f"max error {self.max_rel_std:.2e} of the reference's std, mean abs {self.mean_abs:.2e}"


def compare(output: np.ndarray, reference: np.ndarray) -> Comparison:
    diff = np.abs(output.astype(np.float64) - reference.astype(np.float64))
    peak = float(np.abs(reference).max()) or 1.0
    spread = float(reference.std()) or 1.0
    return Comparison(float(diff.max()), float(diff.mean()), float(diff.max()) / peak, float(diff.max()) / spread)


def align_scale_shift(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``pred`` after the least-squares scale and shift that best match ``ref`` on ``mask``."""
    x, y = pred[mask].astype(np.float64), ref[mask].astype(np.float64)
    a = np.stack([x, np.ones_like(x)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(a, y, rcond=None)
    return scale * pred.astype(np.float64) + shift


def depth_metrics(pred_disparity: np.ndarray, ref_disparity: np.ndarray, min_fraction: float = 1e-3) -> dict:
    """AbsRel and delta1 of affine-invariant inverse depth, the zero-shot protocol.

    The prediction is aligned to the reference in disparity space, both are turned into depth
    (1 / disparity) and compared where the reference disparity is valid (finite and above
    ``min_fraction`` of its maximum; aligned values are floored at the same level).
    """
    ref = np.asarray(ref_disparity, dtype=np.float64)
    finite = np.isfinite(ref)
    floor = min_fraction * (ref[finite].max() if finite.any() else 1.0)
    mask = finite & (ref > floor)
    if mask.sum() < 2:
        raise ValueError("the reference has fewer than two valid pixels")
    aligned = np.maximum(align_scale_shift(np.asarray(pred_disparity), ref, mask), floor)
    pred_depth, ref_depth = 1.0 / aligned[mask], 1.0 / ref[mask]
    ratio = np.maximum(pred_depth / ref_depth, ref_depth / pred_depth)
    return {
        "abs_rel": float(np.mean(np.abs(pred_depth - ref_depth) / ref_depth)),
        "delta1": float(np.mean(ratio < 1.25)),
    }


def abs_rel(outputs: list[np.ndarray], references: list[np.ndarray]) -> float:
    """``ABS_REL_ALIGNED`` of batch-1 outputs against their references."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    return float(np.mean([depth_metrics(o[0], r[0])["abs_rel"] for o, r in zip(outputs, references)]))
