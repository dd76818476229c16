"""Real sample photographs that ship inside an installed package (no download)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from commands.errors import require

# Photographs bundled with scikit-image's wheel (its other samples are fetched on demand).
SAMPLE_FILES = ("motorcycle_left.png", "chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "horse.png")


def sample_dir() -> Path:
    skdata = require("skimage.data", "samples", "scikit-image (bundled sample photographs)")
    return Path(skdata.__file__).parent


def sample_images(names: tuple[str, ...] = SAMPLE_FILES) -> dict[str, np.ndarray]:
    """Name -> HxWx3 uint8 BGR image, read from scikit-image's bundled files."""
    folder = sample_dir()
    images = {}
    for name in names:
        image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"{folder / name}: sample image missing from the scikit-image install")
        images[Path(name).stem] = image
    return images
