"""Several model calls in flight (``streams``) and batched calls for several cameras give the
numbers single calls give, in order, on real ONNX Runtime and OpenVINO; and they really overlap."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.metrics import compare
from export.openvino import export_openvino
from runtime import DepthPredictor
from tests.recording import overlap_predictor, recorded_predictor

# Same model, same input: a run with its own share of the threads sums in another order at most.
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory, tiny_onnx):
    out = tmp_path_factory.mktemp("ir") / "tiny.xml"
    export_openvino(tiny_onnx, out, "fp32")
    return out


@pytest.fixture(scope="module")
def tiny_dynamic_onnx(tmp_path_factory, tiny_spec):
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    return export_onnx(
        DepthAnythingV2(tiny_spec).eval(), tmp_path_factory.mktemp("dyn") / "tiny.onnx", dynamic=True
    ).path


def cameras(photo: np.ndarray) -> list[np.ndarray]:
    """Four cameras' frames: two of one size, two of others."""
    return [photo, np.ascontiguousarray(photo[::-1]), cv2.resize(photo, (320, 240)), photo[40:, 60:].copy()]


def open_predictor(kind: str, tiny_onnx, tiny_ir, tiny_dynamic_onnx, streams: int, count: bool = False):
    """The predictor of ``kind``; with ``count``, ``(predictor, Overlap)`` counting its backend's
    calls at once (``tests/recording.py``: a real backend through ``DepthPredictor.from_backend``)."""
    if kind == "openvino":
        model, options = tiny_ir, {"device": "cpu", "precision": "fp32", "streams": streams, "cache_dir": None}
    else:
        model, options = (tiny_onnx if kind == "onnxruntime static" else tiny_dynamic_onnx), {"streams": streams}
    if count:
        return overlap_predictor(model, input_size=56, **options)
    return DepthPredictor(model, input_size=56, **options)


@pytest.mark.parametrize("kind", ["openvino", "onnxruntime static", "onnxruntime dynamic"])
def test_streams_keep_calls_in_flight_with_the_numbers_of_single_calls(
    kind, photo, tiny_onnx, tiny_ir, tiny_dynamic_onnx
):
    frames = cameras(photo)
    single = open_predictor(kind, tiny_onnx, tiny_ir, tiny_dynamic_onnx, streams=1)
    reference = [single.predict(f) for f in frames]
    predictor, overlap = open_predictor(kind, tiny_onnx, tiny_ir, tiny_dynamic_onnx, streams=2, count=True)
    assert predictor.info()["streams"] == 2
    streamed = list(predictor.stream(iter(frames * 6)))
    assert len(streamed) == 24
    for i, depth in enumerate(streamed):  # in order, each the single call's numbers
        assert depth.shape == frames[i % 4].shape[:2]
        assert compare(depth, reference[i % 4]).max_rel_std <= ROUNDING
    assert overlap.most == 2  # two calls at once, never more than the backend runs
    for got, want in zip(predictor.predict_batch(frames), reference, strict=True):
        assert compare(got, want).max_rel_std <= ROUNDING
    cycles = list(predictor.stream_batches([frames, frames[::-1], frames[1:]]))
    assert [len(c) for c in cycles] == [4, 4, 3]
    for got, want in zip(cycles[1], reference[::-1], strict=True):
        assert compare(got, want).max_rel_std <= ROUNDING


def test_one_stream_serialises_calls(photo, tiny_onnx, tiny_ir, tiny_dynamic_onnx):
    predictor, overlap = open_predictor("onnxruntime static", tiny_onnx, tiny_ir, tiny_dynamic_onnx, 1, count=True)
    assert len(list(predictor.stream([photo] * 6))) == 6
    assert overlap.most == 1


def test_a_batch_of_equal_frames_is_one_call_on_a_dynamic_model(photo, tiny_dynamic_onnx):
    predictor, recorded = recorded_predictor(tiny_dynamic_onnx, input_size=56)
    frames = cameras(photo)
    sizes = Counter(predictor.prepare(f).shape for f in frames)
    depth = predictor.predict_batch(frames)
    assert sorted(recorded.sizes) == sorted(sizes.values()) and max(sizes.values()) > 1  # a call per size
    assert len(depth) == 4
    for got, frame in zip(depth, frames, strict=True):
        assert compare(got, predictor.predict(frame)).max_rel_std <= ROUNDING


@pytest.mark.parametrize("streams", [0, -1, 1.5, True, "2"])
def test_streams_must_be_a_positive_integer(tiny_onnx, streams):
    with pytest.raises(ValueError, match="streams must be a positive integer"):
        DepthPredictor(tiny_onnx, streams=streams)


