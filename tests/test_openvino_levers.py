"""The OpenVINO levers kept in the runtime: pre-processing inside the compiled model gives the
numbers of the OpenCV path, and any OpenVINO property reaches the plugin."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks.profile import summarize
from export.metrics import abs_rel, compare
from export.openvino import export_openvino
from runtime import DepthPredictor, InputError, ModelFileError

# preprocess="model" against the OpenCV path, both in f32: OpenVINO's cubic Interpolate and
# OpenCV's INTER_CUBIC use one kernel on one grid in another order. Measured on the tiny model at
# 224x224, 18 photos at 300x451 to 1280x720: max|d|/std 1.7e-5 to 1.1e-4, AbsRel 9e-9 to 6e-8.
PREPROCESS_MAX_REL = 5e-4


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory, tiny_onnx):
    out = tmp_path_factory.mktemp("ir") / "tiny.xml"
    export_openvino(tiny_onnx, out, "fp32")
    return out


def open_ir(path, **options) -> DepthPredictor:
    return DepthPredictor(path, device="cpu", precision="fp32", cache_dir=None, **options)


def frames(photo: np.ndarray) -> list[np.ndarray]:
    return [photo, cv2.resize(photo, (640, 480)), cv2.resize(photo, (1280, 720)), photo[13:200, 7:333].copy()]


def test_preprocessing_in_the_model_gives_the_opencv_numbers(tiny_ir, photo):
    opencv, inside = open_ir(tiny_ir), open_ir(tiny_ir, preprocess="model")
    assert inside.info()["preprocess"] == "model" and opencv.info()["preprocess"] == "numpy"
    assert inside.input_shape == opencv.input_shape == (1, 3, 56, 56)  # the network's own input
    assert inside.prepare(photo).dtype == np.uint8 and inside.prepare(photo).shape == (1, *photo.shape)
    for frame in frames(photo):
        want, got = opencv.predict(frame), inside.predict(frame)
        assert got.shape == frame.shape[:2] and got.dtype == np.float32
        assert compare(got, want).max_rel_std <= PREPROCESS_MAX_REL
        assert abs_rel([got], [want]) <= 1e-5
    rgb = np.ascontiguousarray(photo[:, :, ::-1])
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    assert compare(inside.predict(rgb, rgb=True), opencv.predict(photo)).max_rel_std <= PREPROCESS_MAX_REL
    assert compare(inside.predict(gray), opencv.predict(gray)).max_rel_std <= PREPROCESS_MAX_REL


def test_preprocessing_in_the_model_batches_and_streams(tiny_ir, photo):
    inside = open_ir(tiny_ir, preprocess="model", streams=2)
    batch = frames(photo)
    single = [inside.predict(f) for f in batch]
    for got, want in zip(inside.predict_batch(batch), single, strict=True):
        assert compare(got, want).max_rel_std <= 1e-5
    for i, got in enumerate(inside.stream(batch * 2)):
        assert compare(got, single[i % 4]).max_rel_std <= 1e-5


def test_the_profile_of_a_model_with_preprocessing_shows_the_resize(tiny_ir, photo):
    inside = open_ir(tiny_ir, preprocess="model")
    frame = cv2.resize(photo, (1280, 720))
    profile = summarize(inside._backend.profile(inside.prepare(frame), calls=2).to_dict(), "openvino")
    assert profile["kinds"]["resize"]["ms"] > 0


def test_preprocessing_in_the_model_refuses_what_it_cannot_do(tiny_ir, tiny_onnx, tmp_path, tiny_spec):
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    dynamic = export_onnx(DepthAnythingV2(tiny_spec).eval(), tmp_path / "dyn.onnx", dynamic=True).path
    with pytest.raises(ModelFileError, match="needs a fixed-size model"):
        DepthPredictor(dynamic, backend="openvino", device="cpu", preprocess="model", cache_dir=None)
    with pytest.raises(ValueError, match="preprocess must be 'numpy'"):
        open_ir(tiny_ir, preprocess="gpu")
    inside = open_ir(tiny_ir, preprocess="model")
    with pytest.raises(InputError, match=r"takes \(N, H, W, 3\) uint8"):
        inside._backend.infer(np.zeros((1, 3, 56, 56), np.float32))


def test_openvino_properties_reach_the_plugin(tiny_ir, photo):
    plain = open_ir(tiny_ir)
    one_thread = open_ir(tiny_ir, properties={"INFERENCE_NUM_THREADS": 1, "SNIPPETS_MODE": "DISABLE"})
    compiled = one_thread._backend._compiled
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert compare(one_thread.predict(photo), plain.predict(photo)).max_rel_std <= 1e-4
