"""Depth losses: scale-invariant log, scale-and-shift-invariant (trimmed), gradient matching."""

from .depth_kinds import AbsoluteDepthLoss, ScaleInvariantDepthLoss, loss_for_kind
from .feature_alignment import FeatureAlignedLoss
from .gradient_matching import DistillationLoss, gradient_matching_loss
from .scale_invariant import silog_loss, ssi_loss

__all__ = [
    "AbsoluteDepthLoss",
    "DistillationLoss",
    "FeatureAlignedLoss",
    "ScaleInvariantDepthLoss",
    "gradient_matching_loss",
    "loss_for_kind",
    "silog_loss",
    "ssi_loss",
]
