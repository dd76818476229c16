"""``DepthPredictor.from_backend``: the predictor's public seam for a backend already built (a real
ONNX Runtime backend here, alone or wrapped to record its calls): the numbers of the file-built
predictor, the artefact's output kind, refusals that close the backend it was handed."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import DepthPredictor, InputError
from runtime.backends import backend_class
from tests import scenes
from tests.recording import Recorded, recorded_predictor


def test_a_predictor_from_a_backend_gives_the_file_built_predictors_numbers(tmp_path):
    model = scenes.affine_onnx(tmp_path / "relative.onnx")
    image = np.random.default_rng(0).integers(0, 255, (scenes.HEIGHT, scenes.WIDTH, 3), np.uint8)
    want = DepthPredictor(model, input_size=56).predict(image)
    predictor, recorded = recorded_predictor(model, input_size=56)
    np.testing.assert_array_equal(predictor.predict(image), want)
    assert recorded.sizes == [1] and predictor.backend == "onnxruntime" and predictor.output_kind == "relative"
    predictor.predict_batch([image, image])
    assert recorded.sizes == [1, 1, 1]  # the model takes a batch of one: a call per frame
    predictor.close()
    with pytest.raises(RuntimeError, match="closed"):  # the predictor owned the backend
        recorded.backend.infer(predictor.prepare(image))


def test_the_artefacts_kind_holds_and_a_refusal_closes_the_backend(tmp_path):
    model = scenes.affine_onnx(tmp_path / "metric.onnx", max_depth=20.0)
    predictor = DepthPredictor.from_backend(backend_class("onnxruntime")(model), "metric.onnx")
    assert predictor.output.is_metric and predictor.max_depth == 20.0  # the ONNX metadata's
    backend = Recorded(backend_class("onnxruntime")(model))
    with pytest.raises(InputError, match="outputs metric depth"):
        DepthPredictor.from_backend(backend, "metric.onnx", output_kind="relative")
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(np.zeros((1, 3, scenes.HEIGHT, scenes.WIDTH), np.float32))
    other = Recorded(backend_class("onnxruntime")(model))
    with pytest.raises(ValueError, match="input_size"):
        DepthPredictor.from_backend(other, "metric.onnx", input_size=3)
    with pytest.raises(RuntimeError, match="closed"):
        other.infer(np.zeros((1, 3, scenes.HEIGHT, scenes.WIDTH), np.float32))
