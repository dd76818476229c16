"""The teacher: the largest encoder (ViT-G by default) with DPT.

Stage 1 trains it like any model; stages 2 and 3 use it frozen through ``build_teacher``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_model
from .depth_anything import DepthAnythingV2
from .variants import ModelSpec

TEACHER_ENCODER = "vitg"


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: a frozen teacher never updates while it labels."""
    model.eval()
    model.requires_grad_(False)
    return model


def build_teacher(checkpoint: str | Path | None = None, encoder: str | ModelSpec | None = None) -> DepthAnythingV2:
    """A frozen teacher, from a checkpoint when given (the encoder is then read from the file)."""
    if checkpoint is not None:
        return freeze(load_model(checkpoint, encoder=encoder))
    return freeze(DepthAnythingV2(encoder or TEACHER_ENCODER))
