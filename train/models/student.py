"""The student: a small encoder (ViT-S by default; T, B and L selectable) with DPT, trainable."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_model
from .depth_anything import DepthAnythingV2
from .teacher_model import TEACHER_ENCODER
from .variants import ModelSpec, get_spec

STUDENT_ENCODER = "vits"


def build_student(encoder: str | ModelSpec = STUDENT_ENCODER, checkpoint: str | Path | None = None) -> DepthAnythingV2:
    """A student in training mode, from a checkpoint when given, else randomly initialised."""
    spec = get_spec(encoder)
    if spec.name == TEACHER_ENCODER:
        raise ValueError(f"{TEACHER_ENCODER} is the teacher's encoder; pick a smaller student (vitt, vits, vitb, vitl)")
    model = load_model(checkpoint, encoder=spec) if checkpoint is not None else DepthAnythingV2(spec)
    return model.train()
