"""Procedural scenes with exact depth: a floor, a back wall, boxes and spheres, textured.

Rendered by casting one ray per pixel through a pinhole camera (numpy only, milliseconds per
image), so every pixel's planar depth is known exactly. For tests, demos and stage-1 smoke
runs; Hypersim is the real synthetic set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # HxWx3 uint8 BGR
    depth: np.ndarray  # HxW float32 planar depth in metres
    mask: np.ndarray  # HxW bool, True where depth is valid


def _texture(points: np.ndarray, colour: np.ndarray, period: float, rng_phase: float) -> np.ndarray:
    """Checker plus stripes in world coordinates: edges the network can see, tied to geometry."""
    checker = (np.floor(points[..., 0] / period + rng_phase) + np.floor(points[..., 2] / period)) % 2
    stripes = 0.5 + 0.5 * np.sin(points[..., 1] * 9.0 / period)
    shade = 0.55 + 0.3 * checker[..., None] + 0.15 * stripes[..., None]
    return colour * shade


def render_scene(height: int, width: int, seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    focal = width / (2 * np.tan(np.radians(rng.uniform(25, 35))))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(xs - width / 2) / focal, (ys - height / 2) / focal, np.ones_like(xs)], axis=-1)
    depth = np.full((height, width), np.inf)
    colour = np.zeros((height, width, 3))

    def hit(t: np.ndarray, paint) -> None:
        closer = (t > 0.05) & (t < depth)
        if closer.any():
            depth[closer] = t[closer]
            points = rays[closer] * t[closer, None]
            colour[closer] = paint(points)

    floor_y = rng.uniform(1.0, 1.8)  # camera looks along +z, +y is down
    with np.errstate(divide="ignore", invalid="ignore"):
        hit(floor_y / rays[..., 1], lambda p: _texture(p, rng.uniform(0.3, 1, 3), 0.5, 0.0))
        wall_z = rng.uniform(6, 12)
        hit(np.full_like(depth, wall_z), lambda p: _texture(p, rng.uniform(0.3, 1, 3), 0.8, 0.5))
        for _ in range(rng.integers(1, 4)):  # spheres
            centre = np.array([rng.uniform(-2, 2), floor_y - rng.uniform(0.3, 1.0), rng.uniform(2.5, wall_z - 1)])
            radius = rng.uniform(0.3, min(1.0, floor_y))
            b = rays @ centre
            c = centre @ centre - radius**2
            disc = b**2 - (rays**2).sum(-1) * c
            t = (b - np.sqrt(disc)) / (rays**2).sum(-1)
            tint = rng.uniform(0.2, 1, 3)
            hit(np.where(disc > 0, t, np.inf), lambda p, tint=tint: _texture(p, tint, 0.25, 0.3))
        for _ in range(rng.integers(1, 4)):  # axis-aligned boxes standing on the floor
            size = rng.uniform(0.4, 1.5, 3)
            low = np.array([rng.uniform(-2.5, 2.0), floor_y - size[1], rng.uniform(2.0, wall_z - 2)])
            high = low + size
            t1, t2 = (low - 0.0) / rays, (high - 0.0) / rays
            near = np.minimum(t1, t2).max(-1)
            far = np.maximum(t1, t2).min(-1)
            tint = rng.uniform(0.2, 1, 3)
            hit(np.where(far >= near, near, np.inf), lambda p, tint=tint: _texture(p, tint, 0.3, 0.1))
    valid = np.isfinite(depth)
    planar = np.where(valid, depth, 0.0)  # t along rays with z = 1 is the planar depth
    shading = 1.0 / (1.0 + 0.05 * planar)  # farther is darker: a weak monocular cue
    noise = rng.normal(0, 0.02, colour.shape)
    image = np.clip((colour * shading[..., None] + noise) * 255, 0, 255).astype(np.uint8)
    return Scene(image[..., ::-1].copy(), planar.astype(np.float32), valid)


class SyntheticScenes:
    """``count`` deterministic scenes; item ``i`` is always the same image."""

    def __init__(self, count: int, size: tuple[int, int] = (196, 252), seed: int = 0) -> None:
        self.count, self.size, self.seed = count, size, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Scene:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return render_scene(*self.size, seed=self.seed * 1_000_003 + index)
