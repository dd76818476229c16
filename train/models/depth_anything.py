"""Depth Anything V2: DINOv2 encoder + DPT decoder under the official state-dict names."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import DinoVisionTransformer, set_attention_kind
from .decoder import DPTHead
from .variants import PATCH_SIZE, ModelSpec, get_spec

# What the relative (ReLU) head can be trained to output: see runtime.metric's output kinds.
HEAD_KINDS = ("relative", "depth_up_to_scale", "metres_per_focal")


class DepthAnythingV2(nn.Module):
    """Relative inverse depth ``(B, H, W)`` from normalised images ``(B, 3, H, W)``.

    ``H`` and ``W`` must be multiples of 14. With ``max_depth`` set, the head ends in a
    sigmoid and the output is metric depth in ``[0, max_depth]`` (the metric checkpoints).
    ``output_kind`` says what a relative head's number is: ``relative`` inverse depth (the published
    models), or, for a student distilled from a Depth Anything 3 teacher, ``depth_up_to_scale`` or
    ``metres_per_focal`` (``runtime.metric``): the same network, trained on other targets.
    """

    def __init__(
        self, encoder: str | ModelSpec = "vits", max_depth: float | None = None, output_kind: str | None = None
    ) -> None:
        super().__init__()
        self.spec = get_spec(encoder)
        if max_depth is not None and max_depth <= 0:
            raise ValueError(f"max_depth must be positive, got {max_depth}")
        if output_kind not in (None, *(HEAD_KINDS if max_depth is None else ("metric",))):
            allowed = ", ".join(HEAD_KINDS) if max_depth is None else "metric"
            raise ValueError(f"output_kind {output_kind!r} does not fit this head; it takes {allowed}")
        self.max_depth = max_depth
        self.output_kind = "metric" if max_depth is not None else (output_kind or "relative")
        self.pretrained = DinoVisionTransformer(self.spec)
        self.depth_head = DPTHead(self.spec, metric=max_depth is not None)

    @property
    def encoder(self) -> str:
        return self.spec.name

    family = "depth-anything-v2"

    @property
    def variant(self) -> str:
        return self.spec.name

    def unused_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters kept for the official state-dict names that no forward pass uses:
        DINOv2's mask token and the deepest fusion block's skip unit (it has no skip input).
        Training freezes them; DDP would otherwise wait for their gradients forever."""
        return [self.pretrained.mask_token, *self.depth_head.scratch.refinenet4.resConfUnit1.parameters()]

    def set_attention(self, kind: str) -> DepthAnythingV2:
        """Switch every attention layer to ``"fused"`` (default) or ``"explicit"`` (see ``Attention``)."""
        set_attention_kind(self, kind)
        return self

    def set_activation_checkpointing(self, enabled: bool = True) -> DepthAnythingV2:
        """Recompute the encoder blocks' activations during backward (same numbers, less memory,
        the encoder's forward pass once more per training step: +26% of ViT-G's step); no effect on
        inference."""
        self.pretrained.activation_checkpointing = bool(enabled)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(
                f"input {height}x{width} is not a multiple of {PATCH_SIZE}; resize with runtime.preprocessing first"
            )
        features = self.pretrained(x)
        depth = self.depth_head(features, height // PATCH_SIZE, width // PATCH_SIZE)
        if self.max_depth is not None:
            depth = depth * self.max_depth
        return depth.squeeze(1)
