"""``python -m train.eval``: zero-shot metrics of affine-invariant inverse depth.

AbsRel and delta1 after least-squares scale-and-shift alignment in disparity space, the
protocol Depth Anything and MiDaS report. Works on any folder of images with depth:

- ``folder``: ``NAME.jpg|png`` with ``NAME.npy`` (float metres; 0, NaN or inf = unknown).
- ``nyu``: ``NAME.jpg|png`` with ``NAME.depth.png`` (uint16 millimetres), as the usual NYU-D
  654-image test split exports.
- ``kitti``: ``image/NAME.png`` with ``groundtruth/NAME.png`` (uint16, metres x 256, 0 =
  no lidar return), the KITTI depth-completion layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from commands.runner import command
from runtime.accuracy import align_scale_shift, depth_metrics

__all__ = ["align_scale_shift", "depth_metrics", "evaluate", "main"]


def _depth_file(image: Path, layout: str) -> Path:
    if layout == "folder":
        return image.with_suffix(".npy")
    if layout == "nyu":
        return image.with_name(image.stem + ".depth.png")
    return image.parent.parent / "groundtruth" / image.name


def read_depth(path: Path, layout: str) -> np.ndarray:
    if layout == "folder":
        return np.load(path).astype(np.float64)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise OSError(f"{path}: unreadable depth png")
    return raw.astype(np.float64) / (1000.0 if layout == "nyu" else 256.0)


def pairs(root: Path, layout: str) -> list[tuple[Path, Path]]:
    folder = root / "image" if layout == "kitti" else root
    images = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.endswith(".depth.png")
    )
    return [(image, _depth_file(image, layout)) for image in images if _depth_file(image, layout).is_file()]


def evaluate(predict, root: Path, layout: str = "folder", max_depth: float = 80.0) -> dict:
    """Mean AbsRel and delta1 over every image with depth under ``root``; ``predict`` maps a
    BGR image to relative inverse depth at its resolution (for example ``DepthPredictor.predict``)."""
    results, skipped = [], []
    for image_path, depth_path in pairs(root, layout):
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        try:
            depth = read_depth(depth_path, layout)
        except (OSError, ValueError) as exc:
            skipped.append(f"{depth_path.name}: {exc}")
            continue
        if image is None:
            skipped.append(f"{image_path.name}: unreadable image")
            continue
        valid = np.isfinite(depth) & (depth > 0) & (depth <= max_depth)
        disparity = np.where(valid, 1.0 / np.where(valid, depth, 1.0), np.nan)
        try:
            results.append(depth_metrics(predict(image), disparity))
        except ValueError as exc:
            skipped.append(f"{image_path.name}: {exc}")
    if not results:
        raise FileNotFoundError(f"{root}: no image/depth pairs in the {layout!r} layout")
    return {
        "images": len(results),
        "skipped": skipped,
        "abs_rel": float(np.mean([r["abs_rel"] for r in results])),
        "delta1": float(np.mean([r["delta1"] for r in results])),
    }


@command("python -m train.eval")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="any model file DepthPredictor reads")
    parser.add_argument("--data", type=Path, required=True, help="folder of images with depth")
    parser.add_argument("--layout", choices=("folder", "nyu", "kitti"), default="folder")
    parser.add_argument("--max-depth", type=float, default=80.0, help="ignore depth beyond this (metres)")
    args = parser.parse_args(argv)
    from runtime import DepthPredictor

    result = evaluate(DepthPredictor(args.model).predict, args.data, args.layout, args.max_depth)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
