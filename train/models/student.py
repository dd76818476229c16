"""The student: a small encoder (ViT-S by default; T, B and L selectable) with DPT, trainable."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_model
from .depth_anything import DepthAnythingV2
from .teacher_model import TEACHER_ENCODER
from .variants import ModelSpec, get_spec

STUDENT_ENCODER = "vits"


def build_student(
    encoder: str | ModelSpec = STUDENT_ENCODER,
    checkpoint: str | Path | None = None,
    max_depth: float | None = None,
    output_kind: str | None = None,
) -> DepthAnythingV2:
    """A student in training mode, from a checkpoint when given, else randomly initialised with the
    head for ``output_kind`` (its teacher's kind; ``max_depth`` for a metric teacher)."""
    spec = get_spec(encoder)
    if spec.name == TEACHER_ENCODER:
        raise ValueError(f"{TEACHER_ENCODER} is the teacher's encoder; pick a smaller student (vitt, vits, vitb, vitl)")
    if checkpoint is not None:
        return load_model(checkpoint, encoder=spec).train()
    model = DepthAnythingV2(spec, max_depth=max_depth, output_kind=None if max_depth is not None else output_kind)
    return model.train()
