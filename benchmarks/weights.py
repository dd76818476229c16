"""Deterministic weights and frames for measuring cost (``benchmarks.family_cost``), made here
without the test tree: the cost of a network does not depend on its weights' values.

Every tensor comes from numpy's PCG64 seeded with the CRC-32 of its key, scaled by the kind of
tensor it is (the recipe the official-parity tests rebuild the reference weights with:
``tests.parity`` takes ``deterministic_tensor`` from here). The keys and shapes are the project's
own networks' (``train.models``), which are the published checkpoints' keys; each family's last
head bias is set positive as the test fixtures set it, so the map is not zeroed by the final ReLU.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np


def _scaled(key: str, noise: np.ndarray) -> np.ndarray:
    if key == "depth_head.scratch.output_conv2.2.bias":
        return 0.5 + 0.02 * noise  # a positive last bias keeps the final ReLU from zeroing the map
    if key.endswith(("cls_token", "pos_embed", "mask_token")):
        return 0.02 * noise
    if key.endswith("gamma") or (noise.ndim == 1 and key.endswith("weight")):
        return 1.0 + 0.1 * noise  # LayerScale and norm gains around one
    if noise.ndim == 1:
        return 0.02 * noise
    return noise / math.sqrt(math.prod(noise.shape[1:]))  # fan-in scaling for conv and linear weights


def deterministic_tensor(key: str, shape: list[int]) -> np.ndarray:
    noise = np.random.default_rng(zlib.crc32(key.encode())).standard_normal(tuple(shape))
    return _scaled(key, noise).astype(np.float32)


def family_tensor(family: str, key: str, shape: list[int]) -> np.ndarray:
    """``deterministic_tensor`` with the family's last head bias around 0.5 (DA3: the one- or
    two-channel output convolution's; Video Depth Anything: ``head.scratch.output_conv2.2``)."""
    t = deterministic_tensor(key, shape)
    da3_bias = key.startswith("head.scratch.output_conv2") and key.endswith("bias") and len(shape) == 1
    vda_bias = key == "head.scratch.output_conv2.2.bias"
    if (family == "da3" and da3_bias and shape[0] <= 2) or (family == "vda" and vda_bias):
        t = (0.5 + 0.02 * (t - t.mean())).astype(np.float32)
    return t


def network_keys(family: str) -> list[tuple[str, list[int]]]:
    """The ``(key, shape)`` pairs of the family's network as published: DA-V2 vits / vitl
    (``dav2-s``, ``dav2-l``), DA3-Small (``da3-small``), DA3Mono-Large (``da3-mono-large``), Video
    Depth Anything Small (``vda-small``). Built on the meta device: shapes only, no memory."""
    import torch

    from train.models import DepthAnythingV2, VideoDepthAnything, get_spec
    from train.models.da3 import DA3_VARIANTS, DepthAnything3

    make = {
        "dav2-s": lambda: DepthAnythingV2(get_spec("vits")),
        "dav2-l": lambda: DepthAnythingV2(get_spec("vitl")),
        "da3-small": lambda: DepthAnything3(DA3_VARIANTS["da3-small"]),
        "da3-mono-large": lambda: DepthAnything3(DA3_VARIANTS["da3mono-large"]),
        "vda-small": lambda: VideoDepthAnything("vits"),
    }[family]
    with torch.device("meta"):
        model = make()
    return [(key, list(value.shape)) for key, value in model.state_dict().items()]


def write_checkpoint(family: str, path: Path) -> Path:
    """The family's deterministic weights at ``path`` laid out as published: a ``.pth`` state dict
    (DA-V2, Video Depth Anything) or a Hugging Face snapshot folder (DA3)."""
    import torch

    rule = family.split("-")[0][:4]  # dav2, da3, vda
    state = {k: torch.from_numpy(family_tensor(rule, k, s)) for k, s in network_keys(family)}
    if rule != "da3":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        return path
    import json

    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({f"model.{k}": v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    name = {"da3-small": "da3-small", "da3-mono-large": "da3mono-large"}[family]
    (path / "config.json").write_text(json.dumps({"model_name": name}))
    return path


def panning_frames(count: int = 6, height: int = 240, width: int = 320) -> list[np.ndarray]:
    """``count`` BGR frames of a slow pan across the bundled photograph (a textured synthetic scene
    without scikit-image), ``height x width``."""
    from export.metrics import verification_photos

    photo = next(iter(verification_photos().values()))
    scale = max(height / photo.shape[0], (width + 4 * count) / photo.shape[1], 1.0)
    if scale > 1.0:
        import cv2

        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(photo[:height, 4 * i : 4 * i + width]) for i in range(count)]
