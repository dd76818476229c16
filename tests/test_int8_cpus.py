"""INT8 on the CPU that runs it: the arithmetic of the target (VNNI or AVX2's saturating 16-bit
pairs), its weight form, the sidecar's record, the warning and the refusal at load, and ONNX
Runtime's AVX2 kernels run under ``qemu-x86_64 -cpu Haswell-v4`` where this CPU has VNNI."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.metrics import OnnxRuntimeRunner, abs_rel
from export.quantize.arithmetic import INT16_MAX, CpuPlan, saturation_bound
from export.quantize.calibration import CalibrationSet
from export.quantize.qdq import quantize_int8
from export.reference import write_int8_reference
from runtime import DepthPredictor
from runtime.backends.openvino import openvino_core
from runtime.int8_cpu import classify, this_cpu
from runtime.preprocessing import prepare_fixed
from runtime.reference import ReferenceMismatch, load_reference, reference_path, save_reference
from tests.sa1b import held_out_photos, make_shard

SIZE = (56, 56)
QEMU = shutil.which("qemu-x86_64")
HOST = this_cpu()
# ONNX Runtime's kernels against the same graph as written: the acceptance bound of issue 29.
NATIVE_RATIO, NATIVE_SLACK = 1.25, 0.005
OUT_SCALE = 1024.0


def test_classify_reads_cpuid_and_trusts_cpuinfo_only_where_it_agrees():
    avx2 = frozenset({"AVX", "AVX2", "FMA3"})
    assert classify(avx2, frozenset({"avx2"}), "x86_64") == "avx2"
    assert classify(avx2 | {"AVX512F", "AVX512VNNI"}, frozenset({"avx2", "avx512_vnni"}), "x86_64") == "avx512-vnni"
    assert classify(avx2, frozenset({"avx2", "avx_vnni"}), "x86_64") == "avx-vnni"  # Alder Lake: no AVX-512
    spr = frozenset({"avx2", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8"})
    assert classify(avx2 | {"AVX512VNNI"}, spr, "x86_64") == "amx"
    # Under qemu -cpu Haswell-v4 CPUID says AVX2 while /proc/cpuinfo is the host's: CPUID wins.
    assert classify(avx2, spr, "x86_64") == "avx2"
    assert classify(None, frozenset({"avx2"}), "x86_64") == "avx2"  # an old numpy: the kernel's flags
    assert classify(frozenset({"ASIMD", "ASIMDDP"}), frozenset(), "aarch64") == "arm-dotprod"
    assert classify(frozenset({"ASIMD"}), frozenset(), "aarch64") == "arm-neon"


def _saturating_matmul_model(k: int = 64, n: int = 16):
    """DQ(u8 x) @ DQ(s8 w) -> Q -> DQ with unit input scales: ONNX Runtime fuses it into its u8s8
    kernel. The output step ``OUT_SCALE`` keeps the sums' differences visible."""
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (k, n)).astype(np.int8)
    scalar = numpy_helper.from_array
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "one", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "one", "zw"], ["wf"]),
        helper.make_node("MatMul", ["xf", "wf"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "step", "zy"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "step", "zy"], ["out"]),
    ]
    inits = [
        scalar(np.array(1.0, np.float32), "one"),
        scalar(np.array(0, np.uint8), "zx"),
        scalar(weights, "w"),
        scalar(np.array(0, np.int8), "zw"),
        scalar(np.array(OUT_SCALE, np.float32), "step"),
        scalar(np.array(128, np.uint8), "zy"),
    ]
    graph = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [4, k])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def requantized(sums: np.ndarray) -> np.ndarray:
    """The output Q -> DQ of ``_saturating_matmul_model`` on exact integer ``sums``."""
    return (np.clip(np.rint(sums / OUT_SCALE) + 128, 0, 255) - 128) * OUT_SCALE


