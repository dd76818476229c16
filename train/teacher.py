"""``python -m train.teacher``: stage 1, the teacher learns relative depth from synthetic GT.

Data: ``synthetic:N`` (procedural scenes, for smoke runs and tests) or ``hypersim:/path``.
Resumable: rerun the same command after a crash and it continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from commands.runner import command
from train.data.datasets import SceneDataset
from train.engine import add_common_args, config_from_args, spec_or_encoder, train
from train.losses import DistillationLoss
from train.models import DepthAnythingV2, load_backbone
from train.models.teacher_model import TEACHER_ENCODER


def open_dataset(spec: str, seed: int, crop: int):
    kind, _, value = spec.partition(":")
    if kind == "synthetic":
        from train.data.synthetic import SyntheticScenes

        # Rendered a little larger than the crop, in a 4:5 aspect, so crops differ.
        return SyntheticScenes(int(value or 1000), size=(crop * 5 // 4, crop * 8 // 5), seed=seed)
    if kind == "hypersim":
        from train.data.hypersim import Hypersim

        return Hypersim(Path(value))
    raise ValueError(f"--data must be synthetic:N or hypersim:/path, got {spec!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic:1000", help="synthetic:N or hypersim:/path (default synthetic)")
    parser.add_argument("--encoder", default=TEACHER_ENCODER, help="teacher encoder (default vitg)")
    add_common_args(parser, steps=20000, crop=518)
    return parser


@command("python -m train.teacher")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    dataset = SceneDataset(open_dataset(args.data, args.seed, cfg.crop), cfg.crop)
    model = DepthAnythingV2(spec_or_encoder(args, args.encoder))
    if args.init_backbone:
        load_backbone(model, args.init_backbone)
    # Ground truth is clean: no trimming at this stage.
    train(model, dataset, DistillationLoss(trim=0.0), cfg, "teacher", {"data": args.data})
    return 0


if __name__ == "__main__":
    sys.exit(main())
