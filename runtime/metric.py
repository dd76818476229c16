"""What a model outputs, and from relative to metric depth with a few known distances.

Two kinds of output (``OutputKind``): relative inverse depth (unitless, larger = nearer: the
published relative checkpoints) and metric depth (metres, bounded by ``max_depth``: the metric
checkpoints). Every artefact says which: the checkpoint (``max_depth``), the ONNX metadata
(``output_kind``, ``max_depth``), the OpenVINO IR's rt_info and every sidecar; a file that says
nothing is relative unless the user says otherwise.

A relative model predicts depth up to an unknown scale and shift in disparity space. Given
metric depth at some pixels, ``fit_scale_shift`` finds them by least squares in disparity
(optionally trimming the worst residuals once, for noisy or misregistered points) and
``to_metric`` applies them. Per-frame, outlier-robust fits and their temporal filter are in
``runtime.align``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from commands.errors import InputError

RELATIVE = "relative"
METRIC = "metric"
# Depth Anything 3: depth up to an unknown scale (DA3Mono, the any-view networks), and depth per
# focal length (DA3Metric: metres = focal * output / 300, focal in pixels of the network's input).
DEPTH_UP_TO_SCALE = "depth_up_to_scale"
METRES_PER_FOCAL = "metres_per_focal"
OUTPUT_KINDS = (RELATIVE, METRIC, DEPTH_UP_TO_SCALE, METRES_PER_FOCAL)
FOCAL_DIVISOR = 300.0


@dataclass(frozen=True)
class OutputKind:
    """``relative`` (inverse depth, unitless, larger = nearer) or ``metric`` (metres up to ``max_depth``).

    ``source`` says where it was read (``onnx metadata``, ``sidecar``, ``checkpoint``, ``given``,
    ``default``: a file that says nothing); it does not take part in comparisons.
    """

    kind: str = RELATIVE
    max_depth: float | None = None
    source: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise InputError(f"output kind must be {' or '.join(OUTPUT_KINDS)}, got {self.kind!r}")
        if self.kind == METRIC and not (
            self.max_depth is not None and math.isfinite(self.max_depth) and self.max_depth > 0
        ):
            raise InputError(f"a metric model needs a positive max_depth in metres, got {self.max_depth!r}")
        if self.kind != METRIC and self.max_depth is not None:
            raise InputError(f"max_depth ({self.max_depth}) belongs to metric models; a {self.kind} model has none")

    @property
    def is_metric(self) -> bool:
        return self.kind == METRIC

    @property
    def needs_focal(self) -> bool:
        """Metres need the camera's focal length (``metres_per_focal``)."""
        return self.kind == METRES_PER_FOCAL

    @property
    def is_depth(self) -> bool:
        """Larger = farther (depth, in metres or up to scale), not inverse depth."""
        return self.kind != RELATIVE

    @property
    def unit(self) -> str | None:
        return "m" if self.is_metric or self.needs_focal else None

    def describe(self) -> str:
        if self.is_metric:
            return f"metric depth in metres (up to {self.max_depth:g} m)"
        if self.kind == DEPTH_UP_TO_SCALE:
            return "depth up to an unknown scale (larger = farther)"
        if self.kind == METRES_PER_FOCAL:
            return f"depth per focal length (metres = focal in pixels x output / {FOCAL_DIVISOR:g})"
        return "relative inverse depth (unitless, larger = nearer)"

    def metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props`` and OpenVINO rt_info."""
        return {"output_kind": self.kind, "max_depth": "" if self.max_depth is None else repr(float(self.max_depth))}

    def sidecar(self) -> dict[str, Any]:
        """The fields every artefact's ``.json`` carries."""
        return {"output_kind": self.kind, "max_depth": self.max_depth}

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_depth": self.max_depth, "unit": self.unit, "source": self.source}

    @classmethod
    def from_metadata(cls, values: Mapping[str, Any] | None, source: str) -> OutputKind | None:
        """From ONNX metadata, rt_info or a sidecar; ``None`` when they say nothing about the output.

        Exports before ``output_kind`` existed wrote ``max_depth`` alone (empty for relative models).
        """
        values = values or {}
        kind = values.get("output_kind")
        raw = values.get("max_depth")
        if raw in ("", None):
            max_depth = None
        else:
            try:
                max_depth = float(raw)
            except (TypeError, ValueError):
                raise InputError(f"{source}: max_depth {raw!r} is not a number") from None
        if kind in (None, ""):
            if "max_depth" not in values:
                return None
            kind = METRIC if max_depth is not None else RELATIVE
        try:
            return cls(str(kind), max_depth, source)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None


