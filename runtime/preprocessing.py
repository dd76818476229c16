"""Image pre- and post-processing shared by every backend and by training (numpy + OpenCV only).

``prepare_dynamic`` is the official ``infer_image`` path: keep the aspect ratio, short side at
least ``input_size``, each side a multiple of 14, bicubic; with one bound the official code
lacks: the long side is capped (``max_long_side``, by default 4x the short side, 2072 for 518),
so an extreme panorama (a 14x4000 strip would become a 518x148000 input) cannot cost more than
4x the patches of an ``input_size`` square frame. A capped image keeps its aspect ratio, so its
short side falls below ``input_size``. ``prepare_fixed`` resizes straight to an engine's fixed
shape. ``resize_depth`` brings a depth map back to the image's size with
bilinear ``align_corners=True`` sampling, as the official code does with PyTorch.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from commands.errors import InputError

PATCH_SIZE = 14
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Long side of a dynamic input, in multiples of its short side: the images' aspect ratios a
# robot's cameras have (up to 32:9 panoramas) stay on the official rule.
MAX_ASPECT = 4


def check_image(image: object) -> np.ndarray:
    """Return ``image`` if it is an HxWx3 or HxW uint8 array of at least one patch, else raise."""
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"expected a numpy array image (HxWx3 uint8 BGR or HxW gray), got {type(image).__name__}; "
            "read files with cv2.imread"
        )
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            hint = (
                "for a 16-bit colour or gray image use (img >> 8).astype(np.uint8), or read the file with "
                "cv2.imread(path) without IMREAD_UNCHANGED (8 bits); a depth camera's 16-bit depth map is not an input"
            )
        elif image.dtype.kind == "f":
            hint = "convert with np.clip(img * 255, 0, 255).astype(np.uint8) for [0, 1] floats"
        else:
            hint = "the predictor takes 8-bit colour or gray images"
        raise InputError(f"expected uint8 pixels, got {image.dtype}; {hint}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        alpha = image.ndim == 3 and image.shape[2] == 4
        hint = " (drop alpha with cv2.cvtColor(img, cv2.COLOR_BGRA2BGR))" if alpha else ""
        raise InputError(f"expected an HxWx3 colour or HxW gray image, got shape {image.shape}{hint}")
    if image.size == 0:
        raise InputError(f"the image is empty (shape {image.shape})")
    if min(image.shape[:2]) < PATCH_SIZE:
        raise InputError(
            f"the image is {image.shape[0]}x{image.shape[1]}; each side must be at least {PATCH_SIZE} pixels"
        )
    return image


def to_bgr(image: np.ndarray, rgb: bool = False) -> np.ndarray:
    """HxWx3 uint8 BGR from a checked BGR/RGB/gray image: what a model with the pre-processing
    inside it takes (OpenVINO's ``preprocess="model"``)."""
    image = check_image(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[:, :, ::-1]) if rgb else image


def to_rgb_float(image: np.ndarray, rgb: bool = False) -> np.ndarray:
    """HxWx3 float32 RGB in [0, 1] from a checked BGR/RGB/gray uint8 image."""
    image = check_image(image)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif not rgb:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    rgb_float = image.astype(np.float32)
    rgb_float *= np.float32(1.0 / 255.0)  # in place: a large frame's float copy is 4x its bytes
    return rgb_float


def _multiple_of_patch(x: float, lower_bound: int) -> int:
    y = int(np.round(x / PATCH_SIZE) * PATCH_SIZE)
    if y < lower_bound:
        y = int(np.ceil(x / PATCH_SIZE) * PATCH_SIZE)
    return y


def default_long_side(input_size: int = 518) -> int:
    """The default cap on a dynamic input's long side: ``MAX_ASPECT`` x the rule's short side."""
    return MAX_ASPECT * _multiple_of_patch(input_size, input_size)


def check_long_side(max_long_side: int, input_size: int) -> int:
    """``max_long_side`` if it is a multiple of 14 no shorter than the short side, else ``ValueError``."""
    short = _multiple_of_patch(input_size, input_size)
    if not isinstance(max_long_side, int) or max_long_side % PATCH_SIZE or max_long_side < short:
        raise ValueError(
            f"max_long_side must be a multiple of {PATCH_SIZE} of at least {short} (the short side for "
            f"input_size={input_size}), got {max_long_side!r}"
        )
    return max_long_side


def dynamic_size(height: int, width: int, input_size: int = 518, max_long_side: int | None = None) -> tuple[int, int]:
    """Network input size for an image: aspect kept, short side >= ``input_size``, multiples of 14,
    long side at most ``max_long_side`` (default :func:`default_long_side`; the short side then
    follows the aspect ratio down, to one patch at least)."""
    limit = default_long_side(input_size) if max_long_side is None else max_long_side
    scale = max(input_size / height, input_size / width)
    size = _multiple_of_patch(scale * height, input_size), _multiple_of_patch(scale * width, input_size)
    if max(size) <= limit:
        return size
    scale = limit / max(height, width)
    capped_h, capped_w = (min(limit, _multiple_of_patch(scale * side, PATCH_SIZE)) for side in (height, width))
    return capped_h, capped_w


def _normalise(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
    resized -= MEAN
    resized /= STD
    return np.ascontiguousarray(resized.transpose(2, 0, 1))[None]


def prepare_dynamic(
    image: np.ndarray, input_size: int = 518, rgb: bool = False, max_long_side: int | None = None
) -> np.ndarray:
    """``(1, 3, h, w)`` float32 network input, official keep-aspect resize (long side capped)."""
    rgb_image = to_rgb_float(image, rgb)
    return _normalise(rgb_image, dynamic_size(*rgb_image.shape[:2], input_size, max_long_side))


def prepare_fixed(image: np.ndarray, shape: tuple[int, int], rgb: bool = False) -> np.ndarray:
    """``(1, 3, H, W)`` float32 network input resized straight to a fixed engine shape."""
    height, width = shape
    if height % PATCH_SIZE or width % PATCH_SIZE:
        raise InputError(f"model input shape {height}x{width} is not a multiple of {PATCH_SIZE}")
    return _normalise(to_rgb_float(image, rgb), (height, width))


@lru_cache(maxsize=64)
def _align_corners_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if n_out == 1 or n_in == 1:
        pos = np.zeros(n_out, dtype=np.float64)
    else:
        pos = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
    lo = np.minimum(np.floor(pos).astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear ``align_corners=True`` resize of an ``h x w`` map to ``height x width`` (float32).

    Done separably with exact weights: OpenCV's remap quantises them to 1/32, which shows up
    as banding on smooth depth.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape == (height, width):
        return depth.copy()
    lo, hi, w = _align_corners_taps(depth.shape[0], height)
    rows = depth[lo] * (1.0 - w)[:, None] + depth[hi] * w[:, None]
    lo, hi, w = _align_corners_taps(depth.shape[1], width)
    return rows[:, lo] * (1.0 - w) + rows[:, hi] * w
