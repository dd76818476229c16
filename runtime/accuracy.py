"""The two ways this project measures one output against a reference, numpy only: the runtime
checks artefacts against their references with them (``runtime.verify``), without PyTorch.

- ``MAX_REL_STD``, ``max|a - b| / std(ref)``: the gate of every FP32/FP16 artefact, the parity
  tests, the sidecars and the CLIs' reports (``compare``).
- ``ABS_REL_ALIGNED``: AbsRel after least-squares scale-and-shift alignment in disparity space,
  mean over images: the INT8 accuracy budget of relative models (DA-V2's inverse depth up to scale
  and shift) and the benchmark's accuracy columns (``depth_metrics``, ``abs_rel``), the zero-shot
  protocol Depth Anything and MiDaS report.
- ``ABS_REL_SCALED``: AbsRel in depth after a least-squares scale fit (no shift), mean over images:
  the INT8 budget of ``depth_up_to_scale`` models (DA3Mono, DA3-Small/Base), whose numbers are
  depth up to one scale: an affine fit in disparity would forgive an error such a model cannot have.
- ``ABS_REL_DEPTH``: AbsRel in depth with no alignment, mean over images: the INT8 budget of models
  whose scale is the product (``metric``: metres; ``metres_per_focal``: metres per focal length).

``int8_metric(kind)`` names the one an output kind is held to; ``kind_metrics`` computes any of them.
An INT8 artefact of a DA3 network is also held to its extra outputs (``extra_errors``): the sky
mask's disagreement and the depth confidence's relative error, each within the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prediction import SKY_THRESHOLD  # the sky mask: sky map >= 0.3, the official sky step's pixels

MAX_REL_STD = "max|a-b|/std(ref)"
ABS_REL_ALIGNED = "AbsRel vs FP32 after least-squares scale-and-shift alignment, mean over held-out images"

# FP32 vs FP32 on the verification photo, measured with the parity weights: vits 6.5e-5 to
# 9.3e-5, vitb 1.1e-4 to 1.6e-4, vitl 1.4e-4 (518x518 and the dynamic check sizes). Error grows
# with depth; a damaged model (one weight tensor 10 % off) is off by 1e-2 or more.
FP32_TOLERANCE = 5e-4
# FP16 against FP32 by MAX_REL_STD: FP16-compressed IRs measured 9e-3 to 1.9e-2 on vits (98 to
# 518 pixels); a wrong engine (NVIDIA/TensorRT#4723, a sign-flipped weight) is off by 1 or more.
FP16_TOLERANCE = 0.1
ABS_REL_SCALED = "AbsRel vs FP32 in depth after a least-squares scale fit, mean over held-out images"
ABS_REL_DEPTH = "AbsRel vs FP32 in depth without alignment, mean over held-out images"
INT8_METRICS = (ABS_REL_ALIGNED, ABS_REL_SCALED, ABS_REL_DEPTH)
# Output kind (runtime.metric.OUTPUT_KINDS) -> the INT8 metric: the one table of the kinds' metrics.
KIND_METRICS = {
    "relative": ABS_REL_ALIGNED,
    "depth_up_to_scale": ABS_REL_SCALED,
    "metric": ABS_REL_DEPTH,
    "metres_per_focal": ABS_REL_DEPTH,
}
DEFAULT_ACCURACY_BUDGET = 0.01  # an INT8 artefact's AbsRel against FP32, unless asked otherwise


def int8_metric(kind: str | None = None) -> str:
    """The metric an INT8 artefact of output kind ``kind`` is held to. ``None`` (or empty): relative,
    as the artefacts and references written before the output kind was recorded were (DA-V2's
    relative models); ``ValueError`` for a kind not in ``KIND_METRICS``."""
    if not kind:
        return ABS_REL_ALIGNED
    if kind not in KIND_METRICS:
        raise ValueError(f"no metric for output kind {kind!r}; known: {', '.join(KIND_METRICS)}")
    return KIND_METRICS[kind]


def short_name(metric: str) -> str:
    """A metric's name for one-line reports: ``AbsRel (scale fit in depth)`` and the like."""
    return {
        ABS_REL_ALIGNED: "AbsRel (scale-and-shift fit in disparity)",
        ABS_REL_SCALED: "AbsRel (scale fit in depth)",
        ABS_REL_DEPTH: "AbsRel (depth, no alignment)",
    }.get(metric, metric)


def precision_rule(precision: str, budget: float | None = None, kind: str | None = None) -> tuple[str, float]:
    """The metric and tolerance an artefact of ``precision`` (and output kind ``kind``) is held to
    against FP32."""
    if "int8" in precision:
        return int8_metric(kind), float(budget if budget is not None else DEFAULT_ACCURACY_BUDGET)
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


