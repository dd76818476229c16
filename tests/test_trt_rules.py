"""The TensorRT parser rules, each shown to catch the defect it exists for on a small hand-made
graph, and every ONNX that ``export.trt --onnx-only`` writes shown to pass them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.trt.__main__ import main
from export.trt.rules import TrtVersion, check_model, check_onnx, release_rules
from tests.sa1b import make_shard

RELEASES = ("8.5", "8.6", "10.3", "11")


def model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    made.ir_version = 8
    return made


def tensor(name, elem=TensorProto.FLOAT, shape=(1, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def rules_broken(made, release):
    return {f.rule for f in check_model(made, TrtVersion.parse(release))}


def qdq_weight_graph(weight_type=TensorProto.INT8, zero=0, scale=0.5, scale_type=np.float32, opset=17, inputs=3):
    """x -> MatMul(x, DequantizeLinear(w)) with a constant weight of ``weight_type``."""
    values = np.ones((4, 4), dtype=helper.tensor_dtype_to_np_dtype(weight_type))
    init = [
        numpy_helper.from_array(values, "w"),
        numpy_helper.from_array(np.array(scale, scale_type), "s"),
        numpy_helper.from_array(np.array(zero, values.dtype), "z"),
    ]
    dq = helper.make_node("DequantizeLinear", ["w", "s", "z"][:inputs], ["wf"], name="dq")
    out_type = TensorProto.FLOAT16 if scale_type == np.float16 else TensorProto.FLOAT
    mm = helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")
    return model([dq, mm], [tensor("x", out_type)], [tensor("y", out_type)], init, opset)


def test_int32_bias_dequantize_is_refused_everywhere():
    made = qdq_weight_graph(TensorProto.INT32)
    for release in RELEASES:
        findings = check_model(made, TrtVersion.parse(release))
        assert [f.rule for f in findings] == ["types"], release
        assert "QuantizeBias off" in findings[0].message and findings[0].node == "dq"
    assert rules_broken(qdq_weight_graph(TensorProto.INT8), "8.5") == set()


def test_three_input_einsum_fails_on_8x_only():
    a, b, c = tensor("a", shape=(3, 4)), tensor("b", shape=(5, 4)), tensor("c", shape=(4, 4, 2))
    node = helper.make_node("Einsum", ["a", "b", "c"], ["y"], equation="ia,jb,abc->ijc", name="e")
    made = model([node], [a, b, c], [tensor("y", shape=(3, 5, 2))], opset=17)
    assert "einsum-inputs" in rules_broken(made, "8.5") and "einsum-inputs" in rules_broken(made, "8.6")
    assert rules_broken(made, "10.3") == set()
    two = model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="ia,jb->ij")], [a, b], [tensor("y")])
    assert rules_broken(two, "8.5") == set()


def test_layernormalization_needs_8_6():
    init = [numpy_helper.from_array(np.ones(4, np.float32), n) for n in ("g", "b")]
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, name="ln")
    made = model([node], [tensor("x")], [tensor("y")], init, opset=17)
    (finding,) = check_model(made, TrtVersion.parse("8.5"))
    assert finding.rule == "operator" and "opset 16" in finding.message and "8.5-GA" in finding.source
    for release in ("8.6", "10.3", "11"):
        assert rules_broken(made, release) == set()


def test_float64_tensors_are_refused():
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE, name="c")
    made = model([node], [tensor("x")], [tensor("y", TensorProto.DOUBLE)])
    for release in RELEASES:
        assert {"no-double", "types"} <= rules_broken(made, release)


@pytest.mark.parametrize(
    "release,opset,ok",
    [("8.5", 17, True), ("8.6", 18, False), ("10.3", 20, True), ("10.3", 21, False), ("11", 21, True)],
)
def test_opset_ceiling_per_release(release, opset, ok):
    made = model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x")], [tensor("y")], opset=opset)
    assert ("opset" not in rules_broken(made, release)) == ok


def test_unknown_and_custom_ops_are_reported_not_passed():
    custom = helper.make_node("FusedGelu", ["x"], ["y"], domain="com.microsoft", name="f")
    made = model([custom], [tensor("x")], [tensor("y")])
    made.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert rules_broken(made, "10.3") == {"standard-ops"}
    unsupported = model([helper.make_node("Det", ["x"], ["y"])], [tensor("x", shape=(4, 4))], [tensor("y", shape=())])
    assert rules_broken(unsupported, "8.6") == {"operator"}


def test_qdq_restrictions():
    assert rules_broken(qdq_weight_graph(inputs=2), "8.5") == {"qdq-zero-point-input"}
    assert rules_broken(qdq_weight_graph(inputs=2), "10.3") == set()
    assert "qdq-zero-point" in rules_broken(qdq_weight_graph(zero=3), "10.3")
    assert "qdq-positive-scale" in rules_broken(qdq_weight_graph(scale=-1.0), "10.3")
    assert "qdq-uint8" in rules_broken(qdq_weight_graph(TensorProto.UINT8), "10.3")
    # FP16 scales: only from opset 19 (ONNX) and only on TensorRT >= 10
    assert "qdq-scale-type" in rules_broken(qdq_weight_graph(scale_type=np.float16, opset=17), "10.3")
    assert rules_broken(qdq_weight_graph(scale_type=np.float16, opset=19), "10.3") == set()
    assert "qdq-scale-type" in rules_broken(qdq_weight_graph(scale_type=np.float16, opset=19), "8.6")


def test_per_channel_activation_quantization_is_refused():
    init = [
        numpy_helper.from_array(np.full(4, 0.1, np.float32), "s"),
        numpy_helper.from_array(np.zeros(4, np.int8), "z"),
    ]
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1, name="q")
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1, name="dq")
    made = model([q, dq], [tensor("x")], [tensor("y")], init)
    for release in RELEASES:
        assert "qdq-per-channel-activation" in rules_broken(made, release)


def test_resize_modes():
    init = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]

    def resize(**attrs):
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="r", **attrs)
        return model([node], [tensor("x", shape=(1, 1, 2, 2))], [tensor("y", shape=(1, 1, 4, 4))], init, opset=18)

    assert rules_broken(resize(mode="linear", coordinate_transformation_mode="align_corners"), "10.3") == set()
    assert "resize-antialias" in rules_broken(resize(mode="linear", antialias=1), "10.3")
    assert "resize-transform" in rules_broken(
        resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"), "10.3"
    )


def test_inputs_the_importers_read_as_weights_must_be_constants():
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    direct = helper.make_node("Squeeze", ["x", "axes"], ["y"], name="sq")
    made = model([direct], [tensor("x", shape=(1, 4))], [tensor("y", shape=(4,))], [axes])
    assert rules_broken(made, "10.3") == set()
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape")
    computed = helper.make_node("Sub", ["s", "one"], ["axes2"], name="sub")
    squeeze = helper.make_node("Squeeze", ["x", "axes2"], ["y"], name="sq")
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    made = model([shape, computed, squeeze], [tensor("x", shape=(1, 4))], [tensor("y", shape=(4,))], [one])
    for release in RELEASES:
        assert "constant-input" in rules_broken(made, release)
    clip = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")
    lo = helper.make_node("ReduceMin", ["x"], ["lo"], keepdims=0, name="min")
    hi = numpy_helper.from_array(np.array(1.0, np.float32), "hi")
    made = model([lo, clip], [tensor("x")], [tensor("y")], [hi])
    assert "constant-input" in rules_broken(made, "10.3")


def test_int64_constant_of_shape_is_accepted_uint8_is_not():
    value = numpy_helper.from_array(np.array([1], np.int64))
    shape = numpy_helper.from_array(np.array([3], np.int64), "shape")
    node = helper.make_node("ConstantOfShape", ["shape"], ["y"], value=value, name="c")
    made = model([node], [], [tensor("y", TensorProto.INT64, (3,))], [shape])
    assert rules_broken(made, "8.5") == set()
    node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([1], np.uint8)))
    made.graph.output[0].type.tensor_type.elem_type = TensorProto.UINT8
    assert "types" in rules_broken(made, "8.5")


def test_versions_and_tables():
    assert TrtVersion.parse("8.5.2.2").table == "8.5" and TrtVersion.parse("10.3.0").table == "10"
    assert TrtVersion.parse("10.15").table == "11" and TrtVersion.parse("11.1").max_opset == 24
    for bad, match in (("8.4", "too old"), ("9.2", "preview"), ("ten", "not a TensorRT version")):
        with pytest.raises(ExportError, match=match):
            TrtVersion.parse(bad)
    for table in ("8.5", "8.6", "10", "11"):
        rules = release_rules(table)
        assert "docs/operators.md" in rules.document and {"Conv", "MatMul", "Softmax"} <= set(rules.ops)


def test_truncated_file_is_a_clear_error(tmp_path):
    broken = tmp_path / "m.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        check_onnx(broken, TrtVersion.parse("10.3"))


# --- every ONNX export.trt writes, for every target release, passes that release's rules -------


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory, tiny_spec):
    """The tiny model exported the way export.trt exports for each target: opset 16 (8.5) and 17."""
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    net = DepthAnythingV2(tiny_spec).eval()
    folder = tmp_path_factory.mktemp("trt_sources")
    paths = {}
    for opset in (16, 17):
        for dynamic in (False, True):
            path = folder / f"tiny_{opset}_{'dynamic' if dynamic else 'static'}.onnx"
            export_onnx(net, path, 98, 98, dynamic=dynamic, opset=opset)
            paths[opset, dynamic] = path
    shard = make_shard(folder / "sa1b" / "sa_0.tar", 8, faults=False)
    return paths, shard.parent


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_every_onnx_export_trt_writes_passes_the_rules(tmp_path, tiny_sources, capsys, release, precision, dynamic):
    paths, calib = tiny_sources
    version = TrtVersion.parse(release)
    source = paths[16 if version.table == "8.5" else 17, dynamic]
    output = tmp_path / f"tiny.{precision}.engine"
    argv = ["--onnx", str(source), f"--{precision}", "--trt-version", release, "--onnx-only", "--output", str(output)]
    argv += ["--min", "56x56", "--opt", "98x98", "--max", "140x140"] if dynamic else ["--size", "98x98"]
    if precision == "int8":
        argv += ["--calib-dir", str(calib), "--calib-samples", "6", "--accuracy-images", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    ready = [line.split(": ", 1)[1].split(" (passes")[0] for line in printed.splitlines() if "TensorRT-ready" in line]
    assert check_onnx(ready[0], version) == [], printed
    graph = onnx.load(ready[0])
    ops = {n.op_type for n in graph.graph.node}
    assert ("QuantizeLinear" in ops) == (precision == "int8")
    assert "Einsum" not in ops
    if version.major >= 10:  # strongly typed: FP16 tensors, FP16 Q/DQ scales at opset 19, few Casts per frame
        from export.quantize.fp16 import cast_counts

        assert any(i.data_type == TensorProto.FLOAT16 for i in graph.graph.initializer)
        # the input, the output, the position embedding, and into and out of each FP32 LayerNorm
        layer_norms = sum(n.op_type == "LayerNormalization" for n in graph.graph.node)
        assert cast_counts(graph)[1] <= 3 + 2 * layer_norms, cast_counts(graph)
        if precision == "int8":  # no Cast between a DequantizeLinear and the layer it feeds
            producer = {o: n for n in graph.graph.node for o in n.output}
            for node in graph.graph.node:
                if node.op_type in ("Conv", "MatMul") and node.input[1] in producer:
                    assert producer[node.input[1]].op_type != "Cast", node.name
    assert "trtexec" in printed and (("--stronglyTyped" in printed) == (version.major == 10))


def test_opset_conversion_of_a_model_past_protobufs_limit_keeps_its_weights(tiny_sources):
    """vitg's ONNX is over 2 GB: its opset conversion runs without the weight values, put back after."""
    from export.quantize.fp16 import convert_opset

    paths, _ = tiny_sources
    model = onnx.load(str(paths[17, False]))
    direct, weightless = convert_opset(model, 19), convert_opset(model, 19, limit=0)
    assert direct.SerializeToString() == weightless.SerializeToString()
    assert weightless.ir_version >= 9 and max(o.version for o in weightless.opset_import) == 19
