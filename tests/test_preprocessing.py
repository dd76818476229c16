"""Preprocessing equals the official ``infer_image`` path; bad images are clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from runtime import InputError
from runtime import preprocessing as pre


def official_reference(image_bgr: np.ndarray, input_size: int = 518) -> np.ndarray:
    """The official transform, step by step in float64 (Resize lower_bound, multiple of 14, cubic)."""
    h, w = image_bgr.shape[:2]
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB) / 255.0
    scale = max(input_size / h, input_size / w)

    def constrain(x):
        y = int(np.round(x / 14) * 14)
        return int(np.ceil(x / 14) * 14) if y < input_size else y

    new_h, new_w = constrain(scale * h), constrain(scale * w)
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    normed = (resized - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return normed.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.parametrize(
    "height,width,expected",
    [
        (480, 640, (518, 686)),
        (1080, 1920, (518, 924)),
        (640, 480, (686, 518)),
        (518, 518, (518, 518)),
        (20, 15, (686, 518)),
    ],
)
def test_dynamic_size_follows_the_official_rule(height, width, expected):
    assert pre.dynamic_size(height, width, 518) == expected


def test_prepare_dynamic_matches_the_official_transform(photo):
    ours = pre.prepare_dynamic(photo)
    reference = official_reference(photo)
    assert ours.dtype == np.float32 and ours.shape == reference.shape == (1, 3, 518, 784)
    assert np.abs(ours - reference).max() < 1e-4


def test_rgb_flag_and_gray_input(photo):
    rgb = np.ascontiguousarray(photo[:, :, ::-1])
    assert np.array_equal(pre.prepare_dynamic(rgb, rgb=True), pre.prepare_dynamic(photo))
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    x = pre.prepare_dynamic(gray)
    unnormed = x[0] * pre.STD[:, None, None] + pre.MEAN[:, None, None]
    assert np.allclose(unnormed[0], unnormed[1], atol=1e-5) and np.allclose(unnormed[1], unnormed[2], atol=1e-5)


def test_prepare_fixed_resizes_straight_to_the_engine_shape(photo):
    x = pre.prepare_fixed(photo, (266, 392))
    assert x.shape == (1, 3, 266, 392) and x.flags.c_contiguous
    with pytest.raises(InputError, match="multiple of 14"):
        pre.prepare_fixed(photo, (500, 500))


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((64, 64, 3), np.float32), "expected uint8 pixels, got float32"),
        (np.zeros((64, 64, 4), np.uint8), "COLOR_BGRA2BGR"),
        (np.zeros((64, 64, 1), np.uint8), "HxWx3 colour or HxW gray"),
        (np.zeros((2, 64, 64, 3), np.uint8), "HxWx3 colour or HxW gray"),
        (np.zeros((0, 64, 3), np.uint8), "empty"),
        (np.zeros((10, 64, 3), np.uint8), "at least 14 pixels"),
        ([[1, 2], [3, 4]], "numpy array"),
        (None, "numpy array"),
    ],
)
def test_bad_images_are_one_line_errors(image, match):
    with pytest.raises(InputError, match=match) as info:
        pre.prepare_dynamic(image)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "src,dst", [((37, 49), (480, 640)), ((518, 686), (480, 640)), ((5, 7), (5, 7)), ((1, 9), (3, 4))]
)
def test_resize_depth_equals_bilinear_align_corners(src, dst):
    torch = pytest.importorskip("torch")
    depth = np.random.default_rng(0).random(src).astype(np.float32) * 10
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(depth)[None, None], dst, mode="bilinear", align_corners=True
    )[0, 0].numpy()
    ours = pre.resize_depth(depth, *dst)
    assert ours.dtype == np.float32 and ours.shape == dst
    # PyTorch rounds the sampling positions to float32; ours are exact. On this random (worst
    # case, every pixel an edge) map that differs by a few 1e-5 of the range.
    assert np.abs(ours - expected).max() < 1e-4 * np.ptp(depth)
