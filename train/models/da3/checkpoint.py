"""The rules for loading the published Depth Anything 3 checkpoints strictly (``load_model`` reads them).

A Hugging Face snapshot folder (``config.json`` naming the model, ``model.safetensors`` with the
network's keys under ``model.``), or that ``model.safetensors`` alone with the model named by the
caller (``variant=``, ``--variant``). Every key is used, none is missing, none is guessed; a file
named as another variant says which variant its tensors fit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..state import state_mismatch
from .model import DepthAnything3
from .variants import DA3_VARIANTS, get_da3_spec

SNAPSHOT_WEIGHTS = "model.safetensors"
SNAPSHOT_CONFIG = "config.json"
PREFIX = "model."
_LIST_LIMIT = 4


def is_da3_state(keys: list[str]) -> bool:
    return any(k.startswith(("model.backbone.pretrained.", "backbone.pretrained.")) for k in keys)


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def snapshot_model_name(folder: Path) -> str | None:
    """The model a snapshot's ``config.json`` names (``model_name``), or None without one."""
    config = folder / SNAPSHOT_CONFIG
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config}: not readable JSON ({exc})") from None
    name = data.get("model_name") if isinstance(data, dict) else None
    if name is None and isinstance(data, dict) and isinstance(data.get("config"), dict):
        name = data["config"].get("model_name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{config}: no 'model_name' naming the Depth Anything 3 model (e.g. \"da3-small\")")
    return name


def fitting_variants(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The variants whose state dict has exactly these keys and shapes (mono and metric share one)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fits = []
    for name in DA3_VARIANTS:
        with torch.device("meta"):
            expected = DepthAnything3(name).state_dict()
        if shapes == {k: tuple(v.shape) for k, v in expected.items()}:
            fits.append(name)
    return fits


def build_da3(state: Mapping[str, torch.Tensor], variant: str, source: str) -> DepthAnything3:
    """A ``DepthAnything3`` of ``variant`` holding ``state`` (official names, no prefix), strictly."""
    spec = get_da3_spec(variant)
    model = DepthAnything3(spec)
    parts = state_mismatch(model.state_dict(), state, _LIST_LIMIT)
    if parts:
        fits = [f for f in fitting_variants(state) if f != spec.name]
        hint = f"; its tensors fit {' or '.join(fits)}: name that model instead" if fits else ""
        raise ValueError(
            f"{source}: the checkpoint does not fit Depth Anything 3 {spec.name}{hint} ({'; '.join(parts)})"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def resolve_files(path: Path, variant: str | None) -> tuple[Path, str]:
    """The weights file and the model name, from a snapshot folder or a file plus ``variant``."""
    folder = path if path.is_dir() else path.parent
    weights = path / SNAPSHOT_WEIGHTS if path.is_dir() else path
    if path.is_dir() and not weights.is_file():
        raise ValueError(f"{path}: a folder without {SNAPSHOT_WEIGHTS}; pass a Depth Anything 3 snapshot folder")
    named = snapshot_model_name(folder) if (path.is_dir() or (folder / SNAPSHOT_CONFIG).is_file()) else None
    if named is not None and variant is not None and get_da3_spec(named).name != get_da3_spec(variant).name:
        raise ValueError(
            f"{path}: its {SNAPSHOT_CONFIG} names {named}, but {variant} was asked for; "
            "drop the option or check the folder"
        )
    name = variant or named
    if name is None:
        raise ValueError(
            f"{path}: a Depth Anything 3 checkpoint without {SNAPSHOT_CONFIG}: name the model "
            f"(variant= / --variant, one of {', '.join(DA3_VARIANTS)})"
        )
    return weights, get_da3_spec(name).name
