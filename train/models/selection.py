"""Weight selection: start a small student from a larger Depth Anything V2 of the same family.

Every tensor of the small model is the leading slice of the large model's tensor of the same
name (the first 192 of vits' 384 channels, the first 768 of its 1536 MLP units, the first
blocks when the small model has fewer), and the same slice rule everywhere keeps the selection
consistent: channel ``i`` of the residual stream is the same channel in every layer that reads
or writes it. Attention's fused ``qkv`` is sliced per projection, so the small model's heads are
the large model's first heads, whole (this needs equal head widths: vitt and vits both have 64).
Xu et al., "Initializing Models with Larger Ones" (ICLR 2024), select weights this way.

A layer that reads fewer inputs sums fewer terms: with half of vits' inputs, a linear or
convolution layer's output spreads sqrt(2) less than the large model's. LayerNorm restores the
spread in every encoder block, but the DPT head has none, and its eight layers in series from the
projections to the last convolution left a vitt selected from random vits weights with 0.09 of
vits' output spread at 266x266 (5.4e-4 against 6.2e-3, about a constant 0.5: too flat for the FP32
export's own check); with the factor below it keeps 0.70 of it (4.3e-3). So every selected
weight whose inputs were cut is multiplied by sqrt(large fan-in / small fan-in), the factor that
keeps a sum of independent inputs at the large model's spread; biases and normalisation
parameters are taken as they are.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .depth_anything import DepthAnythingV2


def _leading(source: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    if source.ndim != len(shape) or any(s < t for s, t in zip(source.shape, shape, strict=True)):
        raise ValueError(f"{name}: cannot select {tuple(shape)} from {tuple(source.shape)}")
    return source[tuple(slice(0, n) for n in shape)]


def _qkv(source: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    """The leading slice of each of q, k and v, stacked again as the small model's fused qkv."""
    parts = source.reshape(3, source.shape[0] // 3, *source.shape[1:])
    small = _leading(parts, torch.Size((3, shape[0] // 3, *shape[1:])), name)
    return small.reshape(shape)


def fan_in_scale(module: nn.Module, small: torch.Tensor, large: torch.Tensor) -> float:
    """``sqrt(large fan-in / small fan-in)`` for the weight of a linear or convolution layer (its
    inputs are dimension 1, a transposed convolution's dimension 0), else 1."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        axis = 0
    elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        axis = 1
    else:
        return 1.0
    return math.sqrt(large.shape[axis] / small.shape[axis])


def select_weights(small: DepthAnythingV2, large: DepthAnythingV2) -> DepthAnythingV2:
    """Overwrite every tensor of ``small`` with its selection from ``large``; returns ``small``."""
    a, b = small.spec, large.spec
    if a.ffn != b.ffn or a.embed_dim // a.num_heads != b.embed_dim // b.num_heads:
        raise ValueError(
            f"weight selection needs the same feed-forward and head width: {a.name} has {a.ffn} and "
            f"{a.embed_dim // a.num_heads}-wide heads, {b.name} {b.ffn} and {b.embed_dim // b.num_heads}"
        )
    if a.depth > b.depth:
        raise ValueError(f"{a.name} has more blocks ({a.depth}) than {b.name} ({b.depth}) to select from")
    if (small.max_depth is None) != (large.max_depth is None):
        raise ValueError("weight selection needs two relative or two metric models")
    source = large.state_dict()
    modules = dict(small.named_modules())
    selected = {}
    for name, tensor in small.state_dict().items():
        pick = _qkv if name.endswith(("qkv.weight", "qkv.bias")) else _leading
        owner, _, kind = name.rpartition(".")
        scale = fan_in_scale(modules[owner], tensor, source[name]) if kind == "weight" else 1.0
        selected[name] = pick(source[name], tensor.shape, name).clone() * scale
    small.load_state_dict(selected)
    return small
