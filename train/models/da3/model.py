"""Depth Anything 3 on one view: ``DepthAnything3(spec)(x)`` with ``x`` normalised ``(B, 3, H, W)``
(H, W multiples of 14) returns the official outputs by name, batch-first without the view axis:
``depth`` (and ``sky``, for the mono and metric networks) ``(B, H, W)``, or ``depth``,
``depth_conf`` ``(B, H, W)``, ``extrinsics`` ``(B, 3, 4)``, ``intrinsics`` ``(B, 3, 3)`` (the
any-view networks; ``ray``/``ray_conf`` too with ``model.set_ray(True)``)."""

from __future__ import annotations

import torch
from torch import nn

from ..backbone import set_attention_kind
from ..variants import PATCH_SIZE
from .backbone import DA3Encoder
from .camera import CameraDec, CameraEnc, pose_to_cameras
from .heads import DPT, DualDPT
from .variants import FAMILY, DA3Spec, get_da3_spec

SKY_THRESHOLD = 0.3  # sky map values at or above it are sky
SKY_MIN_PIXELS = 10  # fewer (or as few) sky or non-sky pixels: the depth is left as it is
SKY_QUANTILE = 0.99


def sky_to_far(depth: torch.Tensor, sky: torch.Tensor) -> torch.Tensor:
    """The mono network's sky step: sky pixels get the 0.99 quantile of the image's other pixels'
    depth. Per image, with the exact quantile (the official code pools a batch and samples 100,000
    pixels at random above that count; one image of under 100,000 pixels gives the same numbers).
    Written with a sort, so it traces into ONNX."""
    b = depth.shape[0]
    flat, non_sky = depth.reshape(b, -1), (sky < SKY_THRESHOLD).reshape(b, -1)
    n = non_sky.sum(dim=1)
    ordered = torch.sort(torch.where(non_sky, flat, torch.full_like(flat, float("inf"))), dim=1).values
    rank = SKY_QUANTILE * (n - 1).clamp(min=0).to(flat.dtype)
    below = rank.floor().long()
    above = rank.ceil().long()
    low = ordered.gather(1, below[:, None])
    high = ordered.gather(1, above[:, None])
    far = torch.lerp(low, high, (rank - below.to(flat.dtype))[:, None])
    apply = (n > SKY_MIN_PIXELS) & ((flat.shape[1] - n) > SKY_MIN_PIXELS)
    out = torch.where(non_sky | ~apply[:, None], flat, far)
    return out.reshape(depth.shape)


class DepthAnything3(nn.Module):
    def __init__(self, spec: DA3Spec | str) -> None:
        super().__init__()
        self.spec = get_da3_spec(spec) if isinstance(spec, str) else spec
        self.backbone = nn.Module()
        self.backbone.pretrained = DA3Encoder(self.spec)
        self.head = DPT(self.spec) if self.spec.head == "dpt" else DualDPT(self.spec)
        if self.spec.camera:
            self.cam_dec = CameraDec(self.spec.head_dim_in)
            self.cam_enc = CameraEnc(self.spec.embed_dim)
        self.licence = self.spec.licence

    family = FAMILY

    @property
    def variant(self) -> str:
        return self.spec.name

    @property
    def output_names(self) -> tuple[str, ...]:
        names = self.spec.outputs
        return (*names, "ray", "ray_conf") if getattr(self.head, "ray", False) else names

    def set_ray(self, enabled: bool = True) -> DepthAnything3:
        """Also compute the ray map (any-view networks), which the official single-view forward
        drops once the camera decoder has run; it costs a second fusion chain."""
        if not isinstance(self.head, DualDPT):
            raise ValueError(f"{self.spec.name} has no ray head")
        self.head.ray = bool(enabled)
        return self

    def set_attention(self, kind: str) -> DepthAnything3:
        """Switch every attention layer to ``"fused"`` (default) or ``"explicit"``, as DA-V2's
        (``train.models.backbone.Attention``)."""
        set_attention_kind(self, kind)
        return self

    def unused_parameters(self) -> list[nn.Parameter]:
        """Weights held for the official names that a single-view forward never reads."""
        unused = []
        if self.spec.camera:
            unused += [*self.cam_enc.parameters(), self.backbone.pretrained.camera_token]
        return unused

    def deployable(self, extras: bool = False) -> DA3Depth:
        """This network as the toolkit's backends and exports run it: ``(B, 3, H, W) -> (B, H, W)``
        depth; with ``extras`` a tuple of depth and the spec's ``extra_outputs`` (sky map or depth
        confidence), each ``(B, H, W)``."""
        return DA3Depth(self, self.spec.extra_outputs if extras else ())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected one view per image, a (B, 3, H, W) batch, got shape {tuple(x.shape)} "
                "(several views of one scene are not supported here)"
            )
        height, width = x.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(f"input {height}x{width} is not a multiple of {PATCH_SIZE}")
        features, camera = self.backbone.pretrained(x)
        out = self.head(features, height, width)
        if "sky" in out:
            out["depth"] = sky_to_far(out["depth"], out["sky"])
        if self.spec.camera:
            out["extrinsics"], out["intrinsics"] = pose_to_cameras(self.cam_dec(camera), height, width)
        return out


class DA3Depth(nn.Module):
    """A ``DepthAnything3`` whose call returns its ``depth`` (and, named in ``extra_outputs``, the
    per-pixel outputs after it, as a tuple), with what the number means (``output_kind``), the
    family, variant and licence beside it: what backends and exports run."""

    def __init__(self, net: DepthAnything3, extra_outputs: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.net = net
        self.spec = net.spec
        self.family, self.variant, self.licence = net.family, net.variant, net.licence
        self.output_kind = net.spec.output
        unknown = [name for name in extra_outputs if name not in net.spec.extra_outputs]
        if unknown:
            raise ValueError(f"{net.variant} has no output {unknown[0]!r}; it has {', '.join(net.spec.extra_outputs)}")
        self.extra_outputs = tuple(extra_outputs)

    def set_attention(self, kind: str) -> DA3Depth:
        self.net.set_attention(kind)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.net(x)
        if not self.extra_outputs:
            return out["depth"]
        return (out["depth"], *(out[name] for name in self.extra_outputs))
