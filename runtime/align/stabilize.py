"""Video without a sensor: relative depth kept on one scale across frames, and a flicker figure.

A relative network normalises every frame, so the same wall gets other values from frame to
frame and a colour map flickers. ``Stabilizer`` fits each frame's relative depth to a running
reference of the frames before it (robust scale and shift, on the pixels whose image did not
change; on all pixels when the camera moves) and returns it on the reference's scale: the
first frame's scale, carried along.

``FlickerMeter`` measures flicker without ground truth: on the pixels whose image did not
change between two frames, the median change of the output, as a share of the earlier frame's
depth range (its 5th to 95th percentile); a video's figure is the median over its frame pairs.
A still scene whose depth output is steady scores 0 %.
"""

from __future__ import annotations

import cv2
import numpy as np

from .fit import ransac_linear

GRID = 160  # long side of the grid that fits and measures work on: a fit needs no more pixels
COLLAPSED = 0.01  # an output whose depth range is under this share of the usual one is a flat map
SPREAD_RATIO = 4.0  # a fit that shrinks or stretches the frame's range by more than this is no fit
MIN_INLIERS = 0.3  # share of the pixels fitted a fit must agree with, else the scene changed
HOLD_FRAMES = 30  # consecutive flat frames (black, constant) the reference is held for


