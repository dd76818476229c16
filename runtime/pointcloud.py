"""Point clouds from metric depth and pinhole intrinsics, written as PLY or PointCloud2 bytes.

Points are in the camera's optical frame (ROS REP 103: x right, y down, z forward), in the
units of the depth (metres for REP 118 depth images). The model's output is relative inverse
depth, not metres: convert it first, explicitly, with ``fit_scale_shift(...).to_metric`` or a
known ``ScaleShift``. Nothing here guesses a scale.

Rays come from the intrinsics and, where the camera info carries one, its distortion model
(``plumb_bob``, ``rational_polynomial`` or ``equidistant``), so a depth map predicted on a raw,
distorted image gives straight walls; a rectified image's camera info has zero distortion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

from commands.errors import InputError

from .io.files import atomic_write_bytes

# Coefficients of each model in CameraInfo.d. "plumb_bob": 5, (k1, k2, t1, t2, k3), stated in
# sensor_msgs/msg/CameraInfo.msg. The other two names of sensor_msgs/distortion_models.h are
# OpenCV's models, which image_geometry hands D to unchanged: "rational_polynomial" is
# cv::undistortPoints' rational model, 8 (k1, k2, p1, p2, k3, k4, k5, k6), and "equidistant" is
# cv::fisheye's, 4 (k1, k2, k3, k4). An empty D means no distortion.
DISTORTION_COEFFICIENTS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
DISTORTION_MODELS = tuple(DISTORTION_COEFFICIENTS)
#: Most points in one cloud unless told otherwise: a whole 1920x1080 frame (2,073,600 pixels) fits;
#: larger frames take every Nth pixel (:func:`bounded_stride`). 2^21 points are 34 MB as a
#: coloured PointCloud2; a 64-megapixel frame at stride 1 would be 1 GB, and several times that
#: in memory while it is built.
MAX_POINTS = 2**21


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera: focal lengths and principal point in pixels, optional lens distortion.

    ``distortion`` holds OpenCV's coefficients for ``model`` (ROS ``CameraInfo.d``); empty or
    all zero means an ideal pinhole. ``width``/``height`` (0 = unknown) are the image size the
    numbers belong to; :meth:`for_image` rescales them to another size.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()
    model: str = "plumb_bob"
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite([self.fx, self.fy, self.cx, self.cy]).all() and self.fx > 0 and self.fy > 0):
            raise InputError(
                f"intrinsics need positive finite focal lengths, got fx={self.fx}, fy={self.fy} "
                "(an all-zero camera info means the camera is not calibrated)"
            )
        if not np.isfinite(self.distortion).all():
            raise InputError(f"distortion coefficients must be finite numbers, got {list(self.distortion)}")
        if self.model not in DISTORTION_MODELS and any(self.distortion):
            raise InputError(
                f"distortion model {self.model!r} is not supported; use one of {', '.join(DISTORTION_MODELS)} "
                "or a rectified image with zero distortion"
            )
        expected = DISTORTION_COEFFICIENTS.get(self.model)
        if expected is not None and len(self.distortion) not in (0, expected):
            raise InputError(
                f"{self.model} distortion has {expected} coefficients, got {len(self.distortion)} "
                f"({list(self.distortion)}); the camera info is malformed"
            )

    @classmethod
    def from_matrix(
        cls,
        k: Sequence[float] | np.ndarray,
        distortion: Sequence[float] = (),
        model: str = "plumb_bob",
        width: int = 0,
        height: int = 0,
    ) -> Intrinsics:
        """From a 3x3 camera matrix (or its 9 row-major values, as in ``CameraInfo.k``)."""
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise InputError(f"a camera matrix has 9 values, got {k.size}")
        return cls(
            float(k[0]),
            float(k[4]),
            float(k[2]),
            float(k[5]),
            tuple(float(d) for d in distortion),
            model,
            int(width),
            int(height),
        )

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def for_image(self, height: int, width: int) -> Intrinsics:
        """The intrinsics for the image resized to ``height x width`` (no change if the size is unknown)."""
        if not self.width or not self.height or (self.width, self.height) == (width, height):
            return self
        sx, sy = width / self.width, height / self.height
        # Pixel centres sit at integer coordinates, so the principal point scales about -0.5.
        return replace(
            self,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=width,
            height=height,
        )


class PointCloud(NamedTuple):
    """``points``: N x 3 float32 (x right, y down, z forward); ``colors``: N x 3 uint8 RGB or ``None``."""

    points: np.ndarray
    colors: np.ndarray | None


@lru_cache(maxsize=8)
def _rays(intrinsics: Intrinsics, height: int, width: int, stride: int) -> np.ndarray:
    """``(h, w, 2)`` float32 ``(x/z, y/z)`` of the pixels ``[::stride, ::stride]`` of an image."""
    v, u = np.mgrid[0:height:stride, 0:width:stride].astype(np.float64)
    normalised = _normalise_pixels(np.stack([u, v], axis=-1).reshape(-1, 2), intrinsics)
    return normalised.reshape((*u.shape, 2)).astype(np.float32)


def bounded_stride(height: int, width: int, stride: int = 1, max_points: int | None = MAX_POINTS) -> int:
    """The smallest stride >= ``stride`` that gives an HxW image at most ``max_points`` points
    (``None``: no bound)."""
    if max_points is None:
        return stride
    if max_points < 1:
        raise InputError(f"max_points must be positive, got {max_points}")
    stride = max(stride, math.isqrt(height * width // max_points))
    while -(-height // stride) * -(-width // stride) > max_points:
        stride += 1
    return stride


def _point_colours(image: np.ndarray, shape: tuple[int, ...], stride: int, valid: np.ndarray) -> np.ndarray:
    """N x 3 uint8 RGB for the valid pixels of an HxW gray, HxWx3 BGR or HxWx4 BGRA image."""
    image = np.asarray(image)
    if image.shape[:2] != shape:
        raise InputError(f"the colour image is {image.shape[:2]}, the depth map {shape}: they must match")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise InputError(f"colours come from an HxW gray, HxWx3 BGR or HxWx4 BGRA image, got shape {image.shape}")
    picked = image[::stride, ::stride][valid]
    if picked.dtype.kind == "f":
        # OpenCV's convention for float images: [0, 1] is black to white.
        if picked.size and not (np.all(picked >= 0) and np.all(picked <= 1)):
            raise InputError(
                f"a float colour image must hold values in [0, 1] (OpenCV's convention), got "
                f"{picked.min():.3g}..{picked.max():.3g}; give uint8 for 0-255 values"
            )
        picked = np.rint(picked * 255)
    elif picked.dtype != np.uint8:
        raise InputError(f"colours come from uint8 or [0, 1] float images, got {picked.dtype}")
    if picked.ndim == 1:
        return np.repeat(picked[:, None], 3, axis=1).astype(np.uint8)
    return np.ascontiguousarray(picked[:, 2::-1], dtype=np.uint8)  # BGR(A) -> RGB, alpha dropped


def depth_to_points(
    depth_m: np.ndarray,
    intrinsics: Intrinsics,
    image: np.ndarray | None = None,
    stride: int = 1,
    max_range: float | None = None,
) -> PointCloud:
    """Points for every ``stride``-th pixel of a metric depth map with a finite, positive depth.

    ``depth_m`` is HxW depth along the optical axis in metres (NaN or inf where invalid);
    ``image`` (the same size: HxWx3 BGR, HxWx4 BGRA or HxW gray, uint8 or float in [0, 1]) gives
    each point its colour; ``max_range`` drops points farther than that along the optical axis.
    Every point is finite: pixels whose ray the lens model cannot undo are dropped too.
    """
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise InputError(f"expected an HxW depth map, got shape {depth_m.shape}")
    if not isinstance(stride, int) or stride < 1:
        raise InputError(f"stride must be a positive integer, got {stride!r}")
    height, width = depth_m.shape
    z = depth_m[::stride, ::stride].astype(np.float32)
    valid = np.isfinite(z) & (z > 0)
    if max_range is not None:
        valid &= z <= max_range
    rays = _rays(intrinsics.for_image(height, width), height, width, stride)[valid]
    zv = z[valid]
    points = np.empty((zv.size, 3), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        points[:, 0] = rays[:, 0] * zv
        points[:, 1] = rays[:, 1] * zv
    points[:, 2] = zv
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():  # rays a lens model cannot undo (NaN), or beyond float32: not points
        points = points[finite]
        valid[valid] = finite
    colors = None if image is None else _point_colours(image, depth_m.shape, stride, valid)
    return PointCloud(points, colors)


def ply_bytes(cloud: PointCloud) -> bytes:
    """A binary little-endian PLY: float x, y, z and, with colours, uchar red, green, blue per vertex."""
    points, colors = cloud
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(points)}"]
    header += ["property float x", "property float y", "property float z"]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    rows = np.empty(len(points), dtype=np.dtype(fields))
    for axis, name in enumerate("xyz"):
        rows[name] = points[:, axis]
    if colors is not None:
        for channel, name in enumerate(("red", "green", "blue")):
            rows[name] = colors[:, channel]
    return ("\n".join([*header, "end_header"]) + "\n").encode("ascii") + rows.tobytes()


def write_ply(path, cloud: PointCloud):
    """Write ``cloud`` as a binary PLY (Open3D, CloudCompare, MeshLab read it), atomically."""
    return atomic_write_bytes(path, ply_bytes(cloud))


# sensor_msgs/PointField datatype for FLOAT32.
FLOAT32 = 7


class PointCloud2Layout(NamedTuple):
    """The fields of a ``sensor_msgs/PointCloud2`` for an unorganised cloud (height 1)."""

    fields: list[tuple[str, int, int, int]]  # (name, offset, datatype, count)
    point_step: int
    row_step: int
    width: int
    data: np.ndarray  # uint8, little-endian


def pointcloud2_layout(cloud: PointCloud) -> PointCloud2Layout:
    """x, y, z float32 and, with colours, PCL's ``rgb``: a float32 whose bits are 0x00RRGGBB.

    Only valid points are stored, so the cloud is dense (no NaN) and one row long.
    """
    points, colors = cloud
    names = ["x", "y", "z"] + (["rgb"] if colors is not None else [])
    step = 4 * len(names)
    packed = np.empty((len(points), len(names)), dtype="<f4")
    packed[:, :3] = points
    if colors is not None:
        c = colors.astype(np.uint32)
        packed[:, 3] = ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).astype("<u4").view("<f4")
    fields = [(name, 4 * i, FLOAT32, 1) for i, name in enumerate(names)]
    return PointCloud2Layout(fields, step, step * len(points), len(points), packed.reshape(-1).view(np.uint8))


class ProjectedPoints(NamedTuple):
    """Points seen by a camera: ``pixels`` M x 2 (column, row; pixel centres at integers),
    ``depth`` M along the optical axis, and ``dropped``: how many were left out, by reason."""

    pixels: np.ndarray
    depth: np.ndarray
    dropped: dict


@lru_cache(maxsize=8)
def _view_bounds(intrinsics: Intrinsics, height: int, width: int) -> tuple[float, float, float, float]:
    """``(x/z, y/z)`` bounds of what the image sees, from its undistorted border (1 % margin).

    A distortion polynomial folds points far outside the view back into the image; points
    outside these bounds are never projected through it.
    """
    edge = np.concatenate(
        [
            np.stack([np.linspace(-0.5, width - 0.5, 64), np.full(64, -0.5)], 1),
            np.stack([np.linspace(-0.5, width - 0.5, 64), np.full(64, height - 0.5)], 1),
            np.stack([np.full(64, -0.5), np.linspace(-0.5, height - 0.5, 64)], 1),
            np.stack([np.full(64, width - 0.5), np.linspace(-0.5, height - 0.5, 64)], 1),
        ]
    )
    normalised = _normalise_pixels(edge, intrinsics)
    low, high = normalised.min(axis=0), normalised.max(axis=0)
    margin = 0.01 * (high - low)
    return float(low[0] - margin[0]), float(high[0] + margin[0]), float(low[1] - margin[1]), float(high[1] + margin[1])


def _normalise_pixels(pixels: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    if not any(intrinsics.distortion):
        with np.errstate(over="ignore"):  # an absurd focal length gives inf rays, dropped as points
            return (pixels - [intrinsics.cx, intrinsics.cy]) / [intrinsics.fx, intrinsics.fy]
    coeffs = np.asarray(intrinsics.distortion, dtype=np.float64)
    pixels = pixels.reshape(-1, 1, 2).astype(np.float64)
    if intrinsics.model == "equidistant":
        return cv2.fisheye.undistortPoints(pixels, intrinsics.matrix, coeffs[:4]).reshape(-1, 2)
    return cv2.undistortPoints(pixels, intrinsics.matrix, coeffs).reshape(-1, 2)


def _distort(normalised: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """OpenCV's lens model (k1, k2, p1, p2[, k3[, k4, k5, k6]]: plumb_bob and rational_polynomial)
    on N x 2 normalised coordinates; what cv2.projectPoints computes, without its Jacobians (4x faster)."""
    k = np.zeros(8)
    k[: coeffs.size] = coeffs
    x, y = normalised[:, 0], normalised[:, 1]
    r2 = x * x + y * y
    radial = (1 + r2 * (k[0] + r2 * (k[1] + r2 * k[4]))) / (1 + r2 * (k[5] + r2 * (k[6] + r2 * k[7])))
    xy = x * y
    return np.stack(
        [x * radial + 2 * k[2] * xy + k[3] * (r2 + 2 * x * x), y * radial + k[2] * (r2 + 2 * y * y) + 2 * k[3] * xy],
        axis=1,
    )


def project_points(points: np.ndarray, intrinsics: Intrinsics, height: int, width: int) -> ProjectedPoints:
    """Project N x 3 points in the camera's optical frame (REP 103) into its ``height x width`` image.

    The inverse of :func:`depth_to_points`: the lens distortion of the intrinsics is applied.
    Points that are not finite, behind the camera (z <= 1 mm) or outside the image are left out
    and counted in ``dropped`` (``non_finite``, ``behind``, ``outside``).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"expected N x 3 points, got shape {points.shape}")
    finite = np.isfinite(points).all(axis=1)
    front = finite & (points[:, 2] > 1e-3)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = points[:, :2] / points[:, 2:3]
    x_low, x_high, y_low, y_high = _view_bounds(intrinsics, height, width)
    seen = front & (normalised[:, 0] >= x_low) & (normalised[:, 0] <= x_high)
    seen &= (normalised[:, 1] >= y_low) & (normalised[:, 1] <= y_high)
    candidates = points[seen]
    coeffs = np.asarray(intrinsics.distortion, dtype=np.float64)
    if intrinsics.model != "equidistant" and coeffs.size <= 8:
        pixels = _distort(normalised[seen], coeffs) * [intrinsics.fx, intrinsics.fy] + [intrinsics.cx, intrinsics.cy]
    else:
        zero = np.zeros(3)
        if intrinsics.model == "equidistant":
            pixels, _ = cv2.fisheye.projectPoints(
                candidates.reshape(-1, 1, 3), zero, zero, intrinsics.matrix, coeffs[:4]
            )
        else:
            pixels, _ = cv2.projectPoints(candidates, zero, zero, intrinsics.matrix, coeffs)
        pixels = pixels.reshape(-1, 2)
    inside = (
        (pixels[:, 0] >= -0.5) & (pixels[:, 0] < width - 0.5) & (pixels[:, 1] >= -0.5) & (pixels[:, 1] < height - 0.5)
    )
    dropped = {
        "non_finite": int((~finite).sum()),
        "behind": int((finite & ~front).sum()),
        "outside": int((front & ~seen).sum() + (~inside).sum()),
    }
    return ProjectedPoints(pixels[inside], candidates[inside, 2], dropped)
