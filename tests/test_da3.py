"""Depth Anything 3: the official networks' names, shapes and numbers, and strict loading of the
published snapshots (``config.json`` + ``model.safetensors`` with keys under ``model.``)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from tests.da3_fixtures import da3_state_dict, keys, reference, reference_input, write_snapshot
from train.models import CheckpointError, load_model
from train.models.da3 import DA3_VARIANTS, DepthAnything3, sky_to_far

TOLERANCE = 1e-4  # max |ours - official| / std(official), float32


def _parity(out: dict[str, torch.Tensor], name: str, outputs: tuple[str, ...]) -> None:
    for output in outputs:
        ref = reference(name, output)
        ours = out[output].numpy()
        assert ours.shape == ref.shape, output
        error = np.abs(ours - ref).max() / ref.std()
        assert error <= TOLERANCE, f"{name} {output}: max|ours - ref| / std(ref) = {error:.2e}"


@pytest.mark.parametrize("name", ["da3-small", "da3mono-large"])
def test_state_dict_names_and_shapes_equal_the_official(name):
    with torch.device("meta"):
        model = DepthAnything3(name)
    assert sorted((k, list(v.shape)) for k, v in model.state_dict().items()) == sorted(map(tuple, keys(name)))


def test_base_and_metric_rows_build():
    with torch.device("meta"):
        base = DepthAnything3("da3-base")
        metric, mono = DepthAnything3("DA3METRIC-LARGE"), DepthAnything3("da3mono-large")
    assert base.backbone.pretrained.pos_embed.shape[-1] == 768 and base.cam_dec.fc_t.in_features == 1536
    assert metric.state_dict().keys() == mono.state_dict().keys()
    assert DA3_VARIANTS["da3metric-large"].output == "metres_per_focal"


@pytest.fixture(scope="module")
def small():
    model = DepthAnything3("da3-small").eval()
    model.load_state_dict(da3_state_dict("da3-small"), strict=True)
    return model


def test_da3_small_parity_with_the_official_network(small):
    with torch.inference_mode():
        out = small.set_ray(True)(reference_input())
    small.set_ray(False)
    _parity(out, "da3-small", ("depth", "depth_conf", "extrinsics", "intrinsics", "ray", "ray_conf"))
    with torch.inference_mode():
        plain = small(reference_input())
    assert set(plain) == {"depth", "depth_conf", "extrinsics", "intrinsics"}
    assert torch.equal(plain["depth"], out["depth"])


def test_da3_small_depth_depends_on_rope_and_the_camera_token(small, monkeypatch):
    """Guards the pieces beyond DA-V2's encoder: without RoPE on the global blocks' flat positions
    or with the class token kept, the depth misses the official one by far more than the bar."""
    from train.models.da3 import backbone

    ref = reference("da3-small", "depth")
    monkeypatch.setattr(backbone, "ROPE_FREQUENCY", 10000.0)
    with torch.inference_mode():
        wrong = small(reference_input())["depth"].numpy()
    assert np.abs(wrong - ref).max() / ref.std() > 1e-2


def test_da3mono_large_parity_with_the_official_network():
    """ViT-L at 266x364: depth after the sky step, and the sky map."""
    start = time.perf_counter()
    model = DepthAnything3("da3mono-large").eval()
    model.load_state_dict(da3_state_dict("da3mono-large"), strict=True)
    with torch.inference_mode():
        out = model(reference_input())
    _parity(out, "da3mono-large", ("depth", "sky"))
    assert time.perf_counter() - start < 120


def test_sky_step_is_the_quantile_of_the_other_pixels():
    torch.manual_seed(0)
    depth = torch.rand(2, 30, 40) * 10
    sky = torch.zeros(2, 30, 40)
    sky[0, :8] = 1.0  # 320 sky pixels in the first image, none in the second
    out = sky_to_far(depth, sky)
    far = torch.quantile(depth[0][sky[0] < 0.3], 0.99)
    assert torch.allclose(out[0][sky[0] >= 0.3], far.expand(320))
    assert torch.equal(out[0][sky[0] < 0.3], depth[0][sky[0] < 0.3])
    assert torch.equal(out[1], depth[1])  # no sky: unchanged
    few = torch.zeros(1, 30, 40)
    few[0, 0, :10] = 1.0  # ten sky pixels are too few: unchanged, as the official step does
    assert torch.equal(sky_to_far(depth[:1], few), depth[:1])


@pytest.fixture(scope="module")
def small_state():
    return da3_state_dict("da3-small")


def test_snapshot_folder_loads_strictly(tmp_path, small_state):
    folder = write_snapshot(tmp_path / "DA3-SMALL", "da3-small", small_state)
    model = load_model(folder)
    assert isinstance(model, DepthAnything3) and model.variant == "da3-small"
    assert model.licence == "Apache-2.0" and model.family == "depth-anything-3"
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, small_state[key]), key


def test_safetensors_alone_needs_the_model_named(tmp_path, small_state):
    folder = write_snapshot(tmp_path / "bare", "da3-small", small_state, config=False)
    with pytest.raises(CheckpointError, match="name the model"):
        load_model(folder / "model.safetensors")
    assert load_model(folder / "model.safetensors", variant="da3-small").variant == "da3-small"


def test_checkpoint_named_as_another_variant_says_what_it_fits(tmp_path, small_state):
    folder = write_snapshot(tmp_path / "bare", "da3-small", small_state, config=False)
    with pytest.raises(CheckpointError) as err:
        load_model(folder / "model.safetensors", variant="da3-base")
    message = str(err.value)
    assert "does not fit Depth Anything 3 da3-base" in message and "fit da3-small" in message
    assert "\n" not in message
    (folder / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    with pytest.raises(CheckpointError, match="names da3-small, but da3-base was asked for"):
        load_model(folder, variant="da3-base")


def test_partial_checkpoint_is_refused_with_the_missing_keys(tmp_path, small_state):
    state = {k: v for k, v in small_state.items() if not k.startswith("cam_dec.")}
    folder = write_snapshot(tmp_path / "partial", "da3-small", state)
    with pytest.raises(CheckpointError, match=r"missing keys: cam_dec\.backbone\.0\.weight"):
        load_model(folder)


def test_a_file_of_no_family_names_the_families_tried(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"encoder.layer0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert "Depth Anything V2" in str(err.value) and "Depth Anything 3" in str(err.value)
    assert "encoder.layer0.weight" in str(err.value)
