"""Point clouds: geometry against hand-built cases, PLY read back by a reader written to the spec."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from runtime import InputError, fit_scale_shift
from runtime.pointcloud import (
    MAX_POINTS,
    Intrinsics,
    PointCloud,
    bounded_stride,
    depth_to_points,
    ply_bytes,
    pointcloud2_layout,
    write_ply,
)

FX, FY, CX, CY = 100.0, 120.0, 31.5, 23.5
H, W = 48, 64


def pixel_grid(stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:H:stride, 0:W:stride]
    return u.reshape(-1).astype(np.float64), v.reshape(-1).astype(np.float64)


def test_a_fronto_parallel_plane_lands_at_its_depth_on_the_pixel_rays():
    cloud = depth_to_points(np.full((H, W), 2.5, np.float32), Intrinsics(FX, FY, CX, CY))
    u, v = pixel_grid()
    assert cloud.points.dtype == np.float32 and cloud.points.shape == (H * W, 3) and cloud.colors is None
    np.testing.assert_allclose(cloud.points[:, 2], 2.5)
    np.testing.assert_allclose(cloud.points[:, 0], (u - CX) / FX * 2.5, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cloud.points[:, 1], (v - CY) / FY * 2.5, rtol=1e-6, atol=1e-6)
    # Optical frame: the top-left pixel is left of (x < 0) and above (y < 0) the optical axis.
    assert cloud.points[0, 0] < 0 and cloud.points[0, 1] < 0


def test_relative_depth_becomes_points_only_through_an_explicit_metric_fit():
    z = np.linspace(1.0, 4.0, W)[None, :].repeat(H, axis=0)  # a wall receding to the right
    relative = (3.0 / z + 0.2).astype(np.float32)  # what a model might predict: affine in 1/z
    known = np.zeros_like(z)
    known[::7, ::9] = z[::7, ::9]  # sparse lidar returns
    metric = fit_scale_shift(relative, known).to_metric(relative)
    cloud = depth_to_points(metric, Intrinsics(FX, FY, CX, CY), stride=4)
    np.testing.assert_allclose(cloud.points[:, 2], z[::4, ::4].reshape(-1), rtol=1e-4)


def test_stride_invalid_pixels_and_max_range():
    depth = np.full((H, W), 3.0, np.float32)
    depth[0, 0], depth[0, 2], depth[2, 0], depth[2, 2] = np.nan, np.inf, 0.0, -1.0
    depth[4, 4] = 9.0
    cloud = depth_to_points(depth, Intrinsics(FX, FY, CX, CY), stride=2, max_range=5.0)
    u, v = pixel_grid(2)
    keep = ~np.isin(v * W + u, [0, 2, 2 * W, 2 * W + 2, 4 * W + 4])
    assert len(cloud.points) == keep.sum() == (H // 2) * (W // 2) - 5
    np.testing.assert_allclose(cloud.points[:, 0], ((u - CX) / FX * 3.0)[keep], rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="stride"):
        depth_to_points(depth, Intrinsics(FX, FY, CX, CY), stride=0)


def test_colours_come_from_the_same_pixels_as_rgb():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = np.ones((H, W), np.float32)
    depth[1, 1] = np.nan
    cloud = depth_to_points(depth, Intrinsics(FX, FY, CX, CY), bgr)
    expected = bgr[..., ::-1].reshape(-1, 3)
    np.testing.assert_array_equal(cloud.colors, np.delete(expected, W + 1, axis=0))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert (
        depth_to_points(depth, Intrinsics(FX, FY, CX, CY), gray).colors[:, 0] == np.delete(gray.ravel(), W + 1)
    ).all()
    with pytest.raises(InputError, match="must match"):
        depth_to_points(depth, Intrinsics(FX, FY, CX, CY), bgr[:-1])


def test_bgra_and_float_images_colour_points_as_their_pixels():
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = np.ones((H, W), np.float32)
    camera = Intrinsics(FX, FY, CX, CY)
    want = depth_to_points(depth, camera, bgr).colors
    np.testing.assert_array_equal(want, bgr[..., ::-1].reshape(-1, 3))
    bgra = np.dstack([bgr, np.full((H, W), 7, np.uint8)])  # alpha is not red
    np.testing.assert_array_equal(depth_to_points(depth, camera, bgra).colors, want)
    as_float = bgr.astype(np.float32) / 255  # OpenCV's float convention: [0, 1]
    np.testing.assert_array_equal(depth_to_points(depth, camera, as_float).colors, want)
    np.testing.assert_array_equal(depth_to_points(depth, camera, bgr[..., :1]).colors[:, 0], bgr[..., 0].ravel())
    with pytest.raises(InputError, match=r"values in \[0, 1\].*got 0..255"):
        depth_to_points(depth, camera, bgr.astype(np.float32))
    nan = as_float.copy()
    nan[3, 3, 0] = np.nan
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        depth_to_points(depth, camera, nan)
    with pytest.raises(InputError, match="uint8 or \\[0, 1\\] float images, got uint16"):
        depth_to_points(depth, camera, bgr.astype(np.uint16))
    with pytest.raises(InputError, match="HxWx4 BGRA image, got shape"):
        depth_to_points(depth, camera, np.zeros((H, W, 2), np.uint8))


@pytest.mark.parametrize(
    "model,coeffs",
    [
        ("plumb_bob", (0.1,) * 6),
        ("plumb_bob", (0.1, 0.0, 0.0)),
        ("rational_polynomial", (0.1,) * 6),
        ("equidistant", (0.1, 0.0)),
    ],
)
def test_a_distortion_of_the_wrong_length_for_its_model_is_refused(model, coeffs):
    expected = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}[model]
    with pytest.raises(InputError, match=rf"^{model} distortion has {expected} coefficients, got {len(coeffs)} "):
        Intrinsics(FX, FY, CX, CY, coeffs, model)
    Intrinsics(FX, FY, CX, CY, (0.1,) + (0.0,) * (expected - 1), model)  # the documented count
    Intrinsics(FX, FY, CX, CY, (), model)  # none: a rectified image


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_distortion_is_refused(bad):
    with pytest.raises(InputError, match="distortion coefficients must be finite numbers"):
        Intrinsics(FX, FY, CX, CY, (0.1, bad, 0.0, 0.0, 0.0))


def test_points_are_finite_whatever_the_rays():
    # A focal length so small that most rays overflow to inf: those pixels give no point (a
    # PointCloud2 built from these is marked dense, which promises no NaN or inf).
    cloud = depth_to_points(np.full((4, 5), 2.0, np.float32), Intrinsics(1e-320, 1.0, 2.0, 1.5), np.zeros((4, 5, 3)))
    assert np.isfinite(cloud.points).all() and len(cloud.points) == len(cloud.colors) == 4  # column u = cx only
    np.testing.assert_array_equal(cloud.points[:, 0], 0.0)


@pytest.mark.parametrize("height,width,stride", [(1080, 1920, 1), (2160, 3840, 2), (7900, 7900, 6), (480, 640, 3)])
def test_the_stride_grows_only_as_far_as_the_point_bound_needs(height, width, stride):
    requested = 3 if (height, width) == (480, 640) else 1
    got = bounded_stride(height, width, requested)
    assert got == stride and -(-height // got) * -(-width // got) <= MAX_POINTS
    if got > requested:  # the smallest stride that keeps the bound
        assert -(-height // (got - 1)) * -(-width // (got - 1)) > MAX_POINTS
    assert bounded_stride(7900, 7900, 1, None) == 1


@pytest.mark.parametrize(
    "model,coeffs",
    [("plumb_bob", (-0.25, 0.08, 0.001, -0.002, 0.0)), ("equidistant", (0.05, -0.01, 0.002, 0.0))],
)
def test_distorted_cameras_give_rays_that_project_back_to_their_pixels(model, coeffs):
    intrinsics = Intrinsics(FX, FY, CX, CY, coeffs, model)
    cloud = depth_to_points(np.full((H, W), 2.0, np.float32), intrinsics, stride=3)
    k, d = intrinsics.matrix, np.array(coeffs)
    if model == "equidistant":
        projected = cv2.fisheye.projectPoints(
            cloud.points.reshape(-1, 1, 3).astype(np.float64), np.zeros(3), np.zeros(3), k, d
        )[0]
    else:
        projected = cv2.projectPoints(cloud.points.astype(np.float64), np.zeros(3), np.zeros(3), k, d)[0]
    u, v = pixel_grid(3)
    np.testing.assert_allclose(projected.reshape(-1, 2), np.stack([u, v], axis=1), atol=0.02)


def test_intrinsics_from_a_camera_matrix_and_for_a_resized_image():
    full = Intrinsics.from_matrix(
        [[2 * FX, 0, 2 * CX + 0.5], [0, 2 * FY, 2 * CY + 0.5], [0, 0, 1]], width=2 * W, height=2 * H
    )
    half = full.for_image(H, W)
    assert (half.fx, half.fy, half.cx, half.cy) == pytest.approx((FX, FY, CX, CY))
    assert Intrinsics(FX, FY, CX, CY).for_image(10, 10) == Intrinsics(FX, FY, CX, CY)  # size unknown: unchanged
    with pytest.raises(InputError, match="not calibrated"):
        Intrinsics.from_matrix(np.zeros(9))
    with pytest.raises(InputError, match="not supported"):
        Intrinsics(FX, FY, CX, CY, (0.1,), "fov")


def read_ply(data: bytes) -> dict[str, np.ndarray]:
    """A binary little-endian PLY's vertex properties, read as the PLY format describes it."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:end].decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    sizes = {"char": "i1", "uchar": "u1", "short": "<i2", "ushort": "<u2", "int": "<i4", "uint": "<u4"}
    sizes |= {"float": "<f4", "double": "<f8"}
    count, fields = 0, []
    for line in lines[2:-1]:
        words = line.split()
        if words[0] == "element":
            assert words[1] == "vertex"
            count = int(words[2])
        elif words[0] == "property":
            fields.append((words[2], sizes[words[1]]))
    rows = np.frombuffer(data[end:], dtype=np.dtype(fields), count=count)
    assert len(data) - end == count * rows.dtype.itemsize  # nothing left over
    return {name: rows[name] for name, _ in fields}


