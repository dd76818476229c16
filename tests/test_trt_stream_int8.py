"""INT8 Q/DQ Video Depth Anything streams for TensorRT (``export.quantize.stream_qdq``), on the tiny
test weights at 56x84 with real ONNX Runtime: calibrated on the calibration images run as one stream
(the FP32 cache carried), the motion modules in float, held to the budget frame by frame on held-out
images run as a stream; the Q/DQ stream passes its own stream reference (ONNX Runtime, runtime.verify)
and a broken one (activation scales perturbed, the cache not carried) fails it; over the budget it
is refused in one line with nothing written; ``export.trt --int8`` and ``export.quantize`` make it
from a stream ONNX or a checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.artefact import Artefact
from export.quantize.budget import export_int8
from export.quantize.options import Int8Options
from export.quantize.stream_qdq import MOTION_SCOPE, motion_nodes
from runtime.accuracy import INT8_METRICS
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.reference import load_reference, reference_path
from runtime.stream_check import check_backend, is_stream_reference
from tests.test_trt_da3_int8 import scaled_activations

from .video_fixtures import STREAM_SIZE

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = STREAM_SIZE
SAMPLES, HELD_OUT = 6, 3
BUDGET = 0.15  # untrained weights, 6 calibration images: measured 0.067 (docs/video-depth-anything.md)


@pytest.fixture(scope="module")
def made(vda_stream):
    """The stream ONNX (opset 17), calibration images and the Q/DQ stream export_int8 makes of it."""
    from tests.sa1b import make_shard

    checkpoint, path = vda_stream["checkpoint"], vda_stream["path"]
    folder = path.parent
    calib = folder / "sa1b"
    make_shard(calib / "sa_0.tar", SAMPLES + HELD_OUT, faults=False)
    qdq = export_int8(Artefact.read(path), folder / "vda.int8.onnx", options(calib), (HEIGHT, WIDTH), "tensorrt")
    return {"checkpoint": checkpoint, "path": path, "calib": calib, "qdq": qdq}


def options(calib: Path, budget: float | None = BUDGET) -> Int8Options:
    return Int8Options(calib_dir=calib, samples=SAMPLES, held_out=HELD_OUT, budget=budget)


def run_module(module: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, capture_output=True, text=True, env=env)


def calibration_args(calib: Path, budget: float = BUDGET) -> list:
    counts = ["--calib-samples", str(SAMPLES), "--accuracy-images", str(HELD_OUT)]
    return ["--calib-dir", str(calib), *counts, "--accuracy-budget", str(budget)]


def test_the_qdq_stream_keeps_the_motion_modules_in_float_and_passes_its_stream_reference(made, tmp_path):
    qdq = made["qdq"]
    model = onnx.load(str(qdq.path))
    producer = {o: n for n in model.graph.node for o in n.output}
    motion = motion_nodes(model)  # what the motion modules compute (a motion module's output, read
    # by a head convolution, has its Q/DQ pair named after it: that pair is the convolution's input)
    read_dq = [
        n.name for n in model.graph.node for i in n.input if i in producer and producer[i].op_type == "DequantizeLinear"
    ]
    assert len(motion) > 500 and not motion & set(read_dq)  # no motion module reads a dequantized tensor
    head = [n for n in read_dq if not n.startswith("/pretrained/")]  # the DPT head's convolutions
    assert any(n.startswith("/pretrained/") for n in read_dq) and head
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[n] for n in read_dq} <= {"Conv", "MatMul", "Gemm"}  # Q/DQ only on quantized layers' inputs
    assert qdq["quantization"]["float"] == list(MOTION_SCOPE) and qdq["calibration"]["stream"]
    # its reference: the held-out images as one stream and the FP32 stream's depth, at the budget
    reference = load_reference(reference_path(qdq.path))
    assert is_stream_reference(reference) and reference.names == [f"held_out_{i}" for i in range(HELD_OUT)]
    assert reference.metric in INT8_METRICS and reference.tolerance == BUDGET and all(reference.in_budget)
    assert reference.meta["artefact_sha256"] == qdq.sha256
    assert 0 < qdq["accuracy"]["error"] <= BUDGET
    with OnnxRuntimeBackend(qdq.path) as backend:
        result = check_backend(backend, reference)
    assert result.passed and [c.name for c in result.checks] == reference.names, result.summary()
    done = run_module("runtime.verify", str(qdq.path), cwd=tmp_path)
    assert done.returncode == 0 and "PASSED" in done.stdout and "held_out_2" in done.stdout, done.stdout + done.stderr


def test_a_broken_qdq_stream_fails_its_stream_reference(made, tmp_path):
    """Activation scales at a fifth of the calibrated ones (runtime.verify), or the cache not
    carried from frame to frame (zeros every frame): over the budget."""
    qdq = made["qdq"].path
    broken = scaled_activations(qdq, tmp_path)
    reference = str(reference_path(qdq))
    done = run_module("runtime.verify", str(broken), "--reference", reference, cwd=tmp_path)
    assert done.returncode == 1 and "over its reference's tolerance" in done.stderr, done.stdout + done.stderr
    with OnnxRuntimeBackend(qdq) as backend:
        step = backend.step
        backend.step = lambda b, s, c: step(b, s, [np.zeros_like(a) for a in c])
        result = check_backend(backend, load_reference(reference))
    assert not result.passed, result.summary()


def test_over_the_budget_the_stream_is_refused_in_one_line_with_nothing_written(made, tmp_path):
    output = tmp_path / "out" / "vda.int8.onnx"
    args = ["--onnx", str(made["path"]), "--output", str(output), *calibration_args(made["calib"], 1e-6)]
    done = run_module("export.quantize", *args, cwd=tmp_path)
    last = done.stderr.strip().splitlines()[-1]  # the refusal, one line (the progress bar above it)
    assert done.returncode == 1 and "INT8 stream misses the accuracy budget" in last, done.stderr
    assert "nothing was written" in last and "Raise --accuracy-budget" in last, done.stderr
    assert not [p for p in output.parent.iterdir() if p.name != ".calib_cache"]
    done = run_module("export.quantize", *args[:4], *calibration_args(made["calib"]), "--target", "cpu", cwd=tmp_path)
    assert done.returncode == 2 and "python -m export.openvino --int8" in done.stderr, done.stderr
    assert not output.exists()


def test_export_trt_int8_onnx_only_writes_the_qdq_stream_with_its_reference(made, tmp_path):
    """From the stream ONNX for 10.3 (strongly typed: the Q/DQ graph, then its FP16-typed copy, both
    with the stream reference at the budget)."""
    source = tmp_path / "vda.onnx"
    shutil.copy(made["path"], source)
    out = tmp_path / "out" / "vda.int8.engine"
    args = ["--onnx", str(source), "--int8", *calibration_args(made["calib"]), "--trt-version", "10.3"]
    done = run_module("export.trt", *args, "--output", str(out), "--onnx-only", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in out.parent.glob("*.onnx"))  # the Q/DQ graph, its typed copies
    assert not list(out.parent.glob("*.engine")) and "vda.int8.trt-int8.onnx" in written, written
    assert len(written) >= 2, written
    for name in written:
        reference = load_reference(reference_path(out.parent / name))
        assert is_stream_reference(reference) and reference.meta["precision"] == "int8", name
        assert reference.tolerance == BUDGET and all(reference.in_budget), name


def test_export_trt_int8_makes_the_qdq_stream_of_a_checkpoint(made, tmp_path):
    out = tmp_path / "out" / "vda.int8.engine"
    args = ["--checkpoint", str(made["checkpoint"]), "--size", f"{HEIGHT}x{WIDTH}", "--int8", "--onnx-only"]
    args += ["--trt-version", "8.6", "--output", str(out)]
    done = run_module("export.trt", *args, *calibration_args(made["calib"]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ready = Artefact.read(out.with_name("vda.int8.trt-int8.onnx"))
    assert ready["quantization"]["float"] == list(MOTION_SCOPE), ready.facts
    assert is_stream_reference(ready.reference_data) and ready.reference_data.meta["artefact_sha256"] == ready.sha256
