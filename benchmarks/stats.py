"""Latency statistics and accuracy metrics, kept free of I/O so tests can check them exactly."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Seconds per call over the timed runs (after warm-up)."""

    runs: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float

    @property
    def fps(self) -> float:
        return 1.0 / self.median if self.median > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": self.fps}


def summarize(durations: list[float]) -> Latency:
    if not durations:
        raise ValueError("no timed runs")
    values = np.asarray(durations, dtype=np.float64)
    return Latency(
        runs=len(values),
        mean=float(values.mean()),
        median=float(np.percentile(values, 50)),
        p90=float(np.percentile(values, 90)),
        p99=float(np.percentile(values, 99)),
        min=float(values.min()),
    )


def time_calls(
    fn: Callable[[], object],
    warmup: int,
    runs: int,
    clock: Callable[[], float] = time.perf_counter,
    synchronize: Callable[[], None] | None = None,
) -> Latency:
    """Call ``fn`` ``warmup`` times untimed, then time ``runs`` calls one by one.

    ``synchronize`` (for example ``torch.cuda.synchronize``) runs before each clock reading so
    asynchronous device work is inside the measurement.
    """
    for _ in range(warmup):
        fn()
    durations = []
    for _ in range(runs):
        if synchronize:
            synchronize()
        start = clock()
        fn()
        if synchronize:
            synchronize()
        durations.append(clock() - start)
    return summarize(durations)


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