def vpmaddubsw(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """u8 x s8 matrix product as AVX2 computes it: neighbouring products summed in saturating int16."""
    pairs = x.astype(np.int64).reshape(x.shape[0], -1, 2, 1) * w.astype(np.int64).reshape(1, -1, 2, w.shape[1])
    return np.clip(pairs.sum(2), -INT16_MAX - 1, INT16_MAX).sum(1)


def test_seven_bit_weights_cannot_saturate_full_range_ones_can(tmp_path, calib_tiny, tiny_onnx):
    full = quantize_int8(tiny_onnx, calib_tiny, tmp_path / "u8s8.onnx", target="cpu", arithmetic="vnni")
    seven = quantize_int8(tiny_onnx, calib_tiny, tmp_path / "u8s7.onnx", target="cpu", arithmetic="avx2")
    assert saturation_bound(onnx.load(str(full.path))) > INT16_MAX
    assert saturation_bound(onnx.load(str(seven.path))) <= INT16_MAX
    meta = json.loads(Path(str(seven.path) + ".json").read_text())["int8_cpu"]
    assert meta["class"] == "avx2" and meta["form"] == "u8s7"
    assert meta["measured_features"] == HOST["features"] and meta["measured_on"] == HOST["arithmetic"]
    assert ("kernels" in meta["measured_with"]) == (HOST["class"] == "avx2")


@pytest.fixture(scope="module")
def calib_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sa1b_tiny")
    make_shard(folder / "sa_000000.tar", count=12)
    return CalibrationSet(folder, 12, SIZE, progress=False)


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory, calib_tiny, tiny_onnx):
    """The tiny model's INT8 for this CPU (``auto``), with its reference."""
    folder = tmp_path_factory.mktemp("tiny_int8")
    path = quantize_int8(tiny_onnx, calib_tiny, folder / "tiny.int8-cpu.onnx", target="cpu").path
    write_int8_reference(path, tiny_onnx, SIZE, [], 0.05)
    return path


def _made_for(path: Path, target: str, tmp_path: Path, tolerance: float | None = None) -> Path:
    """A copy of ``path`` whose sidecar says it was made for ``target`` CPUs."""
    copy = tmp_path / f"{target}.onnx"
    shutil.copy(path, copy)
    meta = json.loads(Path(str(path) + ".json").read_text())
    meta["int8_cpu"] = {**meta["int8_cpu"], **CpuPlan.of(target).record(), "class": target}
    Path(str(copy) + ".json").write_text(json.dumps(meta))
    reference = load_reference(reference_path(path))
    if tolerance is not None:
        reference.meta["tolerance"] = tolerance
    save_reference(reference_path(copy), reference)
    return copy


