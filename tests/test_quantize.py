"""INT8 Q/DQ from SA-1B calibration, FP16-typed ONNX, and the end-to-end --onnx-only command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from export.metrics import OnnxRuntimeRunner, abs_rel, compare
from export.onnx import export_onnx
from export.quantize.calibration import CalibrationSet
from export.quantize.fp16 import to_fp16
from export.quantize.qdq import DEFAULT_KEEP_FP, quantize_int8, select_nodes
from runtime import DepthPredictor
from runtime.int8_cpu import this_cpu
from runtime.preprocessing import prepare_fixed
from runtime.reference import load_reference, reference_path
from tests.sa1b import held_out_photos, make_shard

# Stated bounds for INT8 (and FP16) against FP32 on held-out photographs: the worst pixel
# relative to the map's peak, and the mean relative error after the least-squares scale-and-shift
# alignment that relative depth is compared under. The deterministic parity weights are random,
# not trained, and far more fragile to quantization noise than a trained model: first measured at
# the deployment resolution 518x518, max 0.06-0.11, aligned 0.035-0.10 (percentile 99.99 %, 12
# calibration images). Hence the loose bars, plus a check that INT8 is far closer to FP32 than an
# unrelated depth map is. The suite runs at 266x266 (a quarter of the tokens, the same graph and
# code paths) to keep its time; measured there on the two photographs (2026-12-07, Sapphire
# Rapids class Xeon): tensorrt max 0.080/0.059, aligned 0.087/0.040; cpu full range aligned
# 0.088/0.047; cpu 7-bit (--int8-arithmetic avx2) aligned 0.132/0.062 against its 0.2 bar.
INT8_MAX_REL = 0.2
INT8_ALIGNED_REL = 0.15
# The cpu target for CPUs without VNNI stores 7-bit weights (export.quantize.arithmetic): half the
# weight resolution, measured 0.159 and 0.056 on the two photographs at 518 (full range: 0.113, 0.043).
INT8_ALIGNED_REL_7BIT = 0.2
# ONNX Runtime's INT8 kernels on this CPU against the same graph run as written (issue 29's bound):
# they compute the arithmetic the model was made for, whichever x86 CPU runs the test.
NATIVE_RATIO, NATIVE_SLACK = 1.25, 0.005
FP16_MAX_REL = 0.01
SIZE = (266, 266)


def aligned_rel(pred: np.ndarray, ref: np.ndarray) -> float:
    a = np.stack([pred.ravel(), np.ones(pred.size)], 1)
    scale, shift = np.linalg.lstsq(a, ref.ravel(), rcond=None)[0]
    return float(np.mean(np.abs(scale * pred + shift - ref)) / np.mean(np.abs(ref)))


def test_node_selection_keeps_sensitive_nodes_in_float(vits_dynamic_onnx):
    model = onnx.load(str(vits_dynamic_onnx.path))
    quantize, kept = select_nodes(model, DEFAULT_KEEP_FP)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[n] for n in quantize} <= {"Conv", "MatMul", "Gemm"}
    assert any("patch_embed" in n for n in kept) and any("output_conv2" in n for n in kept)
    attention = [n.name for n in model.graph.node if n.op_type == "MatMul" and "/attn/" in n.name]
    qkv_and_proj = [n for n in attention if "qkv" in n or "proj" in n]
    # The two activation x activation products per block are never candidates.
    assert not set(attention) - set(qkv_and_proj) & set(quantize + kept)
    # qkv, proj, fc1, fc2 per block; DPT: 4 projections, the stride-2 resize, 4 layer_rn and 18
    # fusion convs (refinenet4 has no skip input, so no resConfUnit1); the head stays in float.
    assert len(quantize) == 12 * 4 + 4 + 1 + 4 + 18
    more, kept_more = select_nodes(model, (*DEFAULT_KEEP_FP, "*/blocks.0/*"))
    assert len(more) == len(quantize) - 4 and len(kept_more) == len(kept) + 4


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sa1b")
    make_shard(folder / "sa_000000.tar", count=12)
    return CalibrationSet(folder, 12, SIZE, progress=False)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, vits_model):
    return export_onnx(vits_model, tmp_path_factory.mktemp("fp32") / "vits.onnx", *SIZE).path


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_int8_stays_close_to_fp32_on_held_out_images(tmp_path, calib, fp32_onnx, target):
    result = quantize_int8(fp32_onnx, calib, tmp_path / f"vits.{target}.onnx", target=target)
    model = onnx.load(str(result.path))
    ops = [n.op_type for n in model.graph.node]
    quantizers, dequantizers = ops.count("QuantizeLinear"), ops.count("DequantizeLinear")
    if target == "tensorrt":
        # symmetric: every zero point is 0; weights keep float values with a Q/DQ pair; biases stay float
        zero_points = {i.name: i for i in model.graph.initializer if "zero_point" in i.name}
        assert all(not onnx.numpy_helper.to_array(z).any() for z in zero_points.values())
        assert quantizers == dequantizers == 2 * len(result.quantized)
        assert not [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32]
    else:  # ONNX Runtime's CPU form: INT8 weights and INT32 biases behind DequantizeLinear only
        assert 0 < quantizers < dequantizers
    batches = [prepare_fixed(image, SIZE) for image in held_out_photos()]
    references = OnnxRuntimeRunner(fp32_onnx).run_all(batches)
    # Both are held to the bound with their Q/DQ pairs run as written: a float simulation of the
    # INT8 arithmetic that every CPU computes alike. ONNX Runtime's own INT8 kernels differ per ISA
    # (VNNI sums in 32 bits, AVX2 without VNNI in saturating 16-bit pairs); the cpu model, made for
    # this CPU's arithmetic (--int8-arithmetic auto), must give by them what the graph says.
    meta = json.loads(result.path.with_name(result.path.name + ".json").read_text())
    written = OnnxRuntimeRunner(result.path, as_written=True).run_all(batches)
    for out, ref in zip(written, references, strict=True):
        if target == "tensorrt":
            assert compare(out, ref).max_rel < INT8_MAX_REL
        bound = INT8_ALIGNED_REL_7BIT if meta.get("int8_cpu", {}).get("form") == "u8s7" else INT8_ALIGNED_REL
        assert aligned_rel(out, ref) < bound
        assert aligned_rel(out, ref) < 0.25 * aligned_rel(np.ascontiguousarray(ref[..., ::-1]), ref)
    if target == "cpu":
        native = OnnxRuntimeRunner(result.path).run_all(batches)
        assert abs_rel(native, references) <= NATIVE_RATIO * abs_rel(written, references) + NATIVE_SLACK
        assert meta["int8_cpu"]["form"] == ("u8s7" if this_cpu()["class"] == "avx2" else "u8s8")
    assert meta["precision"] == "int8" and meta["calibration"]["count"] == 12
    assert meta["quantization"]["quantized_nodes"] == len(result.quantized)


def test_fp16_typed_model_runs_with_float32_io(tmp_path, fp32_onnx):
    path = to_fp16(fp32_onnx, tmp_path / "vits.fp16.onnx")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    # one type per tensor: Casts only for the input, the output, the position embedding and the
    # float32 LayerNorms
    layer_norms = sum(n.op_type == "LayerNormalization" for n in model.graph.node)
    casts = json.loads(path.with_name(path.name + ".json").read_text())["cast_nodes"]["per_frame"]
    assert casts <= 3 + 2 * layer_norms
    fp32, fp16 = DepthPredictor(fp32_onnx), DepthPredictor(path)
    image = held_out_photos()[0]
    assert compare(fp16.predict(image), fp32.predict(image)).max_rel < FP16_MAX_REL


def test_trt_int8_onnx_only_from_an_sa1b_shard(tmp_path, vits_checkpoint):
    shards = make_shard(tmp_path / "sa1b" / "sa_000000.tar", count=10).parent
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.trt",
            "--int8",
            "--onnx-only",
            "--checkpoint",
            str(vits_checkpoint),
            "--calib-dir",
            str(shards),
            "--calib-samples",
            "7",
            "--accuracy-images",
            "3",
            "--accuracy-budget",  # measured and reported here; the repairs are tested on a small model
            "1",
            "--trt-version",
            "10.3",
            "--size",
            "266x266",
            "--output",
            str(out / "vits.int8.engine"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "1 corrupt skipped (sa_000000.tar:sa_9001.jpg)" in run.stdout
    assert "trtexec --onnx=" in run.stdout and "--stronglyTyped" in run.stdout
    assert "AbsRel vs FP32" in run.stdout and "on 3 held-out images (budget 1.0" in run.stdout
    report = json.loads((out / "vits.int8.qdq-fp32.onnx.quant.json").read_text())
    assert report["held_out_images"] == 3 and report["error"] <= report["budget"]
    ready = out / "vits.int8.trt-int8.onnx"
    assert not (out / "vits.int8.engine").exists()
    # what travels to the device: the reference (photos and held-out images, the INT8 budget) and
    # the strongly typed fallback's ONNX, which the device cannot make from an FP16-typed graph
    reference = load_reference(reference_path(ready))
    assert reference.meta["precision"] == "int8" and reference.tolerance == 1.0 and len(reference.names) == 2 + 3
    assert sum(reference.in_budget) == 3  # every held-out image the budget was measured on, marked
    assert (out / "vits.int8.trt-int8.onnx.fp32-islands.onnx").is_file()
    # everything it wrote is inside the output folder (the shard folder is untouched)
    assert {p.name for p in tmp_path.iterdir()} == {"sa1b", "out"}
    assert [p.name for p in (tmp_path / "sa1b").iterdir()] == ["sa_000000.tar"]
    fp32 = DepthPredictor(out / "depth_anything_v2_vits.266x266.onnx")
    int8 = DepthPredictor(ready)
    assert int8.input_shape == (1, 3, *SIZE)
    for image in held_out_photos():
        ref = fp32.predict(image)
        assert compare(int8.predict(image), ref).max_rel < INT8_MAX_REL
