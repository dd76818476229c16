"""Feature alignment to a frozen encoder (Depth Anything's semantic prior), as an added loss.

The student's last encoder tokens are pulled towards a frozen DINOv2's by cosine similarity;
tokens already closer than ``margin`` are left alone, so the student keeps room to learn
depth-specific features. Hooks the student's encoder, so the training loop is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureAlignedLoss(nn.Module):
    """``base(pred, target, mask) + weight * mean(1 - cos)`` over tokens with ``cos < margin``."""

    def __init__(
        self,
        base: nn.Module,
        student_encoder: nn.Module,
        frozen_encoder: nn.Module,
        weight: float = 1.0,
        margin: float = 0.85,
    ) -> None:
        super().__init__()
        self.base, self.weight, self.margin = base, weight, margin
        self.frozen = frozen_encoder.eval().requires_grad_(False)
        self._captured: tuple[torch.Tensor, torch.Tensor] | None = None
        student_encoder.register_forward_hook(self._capture)
        self.last: dict[str, float] = {}

    def _capture(self, module: nn.Module, args: tuple, output: list[torch.Tensor]) -> None:
        self._captured = (args[0], output[-1])

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.base(pred, target, mask)
        if self._captured is None:
            raise RuntimeError("the student encoder has not run: call the loss after the model's forward pass")
        images, student = self._captured
        self._captured = None
        self.frozen.to(images.device)
        with torch.no_grad():
            reference = self.frozen(images)[-1]
        cosine = F.cosine_similarity(student.float(), reference.float(), dim=-1)
        far = cosine < self.margin
        align = (1 - cosine)[far].mean() if far.any() else cosine.sum() * 0.0
        self.last = {**getattr(self.base, "last", {}), "align": float(align.detach())}
        return loss + self.weight * align
