"""Output helpers: colourised depth and relative-to-metric fitting."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import InputError, colorize, fit_scale_shift


def test_colorize_maps_near_to_bright_and_blacks_out_invalid_pixels():
    depth = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))
    depth[0, 0] = np.nan
    image = colorize(depth, "gray")
    assert image.shape == (8, 64, 3) and image.dtype == np.uint8
    assert image[4, 0].tolist() == [0, 0, 0] and image[4, -1].tolist() == [255, 255, 255]
    assert image[0, 0].tolist() == [0, 0, 0]
    assert colorize(depth, "inferno", vmin=0, vmax=2)[4, -1].tolist() != colorize(depth, "inferno")[4, -1].tolist()
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(depth, "rainbow")


def test_scale_and_shift_are_recovered_from_a_sparse_depth_map():
    rng = np.random.default_rng(0)
    relative = rng.uniform(0.5, 5.0, (48, 64)).astype(np.float32)
    depth = 1.0 / (0.2 * relative + 0.05)
    sparse = np.zeros_like(depth)
    ys, xs = rng.integers(0, 48, 30), rng.integers(0, 64, 30)
    sparse[ys, xs] = depth[ys, xs]
    fit = fit_scale_shift(relative, sparse)
    assert fit.scale == pytest.approx(0.2, rel=1e-4) and fit.shift == pytest.approx(0.05, abs=1e-5)
    assert np.allclose(fit.to_metric(relative), depth, rtol=1e-4)
    points = np.stack([ys, xs, depth[ys, xs]], axis=1)
    assert fit_scale_shift(relative, points).scale == pytest.approx(0.2, rel=1e-4)


def test_trimming_ignores_outlier_points():
    rng = np.random.default_rng(1)
    relative = rng.uniform(0.5, 5.0, 200)[None, :]
    depth = 1.0 / (0.3 * relative + 0.1)
    noisy = depth.copy()
    noisy[0, :10] *= 5  # misregistered lidar returns
    assert abs(fit_scale_shift(relative, noisy).scale - 0.3) > 0.01
    assert fit_scale_shift(relative, noisy, trim=0.1).scale == pytest.approx(0.3, rel=1e-6)


@pytest.mark.parametrize(
    "known,match",
    [(np.zeros((8, 8)), "at least two known depths"), (np.ones((3, 2)), "HxW map like the prediction")],
)
def test_bad_known_depths(known, match):
    with pytest.raises(InputError, match=match):
        fit_scale_shift(np.ones((8, 8), np.float32), known)
