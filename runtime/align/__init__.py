"""Metric depth frame by frame, and relative depth that holds still.

- ``fit``: robust scale and shift (RANSAC, then least squares on the inliers).
- ``temporal``: the filter across frames (smoothing, jump gate, bounded hold).
- ``frame``: a frame's sparse samples, its fit, metric depth and held-out quality.
- ``stabilize``: relative depth on the scale of the frames before it, and the flicker figure.

Numpy and OpenCV only, like the rest of the runtime.
"""

from .fit import FitSettings, RobustFit, robust_fit
from .frame import AlignSettings, FrameAligner, FrameResult, SparseSamples, depth_errors, sample_points
from .stabilize import FlickerMeter, Stabilizer
from .temporal import FilterSettings, TemporalFilter

__all__ = [
    "AlignSettings",
    "FilterSettings",
    "FitSettings",
    "FlickerMeter",
    "FrameAligner",
    "FrameResult",
    "RobustFit",
    "SparseSamples",
    "Stabilizer",
    "TemporalFilter",
    "depth_errors",
    "robust_fit",
    "sample_points",
]