def resolve_output_kind(found: OutputKind | None, kind: str | None, max_depth: float | None, model: str) -> OutputKind:
    """The output kind of ``model``: what its file says (``found``), else what the user gave, else relative.

    A user's ``kind``/``max_depth`` that contradicts the file is refused: the artefact is the
    authority on what it computes.
    """
    if kind == RELATIVE and max_depth is not None:
        raise InputError(
            f"--max-depth {max_depth:g} is a metric model's depth range; a relative model has none: drop --max-depth, "
            "or give --output-kind metric"
        )
    if kind is None and max_depth is not None:
        if found is None:
            raise InputError(
                f"{model} does not say what it outputs, and --max-depth alone does not make it metric: give "
                f"--output-kind metric --max-depth {max_depth:g} for a metric model, or drop --max-depth"
            )
        kind = METRIC
    if found is None:
        if kind is None:
            return OutputKind(source="default")
        if kind == METRIC and max_depth is None:
            raise InputError(
                f"{model} does not say its depth range: give --max-depth M (metres) with --output-kind metric"
            )
        return OutputKind(kind, max_depth if kind == METRIC else None, "given")
    if kind is not None and (kind != found.kind or (max_depth is not None and max_depth != found.max_depth)):
        said = OutputKind(kind, max_depth if kind == METRIC else None).describe() if kind in OUTPUT_KINDS else kind
        raise InputError(
            f"{model} outputs {found.describe()} (its {found.source}), but {said} was asked for; "
            "drop --output-kind/--max-depth, or re-export the model"
        )
    return found


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")  # their head says what they output, at load


def artefact_output_kind(model: str | os.PathLike) -> OutputKind | None:
    """What an artefact says it outputs in itself, read without loading it, as its backend reads
    it at load: an ONNX file's metadata; an OpenVINO IR's rt_info (``dav2_edge``, else
    ``framework``); ``None`` for other files or one that says nothing."""
    from .metadata import ir_rt_info, onnx_metadata

    suffix = os.fspath(model).lower().rsplit(".", 1)[-1]
    if suffix == "onnx":
        return OutputKind.from_metadata(onnx_metadata(model), "ONNX metadata")
    if suffix == "xml":
        sections = ir_rt_info(model)
        for section in ("dav2_edge", "framework"):
            values = {
                key: value for key, value in sections.get(section, {}).items() if key in ("output_kind", "max_depth")
            }
            found = OutputKind.from_metadata(values, f"OpenVINO rt_info ({section})")
            if found is not None:
                return found
    return None


def declared_output_kind(model: Any, kind: str | None = None, max_depth: float | None = None) -> OutputKind | None:
    """What ``model`` outputs as far as is known before it loads, as the load will find it: what the
    artefact says in itself (ONNX metadata, OpenVINO rt_info: :func:`artefact_output_kind`), else
    its sidecar (every export writes one), then the user's ``kind``/``max_depth``, else relative.
    ``None`` when only the load can tell: a checkpoint (its head) with no sidecar and nothing given."""
    from .metadata import read_sidecar

    found = None
    if isinstance(model, (str, os.PathLike)):
        try:
            found = artefact_output_kind(model) or OutputKind.from_metadata(read_sidecar(model), "sidecar")
        except (ValueError, InputError):  # unreadable or contradictory metadata: the load says so
            found = None
        path = os.fspath(model)
        checkpoint = path.lower().endswith(CHECKPOINT_SUFFIXES) or os.path.isdir(path)
        if found is None and kind is None and max_depth is None and checkpoint:
            return None
    try:
        return resolve_output_kind(found, kind, max_depth, str(model))
    except InputError:  # a request the load refuses, in its own words
        return found or OutputKind(source="default")


@dataclass(frozen=True)
class ScaleShift:
    """``metric_disparity = scale * relative + shift``; depth is its inverse."""

    scale: float
    shift: float
    residual: float  # RMS disparity residual over the points used
    points: int

    def to_metric(self, relative: np.ndarray, max_depth: float = 1e4) -> np.ndarray:
        disparity = self.scale * np.asarray(relative, np.float64) + self.shift
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.where(disparity > 1.0 / max_depth, 1.0 / disparity, np.inf)
        return depth.astype(np.float32)