def _small(values: np.ndarray, grid: int = GRID) -> np.ndarray:
    values = np.asarray(values, np.float32)
    height, width = values.shape[:2]
    factor = grid / max(height, width)
    if factor >= 1:
        return values.copy()
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    finite = np.isfinite(values)
    if finite.all():
        return cv2.resize(values, size, interpolation=cv2.INTER_AREA)
    # Area averaging would spread NaN: average the finite pixels and mark cells with none.
    total = cv2.resize(np.where(finite, values, 0).astype(np.float32), size, interpolation=cv2.INTER_AREA)
    share = cv2.resize(finite.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(share > 0.5, total / share, np.nan).astype(np.float32)


def small_gray(image: np.ndarray, grid: int = GRID) -> np.ndarray:
    """The image as gray float32 on the working grid."""
    image = np.asarray(image)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return _small(gray.astype(np.float32), grid)


def _spread(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return 0.0
    low, high = np.percentile(finite, [5, 95])
    return float(high - low)


class FlickerMeter:
    """The flicker figure of a sequence of outputs (see the module doc)."""

    def __init__(self, change: float = 4.0, grid: int = GRID) -> None:
        self.change, self.grid = change, grid
        self.values: list[float] = []
        self.frames = 0  # outputs seen with finite values
        self.collapsed = 0  # of them, maps (near) constant: no depth, however steady
        self._spreads: list[float] = []
        self._previous: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, image: np.ndarray, output: np.ndarray) -> float | None:
        """Add a frame (its image and the output shown for it); the pair's flicker, if measurable."""
        return self.add(small_gray(image, self.grid), _small(output, self.grid))

    def add(self, gray: np.ndarray, values: np.ndarray) -> float | None:
        """:meth:`update` with the image and output already on the working grid."""
        spread = _spread(values)
        if np.isfinite(values).any():
            self.frames += 1
            typical = float(np.median(self._spreads)) if self._spreads else 0.0
            if spread <= COLLAPSED * typical or spread == 0:
                self.collapsed += 1  # a flat map is not a steady one: never scored as stable
                self._previous = None
                return None
            self._spreads = [*self._spreads, spread][-50:]
        previous, self._previous = self._previous, (gray, values)
        if previous is None or previous[0].shape != gray.shape:
            return None
        static = (np.abs(gray - previous[0]) <= self.change) & np.isfinite(values) & np.isfinite(previous[1])
        spread = _spread(previous[1])
        if static.sum() < 0.01 * static.size or spread <= 0:
            return None
        flicker = float(np.median(np.abs(values[static] - previous[1][static])) / spread)
        self.values.append(flicker)
        return flicker

    @property
    def figure(self) -> float | None:
        """Median flicker over the frame pairs, as a share of the depth range (0.01 = 1 %); ``None``
        when none could be measured or when any output collapsed to a flat map."""
        return float(np.median(self.values)) if self.values and not self.collapsed else None


class Stabilizer:
    """Relative depth on the scale of the frames before it: ``stabilizer(image, relative)``.

    ``change``: grey levels (0-255) an image pixel may change by and still count as unchanged;
    ``min_static``: below this share of unchanged pixels (a moving camera) the fit uses all
    pixels, its outlier rejection standing in for the mask; ``inlier``: residual threshold as a
    share of the reference's depth range; ``blend``: how much of each aligned frame goes into the
    reference on unchanged pixels (changed pixels take the new frame's values).
    ``flicker_in`` and ``flicker_out`` measure the flicker of what came in and what went out.
    """

    def __init__(
        self,
        change: float = 4.0,
        min_static: float = 0.2,
        inlier: float = 0.02,
        blend: float = 0.5,
        grid: int = GRID,
        seed: int = 0,
    ) -> None:
        self.change, self.min_static, self.inlier, self.blend, self.grid = change, min_static, inlier, blend, grid
        self._rng = np.random.default_rng(seed)
        self._reference: np.ndarray | None = None
        self._gray: np.ndarray | None = None
        self.frames = self.moving = self.resets = self.flat = 0  # resets: cuts and degenerate fits
        self.hold_frames, self._flat_run = HOLD_FRAMES, 0
        self.last: tuple[float, float] = (1.0, 0.0)  # the last frame's scale and shift
        self.flicker_in, self.flicker_out = FlickerMeter(change, grid), FlickerMeter(change, grid)

    def __call__(self, image: np.ndarray, relative: np.ndarray) -> np.ndarray:
        relative = np.asarray(relative, np.float32)
        gray, values = small_gray(image, self.grid), _small(relative, self.grid)
        self.frames += 1
        self.flicker_in.add(gray, values)
        aligned = self._align(gray, values, relative)
        self.flicker_out.add(gray, _small(aligned, self.grid))
        return aligned

    def _align(self, gray: np.ndarray, values: np.ndarray, relative: np.ndarray) -> np.ndarray:
        if self._reference is None or self._reference.shape != values.shape:
            return self._restart(gray, values, relative)
        new_spread = _spread(values)
        if new_spread <= 0 or _spread(gray) <= 0:  # a black or constant frame: nothing to fit, nothing to learn
            self.flat += 1
            self._flat_run += 1
            if self._flat_run > self.hold_frames:  # held long enough: the next frame starts afresh
                self._reference = None
            return relative.copy()
        self._flat_run = 0
        finite = np.isfinite(values) & np.isfinite(self._reference)
        static = finite & (np.abs(gray - self._gray) <= self.change)
        use = static
        if static.sum() < self.min_static * static.size:
            use = finite
            self.moving += 1
        x, y = values[use].astype(np.float64), self._reference[use].astype(np.float64)
        spread = _spread(y)
        found = None
        if x.size >= 20 and spread > 0:
            a = np.stack([x, np.ones_like(x)], axis=1)
            found = ransac_linear(a, y, self.inlier * spread, self._rng)
        if found is None or found[1].sum() < max(20, MIN_INLIERS * x.size):
            self.resets += 1  # a cut: the new scene starts from its own scale
            return self._restart(gray, values, relative)
        scale, shift = (float(v) for v in found[0])
        ratio = scale * new_spread / spread
        if not 1 / SPREAD_RATIO <= ratio <= SPREAD_RATIO:  # a degenerate fit would flatten (or blow up) the map
            self.resets += 1
            return self._restart(gray, values, relative)
        self.last = (scale, shift)
        aligned_small = scale * values + shift
        blended = (1 - self.blend) * self._reference + self.blend * aligned_small
        self._reference = np.where(static, blended, aligned_small).astype(np.float32)
        self._gray = gray
        return (scale * relative + shift).astype(np.float32)

    def _restart(self, gray: np.ndarray, values: np.ndarray, relative: np.ndarray) -> np.ndarray:
        self._reference, self._gray, self.last = values, gray, (1.0, 0.0)
        return relative.copy()


def flicker_lines(flicker: float | None, unstabilized: float | None = None, collapsed: int = 0) -> list[str]:
    """A command summary's line on flicker (see the module doc for the figure)."""
    if collapsed:
        return [f"  flicker: not measured: {collapsed} frames of the published depth are flat maps (no depth)"]
    if flicker is None:
        return []
    line = f"  flicker: {100 * flicker:.2f} % of the depth range (median change between frames on unchanged pixels)"
    if unstabilized is not None:
        line += f"; {100 * unstabilized:.2f} % before --stabilize"
    return [line]
