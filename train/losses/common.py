"""Shapes, masks and the per-image normalisation the depth losses share."""

from __future__ import annotations

import torch

EPS = 1e-6


def prepare(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, H, W)`` prediction, target and boolean mask (non-finite targets are masked out)."""
    if pred.ndim == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if mask is not None and mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be (B, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}")
    valid = torch.isfinite(target)
    if mask is not None:
        if mask.shape != target.shape:
            raise ValueError(f"mask must be {tuple(target.shape)}, got {tuple(mask.shape)}")
        valid = valid & mask.bool()
    return pred, torch.where(valid, target, torch.zeros_like(target)), valid


def normalise(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per image: subtract the median, divide by the mean absolute deviation (over valid pixels).

    This is the MiDaS / Depth Anything alignment for affine-invariant inverse depth: exactly
    invariant to a positive scale and any shift of ``x``, and robust to outliers.
    """
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        values = x[i][valid[i]]
        if values.numel() == 0:
            continue
        shift = values.median()
        scale = (values - shift).abs().mean().clamp_min(EPS)
        out[i] = (x[i] - shift) / scale
    return out


def mean_over_images(losses: list[torch.Tensor], reference: torch.Tensor) -> torch.Tensor:
    """Average of per-image losses; zero (still attached to the graph) when no image had pixels."""
    if not losses:
        return reference.sum() * 0.0
    return torch.stack(losses).mean()
