"""``python -m runtime``: depth for image files, videos and cameras, written as colourised PNGs and MP4s.

Every input is checked (it exists, a folder holds images or videos, no two inputs would write
the same output, every video and camera opens) and the output folder tried before the model is
loaded. The run exits 1 when an input was skipped, 130 when Ctrl-C left inputs unprocessed (143
for SIGTERM: ``commands.runner`` says which, as for the bag tool).
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from commands.errors import InputError
from commands.runner import CommandError, Terminated, command

from .align.stabilize import flicker_lines
from .cli import add_predictor_args, add_streams_arg, build_predictor, focal_pixels
from .io.files import atomic_write_bytes, check_writable_folder
from .io.video import VIDEO_SUFFIXES, depth_frame

DEFAULT_CHECKPOINT = Path("checkpoints/depth_anything_v2_vits.pth")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runtime",
        description="Predict depth (near = bright) for images, videos or a camera: relative inverse depth, or metres "
        "from a metric model (--save-npy keeps the numbers). "
        "Images give <name>_depth.png, videos and cameras <name>_depth.mp4 at the source's frame rate: "
        "the colourised depth alone by default, next to the input with --side-by-side.",
    )
    parser.add_argument("inputs", nargs="*", type=Path, help="image or video files, or folders of them")
    parser.add_argument("--camera", type=int, metavar="INDEX", help="also record from this OpenCV camera (0, 1, ...)")
    parser.add_argument("--sample", action="store_true", help="also run on the bundled sample photographs")
    add_predictor_args(
        parser,
        f"model file (.pth/.safetensors/.onnx/.xml/.engine); default {DEFAULT_CHECKPOINT} when present, "
        "else untrained vits weights (structure only, the depth is meaningless)",
        type=Path,
        default=None,
    )
    add_streams_arg(parser)
    parser.add_argument(
        "--focal",
        type=focal_pixels,
        metavar="PIXELS",
        help="the camera's focal length in pixels of the input images (at their own size): metres from a "
        "depth-per-focal-length model (DA3Metric), which needs it; other models refuse it",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where to write (default outputs/)")
    parser.add_argument("--colormap", default="inferno", help="inferno, turbo, viridis, magma or gray")
    parser.add_argument(
        "--side-by-side", action="store_true", help="write the input and its depth side by side (default: depth only)"
    )
    parser.add_argument("--save-npy", action="store_true", help="also write each image's float32 depth as .npy")
    parser.add_argument("--max-frames", type=int, help="stop each video or camera after this many frames")
    parser.add_argument(
        "--stabilize",
        action="store_true",
        help="videos and cameras: relative depth on the scale of the frames before it, so values and colours "
        "stop flickering (the flicker figure is reported either way)",
    )
    args = parser.parse_args(argv)
    if not args.inputs and not args.sample and args.camera is None:
        parser.error("give image files, videos or folders of them, --camera INDEX, or --sample")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be positive")
    return args


@dataclass
class Job:
    label: str  # what the user named: a path, "camera 0" or "sample:NAME"
    kind: str  # "image", "video" or "camera"
    stem: str  # output name without "_depth.<ext>"
    source: Path | int | None = None
    image: np.ndarray | None = None  # bundled samples come decoded
    capture: Any = None  # a camera stays open from the check before the model loads

    @property
    def output_name(self) -> str:
        return f"{self.stem}_depth.{'png' if self.kind == 'image' else 'mp4'}"


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def collect(paths: list[Path]) -> list[Job]:
    """One job per image or video; a missing path or a folder with neither is an ``InputError``."""
    jobs = []
    for path in paths:
        if path.is_dir():
            suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise InputError(f"{path}: no images or videos in this folder (looked for {' '.join(suffixes)})")
            jobs += [Job(str(p), _kind(p), p.stem, p) for p in found]
        elif path.is_file():
            jobs.append(Job(str(path), _kind(path), path.stem, path))
        else:
            raise InputError(f"{path}: no such file or folder")
    return jobs


def name_outputs(jobs: list[Job]) -> list[str]:
    """Give every job its own output name; returns notes on the names that had to change.

    Inputs that differ only in their extension (``a.jpg``, ``a.png``) keep it in the name
    (``a_jpg_depth.png``); any other clash is an ``InputError``, never a silent overwrite.
    """
    notes = []
    by_name: dict[str, list[Job]] = {}
    for job in jobs:
        by_name.setdefault(job.output_name, []).append(job)
    for clashing in (group for group in by_name.values() if len(group) > 1):
        for job in clashing:
            if isinstance(job.source, Path):
                job.stem = f"{job.stem}_{job.source.suffix.lstrip('.').lower()}"
                notes.append(f"{job.label} -> {job.output_name} ({len(clashing)} inputs share the name)")
    final: dict[str, list[str]] = {}
    for job in jobs:
        final.setdefault(job.output_name, []).append(job.label)
    clashes = [labels for labels in final.values() if len(labels) > 1]
    if clashes:
        listed = "; ".join(" and ".join(labels) for labels in clashes)
        raise InputError(f"these inputs would write the same output file: {listed}; run them separately")
    return notes


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


def _jobs(args: argparse.Namespace) -> tuple[list[Job], list[str]]:
    jobs = collect(args.inputs)
    if args.camera is not None:
        jobs.append(Job(f"camera {args.camera}", "camera", f"camera{args.camera}", args.camera))
    if args.sample:
        from .io.samples import sample_images

        jobs += [Job(f"sample:{name}", "image", name, image=image) for name, image in sample_images().items()]
    return jobs, name_outputs(jobs)


def open_sources(jobs: list[Job]) -> None:
    """Open every video and camera before the model loads; ``InputError`` naming each that does not open."""
    from .io.video import open_capture

    problems = []
    for job in (job for job in jobs if job.kind != "image"):
        try:
            capture = open_capture(job.source)
        except InputError as exc:
            problems.append(str(exc))
            continue
        if job.kind == "camera":
            job.capture = capture
        else:  # reopened when its turn comes: a folder of videos must not hold every decoder at once
            capture.release()
    if problems:
        raise InputError("; ".join(problems) + ("" if len(problems) == 1 else f" ({len(problems)} inputs)"))


def _listed(labels: list[str]) -> str:
    return ", ".join(labels[:3]) + (", ..." if len(labels) > 3 else "")


def _not_done(jobs: list[Job]) -> str:
    return f"{len(jobs)} input{'s' if len(jobs) > 1 else ''} not processed ({_listed([j.label for j in jobs])})"


@command("python -m runtime", sigterm=True)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jobs, notes = _jobs(args)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    check_writable_folder(args.output_dir, "--output-dir")
    open_sources(jobs)
    predictor = build_predictor(args, load_default_model(args.model))
    if predictor.output.needs_focal and predictor.camera is None:
        raise InputError(
            f"{predictor.output.describe()}: metres need the camera's focal length; pass --focal PIXELS "
            "(of the input images)"
        )
    print(f"{predictor!r}: {predictor.output.describe()}", file=sys.stderr)
    if args.stabilize and predictor.output.is_depth:
        raise InputError(f"the model outputs {predictor.output.describe()}: --stabilize is for relative models")
    skipped = []
    for index, job in enumerate(jobs):
        out = args.output_dir / job.output_name
        replaced = " (replaced an earlier file)" if out.exists() else ""
        try:
            if job.kind == "image":
                line, stop = _depth_image(predictor, job, out, args), None
            else:
                line, stop = _depth_video(predictor, job, out, args)
        except InputError as exc:
            print(f"skipped {job.label}: {exc}", file=sys.stderr)
            skipped.append(job.label)
            continue
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: commands.runner says which, exits 130 or 143
            left = f"; {_not_done(jobs[index + 1 :])}" if index + 1 < len(jobs) else ""
            raise type(exc)(f"during {job.label}: nothing written for it{left}") from None
        print(f"{line} -> {out}{replaced}")
        if stop is not None and index + 1 < len(jobs):  # a recording stopped, finalised; the rest never started
            raise type(stop)(_not_done(jobs[index + 1 :]))
    if skipped:
        raise CommandError(f"{len(skipped)} of {len(jobs)} inputs skipped ({_listed(skipped)}): see above")
    return 0


def _depth_image(predictor, job: Job, out: Path, args: argparse.Namespace) -> str:
    from .io.images import read_image

    image = job.image if job.image is not None else read_image(job.source)
    depth = predictor.predict(image)
    kind = predictor.output
    _, png = cv2.imencode(".png", depth_frame(image, depth, args.colormap, args.side_by_side, kind.kind))
    atomic_write_bytes(out, png.tobytes())
    if args.save_npy:
        buffer = io.BytesIO()
        np.save(buffer, depth)
        atomic_write_bytes(out.with_suffix(".npy"), buffer.getvalue())
    unit = " m" if kind.unit == "m" else " (depth up to scale)" if kind.is_depth else " (relative inverse depth)"
    return f"{job.label}: {image.shape[1]}x{image.shape[0]} depth range {depth.min():.3g}..{depth.max():.3g}{unit}"


def _depth_video(predictor, job: Job, out: Path, args: argparse.Namespace) -> tuple[str, BaseException | None]:
    from tqdm import tqdm

    from .io.video import frame_count, open_capture, write_depth_video

    capture = job.capture if job.capture is not None else open_capture(job.source)
    total = frame_count(capture)
    if args.max_frames is not None:
        total = min(total or args.max_frames, args.max_frames)
    with tqdm(total=total, unit="frame", desc=job.label, dynamic_ncols=True) as bar:
        summary = write_depth_video(
            predictor,
            capture,
            out,
            args.colormap,
            args.side_by_side,
            args.max_frames,
            progress=bar.update,
            stabilize=args.stabilize,
        )
    fps_note = "" if summary.fps_reported else " (the source reports no frame rate: assumed)"
    stop = (summary.interrupt or KeyboardInterrupt()) if summary.interrupted else None
    stopped = "" if stop is None else f", stopped by {'SIGTERM' if isinstance(stop, Terminated) else 'Ctrl-C'}"
    line = (
        f"{job.label}: {summary.frames} frames at {summary.fps:.3g} fps{fps_note}, "
        f"processed at {summary.processing_fps:.2f} frames/s{stopped}"
    )
    line += "".join(f";{text[1:]}" for text in flicker_lines(summary.flicker, summary.flicker_unstabilized))
    return line, stop


if __name__ == "__main__":
    sys.exit(main())
