"""The engine is checked where it is built: over its reference's tolerance, export.trt builds it once
more with LayerNorm, Softmax and the attention MatMuls in FP32, and still over, writes nothing.

No machine that runs these tests has TensorRT: the decisions are plain functions
(``export.trt.decisions``) and are driven here on real damaged results (a sign-flipped weight) run by
ONNX Runtime; the gpu test drives the same path on a real TensorRT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.graph import FLOAT, Graph, inferred
from export.quantize.fp16 import FP32_OPS, to_fp16
from export.reference import make_reference
from export.trt.decisions import (
    EngineOverTolerance,
    checked_build,
    engine_attempts,
    fp32_island_nodes,
    plan_build,
    refusal_message,
    trtexec_command,
)
from export.trt.rules import TrtVersion, check_onnx
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.reference import reference_path, verify_backend
from tests.conftest import REPO
from tests.test_reference import flip_largest_onnx_weight
from tests.test_trt_logic import gpu_ready

BLOCKS = 4  # the tiny spec's depth


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_spec) -> Path:
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    return export_onnx(DepthAnythingV2(tiny_spec).eval(), tmp_path_factory.mktemp("fallback") / "m.onnx", 56, 84).path


def test_the_islands_are_layernorm_softmax_and_the_attention_matmuls(tiny):
    model = onnx.load(str(tiny))
    ops = {n.name: n.op_type for n in model.graph.node}
    islands = fp32_island_nodes(model)
    kinds = [ops[n] for n in islands]
    assert kinds.count("LayerNormalization") == 2 * BLOCKS + 4 and kinds.count("Softmax") == BLOCKS
    matmuls = [n for n in islands if ops[n] == "MatMul"]
    assert len(matmuls) == 2 * BLOCKS and all("/attn/MatMul" in n for n in matmuls)  # Q x K^T and x V
    assert kinds.count("Mul") == 2 * BLOCKS  # the scale on Q and on K
    # the weight MatMuls (qkv, proj, MLP) stay in FP16: they are the speed
    assert not [n for n in islands if any(w in n for w in ("qkv", "proj", "fc1", "fc2"))]


def test_attempts_and_how_each_release_takes_them(tiny):
    islands = fp32_island_nodes(onnx.load(str(tiny)))
    weak = plan_build(TrtVersion.parse("8.6"), "fp16")
    first, fallback = engine_attempts(weak, islands, [])
    assert first.fp32_nodes == () and set(fallback.fp32_nodes) == set(islands)
    pinned = weak.pin_fp32(list(fallback.fp32_nodes))  # weakly typed: layer precisions the builder obeys
    assert pinned.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    command = trtexec_command(Path("m.onnx"), Path("m.engine"), pinned, "image", None, 1024, None)
    assert "--precisionConstraints=obey" in command and "/pretrained/blocks.0/attn/Softmax:fp32" in command
    # strongly typed: the same nodes, as FP32 types in the ONNX (setPrecision is refused there)
    assert len(engine_attempts(plan_build(TrtVersion.parse("10.3"), "fp16"), islands, [])) == 2
    assert len(engine_attempts(plan_build(TrtVersion.parse("11"), "int8"), islands, [])) == 2
    # nothing to take back: an FP32 build, or --fp32-layers that already cover the islands
    assert len(engine_attempts(plan_build(TrtVersion.parse("10.3"), "fp32"), islands, [])) == 1
    assert len(engine_attempts(weak, islands, islands)) == 1


def test_the_strongly_typed_fallback_carries_fp32_types_and_passes_the_rules(tmp_path, tiny):
    islands = fp32_island_nodes(onnx.load(str(tiny)))
    typed = to_fp16(tiny, tmp_path / "m.islands.onnx", FP32_OPS, tuple(islands))
    model = onnx.load(str(typed))
    types = Graph(inferred(model)).types
    for node in (n for n in model.graph.node if n.name in islands and n.op_type in ("Softmax", "MatMul")):
        assert {types[t] for t in [*node.input, *node.output]} == {FLOAT}, node.name
    assert json.loads(Path(f"{typed}.json").read_text())["fp32_nodes"] == len(islands)
    assert check_onnx(typed, TrtVersion.parse("10.3")) == []


def attempt_results(tmp_path: Path, tiny: Path, first_damaged: bool, second_damaged: bool):
    """A build and a measure for ``checked_build`` over real artefacts: each attempt 'builds' an
    ONNX (the first as exported, the fallback FP16-typed with its islands in FP32), damaged where
    asked, and measures it on the reference with ONNX Runtime."""
    # the engine's reference: the ONNX's inputs and FP32 outputs, held to FP16's bound
    reference = make_reference(tmp_path / "m.fp16.engine", "fp16", [(56, 84)], source=tiny)
    assert reference is not None
    built: list[Path] = []

    def build(attempt) -> Path:
        candidate = tmp_path / f"candidate{len(built)}.onnx"
        if attempt.fp32_nodes:
            to_fp16(tiny, candidate, FP32_OPS, attempt.fp32_nodes)
        else:
            candidate.write_bytes(tiny.read_bytes())
        if (first_damaged, second_damaged)[len(built)]:
            flip_largest_onnx_weight(candidate)
        built.append(candidate)
        return candidate

    def measure(candidate: Path):
        with OnnxRuntimeBackend(candidate, device="cpu") as backend:
            return verify_backend(backend, reference)

    return build, measure, built


def test_the_fallback_is_taken_on_a_result_over_tolerance(tmp_path, tiny):
    plan = plan_build(TrtVersion.parse("10.3"), "fp16")
    attempts = engine_attempts(plan, fp32_island_nodes(onnx.load(str(tiny))), [])
    build, measure, built = attempt_results(tmp_path, tiny, first_damaged=True, second_damaged=False)
    kept, attempt, results = checked_build(attempts, build, measure, lambda r: "refused")
    assert attempt is attempts[1] and kept == built[1]
    assert [r.passed for r in results] == [False, True]
    assert results[0].value > results[0].tolerance >= results[1].value
    assert not built[0].exists() and kept.exists()  # the engine over tolerance is gone


def test_still_over_tolerance_nothing_is_kept_and_both_errors_are_said(tmp_path, tiny):
    version = TrtVersion.parse("10.3")
    plan = plan_build(version, "fp16")
    attempts = engine_attempts(plan, fp32_island_nodes(onnx.load(str(tiny))), [])
    build, measure, built = attempt_results(tmp_path, tiny, first_damaged=True, second_damaged=True)
    engine = tmp_path / "m.fp16.engine"

    def refuse(results: list) -> str:
        return refusal_message(attempts, results, version, engine, plan.strongly_typed)

    with pytest.raises(EngineOverTolerance) as refused:
        checked_build(attempts, build, measure, refuse)
    message = str(refused.value)
    assert "TensorRT 10.3 engine is over its reference's tolerance" in message
    assert message.count("OVER the tolerance 0.1") == 2 and "rebuilt with LayerNorm, Softmax" in message
    assert f"no engine was written to {engine}" in message
    assert "a newer TensorRT" in message and "--fp32-layers" in message
    assert len(refused.value.results) == 2 and not any(r.passed for r in refused.value.results)
    assert not any(p.exists() for p in built) and not engine.exists()
    # the FP16 bound held the sound fallback above: FP16 typing with FP32 islands stays well within it
    assert refused.value.results[0].tolerance == 0.1


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True)


def test_onnx_only_writes_the_fallback_onnx_and_honours_fp32_layers(tmp_path, tiny):
    out = tmp_path / "m.fp16.engine"
    common = ("export.trt", "--onnx", str(tiny), "--onnx-only", "--output", str(out))
    done = run(*common, "--trt-version", "10.3", "--fp32-layers", "*/blocks.0/mlp/*")
    assert done.returncode == 0, done.stderr
    ready = tmp_path / "m.fp16.trt-fp16.onnx"
    fallback = tmp_path / "m.fp16.trt-fp16.onnx.fp32-islands.onnx"  # travels with a copy of "<ready>*"
    asked = [n.name for n in onnx.load(str(tiny)).graph.node if "/blocks.0/mlp/" in n.name]
    assert json.loads(Path(f"{ready}.json").read_text())["fp32_nodes"] == len(asked) > 0
    assert json.loads(Path(f"{fallback}.json").read_text())["fp32_nodes"] > len(asked)
    assert check_onnx(fallback, TrtVersion.parse("10.3")) == []
    # weakly typed: the asked layers are pinned in the build and in the printed trtexec command
    done = run(*common, "--trt-version", "8.6", "--fp32-layers", "*/blocks.0/mlp/fc1/MatMul")
    assert done.returncode == 0, done.stderr
    assert "--precisionConstraints=obey" in done.stdout and "/pretrained/blocks.0/mlp/fc1/MatMul:fp32" in done.stdout
    done = run(*common, "--trt-version", "8.6", "--fp32-layers", "*nothing-matches*")
    assert done.returncode == 2 and "--fp32-layers '*nothing-matches*' matches no node" in done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_ready(), reason="needs TensorRT and a CUDA GPU")
def test_the_engine_is_checked_on_real_tensorrt_and_a_wrong_one_is_refused(tmp_path, tiny):
    sound = tmp_path / "sound" / "m.fp16.engine"
    sound.parent.mkdir()
    for suffix in ("", ".json", ".reference.npz"):
        (sound.parent / f"m.onnx{suffix}").write_bytes(Path(f"{tiny}{suffix}").read_bytes())
    done = run("export.trt", "--onnx", str(sound.parent / "m.onnx"), "--output", str(sound))
    assert done.returncode == 0, done.stderr
    check = json.loads(Path(f"{sound}.json").read_text())["verification"]
    assert check["checked"] and check["error"] <= check["tolerance"]
    assert reference_path(sound).is_file() and run("runtime.verify", str(sound)).returncode == 0
    # A reference the engine cannot meet (its outputs negated) takes the fallback, then refuses.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for suffix in ("", ".json"):
        (wrong / f"m.onnx{suffix}").write_bytes(Path(f"{tiny}{suffix}").read_bytes())
    with np.load(reference_path(tiny), allow_pickle=False) as data:
        arrays = {k: (-data[k] if k.startswith("output_") else data[k]) for k in data.files}
    np.savez(reference_path(wrong / "m.onnx"), **arrays)
    done = run("export.trt", "--onnx", str(wrong / "m.onnx"), "--output", str(wrong / "m.fp16.engine"))
    assert done.returncode == 1 and "rebuilt with LayerNorm, Softmax" in done.stderr, done.stderr
    assert not (wrong / "m.fp16.engine").exists()
