"""Video Depth Anything: the official checkpoints load strictly, and the stream matches the
official streaming code frame by frame (``tests/data/official_families``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from commands.errors import InputError
from runtime import DepthPredictor
from runtime.backends.openvino import openvino_core
from runtime.video_state import RECENT, SLOTS, WINDOW, StreamState, stream_input_size
from train.models import CheckpointError, load_model
from train.models.video import VideoDepthAnything

from .video_fixtures import frames_bgr, official_stream, perturbed_motion_module, vda_state_dict, worst_rel_std

# max|ours - official| / std(official) per frame, the DA-V2 parity bar (reached: about 3e-5).
PARITY = 1e-4
# The INT8 IR (the motion modules whole in float, as these weights' IR falls back to) against the
# official stream: 1.7-2.3 with these random weights and noise frames (0.66 against FP32 on a
# photograph), so this bound catches a broken artefact, not a loss of accuracy, as
# export.openvino's INT8 tolerance does.
INT8_BAR = 4.0


def official_window(frames: int) -> list[list[int]]:
    """The frame ids each frame attends to, by the official list's own rules (a model of
    ``infer_video_depth_one``'s bookkeeping, positions 0..30; the new frame is 31)."""
    ids, windows = [0] * WINDOW, [[]]
    for k in range(1, frames):
        windows.append(ids[0:2] + ids[-(WINDOW - 3) :])
        ids.append(k)
        if k + WINDOW > 42:  # the official gap: (32 - 10) * 2 - 1 - (10 - 8) + 1
            del ids[1]
    return windows


def test_the_window_and_the_waiting_frames_keep_the_official_window():
    """Frame ids as hidden states: what each frame attends to, in position order, is what the
    official list gives it, over 120 frames (the waiting frames come round several times)."""
    state = StreamState(max_gap=None)
    for k, window in enumerate(official_window(120)):
        pos, (cache,) = state.inputs([(1, SLOTS, 1)])
        if k == 0:
            assert (pos == -1).all()
        else:
            assert sorted(pos) == list(range(SLOTS))
            assert [int(cache[0, s, 0]) for s in np.argsort(pos)] == window, k
        state.update([np.full((1, 1, 1), k, dtype=np.float32)])
    assert len(window) == 2 + RECENT == SLOTS


