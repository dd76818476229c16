"""``python -m train.distill``: stage 3, distil the student from pseudo-labelled SA-1B images.

Resumable and ``torchrun``-ready like the other stages. The student starts from DINOv2
weights when ``--init-backbone`` is given, from a selection of a larger Depth Anything V2's
weights with ``--init-from`` (e.g. a vitt from a vits), otherwise from random weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from commands.runner import command
from runtime.cli import number
from train.engine import add_common_args, config_from_args, spec_or_encoder
from train.models import VARIANTS
from train.models.teacher_model import TEACHER_ENCODER
from train.student_training import distill

STUDENTS = tuple(name for name in VARIANTS if name != TEACHER_ENCODER)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.distill", description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, required=True, help="pseudo-label folder (stage 2 output)")
    parser.add_argument("--student", default="vits", choices=STUDENTS, help="default vits")
    parser.add_argument(
        "--init-from",
        type=Path,
        help="a larger Depth Anything V2 checkpoint whose leading channels, heads and blocks start the "
        "student (weight selection; e.g. a vits for a vitt)",
    )
    parser.add_argument(
        "--trim", type=number(0, 0.99), default=0.1, help="fraction of worst pixels ignored (default 0.1)"
    )
    parser.add_argument("--alpha", type=number(0, 1000), default=2.0, help="gradient-matching weight (default 2)")
    parser.add_argument(
        "--align-backbone", type=Path, help="frozen DINOv2 weights to align the student's features to (optional)"
    )
    parser.add_argument(
        "--align-weight", type=number(0, 1000), default=1.0, help="feature-alignment weight (default 1)"
    )
    add_common_args(parser, steps=20000, crop=518)
    return parser


@command("python -m train.distill")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.init_from and args.init_backbone:
        raise SystemExit("error: --init-from and --init-backbone both start the encoder; give one")
    cfg = config_from_args(args)
    distill(
        args.labels,
        cfg,
        spec_or_encoder(args, args.student),
        args.init_backbone,
        args.trim,
        args.alpha,
        args.align_backbone,
        args.align_weight,
        args.init_from,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
