"""Shared fixtures: the official parity weights (rebuilt from ../shared), tiny models, images."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get("DAV2_PARITY_FIXTURES", REPO.parent / "shared" / "fixtures" / "official_parity"))


def parity_dir() -> Path:
    if not (PARITY_DIR / "weights_recipe.py").is_file():
        pytest.skip(f"official parity fixtures not found at {PARITY_DIR} (set DAV2_PARITY_FIXTURES)")
    return PARITY_DIR


def recipe():
    spec = importlib.util.spec_from_file_location("weights_recipe", parity_dir() / "weights_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_keys(encoder: str) -> list[tuple[str, list[int]]]:
    return json.loads((parity_dir() / f"keys_{encoder}.json").read_text())


def official_state_dict(encoder: str) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in recipe().deterministic_state_dict(official_keys(encoder)).items()}


@pytest.fixture(scope="session")
def vits_state_dict() -> dict:
    return official_state_dict("vits")


@pytest.fixture(scope="session")
def vits_model(vits_state_dict):
    from train.models import DepthAnythingV2

    model = DepthAnythingV2("vits")
    model.load_state_dict(vits_state_dict, strict=True)
    return model.eval()


def make_tiny_spec():
    from train.models import ModelSpec

    return ModelSpec(
        "tiny", depth=4, embed_dim=32, num_heads=2, features=16, out_channels=(8, 16, 32, 32), layers=(0, 1, 2, 3)
    )


@pytest.fixture(scope="session")
def tiny_spec():
    return make_tiny_spec()


@pytest.fixture
def tiny_model(tiny_spec):
    import torch

    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    return DepthAnythingV2(tiny_spec).eval()


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph, 300x451 BGR uint8."""
    from runtime.samples import sample_images

    return sample_images(("chelsea.png",))["chelsea"]


@pytest.fixture(scope="session")
def vits_checkpoint(tmp_path_factory, vits_state_dict):
    """The deterministic official-format vits weights as a ``.pth`` file."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "depth_anything_v2_vits.pth"
    torch.save(vits_state_dict, path)
    return path


@pytest.fixture(scope="session")
def vits_dynamic_onnx(tmp_path_factory, vits_model):
    from export.onnx import export_onnx

    return export_onnx(vits_model, tmp_path_factory.mktemp("onnx") / "vits_dynamic.onnx", dynamic=True)


@pytest.fixture(scope="session")
def vits_static_onnx(tmp_path_factory, vits_model):
    from export.onnx import export_onnx

    return export_onnx(vits_model, tmp_path_factory.mktemp("onnx") / "vits_518.onnx").path
