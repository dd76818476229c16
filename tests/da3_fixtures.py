"""Depth Anything 3 reference files (``tests/data/official_families``) and the deterministic weights
they were computed with: the parity recipe (``tests/parity.py``) with one change, the depth head's
last bias (one or two values) centred on 0.5 so the exp activation works on a sensible range."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.weights import family_tensor

DATA = Path(__file__).resolve().parent / "data" / "official_families"
SIZE = (266, 364)


def keys(name: str) -> list[tuple[str, list[int]]]:
    return json.loads((DATA / f"keys_{name}.json").read_text())


def da3_state_dict(name: str) -> dict[str, torch.Tensor]:
    return deterministic_weights(keys(name))


def deterministic_weights(named_shapes: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The fixtures' weights for any DA3 network's keys (a smaller test network's too)."""
    state = {}
    for key, shape in named_shapes:
        state[key] = torch.from_numpy(family_tensor("da3", key, shape))
    return state


def reference_input() -> torch.Tensor:
    return torch.from_numpy(np.load(DATA / f"in_{SIZE[0]}x{SIZE[1]}.npy"))


def reference(name: str, output: str) -> np.ndarray:
    """The official output without its view axis: ``(1, ...)``."""
    path = DATA / f"{name}_{output}_{SIZE[0]}x{SIZE[1]}.npy"
    if not path.is_file():
        path = DATA / f"{name}_head_{output}_{SIZE[0]}x{SIZE[1]}.npy"
    return np.load(path)[:, 0]


def write_snapshot(folder: Path, name: str, state: dict[str, torch.Tensor], config: bool = True) -> Path:
    """A Hugging Face style snapshot: ``config.json`` naming the model, keys under ``model.``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"model.{k}": v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    if config:
        (folder / "config.json").write_text(json.dumps({"model_name": name}))
    return folder


def sky_mono_net(name: str, inputs: np.ndarray, sky_quantile: float, **changes):
    """A DA3Mono-shaped network on a ViT-S (``tests.test_da3_outputs.SMALL_MONO``) with the fixtures'
    deterministic weights, its sky head's last bias moved so that the share ``1 - sky_quantile`` of
    ``inputs``'s pixels is sky (over the official 0.3); ``changes``: other spec fields (``output``)."""
    import dataclasses

    from tests.test_da3_outputs import SMALL_MONO
    from train.models.da3 import DA3_VARIANTS, DepthAnything3

    spec = dataclasses.replace(DA3_VARIANTS["da3mono-large"], name=name, **SMALL_MONO, **changes)
    net = DepthAnything3(spec).eval()
    net.load_state_dict(deterministic_weights([(k, list(v.shape)) for k, v in net.state_dict().items()]))
    last, seen = net.head.scratch.sky_output_conv2[-1], []
    hook = last.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    with torch.no_grad():
        net(torch.from_numpy(inputs))
        last.bias.add_(0.3 - float(seen[-1].quantile(sky_quantile)))
    hook.remove()
    return net
