"""A model that is not a depth model (a classifier's logits, an image-to-image network) is refused
when it loads, by its output's shape, on every backend that reads one; never published as depth."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from commands.errors import ModelFileError
from runtime import DepthPredictor
from tests.conftest import REPO


def classifier(path, size=56):
    """(1, 3, size, size) -> (1, 10) logits: global average pool, then a matrix."""
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [weights],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def image_to_image(path, size=56):
    """(1, 3, size, size) -> (1, 3, size, size): a colour network's output is no depth map."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["colour"])],
        "filter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("colour", TensorProto.FLOAT, [1, 3, size, size])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("make,shape", [(classifier, "(1, 10)"), (image_to_image, "(1, 3, 56, 56)")])
def test_onnx_and_openvino_refuse_a_model_that_is_not_a_depth_model(tmp_path, make, shape):
    import openvino as ov

    model = make(tmp_path / "m.onnx")
    ir = tmp_path / "m.xml"
    ov.save_model(ov.convert_model(str(model)), str(ir))
    for path in (model, ir):
        with pytest.raises(ModelFileError, match=rf"its output has shape {re_escape(shape)}, not a depth map"):
            DepthPredictor(path)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_cli_says_so_in_one_line_and_writes_nothing(tmp_path):
    model = classifier(tmp_path / "classifier.onnx")
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), np.full((56, 56, 3), 128, np.uint8))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "runtime", str(image), "--model", str(model), "--output-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "its output has shape (1, 10), not a depth map: a depth model outputs (N, H, W)" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_depth_models_still_load(tmp_path):
    from tests import scenes

    predictor = DepthPredictor(scenes.affine_onnx(tmp_path / "depth.onnx"))
    assert predictor.predict(np.full((48, 64, 3), 100, np.uint8)).ndim == 2
