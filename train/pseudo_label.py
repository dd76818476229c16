"""``python -m train.pseudo_label``: stage 2, the frozen teacher labels SA-1B images.

Work is split by rank over shards (``torchrun`` sets the rank). ``--workers`` loader processes
read, decode and resize the images; the main process groups them by network input size (the
keep-aspect rule gives every image of one aspect ratio the same size, so they batch without
padding) and runs the teacher on batches of ``--batch-size``, in ``--amp`` precision, from pinned
memory on CUDA. A batch's labels are the one-at-a-time labels up to float rounding. A shard is a
tar file or the loose images of one folder, keyed by its path relative to ``--source``
(``<output>/<dir>/<name>.tar.json``, ``<output>/<dir>/_images.json``). Each finished shard gets
its label file (``--label-format``, see ``train.data.labels``) and, written last, its index, which
records the size, format, precision and teacher (its family, variant, licence and output kind): a
restarted run skips every shard whose index and label file are there, and refuses to mix in labels
made with other settings.

The teacher is any family ``train.models.load_model`` reads (Depth Anything V2, a Depth Anything 3
snapshot folder, a Video Depth Anything ``.pth`` used one image at a time). A label is the
teacher's output as it is, in the teacher's kind. For a ``metres_per_focal`` teacher (DA3Metric)
that is depth per focal length at the label's resolution: metres = focal * label / 300 with focal
in pixels of the image the teacher saw, which is the labelled image at the label's size (SA-1B
has no camera information, so no focal length is known or needed: the index says ``focal_px``
null and ``focal_at`` "label resolution"). The student is trained on the same pixel grid (its
crops rescale the label as ``train.data.datasets`` says), so it learns the same per-focal number.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from commands.errors import InputError
from commands.runner import command
from runtime.cli import number
from runtime.io.files import atomic_write, atomic_write_bytes
from runtime.preprocessing import prepare_dynamic
from train.data import sa1b
from train.data.labels import FORMATS, SUFFIX, LabelWriter
from train.engine import setup_distributed
from train.models import build_teacher
from train.models.teacher_model import teacher_identity

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ShardImages(torch.utils.data.Dataset):
    """Item ``i``: ``(i, network input (3, h, w) float32)``, or ``(i, None)`` when unreadable."""

    def __init__(self, candidates: list[sa1b.Candidate], size: int) -> None:
        self.candidates, self.size = candidates, size
        self._tars: dict = {}  # per process: each loader worker opens the shard itself

    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        try:
            image = sa1b.decode(sa1b.read_bytes(self.candidates[i], self._tars))
        except sa1b.UNREADABLE:
            return i, None
        return i, torch.from_numpy(prepare_dynamic(image, self.size)[0])

    def close(self) -> None:
        for tar in self._tars.values():
            tar.close()
        self._tars.clear()


def group_by_size(
    items: Iterable[tuple[int, torch.Tensor | None]], batch_size: int, max_waiting: int | None = None
) -> Iterator[list[tuple[int, torch.Tensor | None]]]:
    """Batches of same-shape inputs, each emitted as soon as it is full.

    An unreadable item (``None``) is passed on alone at once. When more than ``max_waiting``
    inputs (default ``4 * batch_size``) wait in partial batches, the fullest goes out early, so a
    shard of many aspect ratios cannot pile up memory; the rest go out at the end.
    """
    max_waiting = 4 * batch_size if max_waiting is None else max_waiting
    waiting: dict[tuple[int, ...], list] = {}
    for index, tensor in items:
        if tensor is None:
            yield [(index, None)]
            continue
        group = waiting.setdefault(tuple(tensor.shape), [])
        group.append((index, tensor))
        if len(group) == batch_size:
            yield waiting.pop(tuple(tensor.shape))
        elif sum(len(g) for g in waiting.values()) > max_waiting:
            yield waiting.pop(max(waiting, key=lambda shape: len(waiting[shape])))
    yield from waiting.values()


def check_precision(amp: str, device: torch.device) -> None:
    """``ValueError`` for a precision the device cannot run: fp16 on the CPU, bf16 before Ampere."""
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("--amp fp16 needs a CUDA GPU; on the CPU use --amp bf16 or none")
    if amp != "none" and device.type == "cuda":
        from runtime.backends.pytorch import check_cuda_precision

        try:
            check_cuda_precision(amp, torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
        except ValueError as exc:
            raise ValueError(str(exc).replace("precision='fp16'", "--amp fp16")) from None


def precision(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The teacher's number format: autocast for bf16/fp16; FP32 for real otherwise (no TF32 on CUDA)."""
    if AMP[amp] is not None:
        return torch.autocast(device.type, dtype=AMP[amp])
    if device.type == "cuda":
        from runtime.backends.pytorch import exact_fp32_cuda

        return exact_fp32_cuda(torch)
    return contextlib.nullcontext()