def _samples(relative: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(relative, depth) pairs at the known pixels; unknown depths (0, negative, NaN, inf) and
    non-finite predictions are left out."""
    known = np.asarray(known, dtype=np.float64)
    if known.shape == relative.shape:  # a sparse depth map: 0 or NaN where unknown
        x, depth = relative.reshape(-1).astype(np.float64), known.reshape(-1)
    elif known.ndim == 2 and known.shape[1] == 3:  # rows of (y, x, depth), pixel centres at integers
        rows = known[np.isfinite(known[:, :2]).all(axis=1)]
        ys, xs = np.rint(rows[:, 0]).astype(np.int64), np.rint(rows[:, 1]).astype(np.int64)
        inside = (ys >= 0) & (ys < relative.shape[0]) & (xs >= 0) & (xs < relative.shape[1])
        x, depth = relative[ys[inside], xs[inside]].astype(np.float64), rows[inside, 2]
    else:
        raise InputError(
            f"known depth must be an HxW map like the prediction {relative.shape} (0/NaN = unknown) "
            f"or an (N, 3) array of (y, x, depth) rows, got shape {known.shape}"
        )
    valid = np.isfinite(depth) & (depth > 0) & np.isfinite(x)
    return x[valid], depth[valid]


def fit_scale_shift(relative: np.ndarray, known: np.ndarray, trim: float = 0.0) -> ScaleShift:
    """Least-squares scale and shift mapping ``relative`` to the inverse of ``known`` depths.

    ``known`` is an HxW map (0, NaN or inf where unknown) or (N, 3) rows of (y, x, depth) with
    pixel coordinates rounded to the nearest pixel. Pairs where the prediction is not finite
    are left out. ``trim`` in [0, 0.5): after a first fit, drop that fraction of points with
    the largest residuals and fit again. A fit whose scale is not positive (larger relative
    values must be nearer) is refused with ``InputError``, as the commands refuse such a scale.
    For per-frame, outlier-robust fits see ``runtime.align.robust_fit``.
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
    if not scale > 0:
        raise InputError(
            f"the known depths give a scale of {scale:.3g}: farther points have larger relative values, "
            "which a relative inverse depth map never has; check that the depths are registered to this "
            "image (pixel rows are (y, x, depth)) and that the map is relative inverse depth, not metres"
        )
    rms = float(np.sqrt(np.mean((scale * x + shift - y) ** 2)))
    return ScaleShift(scale, shift, rms, int(x.size))


def check_focal(focal: Any, what: str = "focal length") -> float:
    """``focal`` as a float, or ``InputError`` when it is not a positive finite number of pixels
    (``True`` and ``"300"`` are not numbers of pixels)."""
    if isinstance(focal, (bool, np.bool_, str, bytes)):
        raise InputError(f"the {what} must be a number of pixels, got {focal!r}")
    try:
        value = float(focal)
    except (TypeError, ValueError):
        raise InputError(f"the {what} must be a number of pixels, got {focal!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"the {what} must be a positive finite number of pixels, got {focal!r}")
    return value


def network_focal(fx: float, fy: float, image_hw: tuple[int, int], network_hw: tuple[int, int]) -> float:
    """The focal length in pixels of the image the network sees, from the camera's ``fx``/``fy`` at the
    image's own size: each scaled by the resize along its axis, then averaged (as the official
    code averages ``fx`` and ``fy``)."""
    fx, fy = check_focal(fx, "focal length fx"), check_focal(fy, "focal length fy")
    return 0.5 * (fx * network_hw[1] / image_hw[1] + fy * network_hw[0] / image_hw[0])


def metres_from_focal(output: np.ndarray, focal_network: float) -> np.ndarray:
    """A ``metres_per_focal`` model's output in metres: ``focal * output / 300``."""
    return (np.asarray(output, np.float32) * np.float32(check_focal(focal_network) / FOCAL_DIVISOR)).astype(np.float32)


def camera_focal(focal: Any, intrinsics: Any, output: OutputKind, source: str) -> tuple[float, float] | None:
    """``(fx, fy)`` in pixels of the input images from ``focal=`` or ``intrinsics=`` (a 3x3 matrix, an
    ``Intrinsics``, or ``(fx, fy, cx, cy)``); only a ``metres_per_focal`` model takes one."""
    if focal is None and intrinsics is None:
        return None
    if not output.needs_focal:
        raise InputError(
            f"focal=/intrinsics= are for models whose output is depth per focal length; {source} outputs "
            f"{output.describe()}"
        )
    if focal is not None and intrinsics is not None:
        raise InputError("give focal= or intrinsics=, not both")
    if focal is not None:
        fx = fy = focal
    elif hasattr(intrinsics, "fx"):
        fx, fy = intrinsics.fx, intrinsics.fy
    else:
        k = np.asarray(intrinsics)
        if k.dtype.kind not in "iuf":
            raise InputError(f"intrinsics must be numbers of pixels, got {intrinsics!r}")
        k = k.astype(np.float64)
        if k.shape == (3, 3):
            fx, fy = k[0, 0], k[1, 1]
        elif k.shape == (4,):
            fx, fy = k[0], k[1]
        else:
            raise InputError(f"intrinsics must be a 3x3 matrix or (fx, fy, cx, cy), got shape {k.shape}")
    return check_focal(fx, "focal length fx"), check_focal(fy, "focal length fy")
