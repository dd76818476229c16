"""Training transforms: short side to the crop size, random crop, flip, colour jitter."""

from __future__ import annotations

import cv2
import numpy as np

from runtime.preprocessing import MEAN, STD, dynamic_size


def to_disparity(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Inverse depth where valid, 0 elsewhere: the relative models' target space."""
    return np.where(mask & (depth > 0), 1.0 / np.maximum(depth, 1e-6), 0.0).astype(np.float32)


def jitter_colour(image: np.ndarray, rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
    """Brightness, contrast and saturation jitter on a BGR uint8 image."""
    x = image.astype(np.float32)
    x *= rng.uniform(1 - strength, 1 + strength)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - strength, 1 + strength) + mean  # contrast
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * rng.uniform(1 - strength, 1 + strength) + gray  # saturation
    return np.clip(x, 0, 255).astype(np.uint8)


def training_sample(
    image: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    crop: int,
    rng: np.random.Generator,
    flip: bool = True,
    jitter: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(3, crop, crop)`` normalised RGB, ``(crop, crop)`` target and mask.

    The image is resized like the predictor's input (aspect kept, short side ``crop``, sides
    multiples of 14); the target and mask follow with nearest-neighbour sampling so no depth
    is invented across edges.
    """
    height, width = dynamic_size(*image.shape[:2], crop)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    target = cv2.resize(target.astype(np.float32), (width, height), interpolation=cv2.INTER_NEAREST)
    mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
    window = (slice(top, top + crop), slice(left, left + crop))
    image, target, mask = image[window], target[window], mask[window]
    if flip and rng.random() < 0.5:
        image, target, mask = image[:, ::-1], target[:, ::-1], mask[:, ::-1]
    if jitter:
        image = jitter_colour(image, rng)
    rgb = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    normalised = ((rgb - MEAN) / STD).transpose(2, 0, 1)
    return np.ascontiguousarray(normalised), np.ascontiguousarray(target), np.ascontiguousarray(mask)
