"""``python -m train.plan``: what the three stages cost at the paper's scale, in GPU-hours and disk.

Each stage's work per image is counted on the real model (PyTorch's FLOP counter on the meta
device: nothing is allocated or run) and multiplied by the paper's data: the ViT-G teacher trains
160K steps of 64 crops of 518x518 on 595K synthetic images, labels 62M real images once (SA-1B's
3:2 photos are 518x784 at the network), and each student trains 480K steps of 192 crops (Depth
Anything V2, section 6, implementation details). Work becomes GPU-hours at an assumed share of a
GPU's peak, an extrapolation that the table marks as such. ``--measure`` adds what this machine's
``--device`` really does: stage 2 through its real pipeline (loader, batches, label writing) on
SA-1B-sized JPEGs, one image at a time and batched, and training steps. Label storage is counted
per format, the compressed ones measured on a real disparity map.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from commands.runner import command
from runtime.cli import number
from runtime.preprocessing import dynamic_size
from train.models import DepthAnythingV2, ModelSpec, get_spec

STEPS_TEACHER, BATCH_TEACHER = 160_000, 64
STEPS_STUDENT, BATCH_STUDENT = 480_000, 192
REAL_IMAGES = 62_000_000
SA1B_IMAGE = (1500, 2250)  # SA-1B ships its photos with the short side at 1500 pixels, mostly 3:2
LABEL_SIZE = dynamic_size(*SA1B_IMAGE, 518)  # 518x784
CROP = 518
H100_BF16_TFLOPS = 989.0  # H100 SXM dense BF16 tensor-core peak (NVIDIA datasheet)


@dataclass(frozen=True)
class Stage:
    name: str
    encoder: str
    samples: int
    size: tuple[int, int]
    training: bool


def paper_stages(teacher: str = "vitg", student: str = "vits") -> list[Stage]:
    return [
        Stage("1 teacher", teacher, STEPS_TEACHER * BATCH_TEACHER, (CROP, CROP), True),
        Stage("2 pseudo-labels", teacher, REAL_IMAGES, LABEL_SIZE, False),
        Stage("3 student", student, STEPS_STUDENT * BATCH_STUDENT, (CROP, CROP), True),
    ]


def work_per_image(
    encoder: str | ModelSpec, size: tuple[int, int], training: bool, checkpointing: bool = False
) -> float:
    """Floating-point operations (a multiply-add is two) for one image: the forward pass, plus the
    backward pass when training (and the encoder's forward again when it recomputes activations)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = DepthAnythingV2(encoder).train(training).set_activation_checkpointing(checkpointing)
        x = torch.empty(1, 3, *size)
    with FlopCounterMode(display=False) as counter:
        if training:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return float(counter.get_total_flops())


def real_disparity(input_size: int = 518) -> np.ndarray:
    """The Middlebury 2014 motorcycle's stereo disparity (a real inverse-depth map, bundled with
    scikit-image; NaN where unknown) at the network resolution for ``input_size``."""
    from runtime.io.samples import sample_dir

    with np.load(sample_dir() / "motorcycle_disp.npz") as archive:
        label = archive[archive.files[0]].astype(np.float32)
    label[~np.isfinite(label) | (label <= 0)] = np.nan
    height, width = dynamic_size(*label.shape, input_size)
    return cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)


def label_bytes_per_pixel() -> dict[str, float]:
    """File bytes per label pixel of each format, for one real disparity map."""
    from train.data.labels import FORMATS, LabelWriter

    label = real_disparity()
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for fmt in FORMATS:
            writer = LabelWriter(Path(folder) / fmt, fmt)
            writer.add({"key": "m0"}, label)
            writer.close()
            sizes[fmt] = (Path(folder) / fmt).stat().st_size / label.size
    return sizes