def scaled_depth_metrics(pred_depth: np.ndarray, ref_depth: np.ndarray, scale: bool = True) -> dict:
    """AbsRel and delta1 in depth (``ABS_REL_SCALED``, or with ``scale=False`` ``ABS_REL_DEPTH``).

    Pixels count where the reference depth is finite and positive. With ``scale`` the prediction
    is first multiplied by the least-squares scale of the relative residuals,
    ``argmin_s sum(((s p - r) / r)^2) = sum(p / r) / sum((p / r)^2)``: every pixel weighs by its
    relative error, as AbsRel does, so far pixels do not dominate the fit.
    """
    ref = np.asarray(ref_depth, dtype=np.float64)
    pred = np.asarray(pred_depth, dtype=np.float64)
    mask = np.isfinite(ref) & (ref > 0)
    if mask.sum() < 2:
        raise ValueError("the reference has fewer than two valid pixels")
    p, r = pred[mask], ref[mask]
    if scale:
        q = p / r
        numerator, denominator = float(np.sum(q)), float(np.sum(q * q))
        # No positive scale fits a map of the wrong sign (or of zeros): no fit, and NaN fails every bound.
        p = p * (numerator / denominator if denominator > 0 and numerator > 0 else float("nan"))
    ratio = np.maximum(p / r, r / np.maximum(p, 1e-12))
    return {
        "abs_rel": float(np.mean(np.abs(p - r) / r)),
        "delta1": float(np.mean((p > 0) & (ratio < 1.25))),
    }


def kind_metrics(pred: np.ndarray, ref: np.ndarray, metric: str = ABS_REL_ALIGNED) -> dict:
    """AbsRel and delta1 of ``pred`` against ``ref`` by ``metric`` (one of ``INT8_METRICS``)."""
    if metric == ABS_REL_SCALED:
        return scaled_depth_metrics(pred, ref)
    if metric == ABS_REL_DEPTH:
        return scaled_depth_metrics(pred, ref, scale=False)
    if metric == ABS_REL_ALIGNED:
        return depth_metrics(pred, ref)
    raise ValueError(f"not an INT8 metric: {metric!r}")


def abs_rel(outputs: list[np.ndarray], references: list[np.ndarray], metric: str = ABS_REL_ALIGNED) -> float:
    """``metric`` (default ``ABS_REL_ALIGNED``) of batch-1 outputs against their references, mean over them."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    return float(np.mean([kind_metrics(o[0], r[0], metric)["abs_rel"] for o, r in zip(outputs, references)]))


def extra_errors(name: str, outputs: list[np.ndarray], references: list[np.ndarray]) -> float:
    """How far an extra output of a DA3 network is from FP32, mean over images, as a fraction:

    - ``sky``: the share of pixels whose sky mask (``>= SKY_THRESHOLD``) differs from FP32's;
    - ``depth_conf`` (and any other): the mean relative error ``|c - c_ref| / |c_ref|`` (DA3's
      confidence is ``exp + 1``, at least 1).
    """
    values = []
    for got, want in zip(outputs, references):
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if not np.isfinite(got).all():
            return float("nan")
        if name == "sky":
            values.append(float(np.mean((got >= SKY_THRESHOLD) != (want >= SKY_THRESHOLD))))
        else:
            values.append(float(np.mean(np.abs(got - want) / np.maximum(np.abs(want), 1e-12))))
    return float(np.mean(values))


@dataclass(frozen=True)
class Int8Measure:
    """What an INT8 model's held-out error is: ``metric`` on the first output (depth) and, for the
    outputs named in ``extras`` (graph outputs 1, 2, ... in order), ``extra_errors``; the error the
    budget holds is the largest of them."""

    metric: str = ABS_REL_ALIGNED
    extras: tuple = ()

    def parts(self, outputs: list[list[np.ndarray]], references: list[list[np.ndarray]]) -> dict:
        """``{"depth": ..., <extra>: ...}`` for per-image lists of outputs (graph order, batch 1; a
        bare array is the depth alone)."""
        outputs, references = [_listed(o) for o in outputs], [_listed(r) for r in references]
        found = {"depth": abs_rel([o[0] for o in outputs], [r[0] for r in references], self.metric)}
        for index, name in enumerate(self.extras, start=1):
            found[name] = extra_errors(name, [o[index] for o in outputs], [r[index] for r in references])
        return found

    def label(self) -> str:
        """The error's name in one-line reports."""
        extras = {"sky": "the sky mask's disagreement", "depth_conf": "the confidence's relative error"}
        also = [extras.get(name, f"{name}'s relative error") for name in self.extras]
        return short_name(self.metric) + (f" or {' or '.join(also)}, whichever is worse" if also else "")

    def __call__(self, outputs: list[list[np.ndarray]], references: list[list[np.ndarray]]) -> float:
        values = list(self.parts(outputs, references).values())
        return float(max(values, key=lambda v: np.inf if np.isnan(v) else v))


def _listed(item):
    return item if isinstance(item, (list, tuple)) else [item]
