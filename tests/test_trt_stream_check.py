"""Video Depth Anything streams checked frame by frame, and export.trt building them: the stream
reference (plain .npz, frames with the cache carried), the check on the real ONNX Runtime and
OpenVINO backends (and its failing on a broken cache carry, a wrong slot_pos, a perturbed motion
module), ``python -m export.trt`` accepting a stream graph (the TensorRT-ready ONNX and its
reference with ``--onnx-only``; a profile refused in one line; INT8 in ``test_trt_stream_int8``), and
the TensorRT backend's stream decisions as plain logic. The engine build and run itself is the ``gpu``
test at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.trt.outputs import extra_outputs_fact
from export.trt.stream import (
    FRAMES,
    MOTION_MODULES,
    SLOT_POS_DTYPES,
    make_stream_reference,
    slot_pos_dtype,
    stream_fact,
)
from export.video import run_stream, torch_step
from runtime.accuracy import FP16_TOLERANCE, FP32_TOLERANCE, MAX_REL_STD
from runtime.backends import trt_stream
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.backends.openvino import OpenVINOBackend
from runtime.inherited_reference import inherited_reference
from runtime.reference import load_reference, reference_path, save_reference
from runtime.stream_check import check_backend, is_stream_reference
from runtime.video_state import STREAM_INPUTS, STREAM_OUTPUTS
from tests.test_trt_logic import gpu_ready

from .video_fixtures import STREAM_SIZE, perturbed_motion_module

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = STREAM_SIZE
BACKENDS = (OnnxRuntimeBackend, OpenVINOBackend)


@pytest.fixture(scope="module")
def stream(vda_stream):
    """The stream ONNX (opset 17) and its reference, written as export.trt writes it."""
    path = vda_stream["path"]
    save_reference(reference_path(path), make_stream_reference(path, path, "fp32"))
    return {**vda_stream, "reference": load_reference(reference_path(path))}


def test_the_stream_reference_holds_frames_and_their_depth_with_the_cache_carried(stream):
    reference, model = stream["reference"], stream["model"]
    assert is_stream_reference(reference) and reference.meta["stream"]["frames"] == FRAMES == len(reference.images)
    assert reference.names == [f"frame_{i}" for i in range(FRAMES)]
    assert (reference.metric, reference.tolerance) == (MAX_REL_STD, FP32_TOLERANCE)
    assert all(i.dtype == np.uint8 and i.shape == (HEIGHT, WIDTH, 3) for i in reference.images)
    assert not np.array_equal(reference.images[0], reference.images[1])  # the photograph pans
    with np.load(reference_path(stream["path"]), allow_pickle=False) as data:  # plain arrays, no pickle
        assert sorted(data.files) == sorted(["meta", *(f"{k}_{i}" for k in ("image", "output") for i in range(FRAMES))])
    # the depths are the FP32 model's over the same frames with the cache carried (PyTorch here)
    expected = run_stream(torch_step(model), model.state_shapes(HEIGHT, WIDTH), reference.inputs())
    for got, want in zip(reference.outputs, expected, strict=True):
        assert np.abs(got - want.reshape(got.shape)).max() / want.std() < FP32_TOLERANCE


@pytest.mark.parametrize("backend_class", BACKENDS, ids=["onnxruntime", "openvino"])
def test_every_backend_passes_its_stream_frame_by_frame(stream, backend_class):
    with backend_class(stream["path"]) as backend:
        result = check_backend(backend, stream["reference"])
    assert result.passed, result.summary()
    assert [c.name for c in result.checks] == [f"frame_{i}" for i in range(FRAMES)]
    assert result.value == max(c.max_rel_std for c in result.checks)  # the worst frame is judged


def test_a_stream_model_is_not_checked_on_single_images(stream):
    from runtime.reference import Reference, ReferenceFileError

    ref = stream["reference"]
    single = Reference(ref.images, ref.outputs, {k: v for k, v in ref.meta.items() if k != "stream"})
    with OnnxRuntimeBackend(stream["path"]) as backend, pytest.raises(ReferenceFileError, match="holds single images"):
        check_backend(backend, single)


@pytest.mark.parametrize("backend_class", BACKENDS, ids=["onnxruntime", "openvino"])
def test_a_broken_cache_carry_or_slot_pos_fails_from_the_second_frame(stream, backend_class):
    """What a single-image check cannot see: every frame run as a first frame (slot_pos all -1, the
    positions a single image gets), or the cache not carried (zeros), passes frame 0 and fails after."""
    with backend_class(stream["path"]) as backend:
        step = backend.step
        faults = {
            "cache not carried": lambda b, s, c: step(b, s, [np.zeros_like(a) for a in c]),
            "every frame a first frame": lambda b, s, c: step(b, np.full_like(s, -1), c),
        }
        for fault, broken in faults.items():
            backend.step = broken
            result = check_backend(backend, stream["reference"])
            assert not result.passed, fault
            values = [c.max_rel_std for c in result.checks]
            assert values[0] < FP32_TOLERANCE and min(values[1:]) > 100 * FP32_TOLERANCE, (fault, values)
        # the hidden states written into the cache one frame late: an FP16 engine's check sees it too
        previous = {}

        def stale(b, s, c):
            out = step(b, s, c)
            late, previous["out"] = previous.get("out", out), out
            return [out[0], *late[1:]]

        backend.step = stale
        values = [c.max_rel_std for c in check_backend(backend, stream["reference"]).checks]
        assert values[0] < FP32_TOLERANCE and max(values) > FP16_TOLERANCE, values


def run_module(module: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, capture_output=True, text=True, env=env)


def test_runtime_verify_checks_a_stream_and_fails_a_perturbed_motion_module(stream, tmp_path):
    from runtime import DepthPredictor

    with DepthPredictor(stream["path"], verify=True) as predictor:  # the same check when a model loads
        assert predictor.verification.passed and len(predictor.verification.checks) == FRAMES
    done = run_module("runtime.verify", str(stream["path"]), cwd=tmp_path)
    assert done.returncode == 0 and "PASSED" in done.stdout and "frame_3" in done.stdout, done.stdout + done.stderr
    perturbed = perturbed_motion_module(stream["path"], tmp_path / "perturbed.onnx")
    reference = str(reference_path(stream["path"]))
    done = run_module("runtime.verify", str(perturbed), "--reference", reference, "--backend", "openvino", cwd=tmp_path)
    assert done.returncode == 1 and "over its reference's tolerance" in done.stderr, done.stdout + done.stderr


def run_trt(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module("export.trt", *argv, cwd=cwd)


def test_export_trt_onnx_only_writes_the_ready_stream_and_its_reference(stream, tmp_path):
    import onnx

    from export.graph import Graph

    source = tmp_path / "vda.onnx"
    shutil.copy(stream["path"], source)
    shutil.copy(stream["path"].with_name("vda.onnx.json"), tmp_path / "vda.onnx.json")
    out = tmp_path / "out" / "vda.fp16.engine"
    done = run_trt("--onnx", str(source), "--trt-version", "10.3", "--output", str(out), "--onnx-only", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ready = out.with_name("vda.fp16.trt-fp16.onnx")
    fp32, fp16 = load_reference(reference_path(source)), load_reference(reference_path(ready))
    assert is_stream_reference(fp32) and is_stream_reference(fp16)  # beside the source and the ready ONNX
    assert (fp32.meta["precision"], fp32.tolerance) == ("fp32", FP32_TOLERANCE)
    assert (fp16.meta["precision"], fp16.tolerance) == ("fp16", FP16_TOLERANCE)
    assert all(np.array_equal(a, b) for a, b in zip(fp32.outputs, fp16.outputs, strict=True))
    # the motion modules compute in FP32 in the FP16-typed graph a 10.x build reads
    typed = onnx.load(str(ready))
    types = Graph(onnx.shape_inference.infer_shapes(typed))
    fed = {
        types.type_name(n.input[0])
        for n in typed.graph.node
        if MOTION_MODULES in n.name and n.op_type in ("MatMul", "Softmax", "LayerNormalization")
    }
    assert fed == {"FP32"}, fed
    # the TensorRT-ready ONNX passes its own reference frame by frame, as its engine is checked on the device
    done = run_module("runtime.verify", str(ready), cwd=tmp_path)
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout + done.stderr


def test_a_stream_reference_of_other_weights_beside_the_onnx_is_made_again(stream, tmp_path):
    """The engine is checked against a reference of the file it is built from: one written for
    another file (the ONNX re-exported with other weights), or one that names no file, is made again."""
    from export.artefact import Artefact
    from export.trt.stream import stream_reference
    from runtime.metadata import artefact_digest
    from runtime.reference import Reference

    source = tmp_path / "vda.onnx"
    shutil.copy(stream["path"], source)
    shutil.copy(stream["path"].with_name("vda.onnx.json"), tmp_path / "vda.onnx.json")
    expected = stream["reference"].outputs
    for recorded in ("0" * 64, None):
        stale = make_stream_reference(source, source, "fp32")
        stale = Reference(stale.images, [2.0 * o for o in stale.outputs], {**stale.meta, "artefact_sha256": recorded})
        save_reference(reference_path(source), stale)
        record = Artefact.of(source)
        got = stream_reference(record, record, "fp32")
        assert got.meta["artefact_sha256"] == artefact_digest(source), recorded
        assert all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got.outputs, expected, strict=True))
        assert load_reference(reference_path(source)).meta["artefact_sha256"] == artefact_digest(source)


def test_export_trt_refuses_a_stream_profile_in_one_line(stream, tmp_path):
    path, out = str(stream["path"]), tmp_path / "out" / "vda.engine"
    cases = {
        ("--batch", "2"): "takes no --min/--opt/--max/--batch profile",
        ("--min", "56x84", "--opt", "56x84", "--max", "56x84"): "takes no --min/--opt/--max/--batch profile",
    }
    for extra, message in cases.items():
        args = ("--onnx", path, "--trt-version", "10.3", "--output", str(out), "--onnx-only", *extra)
        done = run_trt(*args, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, (extra, done.stderr)
        assert message in done.stderr and "Video Depth Anything stream graph" in done.stderr, done.stderr
        assert not out.parent.exists()


def test_export_trt_exports_a_checkpoint_stream_for_tensorrt_85(stream, tmp_path):
    """A checkpoint for 8.5: the stream exported at opset 16, the ready ONNX (itself) and its reference."""
    out = tmp_path / "out" / "vda.fp16.engine"
    args = ("--checkpoint", str(stream["checkpoint"]), "--size", f"{HEIGHT}x{WIDTH}", "--onnx-only")
    done = run_trt(*args, "--trt-version", "8.5", "--output", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (onnx_path,) = out.parent.glob("*.onnx")
    assert onnx_path.name == f"video_depth_anything_vits.{HEIGHT}x{WIDTH}.opset16.onnx"
    reference = load_reference(reference_path(onnx_path))
    assert is_stream_reference(reference) and reference.meta["precision"] == "fp32"
    assert not list(out.parent.glob("*.engine*"))


def test_the_engine_reference_keeps_the_stream_and_takes_the_precision_rule(stream):
    made = inherited_reference(stream["reference"], "vda.fp16.engine", "fp16", [(HEIGHT, WIDTH)])
    assert is_stream_reference(made) and made.names == stream["reference"].names
    assert (made.metric, made.tolerance) == (MAX_REL_STD, FP16_TOLERANCE)
    # the hidden states are no per-pixel output: the engine's sidecar names none
    assert extra_outputs_fact(["depth", *STREAM_OUTPUTS]) == {}
    assert extra_outputs_fact(["depth", "sky"]) == {"extra_outputs": ["sky"]}


def engine_tensors(slot_dtype: str, **changes) -> list:
    shapes = {"image": (1, 3, HEIGHT, WIDTH), "slot_pos": (31,), "depth": (1, HEIGHT, WIDTH)}
    shapes.update({f"cache{i}": (24, 31, 64) for i in range(8)})
    shapes.update({f"hidden{i}": (24, 1, 64) for i in range(8)})
    tensors = [
        (name, name in ("image", *STREAM_INPUTS), slot_dtype if name == "slot_pos" else "float32", shape)
        for name, shape in shapes.items()
    ]
    return [changes.get(t[0], t) for t in tensors]


@pytest.mark.parametrize("release", ["8.5", "8.6", "10.3", "10.15", "11.0"])
def test_the_tensorrt_backend_feeds_slot_pos_in_the_dtype_of_the_release_that_built_the_engine(release):
    from export.trt.rules import TrtVersion

    want = slot_pos_dtype(TrtVersion.target(release).major)
    assert want == ("int32" if release.startswith("8.") else "int64") and want in trt_stream.SLOT_POS_DTYPES
    io = trt_stream.stream_io(Path("vda.engine"), engine_tensors(want))
    assert io.slot_pos_dtype == want and io.cache_shapes == [(24, 31, 64)] * 8
    from runtime.video_state import slot_positions

    caches = [np.zeros((24, 31, 64), np.float32)] * 8
    feeds = io.feeds(np.zeros((1, 3, HEIGHT, WIDTH), np.float32), slot_positions(40), caches)
    assert feeds["slot_pos"].dtype == np.dtype(want) and feeds["slot_pos"].flags.c_contiguous
    assert np.array_equal(feeds["slot_pos"], slot_positions(40))  # the positions are exact in either
    assert list(feeds) == ["image", *STREAM_INPUTS]


def test_the_tensorrt_backend_refuses_an_engine_that_is_no_stream_engine_in_one_line():
    from commands.errors import InputError, ModelFileError

    engine = Path("vda.engine")
    assert trt_stream.stream_io(engine, [("input", True, "float32", (1, 3, 518, 518))]) is None  # a depth engine
    broken = {
        "missing ['hidden7']": engine_tensors("int64")[:-1],
        "slot_pos is float32": engine_tensors("int64", slot_pos=("slot_pos", True, "float32", (31,))),
        "'cache3' is float16": engine_tensors("int64", cache3=("cache3", True, "float16", (24, 31, 64))),
        "dynamic shape": engine_tensors("int32", cache0=("cache0", True, "float32", (-1, 31, 64))),
    }
    for message, tensors in broken.items():
        with pytest.raises(ModelFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
            trt_stream.stream_io(engine, tensors)
    io = trt_stream.stream_io(engine, engine_tensors("int32"))
    batch = np.zeros((1, 3, HEIGHT, WIDTH), np.float32)
    with pytest.raises(InputError, match="'cache0' is fixed at"):
        io.feeds(batch, np.full(31, -1), [np.zeros((30, 31, 64), np.float32)] * 8)
    with pytest.raises(InputError, match="takes 8 caches"):
        io.feeds(batch, np.full(31, -1), [])


def test_the_engine_record_says_stream_and_its_slot_pos_dtype(stream):
    import onnx

    graph = onnx.load(str(stream["path"]), load_external_data=False)
    assert stream_fact(graph, 8) == {"stream": "video-depth-anything-31", "slot_pos_dtype": "int32"}
    assert stream_fact(graph, 10)["slot_pos_dtype"] == "int64" == SLOT_POS_DTYPES[11]
    graph.graph.input[1].name = "positions"
    assert stream_fact(graph, 10) == {}


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_ready(), reason="needs TensorRT and a CUDA GPU")
def test_a_stream_engine_builds_checks_frame_by_frame_and_streams(stream, tmp_path):
    from export.trt.build import TrtRequest, build_trt
    from runtime import DepthPredictor
    from runtime.backends.tensorrt import TensorRTBackend

    source = tmp_path / "vda.onnx"
    shutil.copy(stream["path"], source)
    engine = build_trt(TrtRequest(precision="fp16", onnx=source, output=tmp_path / "vda.fp16.engine"))
    assert engine.get("stream") == "video-depth-anything-31" and engine.get("verification")
    with TensorRTBackend(engine.path) as backend:
        assert backend.stream_names == STREAM_INPUTS
        assert check_backend(backend, load_reference(reference_path(engine.path))).passed
    with DepthPredictor(engine.path) as predictor:
        video = predictor.video_stream(max_gap=None)
        frame = (np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
        depths = [video.push(frame) for _ in range(3)]
    assert all(d.shape == (HEIGHT, WIDTH) and np.isfinite(d).all() for d in depths)
