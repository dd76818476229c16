"""DPT decoder: reassemble ViT tokens at four scales, fuse them top-down, predict one map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .variants import PATCH_SIZE, ModelSpec

HEAD_HIDDEN = 32


class ResidualConvUnit(nn.Module):
    """Pre-activation residual block: x + conv(relu(conv(relu(x))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds a skip feature to the coarser path, refines, upsamples to ``size`` (or x2)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(
        self, path: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            path = path + self.resConfUnit1(skip)
        path = self.resConfUnit2(path)
        if size is None:
            path = F.interpolate(path, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            path = F.interpolate(path, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class Scratch(nn.Module):
    """Container that exists for the official ``depth_head.scratch.*`` parameter names."""

    def __init__(self, spec: ModelSpec, metric: bool) -> None:
        super().__init__()
        features = spec.features
        for i, channels in enumerate(spec.out_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", FusionBlock(features))
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_HIDDEN, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_HIDDEN, 1, 1),
            nn.Sigmoid() if metric else nn.ReLU(),
        )


class DPTHead(nn.Module):
    def __init__(self, spec: ModelSpec, metric: bool = False) -> None:
        super().__init__()
        c = spec.out_channels
        self.projects = nn.ModuleList(nn.Conv2d(spec.embed_dim, ch, 1) for ch in c)
        # Token grids are at 1/14; these bring the four levels to 4x, 2x, 1x and 1/2x of it.
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = Scratch(spec, metric)
        # A positive start for the last bias keeps the final ReLU open, so a model trained from
        # scratch gets gradient from every pixel; loaded checkpoints overwrite it.
        nn.init.constant_(self.scratch.output_conv2[2].bias, 0.5 if not metric else 0.0)

    def forward(self, features: list[torch.Tensor], patches_h: int, patches_w: int) -> torch.Tensor:
        levels = []
        for tokens, project, resize in zip(features, self.projects, self.resize_layers, strict=True):
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], patches_h, patches_w)
            levels.append(resize(project(grid)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(x) for i, x in enumerate(levels, start=1))
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        out = s.output_conv1(path)
        out = F.interpolate(
            out, size=(patches_h * PATCH_SIZE, patches_w * PATCH_SIZE), mode="bilinear", align_corners=True
        )
        return s.output_conv2(out)