def label_images(
    teacher: torch.nn.Module,
    candidates: list[sa1b.Candidate],
    size: int,
    batch_size: int = 1,
    workers: int = 0,
    amp: str = "none",
) -> Iterator[tuple[int, np.ndarray | None]]:
    """``(i, float32 label at the network resolution)`` for ``candidates[i]``, ``(i, None)`` for an
    unreadable image; in completion order (batches fill at different times)."""
    device = next(teacher.parameters()).device
    check_precision(amp, device)
    images = ShardImages(candidates, size)
    loader = torch.utils.data.DataLoader(images, batch_size=None, num_workers=workers)
    pinned = device.type == "cuda"
    try:
        for group in group_by_size(loader, batch_size):
            if group[0][1] is None:
                yield group[0][0], None
                continue
            inputs = [tensor for _, tensor in group]
            batch = torch.empty((len(inputs), *inputs[0].shape), pin_memory=pinned)
            torch.stack(inputs, out=batch)
            with torch.inference_mode(), precision(amp, device):
                labels = teacher(batch.to(device, non_blocking=True)).float().cpu().numpy()
            for (index, _), label in zip(group, labels, strict=True):
                yield index, label
    finally:
        images.close()


FOLDER_SHARD = "_images"  # the index of a folder's loose images: <folder>/_images.json (never a tar's name)


@dataclass
class Shard:
    """One unit of work and of resume: a tar shard, or the loose images of one folder."""

    name: str  # the index's path relative to --output, without ".json"
    container: Path  # the tar, or the folder
    loose: list[Path] = field(default_factory=list)  # a folder's images

    def members(self) -> tuple[list[sa1b.Candidate], list[str]]:
        if not self.loose:
            return sa1b.members(self.container)
        return [sa1b.Candidate(self.container, p.name, p.stat().st_size) for p in self.loose], []


def plan_shards(source: Path, output: Path) -> list[Shard]:
    """Every tar shard and image folder under ``source``, keyed by its path relative to ``source``
    (two ``sa_1.tar`` or ``a.jpg`` in different folders are different work); nothing under ``output``."""
    root = source if source.is_dir() else source.parent
    inside = output.resolve()
    tars, folders = [], {}
    for path in sa1b.containers(source):
        if path.resolve().is_relative_to(inside):
            continue
        relative = path.relative_to(root)
        if path.suffix == ".tar":
            tars.append(Shard(relative.as_posix(), path))
        else:
            folders.setdefault(relative.parent, []).append(path)
    loose = [Shard((folder / FOLDER_SHARD).as_posix(), root / folder, files) for folder, files in folders.items()]
    return sorted(tars + loose, key=lambda shard: shard.name)


