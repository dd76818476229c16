"""TensorRT engines of Depth Anything 3's two-output graphs, every decision as plain logic on real
exported graphs (no TensorRT here): which nodes an FP16 or INT8 build keeps in FP32 (the output
heads' exp), what the build checks the parsed network for, what the engine's sidecar and reference
say, how the runtime lays out and names the outputs from the engine's tensor list, and the parser
rule that refuses the mono/metric graph (its sky step sorts every pixel). The GPU test builds a
DA3-Small engine and reads its depth confidence through ``DepthPredictor``."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from commands.errors import ModelFileError
from export.errors import ExportError
from export.graph import FLOAT, Graph, inferred
from export.trt.build import TrtRequest, plan_job, ready_step, source_step
from export.trt.decisions import engine_attempts, plan_build
from export.trt.outputs import FP16_EXP_LIMIT, check_network_outputs, exp_tail_nodes, extra_outputs_fact
from export.trt.rules import TOPK_MAX_K, TrtVersion, check_model, check_onnx
from runtime.backends.tensorrt import engine_io, output_buffers
from tests.da3_fixtures import da3_state_dict
from tests.test_trt_logic import gpu_ready
from train.models.da3 import DA3_VARIANTS, METRES_PER_FOCAL, DepthAnything3

SIZE = (56, 70)
FP16_LARGEST = float(np.finfo(np.float16).max)  # 65504


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """DA3-Small (depth and depth confidence; the parity weights) exported at 56x70, opset 17."""
    from export.onnx import export_onnx

    spec = dataclasses.replace(DA3_VARIANTS["da3-small"], name="da3metric-conf-test", output=METRES_PER_FOCAL)
    net = DepthAnything3(spec).eval()
    net.load_state_dict(da3_state_dict("da3-small"))
    return export_onnx(net, tmp_path_factory.mktemp("da3") / "small.onnx", *SIZE).path


@pytest.fixture(scope="module")
def mono_onnx(tmp_path_factory):
    """A DA3Mono-shaped network on a ViT-S (depth and sky, the sky step in the graph), unverified."""
    from export.onnx import export_onnx
    from tests.test_da3_outputs import SMALL_MONO

    torch.manual_seed(0)
    spec = dataclasses.replace(DA3_VARIANTS["da3mono-large"], name="da3mono-test", **SMALL_MONO)
    net = DepthAnything3(spec).eval()
    return export_onnx(net, tmp_path_factory.mktemp("da3") / "mono.onnx", *SIZE, verify=False).path


def _load(path):
    return onnx.load(str(path), load_external_data=False)


def test_the_exp_heads_are_pinned_from_the_logit_conv_to_the_outputs(small_onnx, tiny_onnx):
    model = _load(small_onnx)
    pinned = exp_tail_nodes(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    # one Conv makes both logits; each output picks its channel, exp's it, and the confidence adds 1
    assert sorted(ops[n] for n in pinned) == ["Add", "Conv", "Exp", "Exp", "Gather", "Gather"]
    graph = Graph(model)
    producers = {o.name: graph.producer[o.name] for o in model.graph.output}
    assert producers["depth"].op_type == "Exp" and producers["depth"].name in pinned
    assert producers["depth_conf"].op_type == "Add" and producers["depth_conf"].name in pinned
    assert exp_tail_nodes(_load(tiny_onnx)) == []  # Depth Anything V2: ReLU, nothing to pin


def test_every_fp16_attempt_keeps_the_pins_and_an_fp32_build_has_none():
    pins, islands = ["conv", "exp"], ["ln", "softmax"]
    for version, precision in (("10.3", "fp16"), ("8.6", "fp16"), ("10.3", "int8"), ("8.6", "int8")):
        attempts = engine_attempts(plan_build(TrtVersion.parse(version), precision), islands, [], pins)
        assert [set(pins) <= set(a.fp32_nodes) for a in attempts] == [True, True]
        assert attempts[0].label == "as built"
    (fp32,) = engine_attempts(plan_build(TrtVersion.parse("10.3"), "fp32"), islands, [], pins)
    assert fp32.fp32_nodes == ()
    asked = engine_attempts(plan_build(TrtVersion.parse("8.6"), "fp16"), islands, ["x"], pins)[0]
    assert asked.fp32_nodes == ("conv", "exp", "x") and "1 --fp32-layers" in asked.label


def test_a_strongly_typed_fp16_graph_computes_the_exp_heads_in_fp32(small_onnx, tmp_path):
    """TensorRT 10.3 (JetPack 6): the FP16-typed ONNX keeps the pinned nodes' inputs and outputs
    float32 (a strongly typed network runs a layer in its tensors' type), the rest of the head FP16."""
    request = TrtRequest(precision="fp16", onnx=small_onnx, onnx_only=True, trt_version="10.3")
    request.output = tmp_path / "s.engine"
    job = plan_job(request, None)
    ready = ready_step(job, *source_step(job))
    assert ready.outputs == ("depth", "depth_conf")
    typed = inferred(_load(ready.record.path))
    graph = Graph(typed)
    nodes = {n.name: n for n in typed.graph.node}
    for name in exp_tail_nodes(_load(small_onnx)):
        node = nodes[name]
        assert graph.types[node.output[0]] == FLOAT, name
        data = node.input[:1]
        assert all(graph.types[t] == FLOAT for t in data), name
    conv = next(n for n in exp_tail_nodes(_load(small_onnx)) if nodes[n].op_type == "Conv")
    before = graph.producer[nodes[conv].input[0]]
    assert before.op_type == "Cast"  # the FP16 head hands the logit Conv its input in float32
    assert ready.expected is not None and ready.expected.meta["extra_outputs"] == ["depth_conf"]


def test_a_weakly_typed_fp16_build_pins_the_exp_heads_as_layer_precisions(small_onnx, tmp_path, capsys):
    """TensorRT 8.6 (JetPack 6.0): layer precisions and output types with OBEY_PRECISION_CONSTRAINTS,
    in the build and in the printed trtexec command."""
    from export.trt.build import handoff

    request = TrtRequest(precision="fp16", onnx=small_onnx, onnx_only=True, trt_version="8.6")
    request.output = tmp_path / "s.engine"
    job = plan_job(request, None)
    ready = ready_step(job, *source_step(job))
    plan = job.plan.pin_fp32([*ready.base_pins, *ready.attempts[0].fp32_nodes])
    pins = exp_tail_nodes(_load(small_onnx))
    assert set(pins) <= set(plan.fp32_layers) and "OBEY_PRECISION_CONSTRAINTS" in plan.builder_flags
    handoff(job, ready)
    command = capsys.readouterr().out
    assert all(f"{name}:fp32" in command for name in pins)


def test_the_pins_are_where_fp16_overflows_when_the_logits_pass_ln_65504(small_onnx):
    """The pinned nodes, taken from the graph, against what the graph computes: with the logit
    Conv's bias raised so that logits pass ``FP16_EXP_LIMIT`` (ln 65504), ONNX Runtime in FP32 gives
    values over FP16's largest exactly at the pinned nodes after each Exp (the Exps and the
    confidence's +1: inf in an FP16 engine), and the pinned nodes before it are exactly those that
    carry the logit into an Exp (over ln 65504, finite in FP16, where their rounding is exp's
    relative error). No node outside the pins overflows."""
    import onnxruntime as ort

    model = onnx.load(str(small_onnx))
    pinned = exp_tail_nodes(model)
    nodes = {n.name: n for n in model.graph.node}
    conv = next(nodes[n] for n in pinned if nodes[n].op_type == "Conv")
    bias = next(i for i in model.graph.initializer if i.name == conv.input[2])
    raised = onnx.numpy_helper.to_array(bias) + np.float32(FP16_EXP_LIMIT + 1.0)
    bias.CopyFrom(onnx.numpy_helper.from_array(raised.astype(np.float32), bias.name))
    graph = Graph(inferred(model))
    names = [n.output[0] for n in model.graph.node if graph.types.get(n.output[0]) == TensorProto.FLOAT]
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    largest = {t: float(np.abs(v).max()) for t, v in zip(names, session.run(names, {"image": image}), strict=True)}
    node_of = {n.output[0]: n.name for n in model.graph.node}
    overflows = {node_of[t] for t, v in largest.items() if v > FP16_LARGEST}
    exps = {n for n in pinned if nodes[n].op_type == "Exp"}
    after = {n for n in pinned if n in exps or nodes[n].op_type == "Add"}
    assert overflows == after and len(exps) == 2
    before = set(pinned) - after
    assert all(FP16_EXP_LIMIT < largest[nodes[n].output[0]] < FP16_LARGEST for n in before)
    assert {nodes[n].op_type for n in before} == {"Conv", "Gather"}


def test_the_build_refuses_a_network_that_lost_an_output():
    check_network_outputs(["depth", "depth_conf"], ["depth_conf", "depth"], "m.onnx")
    with pytest.raises(ExportError, match=r"outputs depth, not the ONNX's depth, depth_conf; no engine was built"):
        check_network_outputs(["depth", "depth_conf"], ["depth"], "m.onnx")
    assert extra_outputs_fact(("depth",)) == {} and extra_outputs_fact(("depth", "sky")) == {"extra_outputs": ["sky"]}


def _tensors(*outputs: str, dtype_ok: bool = True):
    return [("image", True, True, (1, 3, 56, 70)), *((name, False, dtype_ok, (1, 56, 70)) for name in outputs)]


def test_the_engine_outputs_are_found_by_name_and_checked_against_the_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    said = {"extra_outputs": ["depth_conf"]}
    assert engine_io(engine, _tensors("depth_conf", "depth"), said) == ("image", "depth", ("depth_conf",))
    assert engine_io(engine, _tensors("depth", "sky"), None) == ("image", "depth", ("sky",))  # no sidecar
    assert engine_io(engine, _tensors("output"), {}) == ("image", "output", ())  # an engine from before names
    with pytest.raises(ModelFileError, match=r"outputs after depth are sky but its sidecar says depth_conf"):
        engine_io(engine, _tensors("depth", "sky"), said)
    with pytest.raises(ModelFileError, match=r"outputs after depth are none but its sidecar says depth_conf"):
        engine_io(engine, _tensors("depth"), said)
    with pytest.raises(ModelFileError, match=r"outputs after depth are depth_conf but its sidecar says none"):
        engine_io(engine, _tensors("depth", "depth_conf"), {})
    with pytest.raises(ModelFileError, match=r"got outputs depth, ray"):
        engine_io(engine, _tensors("depth", "ray"), None)
    with pytest.raises(ModelFileError, match=r"none named 'depth'"):
        engine_io(engine, _tensors("a", "b"), None)
    with pytest.raises(ModelFileError, match=r"not float32"):
        engine_io(engine, _tensors("depth", dtype_ok=False), {})


def test_every_output_gets_a_float32_buffer_of_its_shape():
    layout = output_buffers({"depth": (2, 56, 70), "depth_conf": (2, 1, 56, 70)})
    assert layout == {"depth": ((2, 56, 70), 2 * 56 * 70 * 4), "depth_conf": ((2, 1, 56, 70), 2 * 56 * 70 * 4)}
    with pytest.raises(RuntimeError, match="of shape \\(-1, 56, 70\\)"):
        output_buffers({"depth": (-1, 56, 70)})


def _topk_model(k: int | None, length: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, length])
    inputs = ["x", "k"]
    inits = [helper.make_tensor("k", TensorProto.INT64, [1], [k])] if k is not None else []
    if k is None:
        nodes = [helper.make_node("Shape", ["x"], ["s"], start=1, name="shape")]
        inputs = ["x", "s"]
    else:
        nodes = []
    nodes.append(helper.make_node("TopK", inputs, ["v", "i"], axis=1, name="topk"))
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, None)
    i = helper.make_tensor_value_info("i", TensorProto.INT64, None)
    graph = helper.make_graph(nodes, "g", [x], [v, i], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_topk_over_more_than_3840_values_is_refused(mono_onnx):
    version = TrtVersion.parse("10.3")
    assert [f.rule for f in check_model(_topk_model(100, 5000), version)] == []
    assert [f.rule for f in check_model(_topk_model(None, TOPK_MAX_K), version)] == []  # K <= the axis
    (found,) = check_model(_topk_model(None, TOPK_MAX_K + 1), version)
    assert found.rule == "topk-k" and f"TopK of {TOPK_MAX_K + 1} values" in found.message
    mono = [f for f in check_onnx(mono_onnx, version) if f.rule == "topk-k"]
    assert len(mono) == 1 and "sky step" in mono[0].message


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_ready(), reason="needs TensorRT and a CUDA GPU")
def test_a_da3_small_engine_returns_depth_and_its_confidence(small_onnx, tmp_path):
    from export.trt.build import build_trt
    from runtime import DepthPredictor
    from runtime.metadata import read_sidecar

    engine = build_trt(TrtRequest(precision="fp16", onnx=small_onnx, output=tmp_path / "s.fp16.engine")).path
    assert read_sidecar(engine)["extra_outputs"] == ["depth_conf"]
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    with DepthPredictor(small_onnx, focal=80.0) as ort, DepthPredictor(engine, focal=80.0) as trt:
        want, got = ort.predict(image), trt.predict(image)
    assert trt.extra_outputs == ("depth_conf",) and np.isfinite(got.confidence).all()
    assert np.abs(got.confidence - want.confidence).max() / want.confidence.std() < 0.05
    assert np.abs(np.asarray(got) - np.asarray(want)).max() / np.asarray(want).std() < 0.05
