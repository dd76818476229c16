"""The distillation loss for each kind of label (``runtime.metric``'s output kinds).

- ``relative`` (inverse depth, DA-V2 and Video Depth Anything teachers): Depth Anything V2's
  scale-and-shift-invariant MAE plus gradient matching (``DistillationLoss``); an affine fit in
  disparity is what relative inverse depth is defined up to.
- ``depth_up_to_scale`` (DA3Mono, the DA3 any-view networks): depth is known up to a positive
  scale only, so a shift is not free (a shifted depth map is another scene's geometry):
  ``ScaleInvariantDepthLoss`` divides prediction and label by their medians (a scale-only fit in
  depth), then takes the same trimmed MAE and gradient matching.
- ``metres_per_focal`` (DA3Metric) and ``metric`` (DA-V2 metric): the number itself is the target:
  ``AbsoluteDepthLoss``, the scale-invariant log loss with lambda = 0.5 (Depth Anything V2's
  metric fine-tuning loss: the scale counts half) plus gradient matching for the edges.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import EPS, mean_over_images, prepare
from .gradient_matching import DistillationLoss, GradientMatched
from .scale_invariant import silog_loss


def median_scaled(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per image: ``x`` divided by the median of its valid pixels (at least ``EPS``): invariant to a
    positive scale of ``x`` and to nothing else."""
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        values = x[i][valid[i]]
        if values.numel():
            out[i] = x[i] / values.median().clamp_min(EPS)
    return out


def scale_invariant_depth_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, trim: float = 0.1
) -> torch.Tensor:
    """Trimmed MAE between median-scaled prediction and target depth (the worst ``trim`` of pixels
    per image ignored, as in ``ssi_loss``); zero when ``pred`` is ``target`` times any positive scale."""
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    pred, target, valid = prepare(pred, target, mask)
    valid = valid & (target > 0)
    pred_n, target_n = median_scaled(pred, valid), median_scaled(target, valid)
    losses = []
    for i in range(pred.shape[0]):
        residual = (pred_n[i] - target_n[i]).abs()[valid[i]]
        if residual.numel():
            keep = residual.numel() - math.floor(trim * residual.numel())
            losses.append(torch.sort(residual).values[:keep].mean())
    return mean_over_images(losses, pred)


class ScaleInvariantDepthLoss(GradientMatched):
    """``L = L_si-depth + alpha * L_gm`` for depth-up-to-scale labels. ``last`` keeps the parts."""

    part = "si_depth"

    def __init__(self, alpha: float = 2.0, trim: float = 0.1, scales: int = 4) -> None:
        super().__init__(alpha, scales)
        self.trim = trim

    def main(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return scale_invariant_depth_loss(pred, target, mask, self.trim)


class AbsoluteDepthLoss(GradientMatched):
    """``L = L_silog(lambda 0.5) + alpha * L_gm`` for labels whose number is the answer (metres,
    metres per focal length). ``last`` keeps the parts."""

    part = "silog"

    def __init__(self, alpha: float = 2.0, lam: float = 0.5, scales: int = 4) -> None:
        super().__init__(alpha, scales)
        self.lam = lam

    def main(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return silog_loss(pred, target, mask, self.lam)


def loss_for_kind(kind: str, alpha: float = 2.0, trim: float = 0.1) -> nn.Module:
    """The distillation loss for labels of ``kind`` (see the module's docstring)."""
    if kind == "relative":
        return DistillationLoss(alpha=alpha, trim=trim)
    if kind == "depth_up_to_scale":
        return ScaleInvariantDepthLoss(alpha=alpha, trim=trim)
    if kind in ("metres_per_focal", "metric"):
        return AbsoluteDepthLoss(alpha=alpha)
    raise ValueError(f"no distillation loss for labels of kind {kind!r}")
