"""Colourised depth for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from .metric import OUTPUT_KINDS, RELATIVE

COLORMAPS = {
    "inferno": cv2.COLORMAP_INFERNO,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "gray": None,
}


def colorize(
    depth: np.ndarray,
    colormap: str = "inferno",
    vmin: float | None = None,
    vmax: float | None = None,
    kind: str = "relative",
) -> np.ndarray:
    """HxWx3 uint8 BGR image of a depth map, min..max (or ``vmin``..``vmax``) stretched over the colormap.

    Near is bright for every output kind (``runtime.metric.OUTPUT_KINDS``, what
    ``DepthPredictor.output_kind`` says): ``"relative"`` (inverse depth, larger = nearer) as it is;
    the depth kinds (``"metric"``, ``"depth_up_to_scale"``, ``"metres_per_focal"``: larger =
    farther; ``vmin``/``vmax`` in their units) turned round. Non-finite pixels, and depth that is
    not positive, are drawn black.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"expected an HxW depth map, got shape {depth.shape}")
    if kind != RELATIVE:  # depth: nearer = larger, as relative inverse depth has it
        depth = np.where(depth > 0, -depth, np.nan).astype(np.float32)
        vmin, vmax = (None if vmax is None else -vmax), (None if vmin is None else -vmin)
    finite = np.isfinite(depth)
    values = depth[finite]
    lo = float(vmin) if vmin is not None else float(values.min()) if values.size else 0.0
    hi = float(vmax) if vmax is not None else float(values.max()) if values.size else 1.0
    scaled = np.zeros(depth.shape, dtype=np.uint8)
    if hi > lo:
        scaled[finite] = np.clip((depth[finite] - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    cmap = COLORMAPS[colormap]
    out = cv2.cvtColor(scaled, cv2.COLOR_GRAY2BGR) if cmap is None else cv2.applyColorMap(scaled, cmap)
    out[~finite] = 0
    return out
