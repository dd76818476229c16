"""``python -m runtime``: depth maps for image files, written as colourised PNGs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, MissingDependencyError, ModelFileError
from .fileio import atomic_write_bytes

DEFAULT_CHECKPOINT = Path("checkpoints/depth_anything_v2_vits.pth")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime",
        description="Predict relative inverse depth (near = bright) for images and save colourised PNGs.",
    )
    parser.add_argument("images", nargs="*", type=Path, help="image files or folders of images")
    parser.add_argument("--sample", action="store_true", help="also run on the bundled sample photographs")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"model file (.pth/.safetensors/...); default {DEFAULT_CHECKPOINT} when present, "
        "else untrained vits weights (structure only, the depth is meaningless)",
    )
    parser.add_argument("--backend", default="auto", help="auto (from the file suffix), torch, ...")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument("--precision", default=None, help="fp32, fp16 or bf16 (default: the backend's)")
    parser.add_argument("--input-size", type=int, default=518, help="short side fed to the model (default 518)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where to write (default outputs/)")
    parser.add_argument("--colormap", default="inferno", help="inferno, turbo, viridis, magma or gray")
    parser.add_argument("--save-npy", action="store_true", help="also write the float32 depth as .npy")
    args = parser.parse_args(argv)
    if not args.images and not args.sample:
        parser.error("give image files or folders, or --sample")
    return args


def collect(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found


def load_default_model(model: Path | None):
    if model is not None:
        return model
    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    import torch

    from train.models import DepthAnythingV2

    print(
        f"NOTICE: no --model given and {DEFAULT_CHECKPOINT} does not exist: using UNTRAINED vits weights.\n"
        "        The output shows the pipeline runs, not real depth. Put the published "
        "depth_anything_v2_vits.pth there, or pass --model.",
        file=sys.stderr,
    )
    torch.manual_seed(0)
    return DepthAnythingV2("vits")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from . import DepthPredictor, colorize

    try:
        predictor = DepthPredictor(
            load_default_model(args.model),
            backend=args.backend,
            device=args.device,
            input_size=args.input_size,
            precision=args.precision,
        )
        jobs: list[tuple[str, np.ndarray | None]] = [(str(p), None) for p in collect(args.images)]
        if args.sample:
            from .samples import sample_images

            jobs += [(f"sample:{name}", image) for name, image in sample_images().items()]
    except (ModelFileError, MissingDependencyError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{predictor!r}", file=sys.stderr)
    failed = 0
    for label, image in jobs:
        if image is None:
            image = cv2.imread(label, cv2.IMREAD_COLOR)
            if image is None:
                print(f"skipped {label}: not a readable image", file=sys.stderr)
                failed += 1
                continue
        try:
            depth = predictor.predict(image)
        except InputError as exc:
            print(f"skipped {label}: {exc}", file=sys.stderr)
            failed += 1
            continue
        stem = label.split(":", 1)[1] if label.startswith("sample:") else Path(label).stem
        panel = np.concatenate([image, colorize(depth, args.colormap)], axis=1)
        _, png = cv2.imencode(".png", panel)
        out = atomic_write_bytes(args.output_dir / f"{stem}_depth.png", png.tobytes())
        if args.save_npy:
            atomic_write_bytes(args.output_dir / f"{stem}_depth.npy", _npy_bytes(depth))
        print(f"{label}: {image.shape[1]}x{image.shape[0]} depth range {depth.min():.3g}..{depth.max():.3g} -> {out}")
    return 1 if failed and failed == len(jobs) else 0


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
