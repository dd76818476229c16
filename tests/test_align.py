"""Per-frame alignment: fit_scale_shift's edge cases, the robust fit, the temporal filter, projection,
and the acceptance case: per-frame metric depth within 2 % where constants are far off."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import InputError, fit_scale_shift
from runtime.align import (
    AlignSettings,
    FilterSettings,
    FitSettings,
    FrameAligner,
    SparseSamples,
    TemporalFilter,
    robust_fit,
    sample_points,
)
from runtime.align.temporal import FIT, GATED, HELD, NONE, anchors
from runtime.metric import OutputKind, ScaleShift
from runtime.pointcloud import Intrinsics, depth_to_points, project_points
from runtime.ros.tf import TfTree
from tests import scenes


def _relative(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    relative = rng.uniform(0.5, 5.0, (40, 50))
    return relative, 1.0 / (0.2 * relative + 0.05)


def test_fit_scale_shift_drops_non_finite_predictions_at_known_pixels(capfd):
    relative, depth = _relative()
    sparse = np.where(np.random.default_rng(1).random(depth.shape) < 0.1, depth, 0.0)
    want = fit_scale_shift(relative, sparse)
    broken = relative.copy()
    known = np.argwhere(sparse > 0)
    broken[tuple(known[0])] = np.nan
    broken[tuple(known[1])] = np.inf
    broken[tuple(known[2])] = -np.inf
    got = fit_scale_shift(broken, sparse)
    assert got.points == want.points - 3
    assert got.scale == pytest.approx(0.2, rel=1e-6) and got.shift == pytest.approx(0.05, abs=1e-7)
    rows = np.column_stack([known, sparse[tuple(known.T)]])
    assert fit_scale_shift(broken, rows).points == want.points - 3
    assert fit_scale_shift(broken, sparse, trim=0.1).scale == pytest.approx(0.2, rel=1e-6)
    assert capfd.readouterr().err == ""  # no LAPACK chatter


def test_fit_scale_shift_refuses_a_negative_scale():
    relative, _ = _relative()
    with pytest.raises(InputError, match="scale of -"):
        fit_scale_shift(relative, 1.0 / (0.3 - 0.05 * relative))  # farther where the model says nearer


def test_pixel_rows_are_rounded_and_inf_depth_is_unknown():
    relative = np.zeros((4, 4))
    relative[3, 3], relative[1, 1] = 2.0, 1.0
    depth = {2.0: 1.0 / (0.5 * 2.0 + 0.1), 1.0: 1.0 / (0.5 * 1.0 + 0.1)}
    rows = np.array([[2.6, 3.4, depth[2.0]], [0.7, 1.2, depth[1.0]], [0.0, 0.0, np.inf], [2.0, 2.0, np.nan]])
    fit = fit_scale_shift(relative, rows)  # (2.6, 3.4) is pixel (3, 3); truncation would read (2, 3) = 0
    assert fit.points == 2 and fit.scale == pytest.approx(0.5) and fit.shift == pytest.approx(0.1)
    as_map = np.zeros((4, 4))
    as_map[3, 3], as_map[1, 1], as_map[0, 0] = depth[2.0], depth[1.0], np.inf
    same = fit_scale_shift(relative, as_map)
    assert (same.scale, same.shift, same.points) == pytest.approx((fit.scale, fit.shift, fit.points))


def test_robust_fit_ignores_outliers_and_says_why_it_refuses():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 3.0, 2000)
    depth = 1.0 / (0.4 * x + 0.1) * (1 + 0.01 * rng.standard_normal(2000))
    wrong = rng.random(2000) < 0.1
    depth[wrong] *= rng.uniform(1.5, 3.0, wrong.sum())  # multipath and glass: returns from behind
    result = robust_fit(x, depth)
    assert result.fit is not None and result.reason == ""
    assert result.fit.scale == pytest.approx(0.4, rel=0.01) and result.fit.shift == pytest.approx(0.1, abs=0.005)
    assert 0.85 * 2000 < result.inliers < 0.95 * 2000
    assert abs(np.polyfit(x, 1 / depth, 1)[0] - 0.4) > 0.01  # plain least squares is pulled off by the outliers
    assert "too few points (5 < 20)" in robust_fit(x[:5], depth[:5]).reason
    narrow = rng.uniform(2.0, 2.05, 100)  # a wall facing the camera: scale and shift not separable
    flat = robust_fit(narrow, 1.0 / (0.4 * narrow + 0.1))
    assert flat.fit is None and "span too little depth" in flat.reason
    backwards = robust_fit(x, 1.0 / (1.0 - 0.2 * x))
    assert backwards.fit is None and backwards.reason == "no positive scale fits the points"
    out_of_range = robust_fit(x, depth * 1000, FitSettings(max_depth=100))
    assert out_of_range.fit is None and out_of_range.points < 100
    scale_only = robust_fit(1 / depth[~wrong] / 0.9, depth[~wrong], FitSettings(shift=False))
    assert scale_only.fit.shift == 0.0 and scale_only.fit.scale == pytest.approx(0.9, rel=1e-6)


def test_the_filter_is_invariant_to_the_networks_affine_gates_jumps_and_holds_for_a_bounded_time():
    ms = 1_000_000
    relative = np.linspace(0.2, 3.0, 100)
    truth = ScaleShift(0.4, 0.1, 0.0, 100)
    filt = TemporalFilter(FilterSettings(max_jump=0.25, jump_frames=3, hold=0.2))
    for i, (gain, offset) in enumerate([(1.0, 0.0), (2.5, -1.0), (0.6, 0.7)]):
        # The same scene through another affine: the filter's output is the frame's true fit.
        r = gain * relative + offset
        frame_fit = ScaleShift(truth.scale / gain, truth.shift - truth.scale * offset / gain, 0.0, 100)
        used, status = filt.update(i * 100 * ms, frame_fit, anchors(r))
        assert status == FIT
        np.testing.assert_allclose(used.scale * r + used.shift, truth.scale * relative + truth.shift, rtol=1e-9)
    # A fit on a few noisy points is smoothed (it moves the estimate part of the way); a fit on
    # many points is taken almost as it is.
    nudged = ScaleShift(truth.scale * 1.1, truth.shift * 1.1, 0.05, 20)
    used, status = filt.update(250 * ms, nudged, anchors(relative))
    assert status == FIT and truth.scale < used.scale < truth.scale * 1.09
    sharp = ScaleShift(truth.scale, truth.shift, 0.01, 5000)
    used, _ = filt.update(350 * ms, sharp, anchors(relative))
    assert used.scale == pytest.approx(truth.scale, rel=0.01)
    jump = ScaleShift(truth.scale * 2, truth.shift * 2, 0.0, 100)
    used, status = filt.update(450 * ms, jump, anchors(relative))
    assert status == GATED and used.scale == pytest.approx(truth.scale, rel=0.01)
    used, status = filt.update(500 * ms, None, anchors(relative))
    assert status == HELD and used.scale == pytest.approx(truth.scale, rel=0.01)
    assert filt.update(510 * ms, jump, anchors(relative))[1] == GATED
    used, status = filt.update(520 * ms, jump, anchors(relative))  # the third in a row: the scene changed
    assert status == FIT and used.scale == pytest.approx(jump.scale)
    assert filt.update(650 * ms, None, anchors(relative))[1] == HELD
    assert filt.update(750 * ms, None, anchors(relative)) == (None, NONE)  # past the hold: no guess


def test_projection_inverts_back_projection_through_distortion_and_counts_what_it_drops():
    intr = Intrinsics.from_matrix([300, 0, 159.5, 0, 310, 119.5, 0, 0, 1], (-0.28, 0.07, 1e-3, -5e-4, 0.0))
    depth = np.full((240, 320), 4.0)
    cloud = depth_to_points(depth, intr, stride=7)
    projected = project_points(cloud.points, intr, 240, 320)
    v, u = np.mgrid[0:240:7, 0:320:7]
    np.testing.assert_allclose(projected.pixels, np.stack([u.ravel(), v.ravel()], 1), atol=0.05)
    assert projected.dropped == {"non_finite": 0, "behind": 0, "outside": 0}
    extra = np.array([[0, 0, -1.0], [np.nan, 0, 1], [40.0, 0, 1.0], [0, 0, 0.0]])
    # (40, 0, 1) is far outside the view; the lens polynomial would fold it back into the image.
    folded = intr.fx * 40 * (1 - 0.28 * 1600 + 0.07 * 1600**2) + intr.cx
    assert np.isfinite(folded)
    dropped = project_points(extra, intr, 240, 320).dropped
    assert dropped == {"non_finite": 1, "behind": 2, "outside": 1}
    with pytest.raises(InputError, match="N x 3"):
        project_points(np.zeros((3, 2)), intr, 240, 320)


@pytest.mark.parametrize(
    "model,coeffs",
    [
        ("plumb_bob", (-0.28, 0.07, 1e-3, -5e-4, 0.01)),
        ("rational_polynomial", (0.1, -0.2, 1e-3, 2e-3, 0.05, 0.02, -0.01, 0.003)),
        ("equidistant", (0.05, -0.01, 0.002, -0.001)),
    ],
)
def test_projection_agrees_with_opencv_for_every_lens_model(model, coeffs):
    import cv2

    intr = Intrinsics.from_matrix([500, 0, 320, 0, 510, 240, 0, 0, 1], coeffs, model)
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-0.5, 0.5, (500, 2)), rng.uniform(1, 5, 500)])
    projected = project_points(points, intr, 480, 640)
    zero = np.zeros(3)
    if model == "equidistant":
        want, _ = cv2.fisheye.projectPoints(points.reshape(-1, 1, 3), zero, zero, intr.matrix, np.array(coeffs))
    else:
        want, _ = cv2.projectPoints(points, zero, zero, intr.matrix, np.array(coeffs))
    want = want.reshape(-1, 2)
    inside = (want[:, 0] >= -0.5) & (want[:, 0] < 639.5) & (want[:, 1] >= -0.5) & (want[:, 1] < 479.5)
    np.testing.assert_allclose(projected.pixels, want[inside], atol=1e-9)
    np.testing.assert_allclose(projected.depth, points[inside, 2])


def test_samples_keep_the_nearest_point_of_a_pixel():
    intr = Intrinsics.from_matrix(scenes.K)
    points = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 5.0], [0.0, 0.0, 500.0]])
    samples = sample_points(points, intr, scenes.HEIGHT, scenes.WIDTH, 0.1, 100.0)
    assert samples.depth.tolist() == [2.0] and samples.dropped["occluded"] == 1
    assert samples.dropped["out_of_range"] == 1 and samples.received == 3


def test_per_frame_metric_depth_from_a_noisy_lidar_through_tf_beats_constants():
    """The acceptance case in code: a relative "network" whose scale and shift change every frame,
    a lidar with 1 % range noise, 5 % outliers, NaN returns and points behind the camera, moved
    through a tf chain camera_optical <- camera_link <- base_link -> velodyne."""
    tree = TfTree()
    for parent, child, translation, quaternion in scenes.CHAIN:
        tree.add(parent, child, translation, quaternion)
    matrix = tree.lookup("camera_optical", "velodyne")
    np.testing.assert_allclose(matrix, scenes.camera_from_lidar(), atol=1e-12)
    rng = np.random.default_rng(7)
    intr = Intrinsics.from_matrix(scenes.K)
    aligner = FrameAligner(OutputKind(), AlignSettings())
    lidar = scenes.Lidar(points=3000)
    per_frame, constants, first = [], [], None
    for i in range(8):
        depth = scenes.render(scenes.Scene(), camera=(0.0, 0.0, 0.1 * i))
        gain, offset = rng.uniform(0.6, 4.0), rng.uniform(-0.8, 1.5)
        relative = gain * scenes.NEAREST / depth + offset
        points = lidar.scan(depth, rng).astype(np.float64)
        camera = points @ matrix[:3, :3].T + matrix[:3, 3]
        samples = sample_points(camera, intr, *depth.shape, 0.1, 100.0)
        result = aligner.align(relative, samples, i * 100_000_000)
        assert result.status == FIT and result.record["held_out"]["points"] > 300
        per_frame.append(np.mean(np.abs(result.depth - depth) / depth))
        first = first or fit_scale_shift(relative, depth)  # constants from frame 0, even fitted on exact depth
        metres = first.to_metric(relative)
        valid = np.isfinite(metres) & (metres > 0)
        constants.append(np.mean(np.where(valid, np.abs(metres - depth) / depth, 1.0)))
    assert max(per_frame) <= 0.02
    assert np.median(constants[1:]) > 0.3


def test_frames_without_enough_points_hold_then_give_nothing_and_metric_models_fall_back_to_their_metres():
    depth = scenes.render(scenes.Scene())
    relative = scenes.NEAREST / depth
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, depth.shape[0], 400), rng.integers(0, depth.shape[1], 400)
    good = SparseSamples(rows, cols, depth[rows, cols], 400)
    few = SparseSamples(rows[:10], cols[:10], depth[rows[:10], cols[:10]], 10)
    aligner = FrameAligner(OutputKind(), AlignSettings(temporal=FilterSettings(hold=0.25)))
    assert aligner.align(relative, good, 0).status == FIT
    held = aligner.align(relative, few, 100_000_000)
    assert held.status == HELD and "too few" in held.record["reason"] and held.depth is not None
    missing = aligner.align(relative, None, 200_000_000, "no sensor message within 50 ms")
    assert missing.status == HELD and missing.record["reason"].startswith("no sensor message")
    gone = aligner.align(relative, few, 400_000_000)
    assert gone.status == NONE and gone.depth is None
    metric = FrameAligner(OutputKind("metric", 20.0))
    assert metric.settings.fit.shift is False
    own = metric.align(depth.astype(np.float32), None, 0, "no sensor message")
    assert own.status == "model" and np.allclose(own.depth, depth)
    corrected = metric.align(depth.astype(np.float32) * 1.1, good, 100_000_000)
    assert corrected.status == FIT and np.allclose(corrected.depth, depth, rtol=1e-4)


def test_points_given_in_code_align_a_frame():
    depth = scenes.render(scenes.Scene())
    relative = 2.0 * scenes.NEAREST / depth + 0.4
    sparse = np.zeros_like(depth)
    rng = np.random.default_rng(2)
    rows, cols = rng.integers(0, depth.shape[0], 300), rng.integers(0, depth.shape[1], 300)
    sparse[rows, cols] = depth[rows, cols]
    sparse[0, :5] = [np.nan, np.inf, -1.0, 0.0, np.nan]  # unknown, however it is written
    samples = SparseSamples.from_map(sparse)
    assert len(samples) == np.count_nonzero(sparse[1:] > 0) + np.count_nonzero(sparse[0, 5:] > 0)
    result = FrameAligner(OutputKind()).align(relative, samples, 0)
    assert result.status == FIT and np.allclose(result.depth, depth, rtol=1e-4)
