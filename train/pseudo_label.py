"""``python -m train.pseudo_label``: stage 2, the frozen teacher labels SA-1B images.

Work is split by rank over shards (``torchrun`` sets the rank); each finished shard gets a
float16 ``<shard>.npz`` of inverse depth at the network resolution and, written last, its
``<shard>.json`` index: a restarted run skips every shard that has its index.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from runtime.commands import command
from runtime.io.files import atomic_write_bytes
from runtime.preprocessing import prepare_dynamic
from train.data import sa1b
from train.engine import setup_distributed
from train.models import build_teacher


def label_source(
    teacher: torch.nn.Module,
    source: Path,
    output: Path,
    size: int,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    output.mkdir(parents=True, exist_ok=True)
    containers = sa1b.containers(source)[rank::world]
    device = next(teacher.parameters()).device
    totals = {"shards": 0, "skipped_done": 0, "images": 0, "corrupt": 0, "rejected": 0}
    for container in tqdm(containers, desc=f"pseudo-labels (rank {rank})", unit="shard", disable=not progress):
        index_path = output / f"{container.name}.json"
        if index_path.is_file():
            totals["skipped_done"] += 1
            continue
        found, rejected = sa1b.members(container)
        corrupt: list[str] = []
        labels, entries = {}, []
        for candidate, image in sa1b.iter_images(found, corrupt):
            x = torch.from_numpy(prepare_dynamic(image, size)).to(device)
            with torch.inference_mode():
                disparity = teacher(x)[0].float().cpu().numpy()
            key = f"m{len(entries)}"
            labels[key] = disparity.astype(np.float16)
            entries.append({"member": candidate.member, "key": key, "shape": list(disparity.shape)})
        buffer = io.BytesIO()
        np.savez(buffer, **labels)
        atomic_write_bytes(output / f"{container.name}.npz", buffer.getvalue())
        index = {
            "container": str(container.resolve()),
            "labels": f"{container.name}.npz",
            "size": size,
            "entries": entries,
            "corrupt": corrupt,
            "rejected": rejected,
        }
        atomic_write_bytes(index_path, json.dumps(index, indent=1).encode())
        totals["shards"] += 1
        totals["images"] += len(entries)
        totals["corrupt"] += len(corrupt)
        totals["rejected"] += len(rejected)
    return totals


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.pseudo_label", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint (stage 1 output)")
    parser.add_argument("--source", type=Path, required=True, help="SA-1B tar shards or an image folder")
    parser.add_argument("--output", type=Path, required=True, help="pseudo-label folder")
    parser.add_argument("--size", type=int, default=518, help="short side fed to the teacher (default 518)")
    return parser


@command("python -m train.pseudo_label")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = setup_distributed()
    teacher = build_teacher(args.teacher).to(env.device)
    totals = label_source(teacher, args.source, args.output, args.size, env.rank, env.world, env.main)
    print(
        f"rank {env.rank}: {totals['images']} images labelled in {totals['shards']} shards, "
        f"{totals['skipped_done']} shards already done, {totals['corrupt']} corrupt images skipped, "
        f"{totals['rejected']} unsafe members rejected"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
