"""Video Depth Anything's stream graph and TensorRT, without TensorRT: the exported step passes the
project's parser rules per release, its facts (every shape static), the precision decision (the
motion modules in FP32 in an FP16 engine). ``tests/test_trt_stream_check.py``: the frame-by-frame
check and ``python -m export.trt`` building it."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.graph import Graph
from export.onnx import export_onnx
from export.quantize.fp16 import FP32_OPS, convert_to_fp16
from export.trt.rules import TrtVersion, check_model
from export.trt.stream import MOTION_MODULES, fp32_stream_nodes, is_stream_graph, stream_shapes

from .video_fixtures import STREAM_SIZE

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = STREAM_SIZE


@pytest.fixture(scope="module")
def stream(vda_stream):
    """The stream step exported at opset 17 (10.x, 11, 8.6) and 16 (what export.trt exports for 8.5)."""
    import onnx

    model, path = vda_stream["model"], vda_stream["path"]
    export_onnx(model, path.with_name("vda_16.onnx"), HEIGHT, WIDTH, verify=False, opset=16)
    return {"model": model, 17: onnx.load(str(path)), 16: onnx.load(str(path.with_name("vda_16.onnx")))}


@pytest.mark.parametrize("release", ["8.6", "10.3", "10.15", "11.0"])
def test_the_stream_graph_passes_the_parser_rules(stream, release):
    # before the export fix the 8.x releases failed on an INT64 ReduceSum (the window's frame count)
    assert check_model(stream[17], TrtVersion.target(release)) == []


def test_for_tensorrt_85_the_export_at_opset_16_passes_and_17_fails_only_on_layernorm(stream):
    version = TrtVersion.target("8.5")
    assert check_model(stream[16], version) == []
    findings = check_model(stream[17], version)
    assert findings and {(f.rule, f.op) for f in findings} == {("operator", "LayerNormalization")}


def test_the_stream_graph_is_recognised_and_every_shape_is_static(stream):
    model, graph = stream["model"], stream[17]
    assert is_stream_graph(graph)
    shapes = stream_shapes(graph)
    caches = [tuple(s) for s in model.state_shapes(HEIGHT, WIDTH)]
    assert shapes["image"] == (1, 3, HEIGHT, WIDTH) and shapes["depth"] == (1, HEIGHT, WIDTH)
    assert shapes["slot_pos"] == (caches[0][1],) == (31,)
    assert [shapes[f"cache{i}"] for i in range(8)] == caches
    assert [shapes[f"hidden{i}"] for i in range(8)] == [(n, 1, c) for n, _, c in caches]
    graph.graph.input[2].type.tensor_type.shape.dim[0].dim_param = "tokens"
    from export.errors import ExportRequestError

    with pytest.raises(ExportRequestError, match="'cache0' has a dynamic shape"):
        stream_shapes(graph)
    graph.graph.input[1].name = "positions"
    assert not is_stream_graph(graph)
    # the frame by another name: a stream for ONNX Runtime and OpenVINO, not for a TensorRT engine,
    # whose runtime binds the frame by the name image
    from export.video import STREAM_INPUTS, is_stream_inputs

    assert is_stream_inputs(("frame", *STREAM_INPUTS)) and not is_stream_inputs(("frame", *STREAM_INPUTS), "image")
    assert is_stream_inputs(("image", *STREAM_INPUTS), "image")


def test_an_fp16_engine_keeps_the_motion_modules_in_fp32(stream):
    graph = stream[17]
    pinned = fp32_stream_nodes(graph)
    kinds = {n.op_type for n in graph.graph.node if n.name in set(pinned)}
    # all four modules, with their attention (Softmax) and norms, and nothing of the encoder
    assert {n.split("/")[1] for n in pinned} == {f"motion_modules.{i}" for i in range(4)}
    assert {"Softmax", "MatMul", "LayerNormalization"} <= kinds
    # what is left out is shape arithmetic and constants (INT64 outputs a pinned 8.x layer must not get)
    left = {n.op_type for n in graph.graph.node if MOTION_MODULES in n.name and n.name not in pinned}
    assert "Softmax" not in left and "MatMul" not in left and "Constant" in left and "Shape" in left, left
    # the FP16-typed graph a strongly typed build reads: the pinned nodes compute in FP32 and it
    # still passes the parser rules
    typed = convert_to_fp16(graph, FP32_OPS, pinned)
    assert check_model(typed, TrtVersion.target("10.3")) == []
    types = Graph(__import__("onnx").shape_inference.infer_shapes(typed))
    fed = {
        types.type_name(i)
        for n in typed.graph.node
        if MOTION_MODULES in n.name and n.op_type in ("MatMul", "Softmax", "LayerNormalization")
        for i in n.input[:1]
    }
    assert fed == {"FP32"}, fed
    encoder = {
        types.type_name(n.input[0])
        for n in typed.graph.node
        if n.name.startswith("/pretrained/blocks.") and n.op_type == "MatMul"
    }
    assert encoder == {"FP16"}, encoder