def test_ply_round_trips_through_a_reader_written_to_the_spec(tmp_path):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (50, 3), dtype=np.uint8)
    path = write_ply(tmp_path / "cloud.ply", PointCloud(points, colors))
    read = read_ply(path.read_bytes())
    assert list(read) == ["x", "y", "z", "red", "green", "blue"]
    np.testing.assert_array_equal(np.stack([read["x"], read["y"], read["z"]], axis=1), points)
    np.testing.assert_array_equal(np.stack([read["red"], read["green"], read["blue"]], axis=1), colors)
    bare = read_ply(ply_bytes(PointCloud(points[:3], None)))
    assert list(bare) == ["x", "y", "z"] and len(bare["x"]) == 3
    # 15 bytes a point with colours; the header only changes in its vertex count (50 vs 10).
    assert len(ply_bytes(PointCloud(points, colors))) - len(ply_bytes(PointCloud(points[:10], colors[:10]))) == 40 * 15


def test_pointcloud2_layout_packs_pcl_rgb():
    points = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    colors = np.array([[255, 0, 10], [1, 2, 3]], np.uint8)
    layout = pointcloud2_layout(PointCloud(points, colors))
    assert layout.fields == [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]
    assert (layout.point_step, layout.row_step, layout.width, layout.data.size) == (16, 32, 2, 32)
    rows = layout.data.reshape(2, 16)
    np.testing.assert_array_equal(rows[:, :12].copy().view("<f4"), points)
    assert rows[:, 12:].copy().view("<u4")[:, 0].tolist() == [0xFF000A, 0x010203]
    assert pointcloud2_layout(PointCloud(points, None)).point_step == 12