def sa1b_sized_shard(path: Path, count: int) -> Path:
    """A tar shard of ``count`` 1500x2250 JPEGs (the bundled photos, enlarged): SA-1B's decode cost."""
    import io
    import tarfile

    from runtime.io.samples import sample_images

    photos = list(sample_images().values())
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            photo = cv2.resize(photos[i % len(photos)], SA1B_IMAGE[::-1], interpolation=cv2.INTER_CUBIC)
            data = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            info = tarfile.TarInfo(f"sa_{i + 1}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def measure_labelling(
    encoder: str | ModelSpec, device: torch.device, amp: str, batch_size: int, workers: int, images: int, rounds: int
) -> tuple[float, float]:
    """Stage 2's images/s, one image at a time (no workers) and batched, in interleaved rounds
    (best round each): decoding, resizing, the teacher and float16 label writing, as the CLI runs."""
    from train.data import sa1b
    from train.data.labels import LabelWriter
    from train.models import freeze
    from train.pseudo_label import label_images

    teacher = freeze(DepthAnythingV2(encoder)).to(device)
    best = {"one": 0.0, "batched": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        candidates, _ = sa1b.members(sa1b_sized_shard(Path(folder) / "sa_000000.tar", images))
        for _ in range(rounds):
            for mode, (batch, loaders) in (("one", (1, 0)), ("batched", (batch_size, workers))):
                writer = LabelWriter(Path(folder) / f"{mode}.npz", "float16")
                started = time.perf_counter()
                for i, label in label_images(teacher, candidates, CROP, batch, loaders, amp):
                    writer.add({"key": f"m{i}"}, label)
                writer.close()
                best[mode] = max(best[mode], images / (time.perf_counter() - started))
    return best["one"], best["batched"]


def measure_training(
    encoder: str | ModelSpec, device: torch.device, amp: str, batch_size: int, checkpointing: bool, steps: int
) -> float:
    """Training images/s at 518x518 crops: forward, loss, backward and an AdamW step (best step)."""
    from train.losses import DistillationLoss

    model = DepthAnythingV2(encoder).to(device).train().set_activation_checkpointing(checkpointing)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-6)
    loss_fn = DistillationLoss()
    images = torch.randn(batch_size, 3, CROP, CROP, device=device)
    target = torch.rand(batch_size, CROP, CROP, device=device) + 0.1
    mask = torch.ones_like(target, dtype=torch.bool)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)
    best = 0.0
    for _ in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "none"):
            prediction = model(images)
        loss = loss_fn(prediction.float(), target, mask)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, batch_size / (time.perf_counter() - started))
    return best


def decode_seconds(repeats: int = 5) -> float:
    """Seconds one thread takes to decode an SA-1B-sized JPEG and make its 518 network input (best of
    ``repeats``): the loader's work per image in stage 2, and in stage 3 for every sample."""
    from runtime.io.samples import sample_images
    from runtime.preprocessing import prepare_dynamic

    photo = cv2.resize(next(iter(sample_images().values())), SA1B_IMAGE[::-1], interpolation=cv2.INTER_CUBIC)
    data = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        best = np.inf
        for _ in range(repeats):
            started = time.perf_counter()
            prepare_dynamic(cv2.imdecode(data, cv2.IMREAD_COLOR), CROP)
            best = min(best, time.perf_counter() - started)
    finally:
        cv2.setNumThreads(threads)
    return best


def hours(samples: int, work: float, rate: float) -> float:
    """Device-hours for ``samples`` at ``rate`` operations per second."""
    return samples * work / rate / 3600


