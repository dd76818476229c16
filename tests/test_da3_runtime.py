"""Depth Anything 3 in the runtime: what the numbers are (depth up to scale, depth per focal length),
metres only with a focal length, the family/variant/licence in ``info()`` and every artefact, the
ONNX export run by ONNX Runtime, and the bag tool's metres from each frame's camera info."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from runtime import DepthPredictor
from runtime.errors import InputError
from tests.da3_fixtures import da3_state_dict, write_snapshot
from train.models.da3 import DA3_VARIANTS, METRES_PER_FOCAL, DepthAnything3

SIZE = 56  # network short side: small and fast; the numbers' meaning does not depend on it


@pytest.fixture(scope="module")
def small_snapshot(tmp_path_factory):
    return write_snapshot(tmp_path_factory.mktemp("da3") / "DA3-SMALL", "da3-small", da3_state_dict("da3-small"))


@pytest.fixture(scope="module")
def metric_small():
    """DA3-Small's network labelled as a depth-per-focal-length model (as DA3Metric-Large is): what the
    runtime does with the output depends on its kind, not on the network's size."""
    torch.manual_seed(0)
    spec = dataclasses.replace(DA3_VARIANTS["da3-small"], name="da3metric-test", output=METRES_PER_FOCAL)
    model = DepthAnything3(spec).eval()
    model.load_state_dict(da3_state_dict("da3-small"))
    return model


def picture(index: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 5 + index * 20) % 256, (y * 7) % 256, ((x + y) * 3 + index * 50) % 256], axis=-1)
    return image.astype(np.uint8)


def test_snapshot_predictor_says_what_it_outputs(small_snapshot):
    with DepthPredictor(small_snapshot, input_size=SIZE) as predictor:
        depth = predictor.predict(picture())
        info = predictor.info()
    assert depth.shape == (48, 64) and depth.dtype == np.float32 and (depth > 0).all()
    assert predictor.output_kind == "depth_up_to_scale"
    assert (info["family"], info["variant"], info["licence"]) == ("depth-anything-3", "da3-small", "Apache-2.0")
    with pytest.raises(InputError, match="focal="):
        DepthPredictor(small_snapshot, input_size=SIZE, focal=500.0)


def test_metres_per_focal_needs_the_focal_length_and_scales_with_it(metric_small):
    image = picture()
    with DepthPredictor(metric_small, input_size=SIZE) as predictor:
        assert predictor.output_kind == "metres_per_focal"
        with pytest.raises(InputError, match="metres need the camera's focal length"):
            predictor.predict(image)
        raw = predictor.predict_batch([image], raw=True)[0]
        metres = predictor.predict(image, focal=300.0)
        doubled = predictor.predict(image, intrinsics=np.array([[600.0, 0, 32], [0, 600.0, 24], [0, 0, 1]]))
    # The network sees the image at 56x74 (short side 56): focal 300 px there is 300 * 56/48 ...
    h, w = predictor.network_size(image)
    focal_network = 0.5 * (300.0 * w / 64 + 300.0 * h / 48)
    np.testing.assert_allclose(metres, raw * focal_network / 300.0, rtol=1e-6)
    np.testing.assert_allclose(doubled, 2 * metres, rtol=1e-6)
    for bad in (0.0, -5.0, float("nan"), float("inf"), "wide"):
        with pytest.raises(InputError, match="focal length"):
            DepthPredictor(metric_small, input_size=SIZE, focal=bad)


def test_onnx_export_carries_family_variant_licence_and_kind(tmp_path, small_snapshot):
    onnx = pytest.importorskip("onnx")
    from export.onnx import main as export_main

    out = tmp_path / "da3s.onnx"
    assert export_main(["--checkpoint", str(small_snapshot), "--size", "56x70", "--output", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["family"] == "depth-anything-3" and meta["variant"] == "da3-small"
    assert meta["output_kind"] == "depth_up_to_scale" and meta["licence"] == "Apache-2.0"
    sidecar = json.loads((tmp_path / "da3s.onnx.json").read_text())
    assert sidecar["family"] == "depth-anything-3" and sidecar["output_kind"] == "depth_up_to_scale"
    with DepthPredictor(out) as ort, DepthPredictor(small_snapshot, fixed_size=(56, 70)) as pt:
        assert ort.backend == "onnxruntime" and ort.output_kind == "depth_up_to_scale"
        assert ort.info()["variant"] == "da3-small"
        a, b = ort.predict(picture()), pt.predict(picture())
    assert np.abs(a - b).max() / b.std() < 1e-3
