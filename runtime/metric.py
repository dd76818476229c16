"""From relative to metric depth with a few known distances (sparse lidar, a known floor, ...).

The model predicts relative inverse depth: up to an unknown scale and shift in disparity
space. Given metric depth at some pixels, ``fit_scale_shift`` finds them by least squares in
disparity (optionally trimming the worst residuals once, for noisy or misregistered points)
and ``to_metric`` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class ScaleShift:
    """``metric_disparity = scale * relative + shift``; depth is its inverse."""

    scale: float
    shift: float
    residual: float  # RMS disparity residual over the points used
    points: int

    def to_metric(self, relative: np.ndarray, max_depth: float = 1e4) -> np.ndarray:
        disparity = self.scale * np.asarray(relative, np.float64) + self.shift
        with np.errstate(divide="ignore"):
            depth = np.where(disparity > 1.0 / max_depth, 1.0 / disparity, np.inf)
        return depth.astype(np.float32)


def _samples(relative: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    known = np.asarray(known, dtype=np.float64)
    if known.shape == relative.shape:  # a sparse depth map: 0 or NaN where unknown
        valid = np.isfinite(known) & (known > 0)
        return relative[valid].astype(np.float64), known[valid]
    if known.ndim == 2 and known.shape[1] == 3:  # rows of (y, x, depth)
        ys, xs = known[:, 0].astype(int), known[:, 1].astype(int)
        inside = (ys >= 0) & (ys < relative.shape[0]) & (xs >= 0) & (xs < relative.shape[1]) & (known[:, 2] > 0)
        return relative[ys[inside], xs[inside]].astype(np.float64), known[inside, 2]
    raise InputError(
        f"known depth must be an HxW map like the prediction {relative.shape} (0/NaN = unknown) "
        f"or an (N, 3) array of (y, x, depth) rows, got shape {known.shape}"
    )


def fit_scale_shift(relative: np.ndarray, known: np.ndarray, trim: float = 0.0) -> ScaleShift:
    """Least-squares scale and shift mapping ``relative`` to the inverse of ``known`` depths.

    ``trim`` in [0, 0.5): after a first fit, drop that fraction of points with the largest
    residuals and fit again.
    """
    relative = np.asarray(relative)
    if relative.ndim != 2:
        raise InputError(f"expected an HxW relative depth map, got shape {relative.shape}")
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    x, depth = _samples(relative, known)
    if x.size < 2 or x.max() == x.min():
        raise InputError(f"need at least two known depths at pixels of different relative depth, got {x.size}")
    y = 1.0 / depth

    def solve(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
        a = np.stack([xs, np.ones_like(xs)], axis=1)
        (scale, shift), *_ = np.linalg.lstsq(a, ys, rcond=None)
        return float(scale), float(shift)

    scale, shift = solve(x, y)
    if trim > 0 and x.size > 4:
        residual = np.abs(scale * x + shift - y)
        keep = residual <= np.quantile(residual, 1.0 - trim)
        x, y = x[keep], y[keep]
        scale, shift = solve(x, y)
    rms = float(np.sqrt(np.mean((scale * x + shift - y) ** 2)))
    return ScaleShift(scale, shift, rms, int(x.size))