def report(args: argparse.Namespace) -> str:
    peak = args.peak_tflops * 1e12 * args.utilisation
    lines = [
        f"Extrapolated: GPU-hours at {args.utilisation:.0%} of {args.peak_tflops:.0f} TFLOP/s "
        f"({args.peak_tflops:.0f} = H100 SXM dense BF16); activation checkpointing "
        f"{'on' if args.activation_checkpointing else 'off'} for the teacher.",
        "",
        "| stage | model | images | size | TFLOP / image | PFLOP total | GPU-hours (extrapolated) |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in paper_stages(args.teacher, args.student):
        recompute = args.activation_checkpointing and stage.training and stage.encoder == args.teacher
        work = work_per_image(stage.encoder, stage.size, stage.training, recompute)
        size = f"{stage.size[0]}x{stage.size[1]}"
        lines.append(
            f"| {stage.name} | {stage.encoder} | {stage.samples / 1e6:.2f}M | {size} | {work / 1e12:.3f} | "
            f"{stage.samples * work / 1e15:,.0f} | {hours(stage.samples, work, peak):,.0f} |"
        )
    decode = decode_seconds()
    lines += [
        "",
        f"Input pipeline, measured on this CPU: one core decodes an SA-1B JPEG ({SA1B_IMAGE[0]}x{SA1B_IMAGE[1]}) and "
        f"makes its network input in {decode * 1e3:.0f} ms: {REAL_IMAGES * decode / 3600:,.0f} core-hours for "
        f"stage 2 and {STEPS_STUDENT * BATCH_STUDENT * decode / 3600:,.0f} for stage 3, which decodes the image "
        "again for every sample.",
    ]
    pixels = LABEL_SIZE[0] * LABEL_SIZE[1]
    lines += ["", f"Stage 2 labels, {REAL_IMAGES / 1e6:.0f}M images at {LABEL_SIZE[0]}x{LABEL_SIZE[1]}:", ""]
    lines += ["| format | bytes / pixel (measured) | MB / image | TB for 62M |", "|---|---|---|---|"]
    for fmt, per_pixel in label_bytes_per_pixel().items():
        per_image = per_pixel * pixels
        lines.append(f"| {fmt} | {per_pixel:.2f} | {per_image / 1e6:.2f} | {per_image * REAL_IMAGES / 1e12:.1f} |")
    if args.measure:
        device = torch.device(args.device)
        lines += ["", f"Measured on {describe(device)} ({args.amp}):", ""]
        lines += ["| what | model | images/s | TFLOP/s | hours for the paper's images |", "|---|---|---|---|---|"]
        for text in args.measure:
            encoder = ModelSpec.from_json(text) if text.lstrip().startswith("{") else get_spec(text)
            one, batched = measure_labelling(
                encoder, device, args.amp, args.batch_size, args.workers, args.images, args.rounds
            )
            work = work_per_image(encoder, LABEL_SIZE, False)
            for what, rate in (("stage 2, one at a time", one), (f"stage 2, batches of {args.batch_size}", batched)):
                tflops, total = rate * work / 1e12, REAL_IMAGES / rate / 3600
                lines.append(f"| {what} | {encoder.name} | {rate:.2f} | {tflops:.2f} | {total:,.0f} |")
            rate = measure_training(encoder, device, args.amp, args.train_batch, False, args.rounds)
            work = work_per_image(encoder, (CROP, CROP), True)
            samples = STEPS_STUDENT * BATCH_STUDENT
            lines.append(
                f"| training step, batch {args.train_batch} | {encoder.name} | {rate:.2f} | {rate * work / 1e12:.2f} | "
                f"{samples / rate / 3600:,.0f} (student schedule) |"
            )
    return "\n".join(lines)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    name = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="vitg", help="teacher encoder (default vitg)")
    parser.add_argument("--student", default="vits", help="student encoder (default vits)")
    parser.add_argument(
        "--peak-tflops", type=number(0, 1e6, above=True), default=H100_BF16_TFLOPS, help="the GPU's peak (default H100)"
    )
    parser.add_argument(
        "--utilisation", type=number(0, 1, above=True), default=0.4, help="assumed share of the peak (default 0.4)"
    )
    parser.add_argument(
        "--activation-checkpointing", action="store_true", help="count the teacher's recomputed forward pass"
    )
    parser.add_argument(
        "--measure", nargs="*", metavar="ENCODER", help="measure these encoders (names or ModelSpec JSON) on --device"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="precision measured")
    parser.add_argument(
        "--batch-size", type=number(1, 4096, integer=True), default=8, help="stage 2 batch measured (default 8)"
    )
    parser.add_argument(
        "--workers", type=number(0, 256, integer=True), default=4, help="stage 2 loader workers measured (default 4)"
    )
    parser.add_argument(
        "--images", type=number(1, 100000, integer=True), default=16, help="SA-1B-sized images per round (default 16)"
    )
    parser.add_argument(
        "--train-batch", type=number(1, 4096, integer=True), default=2, help="training batch measured (default 2)"
    )
    parser.add_argument(
        "--rounds",
        type=number(1, 1000, integer=True),
        default=2,
        help="interleaved rounds; the best counts (default 2)",
    )
    return parser


@command("python -m train.plan")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(report(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
