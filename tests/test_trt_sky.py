"""TensorRT engines of the Depth Anything 3 mono/metric graphs: the TensorRT-ready ONNX leaves the
sky step out (TensorRT's TopK cannot sort every pixel) and the runtime applies it on the host with
numpy. Tested without TensorRT: the numpy step against the network's torch step, the step-less
ready ONNX against the 8.6 and 10.x parser rules, ONNX Runtime on it plus the numpy step against
the original graph, the facts the engine's sidecar and reference carry, and what is refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from commands.errors import ModelFileError
from export.errors import ExportError
from export.metrics import OnnxRuntimeRunner
from export.trt.build import TrtRequest, plan_job, ready_step, source_step
from export.trt.rules import TrtVersion, check_model, check_onnx
from export.trt.sky_step import cut_sky_step, sky_step_fact, sky_step_input
from runtime.backends.tensorrt import engine_sky_step
from runtime.metadata import read_sidecar
from runtime.prediction import sky_mask
from runtime.sky import sky_step_refusal, sky_to_far
from tests.da3_fixtures import sky_mono_net
from tests.test_trt_outputs import _topk_model
from train.models.da3 import METRES_PER_FOCAL
from train.models.da3.model import sky_to_far as torch_sky_to_far

SIZE = (56, 70)


@pytest.fixture(scope="module")
def metric_onnx(tmp_path_factory):
    """A DA3Metric-shaped network on a ViT-S with the fixtures' deterministic weights, its sky head's
    bias set so that about half of a test input is sky; exported at 56x70 (the sky step in the graph)."""
    from export.onnx import export_onnx

    net = sky_mono_net("da3metric-test", _inputs(1), 0.5, output=METRES_PER_FOCAL)
    return export_onnx(net, tmp_path_factory.mktemp("da3") / "metric.onnx", *SIZE).path


def _inputs(batch: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, 3, *SIZE)).astype(np.float32)


def test_the_numpy_sky_step_is_the_networks():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 50.0, (5, 40, 60)).astype(np.float32)
    sky = rng.uniform(0.0, 1.0, (5, 40, 60)).astype(np.float32)
    sky[1] = 0.0
    sky[1, 0, :10] = 0.9  # 10 sky pixels: too few, the depth stays
    sky[2] = 0.9
    sky[2, 0, :11] = 0.1  # 11 non-sky pixels: the step applies
    sky[3] = 0.9
    sky[3, 0, :10] = 0.1  # 10 non-sky pixels: too few
    sky[4, :, :7] = 0.3  # at the threshold is sky
    want = torch_sky_to_far(torch.from_numpy(depth), torch.from_numpy(sky)).numpy()
    got = sky_to_far(depth, sky)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert np.array_equal(got[1], depth[1]) and np.array_equal(got[3], depth[3])
    for image in (0, 2, 4):
        changed = got[image] != depth[image]
        assert changed.any() and np.array_equal(changed, sky[image] >= 0.3)
    one = sky_to_far(depth[0], sky[0])  # one (H, W) map, and a (B, 1, H, W) one
    assert np.array_equal(one, got[0]) and np.array_equal(sky_to_far(depth[:, None], sky)[:, 0], got)
    with pytest.raises(ValueError, match="not maps of one size"):
        sky_to_far(depth, sky[:, :20])


@pytest.mark.parametrize("release", ["8.6", "10.3"])
def test_the_ready_onnx_leaves_the_sky_step_to_the_runtime(metric_onnx, tmp_path, release):
    original = onnx.load(str(metric_onnx), load_external_data=False)
    version = TrtVersion.parse(release)
    assert "topk-k" in [f.rule for f in check_model(original, version)]  # as exported, refused
    request = TrtRequest(precision="fp16", onnx=metric_onnx, onnx_only=True, trt_version=release)
    request.output = tmp_path / "m.fp16.engine"
    job = plan_job(request, None)
    ready = ready_step(job, *source_step(job))
    assert check_onnx(ready.record.path, version) == []  # the 8.6 and the 10.x parser rules
    model = onnx.load(str(ready.record.path), load_external_data=False)
    assert ready.outputs == ("depth", "sky") and [o.name for o in model.graph.output] == ["depth", "sky"]
    assert not any(n.op_type == "TopK" for n in model.graph.node)
    assert sky_step_fact(model) == {"sky_step": "runtime"} and sky_step_fact(original) == {}  # the engine's sidecar
    assert ready.expected is not None and ready.expected.meta["sky_step"] == "runtime"
    sky_less = tmp_path / "m.fp16.sky-less.onnx"
    assert read_sidecar(sky_less)["sky_step"] == "runtime" and ready.source.path == sky_less

    # ONNX Runtime on the step-less graph, plus the runtime's numpy step, is the original graph
    batch = _inputs(1)
    want_depth, want_sky = OnnxRuntimeRunner(metric_onnx).session.run(None, {"image": batch})
    raw, sky = OnnxRuntimeRunner(sky_less).session.run(None, {"image": batch})
    assert 10 < int(sky_mask(sky[0]).sum()) < sky[0].size - 10  # the step applies
    assert not np.allclose(raw, want_depth)
    got = sky_to_far(raw, sky)
    assert np.abs(got - want_depth).max() <= 1e-6 * np.abs(want_depth).max()
    assert np.array_equal(sky_mask(sky), sky_mask(want_sky))
    # and the references made from it (the engine's check) hold the step-applied depth
    assert np.abs(OnnxRuntimeRunner(sky_less)(batch) - want_depth).max() <= 1e-6 * np.abs(want_depth).max()


def test_what_the_sky_step_cut_refuses(tiny_onnx):
    """(INT8 engines of these graphs, refused here before, are built: tests/test_trt_da3_int8.py.)"""
    tiny = onnx.load(str(tiny_onnx), load_external_data=False)
    assert sky_step_input(tiny) is None
    with pytest.raises(ExportError, match="no sky step of this toolkit's Depth Anything 3 export"):
        cut_sky_step(tiny, tiny_onnx)
    # a sort of another graph is not taken for the step: the parser rules refuse it, per release
    other = _topk_model(None, 2000)
    assert sky_step_input(other) is None
    (found,) = check_model(other, TrtVersion.parse("8.6"))
    assert found.rule == "topk-k" and "TensorRT 8.6 takes K <= 1024" in found.message and "860-ea" in found.source
    assert check_model(other, TrtVersion.parse("10.3")) == []


def test_an_engine_with_a_sky_output_gets_the_step_whatever_its_sidecar_says(tmp_path):
    """A sky-less engine built by the printed trtexec command has no sidecar: its depth would be the
    network's raw values on sky pixels (found in review). The step changes nothing on a depth whose
    sky is already far, so an engine with the step inside gets the same depth from it."""
    engine = tmp_path / "m.engine"
    assert engine_sky_step(engine, {"sky_step": "runtime"}, ("sky",)) is True
    assert engine_sky_step(engine, {"extra_outputs": ["sky"]}, ("sky",)) is True  # an engine from before
    assert engine_sky_step(engine, None, ("sky",)) is True  # no sidecar
    assert engine_sky_step(engine, None, ("depth_conf",)) is False
    rng = np.random.default_rng(0)
    depth, sky = rng.uniform(1, 10, (2, 20, 30)).astype(np.float32), rng.uniform(0, 1, (2, 20, 30))
    once = sky_to_far(depth, sky)
    assert (once != depth).any() and np.array_equal(sky_to_far(once, sky), once)
    with pytest.raises(ModelFileError, match="leaves the sky step to the runtime but it has no 'sky' output"):
        engine_sky_step(engine, {"sky_step": "runtime"}, ("depth_conf",))


def test_onnx_runtime_applies_the_step_to_a_sky_less_graph(metric_onnx, tmp_path):
    """The sky-less ONNX through the runtime (``DepthPredictor`` on ONNX Runtime): the same depth as
    the original graph, within 1e-6 relative, with the same sky mask; the step at network
    resolution, before the resize to the image."""
    from runtime import DepthPredictor
    from runtime.backends.onnxruntime import OnnxRuntimeBackend
    from tests.test_da3_outputs import picture

    sky_less = tmp_path / "metric.sky-less.onnx"
    onnx.save(cut_sky_step(onnx.load(str(metric_onnx)), metric_onnx), str(sky_less))
    batch = _inputs(1)
    with OnnxRuntimeBackend(metric_onnx) as want, OnnxRuntimeBackend(sky_less) as got:
        expected = want.infer(batch)
        assert np.abs(got.infer(batch) - expected).max() <= 1e-6 * np.abs(expected).max()
        outs = got.infer_outputs(batch)
        assert np.abs(outs["depth"] - expected).max() <= 1e-6 * np.abs(expected).max()
        assert np.array_equal(sky_mask(outs["sky"]), sky_mask(want.infer_outputs(batch)["sky"]))
    image = picture(height=48, width=64)
    with DepthPredictor(metric_onnx, focal=80.0) as want, DepthPredictor(sky_less, focal=80.0) as got:
        a, b = want.predict(image), got.predict(image)
    assert np.abs(np.asarray(b) - np.asarray(a)).max() <= 1e-6 * np.abs(np.asarray(a)).max()
    assert np.array_equal(a.sky, b.sky) and a.sky.any() and not a.sky.all()


def test_a_dynamic_export_with_inferred_shapes_is_cut(tmp_path):
    """Shape inference (onnxslim, polygraphy) names a dynamic export's sizes with symbols of its own
    (``unk__2`` against ``height``): they name no size, so they are no mismatch (found in review).
    A tiny network with the toolkit's sky step, exported with dynamic axes."""
    import torch
    import torch.nn.functional as F
    from onnx import shape_inference

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.depth, self.sky = torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x):
            size = x.shape[-2:]
            depth = F.interpolate(torch.exp(self.depth(x)), size=size, mode="bilinear", align_corners=True)[:, 0]
            sky = F.interpolate(torch.sigmoid(self.sky(x)), size=size, mode="bilinear", align_corners=True)[:, 0]
            return torch_sky_to_far(depth, sky), sky

    path = tmp_path / "tiny.onnx"
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "depth": {0: "batch", 1: "height", 2: "width"}}
    torch.onnx.export(
        Tiny().eval(), (torch.zeros(1, 3, 28, 35),), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["depth", "sky"], dynamic_axes={**axes, "sky": axes["depth"]},
    )  # fmt: skip
    inferred = shape_inference.infer_shapes(onnx.load(str(path)))
    raw = sky_step_input(inferred)
    named = {i.name: i for i in inferred.graph.value_info}
    assert raw in named and named[raw].type.tensor_type.shape.dim[1].dim_param  # a symbol of its own
    cut = cut_sky_step(inferred, path)
    assert [o.name for o in cut.graph.output] == ["depth", "sky"] and sky_step_fact(cut)
    bad = onnx.load(str(path))
    bad.graph.value_info.append(onnx.helper.make_tensor_value_info(sky_step_input(bad), onnx.TensorProto.FLOAT, [1, 7]))
    with pytest.raises(ExportError, match="re-export"):
        cut_sky_step(bad, path)


