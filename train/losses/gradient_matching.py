"""Multi-scale gradient matching on aligned inverse depth, and the combined distillation loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import normalise, prepare
from .scale_invariant import ssi_loss

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def _sobel(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, H-2, W-2)`` horizontal and vertical Sobel responses."""
    kernel = torch.stack([_SOBEL_X, _SOBEL_X.t()])[:, None].to(x)
    return F.conv2d(x[:, None], kernel)


def gradient_matching_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, scales: int = 4
) -> torch.Tensor:
    """L1 between Sobel gradients of the normalised prediction and target, summed over
    ``scales`` halvings, each normalised by its number of valid gradient positions (a position
    counts when its whole 3x3 neighbourhood is valid)."""
    pred, target, valid = prepare(pred, target, mask)
    pred_n, target_n = normalise(pred, valid), normalise(target, valid)
    total = pred.sum() * 0.0
    mask_f = valid.float()
    for scale in range(scales):
        if scale:
            pred_n, target_n = pred_n[:, ::2, ::2], target_n[:, ::2, ::2]
            mask_f = mask_f[:, ::2, ::2]
        if min(pred_n.shape[-2:]) < 3:
            break
        inside = -F.max_pool2d(-mask_f[:, None], 3, stride=1)  # 1 where the 3x3 patch is all valid
        count = inside.sum()
        if count == 0:
            continue
        diff = (_sobel(pred_n) - _sobel(target_n)).abs().sum(dim=1, keepdim=True)
        total = total + (diff * inside).sum() / count
    return total


class GradientMatched(nn.Module):
    """``L = main + alpha * L_gm``: a loss on the values (``main``, named ``part``) and multi-scale
    gradient matching for the edges. ``last`` keeps the parts."""

    part = "main"

    def __init__(self, alpha: float = 2.0, scales: int = 4) -> None:
        super().__init__()
        self.alpha, self.scales = alpha, scales
        self.last: dict[str, float] = {}

    def main(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        first = self.main(pred, target, mask)
        gm = gradient_matching_loss(pred, target, mask, self.scales)
        self.last = {self.part: float(first.detach()), "gm": float(gm.detach())}
        return first + self.alpha * gm


class DistillationLoss(GradientMatched):
    """``L = L_ssi + alpha * L_gm`` (alpha = 2 as in Depth Anything V2). ``last`` keeps the parts."""

    part = "ssi"

    def __init__(self, alpha: float = 2.0, trim: float = 0.1, scales: int = 4) -> None:
        super().__init__(alpha, scales)
        self.trim = trim

    def main(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return ssi_loss(pred, target, mask, self.trim)