def teacher_digest(teacher: torch.nn.Module) -> str:
    """sha256 of the teacher's weights (names, shapes and values): which teacher made a label set."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _settings_text(settings: dict) -> str:
    teacher = settings.get("teacher") or {}
    who = f"teacher {teacher.get('checkpoint') or 'in memory'} (sha256 {str(teacher.get('sha256'))[:12]})"
    return f"--size {settings['size']} --label-format {settings['format']} --amp {settings['amp']}, {who}"


def already_done(shard: Shard, output: Path, settings: dict) -> bool:
    """Whether ``shard``'s labels are finished: its index is there, its label file too (and for a
    folder, the same images). ``InputError`` when they were made with other settings: one output
    folder holds one label set."""
    index_path = output / f"{shard.name}.json"
    if not index_path.is_file():
        return False
    try:
        index = json.loads(index_path.read_text())
        made = {key: index[key] for key in ("size", "format", "amp")}
    except (OSError, ValueError, KeyError, TypeError):
        print(f"note: {index_path} is not a readable index: its shard is labelled again", file=sys.stderr)
        return False
    made["teacher"] = index.get("teacher")
    same_teacher = made["teacher"] is None or made["teacher"].get("sha256") == settings["teacher"]["sha256"]
    if any(made[key] != settings[key] for key in ("size", "format", "amp")) or not same_teacher:
        raise InputError(
            f"{output} holds labels made with {_settings_text(made)} ({index_path.name}); this run asks "
            f"{_settings_text(settings)}: label into another --output, or resume with the same options and teacher"
        )
    if not (output / index["labels"]).is_file():
        print(f"note: {index_path}: its label file {index['labels']} is gone: the shard is labelled again")
        return False
    if shard.loose and sorted(index.get("members", [])) != sorted(p.name for p in shard.loose):
        print(f"note: {shard.container} holds other images than when it was labelled: labelled again")
        return False
    return True


def label_source(
    teacher: torch.nn.Module,
    source: Path,
    output: Path,
    size: int,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    batch_size: int = 1,
    workers: int = 0,
    amp: str = "none",
    label_format: str = "float16",
    checkpoint: Path | None = None,
) -> dict:
    """Label every shard of this rank without an index; ``totals`` counts what was done and skipped
    (``unreadable``: the tar shards that could not be listed, named)."""
    from tqdm import tqdm

    output.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(source, output)[rank::world]
    settings = {"size": size, "format": label_format, "amp": amp}
    settings["teacher"] = {"checkpoint": str(checkpoint) if checkpoint else None, "sha256": teacher_digest(teacher)}
    settings["teacher"].update(teacher_identity(teacher, str(checkpoint or "the teacher")))
    if settings["teacher"]["output_kind"] == "metres_per_focal":  # what focal the labels are per
        settings["teacher"].update(focal_px=None, focal_at="label resolution")
    todo = [shard for shard in shards if not already_done(shard, output, settings)]  # refused before any work
    totals = {"shards": 0, "skipped_done": len(shards) - len(todo), "images": 0, "corrupt": 0, "rejected": 0}
    totals["unreadable"] = []
    bar = tqdm(desc=f"pseudo-labels (rank {rank})", total=0, unit="img", disable=not progress)
    started = time.perf_counter()
    try:  # the bar ends before an interruption's one line, not after it
        for shard in todo:
            try:
                found, rejected = shard.members()
            except ValueError as exc:  # a truncated or damaged tar: counted, the other shards go on
                totals["unreadable"].append(str(exc))
                continue
            bar.total += len(found)
            bar.set_postfix(shard=shard.name)
            corrupt: list[str] = []
            entries: list[dict] = []

            def write(tmp: Path, found=found, corrupt=corrupt, entries=entries) -> None:
                writer = LabelWriter(tmp, label_format)
                try:
                    for i, label in label_images(teacher, found, size, batch_size, workers, amp):
                        bar.update()
                        if label is None:
                            corrupt.append(found[i].name)
                        else:
                            writer.add({"member": found[i].member, "key": f"m{i}", "shape": list(label.shape)}, label)
                finally:
                    entries += writer.close()

            labels_name = f"{shard.name}{SUFFIX[label_format]}"
            (output / labels_name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(output / labels_name, write)
            entries.sort(key=lambda entry: int(entry["key"][1:]))
            index = {
                "container": str(shard.container.resolve()),
                "labels": labels_name,
                **settings,
                "entries": entries,
                "corrupt": sorted(corrupt),
                "rejected": rejected,
            }
            if shard.loose:
                index["members"] = [c.member for c in found]
            atomic_write_bytes(output / f"{shard.name}.json", json.dumps(index, indent=1).encode())
            totals["shards"] += 1
            totals["images"] += len(entries)
            totals["corrupt"] += len(corrupt)
            totals["rejected"] += len(rejected)
    finally:
        bar.close()
    totals["seconds"] = time.perf_counter() - started
    return totals


MAX_SIZE = 2044  # the teacher's input short side: 518 in the paper; 2044 is already 15x the work


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.pseudo_label", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher",
        type=Path,
        required=True,
        help="teacher: a Depth Anything V2 checkpoint (stage 1 output or published), a Depth Anything 3 "
        "snapshot folder or model.safetensors, or a Video Depth Anything .pth",
    )
    parser.add_argument(
        "--variant",
        help="the Depth Anything 3 model a bare model.safetensors holds (e.g. da3metric-large); a snapshot "
        "folder's config.json names it",
    )
    parser.add_argument("--source", type=Path, required=True, help="SA-1B tar shards or an image folder")
    parser.add_argument("--output", type=Path, required=True, help="pseudo-label folder")
    parser.add_argument(
        "--size",
        type=number(14, MAX_SIZE, integer=True),
        default=518,
        help=f"short side fed to the teacher, 14 to {MAX_SIZE} (default 518)",
    )
    parser.add_argument(
        "--batch-size",
        type=number(1, 1024, integer=True),
        default=8,
        help="images per teacher call, of one input size (default 8)",
    )
    parser.add_argument(
        "--workers",
        type=number(0, 256, integer=True),
        default=4,
        help="loader processes decoding and resizing images (default 4)",
    )
    parser.add_argument(
        "--amp",
        choices=tuple(AMP),
        default="none",
        help="teacher precision: none (FP32, no TF32), bf16 (GPU or CPU) or fp16 (GPU); default none",
    )
    parser.add_argument(
        "--label-format",
        choices=FORMATS,
        default="float16",
        help="float16 (.npz, 2 bytes a pixel), float16z (the same values deflated, ~0.8 bytes a pixel) or "
        "png16 (16-bit PNGs with a per-image offset and scale, ~1.15 bytes a pixel); default float16",
    )
    return parser


@command("python -m train.pseudo_label")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = setup_distributed()
    teacher = build_teacher(args.teacher, variant=args.variant).to(env.device)
    try:
        totals = label_source(
            teacher,
            args.source,
            args.output,
            args.size,
            env.rank,
            env.world,
            env.main,
            args.batch_size,
            args.workers,
            args.amp,
            args.label_format,
            args.teacher,
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"finished shards are kept in {args.output} (each with its index), the shard in progress was not "
            "written: rerun the same command to continue"
        ) from None
    rate = totals["images"] / totals["seconds"] if totals["seconds"] > 0 else 0.0
    print(
        f"rank {env.rank}: {totals['images']} images labelled in {totals['shards']} shards "
        f"({rate:.2f} images/s), {totals['skipped_done']} shards already done, {totals['corrupt']} corrupt images "
        f"skipped, {totals['rejected']} unsafe members rejected, {len(totals['unreadable'])} unreadable shards skipped"
    )
    for problem in totals["unreadable"]:
        print(f"  skipped: {problem}")
    if totals["unreadable"]:
        print(
            f"error: {len(totals['unreadable'])} shards could not be read (above) and have no labels; the others are "
            "done: replace them and rerun the same command",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
