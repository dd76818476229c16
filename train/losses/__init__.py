"""Depth losses: scale-invariant log, scale-and-shift-invariant (trimmed), gradient matching."""

from .feature_alignment import FeatureAlignedLoss
from .gradient_matching import DistillationLoss, gradient_matching_loss
from .scale_invariant import silog_loss, ssi_loss

__all__ = ["DistillationLoss", "FeatureAlignedLoss", "gradient_matching_loss", "silog_loss", "ssi_loss"]
