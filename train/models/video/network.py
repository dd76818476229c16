"""Video Depth Anything: the DA-V2 encoder with a temporal DPT head, under the official names.

``forward(x)`` treats every image as a stream's first frame (no cache). ``step`` is the
streaming form: one new frame, the cached hidden states of earlier frames and the slot positions
in, depth and this frame's hidden states out (see ``runtime.video_state`` for the window the
official streaming code keeps and ``temporal`` for the attention over it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import DinoVisionTransformer, set_attention_kind
from ..decoder import DPTHead
from ..variants import PATCH_SIZE, ModelSpec, get_spec
from .temporal import TemporalModule

SLOTS = 31  # cached frames a new frame attends to (runtime.video_state keeps 11 more waiting)
MODULES = 4


class TemporalDPTHead(DPTHead):
    """DPT decoder with motion modules after reassembly (levels 3 and 4) and after the two
    coarsest fusions."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, metric=False)
        c = spec.out_channels
        self.motion_modules = nn.ModuleList(
            [TemporalModule(c[2]), TemporalModule(c[3]), TemporalModule(spec.features), TemporalModule(spec.features)]
        )

    def forward_step(
        self,
        features: list[torch.Tensor],
        patches_h: int,
        patches_w: int,
        caches: list[torch.Tensor] | None = None,
        slot_pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        levels = []
        for tokens, project, resize in zip(features, self.projects, self.resize_layers, strict=True):
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], patches_h, patches_w)
            levels.append(resize(project(grid)))
        caches = [caches[2 * i : 2 * i + 2] for i in range(MODULES)] if caches is not None else [None] * MODULES
        mm = self.motion_modules
        hidden = []
        l3, h = mm[0](levels[2], caches[0], slot_pos)
        hidden += h
        l4, h = mm[1](levels[3], caches[1], slot_pos)
        hidden += h
        s = self.scratch
        l1, l2 = s.layer1_rn(levels[0]), s.layer2_rn(levels[1])
        l3, l4 = s.layer3_rn(l3), s.layer4_rn(l4)
        path, h = mm[2](s.refinenet4(l4, size=l3.shape[2:]), caches[2], slot_pos)
        hidden += h
        path, h = mm[3](s.refinenet3(path, l3, size=l2.shape[2:]), caches[3], slot_pos)
        hidden += h
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        out = s.output_conv1(path)
        out = F.interpolate(
            out, size=(patches_h * PATCH_SIZE, patches_w * PATCH_SIZE), mode="bilinear", align_corners=True
        )
        return s.output_conv2(out), hidden


def state_shapes(spec: ModelSpec, height: int, width: int) -> list[tuple[int, int, int]]:
    """The eight cache tensors' shapes ``(tokens, SLOTS, channels)`` (two attention blocks per
    motion module) for a network input of ``height x width`` (multiples of 14)."""
    ph, pw = height // PATCH_SIZE, width // PATCH_SIZE
    half = ((ph - 1) // 2 + 1) * ((pw - 1) // 2 + 1)  # level 4: a stride-2 convolution
    c = spec.out_channels
    sizes = [(ph * pw, c[2]), (half, c[3]), (ph * pw, spec.features), (4 * ph * pw, spec.features)]
    return [(n, SLOTS, ch) for n, ch in sizes for _ in range(2)]


class VideoDepthAnything(nn.Module):
    """Relative inverse depth (or metres, for the metric checkpoints: the same network) from
    normalised frames ``(B, 3, H, W)``, ``H`` and ``W`` multiples of 14."""

    family = "video-depth-anything"

    def __init__(self, encoder: str | ModelSpec = "vits", metric: bool = False) -> None:
        super().__init__()
        self.spec = get_spec(encoder)
        if self.spec.name not in ("vits", "vitb", "vitl"):
            raise ValueError(f"Video Depth Anything comes with vits, vitb and vitl encoders, not {self.spec.name!r}")
        self.metric = bool(metric)
        self.pretrained = DinoVisionTransformer(self.spec)
        self.head = TemporalDPTHead(self.spec)

    @property
    def encoder(self) -> str:
        return self.spec.name

    def set_attention(self, kind: str) -> VideoDepthAnything:
        set_attention_kind(self, kind)
        return self

    def state_shapes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        return state_shapes(self.spec, height, width)

    def _check(self, x: torch.Tensor) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(
                f"input {height}x{width} is not a multiple of {PATCH_SIZE}; resize with runtime.preprocessing first"
            )
        return height // PATCH_SIZE, width // PATCH_SIZE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each image alone (a stream's first frame): ``(B, H, W)``."""
        ph, pw = self._check(x)
        depth, _ = self.head.forward_step(self.pretrained(x), ph, pw)
        return F.relu(depth).squeeze(1)

    def step(self, x: torch.Tensor, slot_pos: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One streamed frame ``(1, 3, H, W)``: depth ``(1, H, W)`` and the frame's eight hidden
        states ``(tokens, 1, C)`` for the cache (``caches``: eight ``(tokens, SLOTS, C)``,
        ``state_shapes``). ``slot_pos`` ``(SLOTS,)`` int64: each cache slot's position in the
        window, ``-1`` where unused (all ``-1``: the first frame)."""
        ph, pw = self._check(x)
        if len(caches) != 2 * MODULES:
            raise ValueError(f"step takes {2 * MODULES} cache tensors (state_shapes), got {len(caches)}")
        depth, hidden = self.head.forward_step(self.pretrained(x), ph, pw, list(caches), slot_pos)
        return (F.relu(depth).squeeze(1), *hidden)
