"""DINOv2 vision transformer (ViT-S/B/L/G, patch 14) returning multi-level features.

Parameter names follow the official DINOv2 code so that the published Depth Anything V2
checkpoints load without renaming (they sit under the ``pretrained.`` prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .variants import PATCH_SIZE, ModelSpec

LN_EPS = 1e-6
# DINOv2 adds 0.1 to the target grid size before computing the bicubic scale factor
# (a workaround for floating-point rounding in the output size). The sampling grid
# follows that scale, so leaving the offset out shifts features and changes the depth
# by several percent.
POS_INTERP_OFFSET = 0.1


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


ATTENTION_KINDS = ("fused", "explicit")


def set_attention_kind(model: nn.Module, kind: str) -> None:
    """Switch every :class:`Attention` layer inside ``model`` to ``kind`` (``ATTENTION_KINDS``)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.kind = kind


class Attention(nn.Module):
    """Multi-head self-attention. ``kind="fused"`` (default) calls PyTorch's fused
    ``scaled_dot_product_attention``; ``"explicit"`` forms ``softmax(QK^T / sqrt(d)) V`` step by
    step as the official repository does when xformers is absent (always on CPU). Both give the
    same numbers to float rounding; the explicit one is kept as the reference for speed comparisons."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.kind = "fused"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(self.attend(q, k, v).transpose(1, 2).reshape(b, n, c))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``softmax(QK^T / sqrt(d)) V`` over ``(B, heads, N, d)`` tensors, in this layer's ``kind``."""
        if self.kind == "explicit":
            return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return F.scaled_dot_product_attention(q, k, v)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-G's feed-forward: one fused input projection split into gate and value."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, spec.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = (SwiGLU if spec.ffn == "swiglu" else Mlp)(dim, spec.mlp_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


BICUBIC_A = -0.75  # PyTorch's (and ONNX Resize's) cubic coefficient


def _cubic_taps(t: torch.Tensor) -> torch.Tensor:
    """Weights of the four neighbours at offsets -1, 0, 1, 2 for fractional positions ``t``."""
    a = BICUBIC_A

    def near(x: torch.Tensor) -> torch.Tensor:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


def bicubic_matrix(
    n_out: int | torch.Tensor, n_in: int, inv_scale: torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of PyTorch's bicubic resize (``align_corners=False``, given scale).

    Sampling follows ``inv_scale`` (input pixels per output pixel), not ``n_in / n_out``, and
    borders are clamped, exactly as ``F.interpolate(..., scale_factor=...)`` does.
    """
    dst = torch.arange(n_out, dtype=torch.float32, device=device)
    src = (dst + 0.5) * inv_scale - 0.5
    base = torch.floor(src)
    weights = _cubic_taps(src - base)
    index = (base[:, None] + torch.arange(-1, 3, dtype=torch.float32, device=device)).clamp(0, n_in - 1)
    onehot = (index[..., None] == torch.arange(n_in, dtype=torch.float32, device=device)).to(weights.dtype)
    return (weights[..., None] * onehot).sum(dim=1)


def _as_float32(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Scale arithmetic in float32: traced shape arithmetic with Python floats otherwise exports
    float64 constants, which TensorRT only reads by clamping them to float32."""
    return torch.as_tensor(value, dtype=torch.float32, device=device)


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    grid: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
) -> torch.Tensor:
    """Position embeddings for an image of ``height x width`` pixels, as DINOv2 computes them.

    The 37x37 patch grid is resized bicubically with DINOv2's scale factor (patches + 0.1) /
    grid; square inputs with exactly the training grid keep the embeddings unchanged.

    Written as two small matrix products built from tensor arithmetic instead of a ``Resize``
    whose scale depends on the input: the same code then runs eagerly, traces into ONNX with
    dynamic height and width (and into TensorRT), and matches the official numbers everywhere.
    """
    patches_h, patches_w = height // PATCH_SIZE, width // PATCH_SIZE
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:].reshape(grid, grid, dim)
    device = pos_embed.device  # every constant beside the embeddings, or CUDA runs fail
    rows = bicubic_matrix(patches_h, grid, grid / _as_float32(patches_h + POS_INTERP_OFFSET, device), device)
    cols = bicubic_matrix(patches_w, grid, grid / _as_float32(patches_w + POS_INTERP_OFFSET, device), device)
    # Blend with an identity for the unchanged case; a tensor, not an ``if``, so tracing keeps it.
    keep = torch.ones((), device=device) * ((patches_h == grid) & (patches_w == grid) & (height == width))
    grid_index = torch.arange(grid, device=device)
    rows = rows * (1 - keep) + keep * (torch.arange(patches_h, device=device)[:, None] == grid_index).float()
    cols = cols * (1 - keep) + keep * (torch.arange(patches_w, device=device)[:, None] == grid_index).float()
    # Two two-operand products, not one three-input einsum: TensorRT 8.x's Einsum layer takes at
    # most two inputs (NvInfer.h 8.5/8.6, IEinsumLayer), and plain MatMuls parse on every release.
    by_rows = (rows @ patch_pos.float().reshape(grid, grid * dim)).reshape(-1, grid, dim)  # (h, grid, dim)
    resized = cols @ by_rows  # (w, grid) x (h, grid, dim) -> (h, w, dim)
    return torch.cat((cls_pos.float(), resized.reshape(1, -1, dim)), dim=1)


class DinoVisionTransformer(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.pos_grid**2 + 1, dim))
        # Only used by DINOv2's masked-image pre-training; kept so official checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        # Recompute each block's activations in the backward pass instead of keeping them: a
        # ViT-G's 40 blocks of saved activations do not fit beside its weights otherwise.
        self.activation_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised patch tokens ``(B, N, C)`` after each of the spec's taken layers."""
        height, width = x.shape[-2:]
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens), dim=1)
        tokens = tokens + interpolate_pos_embed(self.pos_embed, self.spec.pos_grid, height, width).to(tokens.dtype)
        taken = set(self.spec.layers)
        features = []
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks):
            if recompute:
                # Non-reentrant: the form that composes with FSDP, autocast and frozen inputs.
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if index in taken:
                features.append(self.norm(tokens)[:, 1:])
            if index == self.spec.layers[-1]:
                break
        return features

    forward = forward_features
