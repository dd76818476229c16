"""Depth Anything 3's dense heads under the official names: ``DPT`` (depth with an exp activation
and a sky map; the mono and metric networks) and ``DualDPT`` (depth, its confidence and a ray map
from a second fusion chain; the any-view networks). The fusion blocks are DA-V2's
(``train.models.decoder``); the deepest has no skip unit here, so it carries no such weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..decoder import HEAD_HIDDEN, FusionBlock
from ..variants import PATCH_SIZE
from .backbone import DEFAULT_LN_EPS
from .variants import DA3Spec

POS_EMBED_RATIO = 0.1
POS_EMBED_OMEGA = 100.0
RAY_CHANNELS = 7  # 6 ray values + confidence
POS_CACHE_SIZES = 8  # input sizes whose position embeddings are kept for inference


def _output_conv2(features: int, channels: int) -> nn.Sequential:
    """The last convolutions of a DPT output (``output_conv2`` and the sky's): 3x3, ReLU, 1x1."""
    return nn.Sequential(
        nn.Conv2d(features // 2, HEAD_HIDDEN, 3, padding=1), nn.ReLU(), nn.Conv2d(HEAD_HIDDEN, channels, 1)
    )


def _fusion(features: int, skip: bool = True) -> FusionBlock:
    block = FusionBlock(features)
    if not skip:
        block.resConfUnit1 = None  # the deepest block has no skip input and no such weights
    return block


def _sincos(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float32, device=pos.device)
    omega = 1.0 / POS_EMBED_OMEGA ** (omega / (dim / 2.0))
    out = pos.reshape(-1)[:, None] * omega[None]
    return torch.cat((out.sin(), out.cos()), dim=1)


def _centred_steps(span: float, count: int, device: torch.device) -> torch.Tensor:
    """``torch.linspace(-span * (count - 1) / count, span * (count - 1) / count, count)`` in float32
    arithmetic: ONNX export writes ``linspace`` in float64, which TensorRT's parser casts down
    with clamping (``export.trt.rules``' no-double rule refuses it)."""
    index = torch.arange(count, dtype=torch.float32, device=device)
    return (2.0 * index - (count - 1)) * (span / count)


def uv_position_embedding(channels: int, rows: int, cols: int, aspect: float, device: torch.device) -> torch.Tensor:
    """The any-view head's ``(channels, rows, cols)`` sine-cosine embedding of a UV grid spanning the
    image's aspect ratio, normalised by its diagonal (x first, then y), times 0.1."""
    diag = math.sqrt(aspect**2 + 1.0)
    span_x, span_y = aspect / diag, 1.0 / diag
    xs, ys = _centred_steps(span_x, cols, device), _centred_steps(span_y, rows, device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    emb = torch.cat((_sincos(channels // 2, uu), _sincos(channels // 2, vv)), dim=-1)
    return emb.reshape(rows, cols, channels).permute(2, 0, 1)[None] * POS_EMBED_RATIO


class _Reassemble(nn.Module):
    """Token grids to four feature maps at 4x, 2x, 1x and 1/2x the patch grid (``projects``,
    ``resize_layers``), optionally with the UV position embedding added after the projection."""

    def __init__(self, spec: DA3Spec, pos_embed: bool) -> None:
        super().__init__()
        c = spec.out_channels
        self.projects = nn.ModuleList(nn.Conv2d(spec.head_dim_in, ch, 1) for ch in c)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.pos_embed = pos_embed
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.scratch = nn.Module()
        for i, ch in enumerate(c, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(ch, spec.features, 3, padding=1, bias=False))

    def add_pos(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if not self.pos_embed:
            return x
        key = (x.shape[1], x.shape[2], x.shape[3], width / height, x.device, x.dtype, torch.is_inference_mode_enabled())
        table = self._pos_cache.get(key) if not torch.is_grad_enabled() else None
        if table is None:  # a few ms of sines at full resolution: kept per size for inference
            table = uv_position_embedding(x.shape[1], x.shape[2], x.shape[3], width / height, x.device).to(x.dtype)
            if not torch.is_grad_enabled() and not torch.jit.is_tracing():
                if len(self._pos_cache) >= POS_CACHE_SIZES:
                    self._pos_cache.clear()
                self._pos_cache[key] = table
        return x + table

    def levels(self, features: list[torch.Tensor], height: int, width: int) -> list[torch.Tensor]:
        ph, pw = height // PATCH_SIZE, width // PATCH_SIZE
        out = []
        for i, tokens in enumerate(features):
            tokens = self.norm(tokens)
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], ph, pw)
            x = self.resize_layers[i](self.add_pos(self.projects[i](grid), height, width))
            out.append(getattr(self.scratch, f"layer{i + 1}_rn")(x))
        return out


def _fuse(s: nn.Module, levels: list[torch.Tensor], suffix: str = "") -> list[torch.Tensor]:
    """Top-down fusion; every level's output, coarsest first."""
    l1, l2, l3, l4 = levels
    outs = [getattr(s, f"refinenet4{suffix}")(l4, size=l3.shape[2:])]
    outs.append(getattr(s, f"refinenet3{suffix}")(outs[-1], l3, size=l2.shape[2:]))
    outs.append(getattr(s, f"refinenet2{suffix}")(outs[-1], l2, size=l1.shape[2:]))
    outs.append(getattr(s, f"refinenet1{suffix}")(outs[-1], l1))
    return outs


class DPT(_Reassemble):
    """Depth (exp) and sky (ReLU) at the input's size."""

    def __init__(self, spec: DA3Spec) -> None:
        super().__init__(spec, pos_embed=False)
        self.norm = nn.Identity()
        f, s = spec.features, self.scratch
        for i in range(1, 5):
            setattr(s, f"refinenet{i}", _fusion(f, skip=i != 4))
        s.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        s.output_conv2 = _output_conv2(f, 1)
        s.sky_output_conv2 = _output_conv2(f, 1)

    def forward(self, features: list[torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
        s = self.scratch
        fused = s.output_conv1(_fuse(s, self.levels(features, height, width))[-1])
        fused = F.interpolate(fused, size=(height, width), mode="bilinear", align_corners=True)
        return {
            "depth": torch.exp(s.output_conv2(fused)).squeeze(1),
            "sky": torch.relu(s.sky_output_conv2(fused)).squeeze(1),
        }


class _ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class _ToChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def _aux_head() -> nn.Sequential:
    """conv, LayerNorm over channels (indices 1-3, the official names), ReLU, 1x1 conv to 7 channels."""
    return nn.Sequential(
        nn.Conv2d(HEAD_HIDDEN, HEAD_HIDDEN, 3, padding=1),
        _ToChannelsLast(),
        nn.LayerNorm(HEAD_HIDDEN, eps=DEFAULT_LN_EPS),
        _ToChannelsFirst(),
        nn.ReLU(),
        nn.Conv2d(HEAD_HIDDEN, RAY_CHANNELS, 1),
    )


class DualDPT(_Reassemble):
    """Depth (exp), depth confidence (exp + 1) at the input's size; with ``ray=True`` also the ray
    map (6 channels, linear) and its confidence at 8x the patch grid, from the auxiliary chain
    (off by default: single-view deployment reads depth only, and the chain costs as much again)."""

    def __init__(self, spec: DA3Spec) -> None:
        super().__init__(spec, pos_embed=True)
        self.norm = nn.LayerNorm(spec.head_dim_in, eps=DEFAULT_LN_EPS)
        f, s = spec.features, self.scratch
        for suffix in ("", "_aux"):
            for i in range(1, 5):
                setattr(s, f"refinenet{i}{suffix}", _fusion(f, skip=i != 4))
        s.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        s.output_conv2 = _output_conv2(f, 2)
        s.output_conv1_aux = nn.ModuleList(
            nn.Sequential(*(nn.Conv2d(a, b, 3, padding=1) for a, b in [(f, f // 2), (f // 2, f)] * 2 + [(f, f // 2)]))
            for _ in range(4)
        )
        s.output_conv2_aux = nn.ModuleList(_aux_head() for _ in range(4))
        self.ray = False

    def forward(self, features: list[torch.Tensor], height: int, width: int) -> dict[str, torch.Tensor]:
        s = self.scratch
        levels = self.levels(features, height, width)
        fused = s.output_conv1(_fuse(s, levels)[-1])
        fused = self.add_pos(
            F.interpolate(fused, size=(height, width), mode="bilinear", align_corners=True), height, width
        )
        logits = s.output_conv2(fused)
        out = {"depth": torch.exp(logits[:, 0]), "depth_conf": torch.exp(logits[:, 1]) + 1}
        if self.ray:  # only the finest level of the auxiliary chain reaches an output
            aux = s.output_conv1_aux[-1](_fuse(s, levels, "_aux")[-1])
            ray = s.output_conv2_aux[-1](self.add_pos(aux, height, width)).permute(0, 2, 3, 1)
            out["ray"], out["ray_conf"] = ray[..., :-1], torch.exp(ray[..., -1]) + 1
        return out
