"""The teacher: the largest encoder (ViT-G by default) with DPT, or any published network.

Stage 1 trains it like any model; stages 2 and 3 use it frozen through ``build_teacher``, which
takes every family ``load_model`` reads: a Depth Anything V2 checkpoint, a Depth Anything 3
snapshot folder (or its ``model.safetensors`` with ``variant``), a Video Depth Anything ``.pth``
(used one image at a time: its first-frame output, no temporal cache). ``teacher_identity`` says
what its numbers are, which the labels and the student inherit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_model
from .depth_anything import HEAD_KINDS, DepthAnythingV2
from .variants import ModelSpec

TEACHER_ENCODER = "vitg"


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: a frozen teacher never updates while it labels."""
    model.eval()
    model.requires_grad_(False)
    return model


def build_teacher(
    checkpoint: str | Path | None = None, encoder: str | ModelSpec | None = None, variant: str | None = None
) -> torch.nn.Module:
    """A frozen teacher ``(B, 3, H, W) -> (B, H, W)``, from a checkpoint of any family when given (the
    encoder is then read from the file), else a random Depth Anything V2 of ``encoder``."""
    if checkpoint is None:
        return freeze(DepthAnythingV2(encoder or TEACHER_ENCODER))
    model = load_model(checkpoint, encoder=encoder, variant=variant)
    if hasattr(model, "deployable"):  # Depth Anything 3: its depth output, with its kind
        model = model.deployable()
    teacher_identity(model, str(checkpoint))  # refuses a teacher whose numbers no student can learn
    return freeze(model)


def teacher_identity(model: torch.nn.Module, source: str = "the teacher") -> dict:
    """``family``, ``variant``, ``licence``, ``output_kind`` and ``max_depth`` of a teacher: what its
    labels are, so the student learns the same kind of number."""
    max_depth = getattr(model, "max_depth", None)
    if getattr(model, "metric", False):  # a metric Video Depth Anything: metres with no bound
        raise CheckpointError(
            f"{source}: a metric Video Depth Anything teacher outputs metres with no bound, which no student "
            "head here can hold; distil from the relative checkpoint (video_depth_anything_<encoder>.pth)"
        )
    kind = "metric" if max_depth is not None else getattr(model, "output_kind", "relative")
    if kind not in (*HEAD_KINDS, "metric"):
        raise CheckpointError(f"{source}: a teacher that outputs {kind!r}, which no student here learns")
    return {
        "family": getattr(model, "family", None) or "unknown",
        "variant": getattr(model, "variant", None) or getattr(getattr(model, "spec", None), "name", "unknown"),
        "licence": getattr(model, "licence", None) or "unknown",
        "output_kind": kind,
        "max_depth": None if max_depth is None else float(max_depth),
    }
