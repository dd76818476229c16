"""Robust per-frame fits: RANSAC for the inliers, then least squares on them.

One linear core serves both fits of this package: a sparse sensor's depths against a frame's
disparity-like prediction (``robust_fit``: residuals relative to the measured disparity, so a
5 % threshold means 5 % in depth wherever the point is), and one frame's relative depth against
the frames before it (``runtime.align.stabilize``: residuals in the reference's own units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metric import ScaleShift


@dataclass(frozen=True)
class FitSettings:
    """What a per-frame fit of scale and shift in disparity must satisfy to be used."""

    min_inliers: int = 20
    inlier_threshold: float = 0.05  # |fitted - measured| / measured disparity (~ relative depth error)
    # Inliers' far/near depth ratio (90th/10th percentile): points all at one distance cannot
    # tell a scale from a shift.
    min_depth_ratio: float = 1.15
    iterations: int = 128
    sample_limit: int = 2000  # hypotheses are scored on at most this many points
    min_depth: float = 0.1  # sensor depths used, metres
    max_depth: float = 100.0
    shift: bool = True  # False: scale only (the correction of a metric model)

    def __post_init__(self) -> None:
        if self.min_inliers < 2 or self.iterations < 1 or self.sample_limit < 2:
            raise ValueError("min_inliers >= 2, iterations >= 1 and sample_limit >= 2 are needed")
        if not 0 < self.inlier_threshold < 1 or self.min_depth_ratio < 1:
            raise ValueError("inlier_threshold must be in (0, 1) and min_depth_ratio >= 1")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"the depth range must be 0 < min < max, got {self.min_depth}..{self.max_depth}")


@dataclass(frozen=True)
class RobustFit:
    """A fit's outcome: ``fit`` is ``None`` when it was refused, and ``reason`` says why."""

    fit: ScaleShift | None
    points: int  # samples offered, within the depth range
    inliers: int
    residual: float  # RMS relative disparity residual over the inliers (NaN without a fit)
    reason: str = ""


def _solve(a: np.ndarray, c: np.ndarray) -> np.ndarray | None:
    params, *_ = np.linalg.lstsq(a, c, rcond=None)
    return params if np.isfinite(params).all() else None


def ransac_linear(
    a: np.ndarray,
    c: np.ndarray,
    threshold: float,
    rng: np.random.Generator,
    iterations: int = 128,
    sample_limit: int = 2000,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Parameters ``p`` of ``a @ p ~ c`` (``a``: N x 1 or N x 2) robust to outliers, and the inlier mask.

    Hypotheses from minimal samples are scored MSAC-style (residuals truncated at ``threshold``)
    on at most ``sample_limit`` rows; the first parameter must be positive (a scale). The best is
    refined by least squares on its inliers, twice. ``None`` when no hypothesis has a positive scale.
    """
    n, k = a.shape
    if n < k:
        return None
    scored = rng.choice(n, sample_limit, replace=False) if n > sample_limit else np.arange(n)
    first = rng.integers(n, size=iterations)
    # A second row always differs from the first: a pair of one point twice fits nothing.
    picks = first[:, None] if k == 1 else np.stack([first, (first + rng.integers(1, n, size=iterations)) % n], 1)
    rows, targets = a[picks], c[picks]  # (iterations, k, k) and (iterations, k)
    if k == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            params = targets / rows[:, :, 0]
    else:
        det = rows[:, 0, 0] * rows[:, 1, 1] - rows[:, 0, 1] * rows[:, 1, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            params = np.stack(
                [
                    (targets[:, 0] * rows[:, 1, 1] - targets[:, 1] * rows[:, 0, 1]) / det,
                    (rows[:, 0, 0] * targets[:, 1] - rows[:, 1, 0] * targets[:, 0]) / det,
                ],
                axis=1,
            )
    usable = np.isfinite(params).all(axis=1) & (params[:, 0] > 0)
    if not usable.any():
        return None
    params = params[usable]
    residual = np.abs(params @ a[scored].T - c[scored])  # (hypotheses, scored)
    cost = np.minimum(residual, threshold).sum(axis=1)
    best = params[int(np.argmin(cost))]
    for _ in range(2):
        inliers = np.abs(a @ best - c) < threshold
        if inliers.sum() < k:
            break
        refined = _solve(a[inliers], c[inliers])
        if refined is None or not refined[0] > 0:
            break
        best = refined
    return best, np.abs(a @ best - c) < threshold


def robust_fit(
    x: np.ndarray, depth: np.ndarray, settings: FitSettings | None = None, rng: np.random.Generator | None = None
) -> RobustFit:
    """Scale and shift with ``1 / depth ~ scale * x + shift`` from samples with outliers.

    ``x`` is the prediction at the samples in disparity form (a relative model's output, or
    ``1 / metres`` of a metric model, fitted with ``settings.shift=False``); ``depth`` the
    sensor's metres. Samples outside the depth range or not finite are left out first.
    """
    settings = settings or FitSettings()
    rng = rng if rng is not None else np.random.default_rng(0)
    x, depth = np.asarray(x, np.float64).reshape(-1), np.asarray(depth, np.float64).reshape(-1)
    keep = np.isfinite(x) & np.isfinite(depth) & (depth >= settings.min_depth) & (depth <= settings.max_depth)
    x, depth = x[keep], depth[keep]
    n = int(x.size)
    if n < settings.min_inliers:
        return RobustFit(None, n, 0, float("nan"), f"too few points ({n} < {settings.min_inliers})")
    y = 1.0 / depth
    # Relative residuals: (scale * x + shift) / y - 1, linear in (scale, shift).
    a = np.stack([x / y, 1.0 / y], axis=1) if settings.shift else (x / y)[:, None]
    found = ransac_linear(a, np.ones(n), settings.inlier_threshold, rng, settings.iterations, settings.sample_limit)
    if found is None:
        return RobustFit(None, n, 0, float("nan"), "no positive scale fits the points")
    params, inliers = found
    count = int(inliers.sum())
    residual = float(np.sqrt(np.mean((a[inliers] @ params - 1.0) ** 2))) if count else float("nan")
    scale, shift = float(params[0]), float(params[1]) if settings.shift else 0.0
    if count < settings.min_inliers:
        return RobustFit(None, n, count, residual, f"too few inliers ({count} < {settings.min_inliers})")
    if settings.shift:
        near, far = np.percentile(depth[inliers], [10, 90])
        if far < settings.min_depth_ratio * near:
            return RobustFit(
                None,
                n,
                count,
                residual,
                f"inliers span too little depth ({near:.2f}-{far:.2f} m; far/near < {settings.min_depth_ratio})",
            )
    return RobustFit(ScaleShift(scale, shift, residual, count), n, count, residual)
