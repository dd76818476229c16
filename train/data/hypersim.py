"""Hypersim (Apple's photorealistic synthetic indoor set) as it is on disk.

Layout: ``<scene>/images/scene_cam_XX_final_hdf5/frame.NNNN.color.hdf5`` (linear HDR RGB) or
``scene_cam_XX_final_preview/frame.NNNN.tonemap.jpg``, and
``scene_cam_XX_geometry_hdf5/frame.NNNN.depth_meters.hdf5``. Hypersim's "depth" is the
distance from the camera centre along each ray; training wants planar depth (z), so it is
converted with the camera's focal length. Non-finite pixels are invalid. Frames whose files
are missing or unreadable are skipped and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commands.errors import require
from runtime.io.images import read_image

from .synthetic import Scene

# Hypersim renders 1024x768 with a 60 degree horizontal field of view.
HYPERSIM_WIDTH = 1024
HYPERSIM_FOCAL = HYPERSIM_WIDTH / 2 / np.tan(np.radians(30))


def distance_to_planar(distance: np.ndarray, focal: float) -> np.ndarray:
    """Planar depth from distance to the camera centre: z = d * f / sqrt(f^2 + u^2 + v^2)."""
    height, width = distance.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    u -= (width - 1) / 2
    v -= (height - 1) / 2
    return (distance * focal / np.sqrt(focal**2 + u**2 + v**2)).astype(np.float32)


def tonemap(rgb: np.ndarray) -> np.ndarray:
    """Linear HDR RGB -> BGR uint8: gamma 2.2, scaled so the 90th brightness percentile is 0.8
    (the rule Hypersim's own previews use)."""
    rgb = np.nan_to_num(rgb.astype(np.float32), nan=0.0, posinf=0.0)
    brightness = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
    p90 = float(np.percentile(brightness, 90)) if brightness.size else 1.0
    scale = (0.8**2.2) / p90 if p90 > 1e-4 else 1.0
    srgb = np.power(np.clip(rgb * scale, 0, None), 1 / 2.2)
    return (np.clip(srgb, 0, 1) * 255).astype(np.uint8)[..., ::-1].copy()


def _read_h5(path: Path, h5py) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f["dataset"])


def _frame_key(path: Path) -> tuple[Path, str, str]:
    """(images folder, camera, frame) of any of a frame's files."""
    camera = re.sub(r"_(final_hdf5|final_preview|geometry_hdf5)$", "", path.parent.name)
    return path.parent.parent, camera, path.name.split(".")[0] + "." + path.name.split(".")[1]


@dataclass
class Hypersim:
    """Frames with colour and depth under ``root`` (any number of scenes)."""

    root: Path
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.frames: list[tuple[Path, Path]] = []
        for depth in sorted(self.root.rglob("*.depth_meters.hdf5")):
            match = re.match(r"(.*)_geometry_hdf5$", depth.parent.name)
            frame = depth.name.split(".depth_meters")[0]
            if not match:
                continue
            colour = depth.parent.parent / f"{match[1]}_final_hdf5" / f"{frame}.color.hdf5"
            preview = depth.parent.parent / f"{match[1]}_final_preview" / f"{frame}.tonemap.jpg"
            if colour.is_file():
                self.frames.append((colour, depth))
            elif preview.is_file():
                self.frames.append((preview, depth))
            else:
                self.skipped.append(f"{depth}: no colour image")
        with_depth = {_frame_key(depth) for _, depth in self.frames}
        for colour in sorted(self.root.rglob("*.color.hdf5")) + sorted(self.root.rglob("*.tonemap.jpg")):
            if _frame_key(colour) not in with_depth:
                self.skipped.append(f"{colour}: no depth_meters file")
        if not self.frames:
            raise FileNotFoundError(f"{self.root}: no Hypersim frames (*.depth_meters.hdf5 with colour) found")

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, index: int) -> Scene | None:
        """The frame, or ``None`` (recorded in ``skipped``) when its files cannot be read."""
        h5py = require("h5py", "train", "h5py (Hypersim reader)")
        colour_path, depth_path = self.frames[index]
        try:
            if colour_path.suffix == ".jpg":
                image = read_image(colour_path)
            else:
                image = tonemap(_read_h5(colour_path, h5py))
            distance = _read_h5(depth_path, h5py).astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            self.skipped.append(f"{colour_path.name}: {exc.__class__.__name__}")
            return None
        if distance.shape != image.shape[:2]:
            self.skipped.append(f"{depth_path.name}: depth {distance.shape} != image {image.shape[:2]}")
            return None
        focal = HYPERSIM_FOCAL * distance.shape[1] / HYPERSIM_WIDTH
        valid = np.isfinite(distance) & (distance > 0)
        depth = np.where(valid, distance_to_planar(np.where(valid, distance, 0), focal), 0).astype(np.float32)
        return Scene(image, depth, valid)
