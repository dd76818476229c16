"""The table of Depth Anything V2 variants: one row per encoder, nothing copied into scripts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

PATCH_SIZE = 14
# DINOv2 was trained at 518x518: its position embeddings are a 37x37 grid plus the class token.
PRETRAIN_SIZE = 518


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one encoder + DPT decoder variant."""

    name: str
    depth: int
    embed_dim: int
    num_heads: int
    features: int
    out_channels: tuple[int, int, int, int]
    layers: tuple[int, int, int, int]
    ffn: str = "mlp"  # "mlp" (GELU) or "swiglu" (fused w12/w3, ViT-G)
    mlp_ratio: float = 4.0
    pos_grid: int = PRETRAIN_SIZE // PATCH_SIZE

    def __post_init__(self) -> None:
        if self.ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if len(self.layers) != 4 or max(self.layers) >= self.depth:
            raise ValueError(f"layers {self.layers} must be 4 block indices below depth {self.depth}")

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":
            # DINOv2's SwiGLU keeps the parameter count of the GELU MLP, rounded to a multiple of 8.
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        data["out_channels"] = tuple(data["out_channels"])
        data["layers"] = tuple(data["layers"])
        return cls(**data)


VARIANTS: dict[str, ModelSpec] = {
    # No published Depth Anything weights: a student for CPUs too slow for vits (DeiT-Tiny's width,
    # depth and heads, so 64-wide heads as vits; the DPT head at half of vits' widths), distilled by
    # train.distill, optionally initialised from a vits by weight selection (train.models.selection).
    "vitt": ModelSpec("vitt", 12, 192, 3, 32, (24, 48, 96, 192), (2, 5, 8, 11)),
    "vits": ModelSpec("vits", 12, 384, 6, 64, (48, 96, 192, 384), (2, 5, 8, 11)),
    "vitb": ModelSpec("vitb", 12, 768, 12, 128, (96, 192, 384, 768), (2, 5, 8, 11)),
    "vitl": ModelSpec("vitl", 24, 1024, 16, 256, (256, 512, 1024, 1024), (4, 11, 17, 23)),
    "vitg": ModelSpec("vitg", 40, 1536, 24, 384, (1536, 1536, 1536, 1536), (9, 19, 29, 39), ffn="swiglu"),
}


def get_spec(encoder: str | ModelSpec) -> ModelSpec:
    if isinstance(encoder, ModelSpec):
        return encoder
    try:
        return VARIANTS[encoder]
    except KeyError:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(VARIANTS)}") from None
