"""Scale-invariant log loss (metric depth) and the scale-and-shift-invariant loss (relative)."""

from __future__ import annotations

import math

import torch

from .common import EPS, mean_over_images, normalise, prepare


def silog_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, lam: float = 0.5
) -> torch.Tensor:
    """``sqrt(mean(d^2) - lam * mean(d)^2)`` with ``d = log(pred) - log(target)`` over valid
    pixels, per image, then averaged. Depths are clamped at 1e-6 before the log and the root
    is taken of a value floored at 1e-6, so zeros and perfect predictions give no NaN."""
    pred, target, valid = prepare(pred, target, mask)
    valid = valid & (target > 0)
    losses = []
    for i in range(pred.shape[0]):
        if not valid[i].any():
            continue
        d = torch.log(pred[i][valid[i]].clamp_min(EPS)) - torch.log(target[i][valid[i]])
        losses.append(torch.sqrt((d.pow(2).mean() - lam * d.mean().pow(2)).clamp_min(EPS)))
    return mean_over_images(losses, pred)


def ssi_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, trim: float = 0.1
) -> torch.Tensor:
    """Scale-and-shift-invariant MAE on inverse depth, ignoring the worst ``trim`` of pixels.

    Prediction and target are each normalised per image (median, mean absolute deviation);
    the loss is the mean absolute difference over valid pixels after dropping the
    ``floor(trim * n)`` largest differences (Depth Anything's top-10% trimming).
    """
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    pred, target, valid = prepare(pred, target, mask)
    pred_n, target_n = normalise(pred, valid), normalise(target, valid)
    losses = []
    for i in range(pred.shape[0]):
        residual = (pred_n[i] - target_n[i]).abs()[valid[i]]
        n = residual.numel()
        if n == 0:
            continue
        keep = n - math.floor(trim * n)
        losses.append(torch.sort(residual).values[:keep].mean())
    return mean_over_images(losses, pred)
