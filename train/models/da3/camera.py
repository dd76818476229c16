"""The any-view networks' camera modules under the official names.

``CameraDec`` reads the last taken layer's camera token and predicts the view's pose (translation,
quaternion, scalar last) and field of view; ``pose_to_cameras`` turns that into the official
outputs: world-to-camera extrinsics ``(B, 3, 4)`` and pinhole intrinsics ``(B, 3, 3)`` in pixels of
the network's input. ``CameraEnc`` only conditions the encoder on known cameras (several views),
which this single-view deployment does not do: its weights are held so checkpoints load strictly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbone import LN_EPS, LayerScale, Mlp
from .backbone import DEFAULT_LN_EPS, Attention

POSE_DIM = 9  # translation 3, quaternion 4, field of view (vertical, horizontal) 2
MIN_TAN = 1e-6


class CameraDec(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.fc_t = nn.Linear(dim, 3)
        self.fc_qvec = nn.Linear(dim, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim, 2), nn.ReLU())

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(token)
        return torch.cat((self.fc_t(feat), self.fc_qvec(feat), self.fc_fov(feat)), dim=-1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from quaternions ``(..., 4)`` (x, y, z, w), not assumed unit."""
    i, j, k, r = torch.unbind(q, -1)
    two_s = 2.0 / (q * q).sum(-1)
    m = torch.stack(
        (
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ),
        -1,
    )
    return m.reshape((*q.shape[:-1], 3, 3))


def pose_to_cameras(pose: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 9)`` pose encoding -> world-to-camera ``(B, 3, 4)`` and intrinsics ``(B, 3, 3)``."""
    rot = quaternion_to_matrix(pose[:, 3:7])
    t = pose[:, :3, None]
    rt = rot.transpose(-1, -2)
    extrinsics = torch.cat((rt, -rt @ t), dim=-1)  # the inverse of camera-to-world [R | t]
    fy = (height / 2.0) / torch.clamp(torch.tan(pose[:, 7] / 2.0), MIN_TAN)
    fx = (width / 2.0) / torch.clamp(torch.tan(pose[:, 8] / 2.0), MIN_TAN)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    cx, cy = zero + width / 2.0, zero + height / 2.0
    intrinsics = torch.stack((fx, zero, cx, zero, fy, cy, zero, zero, one), dim=-1).reshape(-1, 3, 3)
    return extrinsics, intrinsics


class _EncBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, 1, qk_norm=False)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)


class _PoseBranch(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(POSE_DIM, dim // 2)
        self.fc2 = nn.Linear(dim // 2, dim)


class CameraEnc(nn.Module):
    """Weights only (see the module docstring): known-camera conditioning is not run here."""

    def __init__(self, dim: int, depth: int = 4) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*(_EncBlock(dim) for _ in range(depth)))
        self.token_norm = nn.LayerNorm(dim, eps=DEFAULT_LN_EPS)
        self.trunk_norm = nn.LayerNorm(dim, eps=DEFAULT_LN_EPS)
        self.pose_branch = _PoseBranch(dim)
