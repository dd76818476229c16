"""Per-frame alignment of a prediction to a sparse metric source, with its quality.

A frame's sparse source (lidar points already in the camera's optical frame, a depth image, or
points given in code) becomes ``SparseSamples``: pixel rows, columns and metres, with a count of
every point left out and why. ``FrameAligner.align`` splits them into the points it fits and a
held-out share that scores the result, fits robustly, runs the temporal filter, and returns
metric depth (NaN where invalid, REP 118) or ``None`` rather than a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..metric import OutputKind
from ..pointcloud import Intrinsics, project_points
from .fit import FitSettings, robust_fit
from .temporal import FilterSettings, TemporalFilter, anchors

# Why points of a sparse source were left out, in the order a summary lists them.
DROP_REASONS = ("non_finite", "behind", "outside", "out_of_range", "occluded")


@dataclass(frozen=True)
class AlignSettings:
    fit: FitSettings = field(default_factory=FitSettings)
    temporal: FilterSettings = field(default_factory=FilterSettings)
    held_out: float = 0.2  # share of each frame's points kept out of the fit to score it
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.held_out <= 0.9:  # the commands' bound (runtime.ros.settings.MAX_HELD_OUT)
            raise ValueError(f"held_out must be in [0, 0.9], got {self.held_out}")


@dataclass
class SparseSamples:
    """Metric depth at pixels of one image: ``rows``, ``cols`` (int) and ``depth`` (metres along z)."""

    rows: np.ndarray
    cols: np.ndarray
    depth: np.ndarray
    received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.depth.size)

    @classmethod
    def from_map(cls, depth: np.ndarray) -> SparseSamples:
        """From an HxW sparse depth map in metres (0, NaN or inf where unknown)."""
        depth = np.asarray(depth, np.float64)
        known = np.isfinite(depth) & (depth > 0)
        rows, cols = np.nonzero(known)
        return cls(rows, cols, depth[rows, cols], int(known.sum()), {})


def sample_points(
    points: np.ndarray, intrinsics: Intrinsics, height: int, width: int, min_depth: float, max_depth: float
) -> SparseSamples:
    """Samples for an image of ``height x width`` from N x 3 points in its camera's optical frame.

    Points are projected through the intrinsics and distortion; where several land on one pixel
    the nearest is kept (the others are hidden behind it from the camera, seen by a sensor that
    sits elsewhere). Every point left out is counted by reason (``DROP_REASONS``).
    """
    projected = project_points(points, intrinsics.for_image(height, width), height, width)
    dropped = dict(projected.dropped)
    depth = projected.depth
    in_range = (depth >= min_depth) & (depth <= max_depth)
    dropped["out_of_range"] = int((~in_range).sum())
    cols = np.rint(projected.pixels[in_range, 0]).astype(np.int64)
    rows = np.rint(projected.pixels[in_range, 1]).astype(np.int64)
    depth = depth[in_range]
    flat = rows * width + cols
    order = np.lexsort((depth, flat))  # by pixel, nearest first
    first = np.ones(order.size, bool)
    first[1:] = flat[order][1:] != flat[order][:-1]
    keep = order[first]
    dropped["occluded"] = int(order.size - keep.size)
    return SparseSamples(rows[keep], cols[keep], depth[keep], len(points), dropped)


def depth_errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, Any]:
    """AbsRel, delta1 (share within 1.25x) and RMSE (metres) where the prediction is valid."""
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    valid = np.isfinite(predicted) & (predicted > 0)
    p, g = predicted[valid], measured[valid]
    result: dict[str, Any] = {"points": int(valid.sum()), "missing": int((~valid).sum())}
    if p.size == 0:
        return {**result, "abs_rel": None, "delta1": None, "rmse": None}
    ratio = np.maximum(p / g, g / p)
    result.update(
        abs_rel=float(np.mean(np.abs(p - g) / g)),
        delta1=float(np.mean(ratio < 1.25)),
        rmse=float(np.sqrt(np.mean((p - g) ** 2))),
    )
    return result


def disparity_of(prediction: np.ndarray, kind: OutputKind) -> np.ndarray:
    """The prediction in disparity form (float32): a relative model's output as it is, 1 / depth of the
    others (metres, or depth up to scale)."""
    prediction = np.asarray(prediction, np.float32)
    if not kind.is_depth:
        return prediction
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prediction > 0, np.float32(1) / prediction, np.float32(np.nan))


@dataclass
class FrameResult:
    depth: np.ndarray | None  # HxW float32 metres, NaN where invalid; None: no metric output
    status: str  # fit, gated, held, none; "model" for a metric model's own uncorrected output
    record: dict[str, Any]  # what the per-frame JSON holds


class FrameAligner:
    """Per-frame metric depth from a prediction and a sparse source, through the temporal filter.

    Relative models get scale and shift in disparity; models of depth (``kind.is_depth``: metric, or
    depth up to scale) a scale only (fitted on 1/depth with residuals relative to the measured
    depth), and metric models their own metres, uncorrected, on frames without a usable fit.
    """

    def __init__(self, kind: OutputKind, settings: AlignSettings | None = None) -> None:
        settings = settings or AlignSettings()
        if kind.is_depth and settings.fit.shift:  # depth (metres or up to scale): a scale only
            settings = replace(settings, fit=replace(settings.fit, shift=False))
        self.kind, self.settings = kind, settings
        self.filter = TemporalFilter(settings.temporal, shift=settings.fit.shift)
        self.frames = 0

    def align(
        self, prediction: np.ndarray, samples: SparseSamples | None, stamp_ns: int, missing: str = ""
    ) -> FrameResult:
        """Metric depth for one frame. ``samples`` is ``None`` when the frame has no sparse data;
        ``missing`` then says why (recorded, and counted by the caller)."""
        index, self.frames = self.frames, self.frames + 1
        x_map = disparity_of(prediction, self.kind)
        record: dict[str, Any] = {"frame": index, "stamp_ns": int(stamp_ns)}
        rng = np.random.default_rng([self.settings.seed, index])
        fit = None
        held = np.zeros(0, bool)
        if samples is None:
            record["reason"] = missing or "no sparse data"
        else:
            record["points"] = {"received": samples.received, "usable": len(samples), **samples.dropped}
            held = rng.random(len(samples)) < self.settings.held_out
            x = x_map[samples.rows, samples.cols]
            result = robust_fit(x[~held], samples.depth[~held], self.settings.fit, rng)
            fit = result.fit
            record["fit_points"], record["inliers"] = int((~held).sum()), result.inliers
            record["residual"] = None if np.isnan(result.residual) else round(result.residual, 6)
            if result.reason:
                record["reason"] = result.reason
        used, status = self.filter.update(stamp_ns, fit, anchors(x_map, self.settings.fit.shift))
        record["status"] = status
        if used is None:
            if not self.kind.is_metric:
                return FrameResult(None, status, record)
            record["status"] = status = "model"
            depth = np.where(np.isfinite(prediction) & (prediction > 0), prediction, np.nan).astype(np.float32)
        else:
            record["scale"], record["shift"] = used.scale, used.shift
            depth = self.to_metric(x_map, used.scale, used.shift)
        if samples is not None and held.any():
            record["held_out"] = depth_errors(depth[samples.rows[held], samples.cols[held]], samples.depth[held])
        return FrameResult(depth, status, record)

    def to_metric(self, x_map: np.ndarray, scale: float, shift: float) -> np.ndarray:
        """Metres from disparity-form values; NaN where the disparity gives no depth within range."""
        disparity = np.float32(scale) * x_map + np.float32(shift)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.float32(1) / disparity
        depth[~(disparity > np.float32(1.0 / self.settings.fit.max_depth))] = np.nan
        return depth