def test_loading_a_model_made_for_another_cpu_class_warns_once(tmp_path, tiny_int8):
    other = "vnni" if HOST["class"] == "avx2" else "avx2"
    copy = _made_for(tiny_int8, other, tmp_path)
    with pytest.warns(UserWarning, match=f"made for {other} CPUs .* but this CPU computes"):
        first = DepthPredictor(copy, verify=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second load of the same file says nothing more
        DepthPredictor(copy).close()
    assert first.info()["int8_arithmetic"] == HOST["arithmetic"] and first.info()["int8_made_for"] == other
    assert first.verification.passed  # measured with this CPU's kernels, within the tiny model's budget
    first.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DepthPredictor(_made_for(tiny_int8, HOST["class"], tmp_path)).close()  # its own class: silent


def test_verify_refuses_a_budget_break_naming_the_cpu_arithmetic(tmp_path, tiny_int8):
    other = "vnni" if HOST["class"] == "avx2" else "avx2"
    copy = _made_for(tiny_int8, other, tmp_path, tolerance=1e-9)
    with pytest.warns(UserWarning), pytest.raises(ReferenceMismatch) as caught:
        DepthPredictor(copy, verify=True)
    message = str(caught.value)
    assert "\n" not in message and "breaks its INT8 budget" in message
    assert HOST["arithmetic"] in message and f"made for {other} CPUs" in message


def _emulated(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [QEMU, "-cpu", "Haswell-v4", sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


RUN_NATIVE = """
import sys, json, numpy as np, onnxruntime as ort
from runtime.int8_cpu import this_cpu
batch = np.load(sys.argv[1])
outs = {}
for path in sys.argv[3:]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs[path] = np.concatenate([s.run(None, {s.get_inputs()[0].name: batch[i:i + 1]})[0] for i in range(len(batch))])
np.savez(sys.argv[2], **{str(i): outs[p] for i, p in enumerate(sys.argv[3:])})
print(json.dumps(this_cpu()))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the AVX2 kernels are x86-64's")
@pytest.mark.skipif(HOST["class"] == "avx2", reason="this CPU has no VNNI: the other tests run the AVX2 kernels")
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed (Debian: apt-get install qemu-user; .ci/run does)")
def test_avx2_kernels_under_emulation_saturate_full_range_weights_not_seven_bit(tmp_path, calib_tiny, tiny_onnx):
    # 1. The emulated CPU really runs the saturating kernel: a u8s8 product equals VPMADDUBSW's.
    model, weights = _saturating_matmul_model()
    onnx.save(model, str(tmp_path / "mm.onnx"))
    x = np.random.default_rng(1).integers(0, 256, (4, 64)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    script = RUN_NATIVE.replace("batch[i:i + 1]", "batch").replace("range(len(batch))", "range(1)")
    cpu = json.loads(_emulated(script, str(tmp_path / "x.npy"), str(tmp_path / "mm.npz"), str(tmp_path / "mm.onnx")))
    assert cpu["kind"] == "avx2" and cpu["class"] == "avx2"
    emulated = np.load(tmp_path / "mm.npz")["0"]
    exact = x.astype(np.int64) @ weights.astype(np.int64)
    host = OnnxRuntimeRunner(model.SerializeToString())(x)
    assert np.array_equal(host, requantized(exact))  # this CPU: 32-bit sums
    assert np.array_equal(emulated, requantized(vpmaddubsw(x, weights)))
    assert not np.array_equal(emulated, host)

    # 2. The tiny model's INT8 for AVX2 CPUs: their kernels compute it as written; full range does not.
    forms = {
        a: quantize_int8(tiny_onnx, calib_tiny, tmp_path / f"{a}.onnx", target="cpu", arithmetic=a).path
        for a in ("avx2", "vnni")
    }
    batch = np.concatenate([prepare_fixed(image, SIZE) for image in held_out_photos()])
    np.save(tmp_path / "held.npy", batch)
    _emulated(RUN_NATIVE, str(tmp_path / "held.npy"), str(tmp_path / "out.npz"), *map(str, forms.values()))
    emulated = np.load(tmp_path / "out.npz")
    references = OnnxRuntimeRunner(tiny_onnx).run_all([b[None] for b in batch])
    for index, path in enumerate(forms.values()):
        written = abs_rel(OnnxRuntimeRunner(path, as_written=True).run_all([b[None] for b in batch]), references)
        outputs = emulated[str(index)]
        avx2 = abs_rel([outputs[i : i + 1] for i in range(len(outputs))], references)
        if index == 0:  # 7-bit weights: AVX2 computes what the graph says
            assert avx2 <= NATIVE_RATIO * written + NATIVE_SLACK
            assert abs(avx2 - written) <= 0.1 * written
        else:  # full-range weights: the outputs AVX2 gives are not what the graph says
            assert not np.allclose(outputs[:1], OnnxRuntimeRunner(path)(batch[:1]), atol=1e-3)


RUN_OPENVINO = """
import sys, numpy as np, openvino as ov
batch = np.load(sys.argv[1])
model = ov.Core().compile_model(sys.argv[3], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
np.save(sys.argv[2], np.concatenate([model(batch[i:i + 1])[0] for i in range(len(batch))]))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the AVX2 kernels are x86-64's")
@pytest.mark.skipif(HOST["class"] == "avx2", reason="this CPU has no VNNI: the other tests run the AVX2 kernels")
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed (Debian: apt-get install qemu-user; .ci/run does)")
def test_openvino_int8_gives_the_same_numbers_on_avx2_and_vnni(tmp_path, calib_tiny, tiny_onnx):
    # export.openvino's INT8 stores 7-bit weights (NNCF's overflow fix on every layer): oneDNN's AVX2
    # kernels, which saturate full-range weights like ONNX Runtime's, then compute what VNNI does.
    from export.openvino import export_openvino

    ir = tmp_path / "tiny.int8.xml"
    export_openvino(tiny_onnx, ir, "int8", calib_tiny)
    batch = np.concatenate([prepare_fixed(image, SIZE) for image in held_out_photos()])
    np.save(tmp_path / "held.npy", batch)
    _emulated(RUN_OPENVINO, str(tmp_path / "held.npy"), str(tmp_path / "avx2.npy"), str(ir))

    model = openvino_core().compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    here = np.concatenate([model(batch[i : i + 1])[0] for i in range(len(batch))])
    emulated = np.load(tmp_path / "avx2.npy")
    assert np.abs(emulated - here).max() <= 1e-3 * np.abs(here).max()
