"""The DINOv2 encoder as Depth Anything 3 runs it on one view.

Beyond DA-V2's encoder (whose patch embedding, MLP, LayerScale and position-embedding
interpolation are reused): LayerNorm on queries and keys (QK-norm) and 2-D rotary position
embeddings from ``qknorm_start``/``rope_start`` on, a learnt camera token that replaces the class
token at ``alt_start``, alternating local/global attention (the same thing for one view, except for
RoPE: global blocks see every patch at one position), and, with ``cat_token``, each taken layer's
tokens concatenated to the last local block's. Parameter names are the official ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbone import LN_EPS, LayerScale, Mlp, PatchEmbed, interpolate_pos_embed
from ..backbone import Attention as DinoAttention
from ..variants import PATCH_SIZE, PRETRAIN_SIZE
from ..variants import VARIANTS as ENCODERS
from .variants import DA3Spec

ROPE_FREQUENCY = 100.0
# The official encoder builds its final norm and the QK norms with nn.LayerNorm's default eps
# (1e-5); only the blocks' norm1/norm2 use DINOv2's 1e-6.
DEFAULT_LN_EPS = 1e-5


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(positions: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``(N, dim)`` for integer ``positions`` ``(N,)`` along one axis (``dim`` even)."""
    inv_freq = 1.0 / (ROPE_FREQUENCY ** (torch.arange(0, dim, 2, device=positions.device).float() / dim))
    angles = positions.float()[:, None] * inv_freq[None]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


class Rope2D:
    """Rotations for a token sequence: the first half of each head's channels turns with the row,
    the second half with the column."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, head_dim: int) -> None:
        self.y = rope_tables(rows, head_dim // 2)
        self.x = rope_tables(cols, head_dim // 2)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        ty, tx = t.chunk(2, dim=-1)
        (cy, sy), (cx, sx) = self.y, self.x
        return torch.cat((ty * cy + _rotate_half(ty) * sy, tx * cx + _rotate_half(tx) * sx), dim=-1)


class Attention(DinoAttention):
    """DINOv2's attention with QK-norm and RoPE; ``kind`` ("fused" or "explicit") as DA-V2's
    (``set_attention_kind``). Its modules are made here, in the official order."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool) -> None:
        nn.Module.__init__(self)
        self.num_heads = num_heads
        self.kind = "fused"
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.LayerNorm(head_dim, eps=DEFAULT_LN_EPS) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=DEFAULT_LN_EPS) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Rope2D | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        return self.proj(self.attend(q, k, v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, rope: Rope2D | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DA3Encoder(nn.Module):
    """``(B, 3, H, W)`` -> per taken layer ``(B, N, C or 2C)`` patch tokens, and the camera token
    ``(B, 2C)`` of the last taken layer (what the camera decoder reads; ``None`` without cat_token)."""

    def __init__(self, spec: DA3Spec) -> None:
        super().__init__()
        enc = ENCODERS[spec.encoder]
        if enc.ffn != "mlp":
            raise ValueError(f"{spec.name}: the {spec.encoder} encoder is not supported for Depth Anything 3 here")
        self.spec = spec
        dim = enc.embed_dim
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if spec.alt_start != -1:
            self.camera_token = nn.Parameter(torch.zeros(1, 2, dim))  # reference view, other views
        self.pos_embed = nn.Parameter(torch.zeros(1, (PRETRAIN_SIZE // PATCH_SIZE) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, enc.num_heads, spec.qknorm_start != -1 and i >= spec.qknorm_start) for i in range(enc.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=DEFAULT_LN_EPS)
        self.head_dim = dim // enc.num_heads
        self.last = max(spec.out_layers)

    def _ropes(self, ph: int, pw: int, device: torch.device) -> tuple[Rope2D, Rope2D]:
        """Local blocks: patch (row + 1, col + 1), the special token at 0; global blocks: every
        patch at 1 (one view holds no position relative to another), the special token at 0."""
        rows = torch.arange(ph, device=device).repeat_interleave(pw) + 1
        cols = torch.arange(pw, device=device).repeat(ph) + 1
        zero = torch.zeros(1, dtype=rows.dtype, device=device)
        ones = torch.ones_like(rows)
        local = Rope2D(torch.cat((zero, rows)), torch.cat((zero, cols)), self.head_dim)
        flat = Rope2D(torch.cat((zero, ones)), torch.cat((zero, ones)), self.head_dim)
        return local, flat

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        spec = self.spec
        height, width = x.shape[-2:]
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens), dim=1)
        grid = PRETRAIN_SIZE // PATCH_SIZE
        tokens = tokens + interpolate_pos_embed(self.pos_embed, grid, height, width).to(tokens.dtype)
        local_rope = global_rope = None
        if spec.rope_start != -1:
            local_rope, global_rope = self._ropes(height // PATCH_SIZE, width // PATCH_SIZE, x.device)
        features: list[torch.Tensor] = []
        camera = None
        local = tokens
        for i, block in enumerate(self.blocks):
            if i == spec.alt_start:  # one view: the reference view's camera token takes the class token's place
                cam = self.camera_token[:, :1].expand(tokens.shape[0], -1, -1).to(tokens.dtype)
                tokens = torch.cat((cam, tokens[:, 1:]), dim=1)
            with_rope = spec.rope_start != -1 and i >= spec.rope_start
            is_global = spec.alt_start != -1 and i >= spec.alt_start and i % 2 == 1
            tokens = block(tokens, (global_rope if is_global else local_rope) if with_rope else None)
            if not is_global:
                local = tokens
            if i in spec.out_layers:
                if spec.cat_token:
                    features.append(torch.cat((local[:, 1:], self.norm(tokens[:, 1:])), dim=-1))
                    camera = torch.cat((local[:, 0], tokens[:, 0]), dim=-1)
                else:
                    features.append(self.norm(tokens)[:, 1:])
            if i == self.last:
                break
        return features, camera
