"""Render ``docs/motorcycle_pointcloud.png``, the README's point cloud picture.

The bundled Middlebury 2014 motorcycle pair (scikit-image, downscaled 4x from the benchmark)
comes with ground-truth disparity and the calibration of the downscaled images, so metric
depth is known exactly: ``Z = f * baseline / (disparity + doffs)``. The points are made by
``runtime.pointcloud.depth_to_points`` with those intrinsics, as the bag tool and the ROS 2
node make them from a model's metric depth. Run: ``python docs/pointcloud_figure.py``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runtime.io.samples import sample_dir, sample_images
from runtime.pointcloud import Intrinsics, depth_to_points

# Calibration of the downscaled images, as scikit-image documents it for stereo_motorcycle().
FOCAL, CX, CY, DOFFS, BASELINE_M = 994.978, 311.193, 254.877, 31.086, 0.193001
OUTPUT = Path(__file__).with_name("motorcycle_pointcloud.png")


def main() -> Path:
    image = sample_images(("motorcycle_left.png",))["motorcycle_left"]
    archive = np.load(sample_dir() / "motorcycle_disp.npz")
    disparity = archive[archive.files[0]].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = FOCAL * BASELINE_M / (disparity + DOFFS)  # NaN/inf where there is no ground truth
    height, width = depth.shape
    intrinsics = Intrinsics(FOCAL, FOCAL, CX, CY, width=width, height=height)
    cloud = depth_to_points(depth.astype(np.float32), intrinsics, image, stride=2)

    # Optical frame (x right, y down, z forward) drawn with z as depth and -y as up.
    x, y, z = cloud.points.T
    fig = plt.figure(figsize=(9.0, 3.8), dpi=100)
    photo = fig.add_axes((0.0, 0.08, 0.4, 0.84))
    photo.imshow(image[..., ::-1])
    photo.set_title(f"bundled photo ({width}x{height})", fontsize=9)
    photo.axis("off")
    ax = fig.add_axes((0.38, -0.06, 0.6, 1.12), projection="3d")
    ax.scatter(x, z, -y, c=cloud.colors / 255.0, s=1.0, marker=".", linewidths=0, depthshade=False)
    ax.view_init(elev=14, azim=-62)
    ax.set_xlabel("x (m, right)", fontsize=8, labelpad=-4)
    ax.set_ylabel("z (m, forward)", fontsize=8, labelpad=-2)
    ax.set_zlabel("-y (m, up)", fontsize=8, labelpad=-6)
    ax.tick_params(labelsize=6, pad=-2)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_pane_color((1.0, 1.0, 1.0, 0.0))
    ax.set_box_aspect((np.ptp(x), np.ptp(z), np.ptp(y)), zoom=1.12)
    ax.set_title(f"{len(x):,} points in metres, camera optical frame", fontsize=9, y=0.93)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    # A 256-colour palette keeps the picture small enough to commit (well under 300 KB).
    Image.open(buffer).convert("RGB").quantize(colors=256).save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size / 1024:.0f} KiB): {len(x)} points, z {z.min():.2f}..{z.max():.2f} m")
    return OUTPUT


if __name__ == "__main__":
    main()
