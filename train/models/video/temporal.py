"""The temporal DPT head's motion modules: attention over time at each patch, with a cache.

Each of the four modules sees one feature map per frame and lets every position attend to the
same position in earlier frames. The official streaming code keeps, per frame and per attention
block, the block's normalised input (``(tokens, channels)``); a new frame's attention runs over
31 cached frames plus itself, each with a learnt (sinusoidal) position in the 32-frame window.

Here the cache is a tensor of ``SLOTS`` frames and an int64 ``slot_pos`` vector says which slot
sits at which window position (``-1``: not in the window). The keys and values of cached frames
are never formed: with ``k = W_k (h + pe)`` the logits are ``(W_k^T q) . (h + pe)`` and the mixed
values ``W_v sum(a (h + pe))``, so the cached tensors enter two small batched products per head
instead of two ``(31 x tokens) x C x C`` projections. The same numbers to float rounding, and one
graph for PyTorch, ONNX Runtime and OpenVINO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = 8
WINDOW = 32  # frames one attention sees: 31 cached and the new one
GROUPS = 32  # GroupNorm groups before the temporal transformer
FF_MULT = 4


class PositionTable(nn.Module):
    """Holds the ``pe`` buffer (``(1, WINDOW, C)``) under the official name; loaded from the checkpoint."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        position = torch.arange(WINDOW, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(1e4)) / dim))
        pe = torch.zeros(1, WINDOW, dim)
        pe[0, :, 0::2] = torch.sin(position * freq)
        pe[0, :, 1::2] = torch.cos(position * freq)
        self.register_buffer("pe", pe)


class TemporalAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.pos_encoder = PositionTable(dim)

    def window_index(self, slot_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each slot's row of the position tables (``WINDOW``: outside the window, no embedding,
        logit ``-inf``) and the new frame's position: the number of cached frames in the window."""
        valid = slot_pos >= 0
        # The count summed in float32 (exact up to 2**24): TensorRT 8.x's ReduceSum takes no integers.
        current = valid.to(torch.float32).sum().to(torch.int64)
        return torch.where(valid, slot_pos, torch.full_like(slot_pos, WINDOW)), current

    def forward(self, x: torch.Tensor, cache: torch.Tensor, slot_pos: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, C)`` normalised tokens of the new frame; ``cache``: ``(N, S, C)``."""
        n, c = x.shape
        d = c // HEADS
        index, current = self.window_index(slot_pos)
        pe = self.pos_encoder.pe[0]  # (WINDOW, C)
        padded = torch.cat([pe, torch.zeros_like(pe[:1])])  # row WINDOW: a slot outside the window
        # Tables of the weights alone (constant in an exported graph), read by window position:
        weight = torch.cat([self.to_q.weight * d**-0.5, self.to_k.weight, self.to_v.weight])
        # the new frame's q, k, v of (x + pe): x's product plus pe's row
        q, k_own, v_own = (F.linear(x, weight) + F.linear(pe, weight)[current]).split(c, dim=-1)  # (N, C) each
        # each head's keys and values of the position embeddings: (heads, WINDOW + 1, d), the last
        # row (a slot outside the window) zero, its logit -inf
        pe_k, pe_v = (f(padded).reshape(-1, HEADS, d).transpose(0, 1) for f in (self.to_k, self.to_v))
        mask = torch.cat([torch.zeros(WINDOW), torch.full((1,), float("-inf"))]).to(x)[index]

        # The cache enters two batched products per patch: (heads x C) by (C x S) and back.
        per_head = q.reshape(n, HEADS, d).transpose(0, 1)  # (heads, N, d)
        # (heads, N, d) @ (heads, d, C): each head's query mapped back through W_k.
        qk = torch.matmul(per_head, self.to_k.weight.reshape(HEADS, d, c))
        logits = torch.matmul(qk.transpose(0, 1), cache.transpose(1, 2))  # (N, heads, S)
        # the slots' positions: q . W_k pe per head, (heads, N, d) @ (heads, d, S)
        pe_logits = torch.matmul(per_head, pe_k[:, index].transpose(1, 2)) + mask
        own = (q * k_own).reshape(n, HEADS, d).sum(-1, keepdim=True)
        logits = logits + pe_logits.transpose(0, 1)
        weights = torch.softmax(torch.cat([logits, own], dim=-1), dim=-1)
        cached, mine = weights[..., :-1], weights[..., -1:]
        # W_v sum(a h) per head, plus sum(a W_v pe) and the new frame's a W_v (x + pe)
        mixed = torch.matmul(cached, cache)  # (N, heads, C)
        per_head = cached.transpose(0, 1)  # (heads, N, S)
        values = torch.matmul(mixed.transpose(0, 1), self.to_v.weight.reshape(HEADS, d, c).transpose(1, 2))
        values = (values + torch.matmul(per_head, pe_v[:, index])).transpose(0, 1).reshape(n, c)
        own_values = (mine * v_own.reshape(n, HEADS, d)).reshape(n, c)
        return self.to_out[0](values + own_values)


class GEGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two products on the halves of the weight, not one split after: no copy of the halves.
        (w_value, w_gate), (b_value, b_gate) = self.proj.weight.chunk(2), self.proj.bias.chunk(2)
        return F.linear(x, w_value, b_value) * F.gelu(F.linear(x, w_gate, b_gate))


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        # net.1 is a dropout in the official module: no weights, no effect in inference.
        self.net = nn.ModuleDict({"0": GEGLU(dim, dim * FF_MULT), "2": nn.Linear(dim * FF_MULT, dim)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net["2"](self.net["0"](x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim), TemporalAttention(dim)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)


class TemporalTransformer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(dim)])
        self.proj_out = nn.Linear(dim, dim)


class TemporalModule(nn.Module):
    """One motion module: ``(B, C, h, w)`` maps of the new frame(s) in, the same out, plus the
    hidden states this frame adds to the cache, two ``(B*h*w, 1, C)`` (one per attention block).

    ``caches``: two ``(h*w, S, C)``; ``None`` for frames seen alone (the first frame of a stream,
    or independent images: then ``B`` may exceed one)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(dim)

    def forward(
        self, x: torch.Tensor, caches: list[torch.Tensor] | None = None, slot_pos: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        t = self.temporal_transformer
        block = t.transformer_blocks[0]
        b, c, h, w = x.shape
        tokens = t.norm(x).permute(0, 2, 3, 1).reshape(b * h * w, c)
        tokens = t.proj_in(tokens)
        if caches is None:
            caches = [tokens.new_zeros(b * h * w, 0, c)] * 2
            slot_pos = torch.zeros(0, dtype=torch.int64, device=x.device)
        hidden = []
        for attention, norm, cache in zip(block.attention_blocks, block.norms, caches, strict=True):
            normed = norm(tokens)
            hidden.append(normed[:, None, :])
            tokens = attention(normed, cache, slot_pos) + tokens
        tokens = block.ff(block.ff_norm(tokens)) + tokens
        tokens = t.proj_out(tokens)
        out = tokens.reshape(b, h, w, c).permute(0, 3, 1, 2) + x
        return out, hidden