def test_openvino_refuses_a_graph_that_leaves_the_step_to_the_runtime(metric_onnx, tmp_path, capsys):
    """OpenVINO does not apply the sky step: the sky-less ONNX, run or converted there, would give the
    network's raw depth on sky pixels (found in review). One line, the same for the backend, the IR
    conversion and INT8 quantization for the CPU (``runtime.sky.sky_step_refusal``), each with its own exit;
    nothing written. The original graph is not refused."""
    pytest.importorskip("openvino")
    from export.openvino import main as openvino_main
    from runtime.backends.openvino import OpenVINOBackend

    sky_less = tmp_path / "metric.sky-less.onnx"
    onnx.save(cut_sky_step(onnx.load(str(metric_onnx)), metric_onnx), str(sky_less))
    assert sky_step_refusal(metric_onnx, "OpenVINO") is None
    assert sky_step_refusal(sky_less, "OpenVINO", meta={}) is not None  # the ONNX's own metadata says it
    with pytest.raises(ModelFileError) as refused:
        OpenVINOBackend(sky_less)
    assert str(refused.value) == sky_step_refusal(sky_less, "OpenVINO")
    assert "\n" not in str(refused.value) and "ONNX export it was cut from" in str(refused.value)
    assert openvino_main(["--onnx", str(sky_less), "--fp32", "--output", str(tmp_path / "m.xml")]) == 2
    assert sky_step_refusal(sky_less, "an OpenVINO IR") in capsys.readouterr().err
    assert not (tmp_path / "m.xml").exists()
    from export.quantize.__main__ import main as quantize_main

    calib = tmp_path / "calib"  # never read: the refusal comes first
    calib.mkdir()
    args = ["--onnx", str(sky_less), "--calib-dir", str(calib), "--output", str(tmp_path / "q.onnx")]
    assert quantize_main([*args, "--target", "cpu"]) == 2  # --target tensorrt takes it: test_trt_da3_int8.py
    assert sky_step_refusal(sky_less, "INT8 quantization for --target cpu") in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()
