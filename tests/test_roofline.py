"""Operation counts and ceilings behind the report's GOP/s column and lower bounds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.roofline import CeilingProbes, add_throughput, compute_format, count_macs, lower_bounds, matrix_work


def _graph_model(dynamic: bool = False) -> onnx.ModelProto:
    """x [1,3,8,10] -> Conv 3->4 k3 pad1 -> grouped Conv 4->4 g2 k3 stride2 -> ConvTranspose 4->2 k2 s2
    -> reshape to tokens -> batched MatMul against its own transpose -> Gemm with transA."""
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    height = "h" if dynamic else 8
    inits = [
        init("w1", (4, 3, 3, 3)),
        init("w2", (4, 2, 3, 3)),
        init("w3", (4, 2, 2, 2)),
        numpy_helper.from_array(np.array([2, 8, 10], dtype=np.int64), "shape"),
        init("g", (8, 5)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),  # out [1,4,8,10]
        helper.make_node("Conv", ["c1", "w2"], ["c2"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]),  # [1,4,4,5]
        helper.make_node("ConvTranspose", ["c2", "w3"], ["c3"], strides=[2, 2]),  # [1,2,8,10]
        helper.make_node("Reshape", ["c3", "shape"], ["tokens"]),  # [2,8,10]
        helper.make_node("Transpose", ["tokens"], ["tokens_t"], perm=[0, 2, 1]),  # [2,10,8]
        helper.make_node("MatMul", ["tokens", "tokens_t"], ["scores"]),  # [2,8,8], K=10
        helper.make_node("Flatten", ["scores"], ["flat"], axis=2),  # [16,8]
        helper.make_node("Gemm", ["g", "flat_t"], ["y"], transA=1),  # g^T [5,8] x [8,16]
        helper.make_node("Transpose", ["flat"], ["flat_t"], perm=[1, 0]),
    ]
    nodes = [*nodes[:7], nodes[8], nodes[7]]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, height, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_macs_match_hand_counts():
    macs = count_macs(_graph_model())
    assert macs == {
        "Conv": 4 * 8 * 10 * (3 * 3 * 3) + 4 * 4 * 5 * (2 * 3 * 3),
        "ConvTranspose": (4 * 4 * 5) * (2 * 2 * 2),
        "MatMul": 2 * 8 * 8 * 10,
        "Gemm": 5 * 16 * 8,
    }
    assert matrix_work(_graph_model()) == (macs, 0)  # a product of two activations, but no softmax


def test_dynamic_shapes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="fixed-size export"):
        count_macs(_graph_model(dynamic=True))


def test_exported_model_count_matches_the_architecture(tmp_path):
    """The tiny encoder's attention and MLP MatMuls, counted from the spec by hand."""
    import torch

    from export.onnx import export_onnx
    from tests.conftest import make_tiny_spec
    from train.models import DepthAnythingV2

    spec = make_tiny_spec()
    torch.manual_seed(0)
    path = export_onnx(DepthAnythingV2(spec).eval(), tmp_path / "tiny.onnx", 56, 84, verify=False).path
    macs = count_macs(path)
    rows, cols = 56 // 14, 84 // 14
    tokens = rows * cols + 1
    dim, depth, grid = spec.embed_dim, spec.depth, spec.pos_grid
    per_block = tokens * dim * (3 * dim + dim + 2 * spec.mlp_hidden) + 2 * tokens * tokens * dim
    # the position-embedding grid resized to the token grid as two matrix products: rows, then columns
    resize = rows * grid * grid * dim + rows * cols * grid * dim
    assert macs["MatMul"] == depth * per_block + resize
    assert macs["Conv"] > 0 and macs["ConvTranspose"] > 0
    # of which the attention's two products per block, around its softmax (not the position-embedding resize)
    assert matrix_work(path)[1] == depth * 2 * tokens * tokens * dim


def test_ceilings_and_bounds():
    probes = CeilingProbes(("fp32", "bf16", "int8"), m=64, k=64, layers=2)
    assert set(probes.probes) == {"fp32", "bf16", "int8"}
    rounds = [probes.measure(repeats=2) for _ in range(3)]
    ceilings = probes.summarize(rounds)
    for name, ceiling in ceilings.items():  # the best round counts; the spread says how well rounds agree
        values = [r[name] for r in rounds]
        assert ceiling["ops_per_s"] == max(values) > 0 and ceiling["spread"] == max(values) / np.median(values)
        assert ceiling["rounds"] == values and ceiling["shape"] == [64, 64, 64]
    assert CeilingProbes(("fp32",), m=8, k=8, layers=1).summarize([]) == {}
    one_dip = probes.summarize([{"fp32": 100.0}, {"fp32": 200.0}, {"fp32": 190.0}])["fp32"]
    assert one_dip["ops_per_s"] == 200.0 and one_dip["spread"] == pytest.approx(200 / 190)
    bounds = lower_bounds(2e9, {"fp32": {"ops_per_s": 1e11}, "int8": {"ops_per_s": 4e11}})
    assert bounds == pytest.approx({"fp32": 0.02, "int8": 0.005})


def test_throughput_columns():
    roofline = {
        "work": {"518x518": {"ops": 100e9}},
        "ceilings": {"fp32": {"ops_per_s": 200e9}, "int8": {"ops_per_s": 800e9}},
    }
    rows = [
        {"backend": "torch", "precision": "fp32", "size": [518, 518], "model_call": {"median": 1.0}, "info": {}},
        {
            "backend": "openvino",
            "precision": "int8",
            "size": [518, 518],
            "model_call": {"median": 0.25},
            "info": {"device": "CPU"},
        },
        {
            "backend": "tensorrt",
            "precision": "int8",
            "size": [518, 518],
            "model_call": {"median": 0.01},
            "info": {"device": "cuda:0"},
        },
        {"backend": "torch", "precision": "fp32", "size": [256, 256], "model_call": {"median": 1.0}},
        {"backend": "onnxruntime", "precision": "int8", "size": [518, 518], "status": "export failed"},
    ]
    rows.append(  # OpenVINO told to run BF16 on a CPU without BF16 units: it computed in f32
        {
            "backend": "openvino",
            "precision": "fp16/bf16",
            "size": [518, 518],
            "model_call": {"median": 1.0},
            "computes_in": "fp32",
            "info": {"device": "CPU"},
        }
    )
    add_throughput(rows, roofline)
    assert rows[5]["share_of_ceiling"] == 0.5
    assert rows[0]["ops_per_s"] == 100e9 and rows[0]["share_of_ceiling"] == 0.5
    assert rows[1]["share_of_ceiling"] == 0.5
    assert rows[2]["ops_per_s"] == 1e13 and "share_of_ceiling" not in rows[2]  # a GPU is not held to the CPU's ceiling
    assert "ops_per_s" not in rows[3] and "ops_per_s" not in rows[4]
    assert [compute_format(p) for p in ("fp16/f32", "fp16/bf16", "int8", "fp16")] == ["fp32", "bf16", "int8", "fp16"]