def test_official_checkpoint_loads_strictly_with_family_and_licence(vda_checkpoint, tmp_path):
    model = load_model(vda_checkpoint)
    assert isinstance(model, VideoDepthAnything)
    assert (model.family, model.variant, model.licence) == (
        "video-depth-anything",
        "Video-Depth-Anything-Small",
        "Apache-2.0",
    )
    assert not model.metric
    metric = tmp_path / "metric_video_depth_anything_vits.pth"
    metric.write_bytes(vda_checkpoint.read_bytes())
    model = load_model(metric)
    assert model.metric and model.variant == "Metric-Video-Depth-Anything-Small" and model.licence == "none stated"
    with pytest.raises(InputError, match="outputs metres with no stated bound: pass output_kind='metric'"):
        DepthPredictor(metric)
    with DepthPredictor(metric, output_kind="metric", max_depth=80.0) as predictor:
        assert predictor.output.is_metric and predictor.info()["licence"] == "none stated"
    state = vda_state_dict()
    del state["head.motion_modules.3.temporal_transformer.proj_out.bias"]
    state["head.motion_modules.9.extra"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(
        CheckpointError, match=r"VideoDepthAnything\('vits'\).*missing keys: head\.motion_modules\.3.*unexpected"
    ):
        load_model(broken)


def test_the_temporal_attention_makes_no_tensor_per_call(vda_checkpoint):
    """The attention's window mask is a buffer made once, moved with the module and kept out of the
    state dict (the official checkpoints load strictly): a call makes no tensor from nothing, which
    on a GPU was a host tensor copied to the device at every call (found in review)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from train.models.video.temporal import TemporalAttention

    assert set(load_model(vda_checkpoint).state_dict()) == set(vda_state_dict())
    made = []

    class FromNothing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves((args, kwargs or {}))):
                made.append(str(func))
            return func(*args, **(kwargs or {}))

    attention = TemporalAttention(64).eval().double()
    x, cache, slot_pos = torch.randn(6, 64).double(), torch.randn(6, 3, 64).double(), torch.tensor([0, -1, 1])
    with torch.no_grad(), FromNothing():
        out = attention(x, cache, slot_pos)
    assert made == [] and out.dtype == torch.float64 and torch.isfinite(out).all()
    assert attention.window_mask.dtype == torch.float64 and "window_mask" not in attention.state_dict()


def test_stream_matches_the_official_streaming_code(vda_checkpoint):
    reference = official_stream()
    with DepthPredictor(vda_checkpoint, input_size=266) as predictor:
        assert predictor.info()["family"] == "video-depth-anything"
        errors = [worst_rel_std(d, r) for d, r in zip(predictor.stream(frames_bgr()), reference, strict=True)]
        assert max(errors) <= PARITY, errors
        # Each frame alone (no cache) is the first frame only: the cache is what makes the rest.
        alone = predictor.predict_batch(list(frames_bgr()[-2:]))
    assert worst_rel_std(alone[0], reference[-2]) > 100 * PARITY


def test_gaps_and_size_changes_reset_late_and_repeated_frames_are_refused(vda_checkpoint, caplog):
    frames = frames_bgr()
    with DepthPredictor(vda_checkpoint, input_size=266) as predictor:
        video = predictor.video_stream(max_gap=0.5, name="cam0")
        first = video.push(frames[0], stamp=10.0)
        video.push(frames[1], stamp=10.1)
        with caplog.at_level(logging.WARNING, logger="runtime.video"):
            again = video.push(frames[0], stamp=12.0)  # a pause: starts again, same as a first frame
        np.testing.assert_allclose(again, first, rtol=0, atol=1e-5)
        assert video.resets == [(2, "1.900 s since the last frame (more than max_gap=0.5 s)")]
        assert "cam0: Video Depth Anything state reset at frame 2" in caplog.text
        with pytest.raises(InputError, match=r"cam0: frame at t=11\.800000 s is 0\.200000 s older than the last"):
            video.push(frames[1], stamp=11.8)  # a late frame (within max_gap): left out
        with pytest.raises(InputError, match=r"cam0: a second frame at t=12\.000000 s \(the same stamp as the last\)"):
            video.push(frames[1], stamp=12.0)
        video.push(frames[1][:, :300], stamp=12.1)
        assert video.resets[-1][1] == "frame size changed from 320x240 to 300x240"


def test_wide_frames_get_the_official_smaller_input():
    assert stream_input_size(240, 320, 518) == 518
    assert stream_input_size(360, 1280, 518) == 252  # ratio 3.56: int(518 * 1.777 / 3.56) = 258 -> 18 patches
    with pytest.raises(InputError, match="max_gap"):
        StreamState(max_gap=0)


def test_exported_stream_runs_in_onnxruntime_like_the_official_code(vda_checkpoint, tmp_path, monkeypatch):
    """``python -m export.onnx --checkpoint video_depth_anything_vits.pth --size 266x350`` as
    written; the stream through the ONNX file (a plain session under the predictor) matches the
    official output frame by frame."""
    import onnx

    from export.onnx import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / vda_checkpoint.name).write_bytes(vda_checkpoint.read_bytes())
    assert main(["--checkpoint", vda_checkpoint.name, "--size", "266x350"]) == 0
    path = tmp_path / "artifacts" / "video_depth_anything_vits_266x350.onnx"
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["image", "slot_pos", *(f"cache{i}" for i in range(8))]
    assert [o.name for o in graph.graph.output] == ["depth", *(f"hidden{i}" for i in range(8))]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert (meta["family"], meta["variant"], meta["licence"]) == (
        "video-depth-anything",
        "Video-Depth-Anything-Small",
        "Apache-2.0",
    )
    with DepthPredictor(path) as predictor:
        assert predictor.backend == "onnxruntime" and predictor.info()["variant"] == "Video-Depth-Anything-Small"
        errors = [worst_rel_std(d, r) for d, r in zip(predictor.stream(frames_bgr()), official_stream(), strict=True)]
    assert max(errors) <= 1e-3, errors  # reached: about 3e-5
    assert main(["--checkpoint", vda_checkpoint.name, "--size", "266x350", "--dynamic"]) == 2


def test_openvino_ir_runs_the_stream_and_int8_over_its_bound_keeps_motion_modules_in_float(
    vda_checkpoint, tmp_path, capsys
):
    from export.onnx import export_onnx
    from export.openvino import export_openvino
    from export.quantize.calibration import CalibrationSet

    from .sa1b import make_shard

    onnx = tmp_path / "vda.onnx"
    export_onnx(load_model(vda_checkpoint), onnx, 266, 350, verify=False)
    reference = official_stream()
    fp32 = export_openvino(onnx, tmp_path / "vda.fp32.xml", "fp32")
    assert fp32["family"] == "video-depth-anything" and fp32["licence"] == "Apache-2.0"
    # 10 images: on 6, these weights' INT8 stream is over the broken-artefact bound (AbsRel 0.213 > 0.2)
    shard = make_shard(tmp_path / "calib" / "sa_000000.tar", count=10, faults=False)
    images = CalibrationSet(shard.parent, 10, (266, 350), 0, None, progress=False, minimum=0)
    int8 = export_openvino(onnx, tmp_path / "vda.int8.xml", "int8", images)
    assert int8["quantization"]["float"] == [".*motion_modules.*"] and int8["quantization"]["frames"] == 10
    assert int8["quantization"]["smooth_quant_folded"] > 0  # before the float modules' linear layers
    tried = int8["quantization"]["tried_first"]  # the first IR, the motion modules' attention in float
    assert tried["kept"] == "the motion modules' attention in float" and tried["value"] > tried["bound"] == 0.2
    assert "broken-artefact bound" in tried["check"], tried
    assert "quantizing again with the motion modules in float" in capsys.readouterr().err
    assert int8["accuracy"]["method"] == "unmeasured" and int8["accuracy"]["broken_check"]["value"] <= 0.2
    ir = openvino_core().read_model(str(tmp_path / "vda.int8.xml"))
    # what the FakeQuantize ops feed: INT8 layers; none inside a motion module (a module's output
    # may be quantized where it enters the next convolution): with only their attention in float,
    # these weights' IR is over the bound (0.42), so the export quantized again (export.video's
    # STREAM_FLOAT_SCOPES; the IR with only the attention in float: test_openvino_stream_int8)
    fed = [
        target.get_node().get_friendly_name()
        for op in ir.get_ops()
        if op.get_type_name() == "FakeQuantize"
        for target in op.output(0).get_target_inputs()
    ]
    assert fed and not [n for n in fed if "motion_modules" in n], [n for n in fed if "motion_modules" in n]
    errors = {}
    for precision in ("fp32", "int8"):
        with DepthPredictor(tmp_path / f"vda.{precision}.xml", verify=True) as predictor:
            assert predictor.info()["family"] == "video-depth-anything"
            assert predictor.verification.passed, predictor.verification.summary()  # its own reference
            depth = list(predictor.stream(frames_bgr()))
        errors[precision] = max(worst_rel_std(d, r) for d, r in zip(depth, reference, strict=True))
    assert errors["fp32"] <= 1e-3, errors  # reached: 4.3e-5
    assert errors["int8"] <= INT8_BAR, errors


def test_a_plain_onnx_export_of_a_stream_carries_its_reference(vda_checkpoint, tmp_path, capsys):
    """``export.onnx`` of a Video Depth Anything checkpoint writes the stream reference (as export.trt
    --onnx-only does): runtime.verify passes the export and fails it with a motion module perturbed."""
    from export.onnx import main as export_main
    from export.openvino import main as export_openvino_main
    from runtime.reference import reference_path
    from runtime.verify import main as verify_main

    path = tmp_path / "vda.onnx"
    assert export_main(["--checkpoint", str(vda_checkpoint), "--size", "112x112", "--output", str(path)]) == 0
    assert reference_path(path).is_file()
    with DepthPredictor(path, verify=True) as predictor:
        assert predictor.verification.passed
    capsys.readouterr()
    assert verify_main([str(path)]) == 0 and "PASSED" in capsys.readouterr().out
    ir = tmp_path / "vda.fp32.xml"
    assert export_openvino_main(["--onnx", str(path), "--output", str(ir)]) == 0 and reference_path(ir).is_file()
    capsys.readouterr()
    assert verify_main([str(ir)]) == 0 and "PASSED" in capsys.readouterr().out
    perturbed = perturbed_motion_module(path, tmp_path / "perturbed.onnx")
    assert verify_main([str(perturbed), "--reference", str(reference_path(path))]) == 1
    assert "over its reference's tolerance" in capsys.readouterr().err