def test_streams_option_of_the_commands(tiny_onnx, tiny_model):
    import argparse

    from runtime.cli import add_predictor_args, add_streams_arg, build_predictor

    parser = argparse.ArgumentParser()
    add_predictor_args(parser, "model")
    add_streams_arg(parser)
    args = parser.parse_args(["--model", str(tiny_onnx), "--streams", "2"])
    assert build_predictor(args, tiny_onnx).info()["streams"] == 2
    args = parser.parse_args(["--model", str(tiny_onnx)])
    assert build_predictor(args, tiny_onnx).info()["streams"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--streams", "0"])
    with pytest.raises(ValueError, match="runs one call at a time"):
        DepthPredictor(tiny_model, device="cpu", streams=2)


def test_throughput_rows_are_each_backends_fastest_unless_all_are_asked():
    from benchmarks.runner import EXPLICIT_ATTENTION, Config
    from benchmarks.throughput import pick_rows

    configs = [
        Config("torch", "fp32", (518, 518), device="cpu"),
        Config("torch", "bf16", (518, 518), device="cpu"),
        Config("torch", "fp32", (518, 518), device="cpu", variant=EXPLICIT_ATTENTION),
        Config("torch", "fp16", (518, 518), device="cuda", variant="CUDA"),
        Config("openvino", "int8", (518, 518), device="cpu"),
    ]
    e2e = {0: 0.9, 1: 0.7, 2: 0.1, 3: 0.02, 4: 0.24}  # row 2 is a reference form: never the fastest
    assert pick_rows(configs, e2e, "fastest") == [1, 3, 4]
    assert pick_rows(configs, e2e, "all") == [0, 1, 2, 3, 4]
    assert pick_rows(configs, e2e, "none") == []
    assert pick_rows(configs, {0: 0.9}, "fastest") == [0]  # a row that failed has no timings


def fixed_batch_onnx(dynamic: Path, out: Path, batch: int) -> Path:
    """The dynamic tiny model with its batch dimension fixed, as a model exported for N cameras is."""
    import onnx

    model = onnx.load(dynamic)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, out)
    return out


def test_a_fixed_batch_model_gets_full_batches_padded_with_the_last_frame(tmp_path, photo, tiny_dynamic_onnx):
    single = DepthPredictor(tiny_dynamic_onnx, input_size=56)
    batch2 = fixed_batch_onnx(tiny_dynamic_onnx, tmp_path / "b2.onnx", 2)
    predictor, recorded = recorded_predictor(batch2, input_size=56)
    assert predictor.input_shape == (2, 3, None, None)
    frames = [photo, photo[::-1].copy(), photo[:, ::-1].copy()]  # one size: batches of 2, 2 (the last padded)
    for got, frame in zip(predictor.predict_batch(frames), frames, strict=True):
        assert compare(got, single.predict(frame)).max_rel_std <= ROUNDING
    assert recorded.sizes == [2, 2]
    assert compare(predictor.predict(photo), single.predict(photo)).max_rel_std <= ROUNDING  # alone: padded too
    assert recorded.sizes == [2, 2, 2]


def test_an_engine_profile_bounds_the_batch_predict_batch_sends(photo, tiny_dynamic_onnx):
    """The TensorRT backend's input spec from a profile of batch 1..2 (``export.trt --batch 2``) and
    from one of batch 2..4, on a real backend: chunks of at most the profile's maximum, padded to its minimum."""
    from runtime.backends.tensorrt import spec_from_dims

    single = DepthPredictor(tiny_dynamic_onnx, input_size=56)
    frames = [photo, photo[::-1].copy(), photo[:, ::-1].copy()]
    want = [single.predict(f) for f in frames]
    for profile, batches in [
        (((1, 3, 14, 14), (2, 3, 2072, 2072)), [2, 1]),
        (((2, 3, 14, 14), (4, 3, 2072, 2072)), [3]),
        (((3, 3, 14, 14), (3, 3, 2072, 2072)), [3]),
    ]:
        spec = spec_from_dims("image", (-1, 3, -1, -1), profile)
        assert (spec.min_batch, spec.max_batch) == (profile[0][0], profile[1][0])
        predictor, recorded = recorded_predictor(tiny_dynamic_onnx, spec=spec, input_size=56)
        for got, expected in zip(predictor.predict_batch(frames), want, strict=True):
            assert compare(got, expected).max_rel_std <= ROUNDING
        predictor.predict_batch(frames[:1])
        assert recorded.sizes == [*batches, profile[0][0]]  # one frame alone: padded to the profile's minimum
