"""Depth Anything 3's outputs besides depth, end to end on real PyTorch, ONNX Runtime, OpenVINO and
bags written here: the sky mask (the official sky step's pixels) on the prediction, in the exported
graph, and as ``+inf`` metres on ROS depth topics (REP 117) with no points there; the depth
confidence as an array and an optional ``32FC1`` topic; and the attention switch."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from commands.errors import InputError
from runtime import DepthPredictor
from runtime.prediction import SKY_THRESHOLD, Prediction
from tests.da3_fixtures import da3_state_dict
from train.models.da3 import DA3_VARIANTS, METRES_PER_FOCAL, DepthAnything3
from train.models.da3.model import SKY_THRESHOLD as MODEL_SKY_THRESHOLD

SIZE = 56
SMALL_MONO = {"encoder": "vits", "out_layers": (2, 5, 8, 11), "features": 64, "out_channels": (48, 96, 192, 384)}


def picture(index: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 5 + index * 20) % 256, (y * 7) % 256, ((x + y) * 3 + index * 50) % 256], axis=-1)
    return image.astype(np.uint8)


def _network_input(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    from runtime.preprocessing import prepare_fixed

    return torch.from_numpy(prepare_fixed(image, size, False))


@pytest.fixture(scope="module")
def mono_metric():
    """A DA3Mono/Metric network (DPT head with its sky head) on a ViT-S, labelled metres per focal
    length as DA3Metric-Large is, with the sky head's last layer set so that about half of the test
    picture is sky (the weights are random: the sky is a pattern, not the sky of the picture)."""
    torch.manual_seed(0)
    spec = dataclasses.replace(
        DA3_VARIANTS["da3mono-large"], name="da3metric-test", output=METRES_PER_FOCAL, **SMALL_MONO
    )
    net = DepthAnything3(spec).eval()
    last = net.head.scratch.sky_output_conv2[-1]
    seen = []
    hook = last.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    with torch.no_grad():
        last.weight.mul_(20.0)
        net(_network_input(picture(), (56, 70)))
        last.bias.add_(SKY_THRESHOLD - float(seen[-1].median()))
    hook.remove()
    return net


@pytest.fixture(scope="module")
def small_metric():
    """DA3-Small's network (depth confidence) labelled metres per focal length."""
    spec = dataclasses.replace(DA3_VARIANTS["da3-small"], name="da3metric-conf-test", output=METRES_PER_FOCAL)
    net = DepthAnything3(spec).eval()
    net.load_state_dict(da3_state_dict("da3-small"))
    return net


def test_the_sky_mask_is_the_official_sky_steps_pixels(mono_metric):
    assert SKY_THRESHOLD == MODEL_SKY_THRESHOLD  # the runtime's mask and the network's step agree
    image = picture(height=56, width=70)  # the network's own size: no resize between them
    with DepthPredictor(mono_metric, fixed_size=(56, 70)) as predictor:
        assert predictor.extra_outputs == ("sky",) and predictor.info()["extra_outputs"] == ["sky"]
        raw = predictor.predict_batch([image], raw=True)[0]
        metres = predictor.predict(image, focal=300.0)
    with torch.no_grad():
        out = mono_metric(_network_input(image, (56, 70)))
    sky = out["sky"][0].numpy() >= SKY_THRESHOLD
    assert isinstance(raw, Prediction) and raw.confidence is None
    np.testing.assert_array_equal(raw.sky, sky)
    assert 0.2 < sky.mean() < 0.8
    # The step gave every sky pixel one far value: the 0.99 quantile of the other pixels' depth.
    far = np.unique(raw[sky])
    assert far.size == 1 and far[0] == pytest.approx(np.quantile(raw[~sky], 0.99), rel=1e-5)
    # Metres keep the mask; what is derived from a prediction is a plain map.
    assert isinstance(metres, Prediction) and np.array_equal(metres.sky, sky)
    assert type(metres[1:]) is np.ndarray and type(metres * 2) is np.ndarray  # plain maps, as documented
    again = pickle.loads(pickle.dumps(metres))
    assert np.array_equal(again.sky, sky) and np.array_equal(again.depth, metres.depth)


def test_what_is_derived_from_a_prediction_is_plain():
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    prediction = Prediction(depth, sky=depth > 6, confidence=depth * 2)
    for derived in (prediction[1:], prediction[:, ::2], prediction * 2, prediction + prediction, np.sqrt(prediction)):
        assert type(derived) is np.ndarray  # was a Prediction whose sky was None
    mean = prediction.mean()
    assert type(mean) is np.float32 and mean == depth.mean()  # was a 0-d Prediction
    assert type(prediction.max(axis=0)) is np.ndarray and type(prediction[0, 0]) is np.float32
    assert prediction.sky is not None and np.array_equal(prediction.depth, depth)  # the prediction keeps its maps
    doubled, scaled = prediction.depth * 2, prediction
    scaled *= 2  # in place: the same Prediction, its maps kept (was rebound to a plain array)
    assert scaled is prediction and prediction.sky is not None and np.array_equal(prediction.depth, doubled)


def test_exported_onnx_and_openvino_carry_the_sky_output(tmp_path, mono_metric):
    onnx = pytest.importorskip("onnx")
    from export.onnx import export_onnx

    path = tmp_path / "mono.onnx"
    result = export_onnx(mono_metric, path, 56, 70)
    graph = onnx.load(str(path))
    assert [o.name for o in graph.graph.output] == ["depth", "sky"]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["extra_outputs"] == "sky" and meta["output_kind"] == METRES_PER_FOCAL
    sidecar = json.loads((tmp_path / "mono.onnx.json").read_text())
    assert sidecar["extra_outputs"] == ["sky"]
    assert sidecar["verification"]["extra_outputs"]["sky"]["56x70"]["max_rel_std"] <= 1e-4
    assert result.extra_checks["sky"]["56x70"].max_rel_std <= 1e-4
    image = picture()
    with DepthPredictor(mono_metric, fixed_size=(56, 70)) as pt, DepthPredictor(path) as ort:
        assert ort.extra_outputs == ("sky",)
        a, b = pt.predict(image, focal=80.0), ort.predict(image, focal=80.0)
    assert isinstance(b, Prediction) and b.sky.shape == (48, 64)
    assert (a.sky != b.sky).mean() <= 0.005  # only pixels within float rounding of the threshold
    # (random weights: a nearly flat depth, whose far value moves a little with a pixel that turns)
    np.testing.assert_allclose(b, a, rtol=5e-3)

    pytest.importorskip("openvino")
    from export.openvino import main as openvino_main

    xml = tmp_path / "mono.xml"
    assert openvino_main(["--onnx", str(path), "--fp32", "--output", str(xml)]) == 0
    with DepthPredictor(xml) as vino:
        assert vino.extra_outputs == ("sky",)
        c = vino.predict(image, focal=80.0)
    assert (c.sky != b.sky).mean() <= 0.005
    np.testing.assert_allclose(c, b, rtol=5e-3)


def test_a_model_without_extra_outputs_returns_plain_arrays(predictor, tiny_onnx):
    image = picture()
    assert predictor.extra_outputs == () and type(predictor.predict(image)) is np.ndarray
    assert "extra_outputs" not in predictor.info()
    sidecar = json.loads(tiny_onnx.with_name(tiny_onnx.name + ".json").read_text())
    assert "extra_outputs" not in sidecar and "extra_outputs" not in sidecar["verification"]
    with DepthPredictor(tiny_onnx) as ort:
        assert ort.extra_outputs == () and type(ort.predict(image)) is np.ndarray


def test_depth_confidence_on_the_prediction_and_in_the_onnx(tmp_path, small_metric):
    pytest.importorskip("onnx")
    from export.onnx import export_onnx

    image = picture()
    with DepthPredictor(small_metric, fixed_size=(56, 70)) as pt:
        assert pt.extra_outputs == ("depth_conf",)
        raw = pt.predict_batch([image], raw=True)[0]
    with torch.no_grad():
        out = small_metric(_network_input(image, (56, 70)))
    from runtime.preprocessing import resize_depth

    np.testing.assert_allclose(raw.confidence, resize_depth(out["depth_conf"][0].numpy(), 48, 64), rtol=1e-5)
    assert raw.sky is None and (raw.confidence >= 1).all()
    path = export_onnx(small_metric, tmp_path / "small.onnx", 56, 70).path
    with DepthPredictor(path, focal=80.0) as ort:
        got = ort.predict(image)
    assert np.abs(got.confidence - raw.confidence).max() / raw.confidence.std() < 1e-3


def _write_bag(path, focal: float, frames: int = 2):
    from tests.test_da3_runtime import _write_bag as write

    write(path, focal, frames)


def _read(path) -> dict[str, list]:
    from rosbags.highlevel import AnyReader

    out: dict[str, list] = {}
    with AnyReader([path]) as reader:
        for conn, _, raw in reader.messages():
            out.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    return out


def _image(msg) -> np.ndarray:
    assert msg.encoding == "32FC1"
    return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)


def test_bag_publishes_sky_as_inf_and_no_points_there(tmp_path, mono_metric):
    pytest.importorskip("rosbags")
    from runtime.ros.bag import process_bag

    _write_bag(tmp_path / "in", 80.0)
    with DepthPredictor(mono_metric, input_size=SIZE) as predictor:
        skies = [predictor.predict_batch([picture(i)], raw=True)[0].sky for i in range(2)]
        summary = process_bag(predictor, tmp_path / "in", tmp_path / "out", "/cam/image_raw", warn=lambda t: None)
    topics = _read(tmp_path / "out")
    assert "/cam/depth/confidence" not in topics  # this model has none
    assert summary.sky_pixels == sum(int(s.sum()) for s in skies) > 0
    for msg, cloud, sky in zip(topics["/cam/depth/image"], topics["/cam/depth/points"], skies, strict=True):
        metres = _image(msg)
        assert np.isposinf(metres[sky]).all()  # REP 117: too far to measure
        assert np.isfinite(metres[~sky]).all() and (metres[~sky] > 0).all()
        assert cloud.width == int((~sky).sum())  # a point for every pixel but the sky's


def test_bag_depth_confidence_topic_is_off_by_default_and_on_when_asked(tmp_path, small_metric, tiny_model):
    pytest.importorskip("rosbags")
    from runtime.ros.bag import process_bag
    from runtime.ros.messages import Conversion

    _write_bag(tmp_path / "in", 80.0)
    with DepthPredictor(small_metric, input_size=SIZE) as predictor:
        conf = [predictor.predict_batch([picture(i)], raw=True)[0].confidence for i in range(2)]
        process_bag(predictor, tmp_path / "in", tmp_path / "off", "/cam/image_raw", warn=lambda t: None)
        summary = process_bag(
            predictor,
            tmp_path / "in",
            tmp_path / "on",
            "/cam/image_raw",
            conversion=Conversion(confidence=True),
            warn=lambda t: None,
        )
    assert "/cam/depth/confidence" not in _read(tmp_path / "off")
    on = _read(tmp_path / "on")
    assert summary.confidence == 2 and len(on["/cam/depth/image"]) == 2
    for msg, depth, expected in zip(on["/cam/depth/confidence"], on["/cam/depth/image"], conf, strict=True):
        assert msg.header.stamp == depth.header.stamp and msg.header.frame_id == depth.header.frame_id
        np.testing.assert_allclose(_image(msg), expected, rtol=1e-6)
    with DepthPredictor(tiny_model, input_size=SIZE) as plain:  # no confidence output: one line, nothing written
        with pytest.raises(InputError, match="no depth confidence output"):
            process_bag(
                plain, tmp_path / "in", tmp_path / "x", "/cam/image_raw", conversion=Conversion(confidence=True)
            )
    assert not (tmp_path / "x").exists()


def test_bag_cli_confidence_on_a_model_without_it_is_one_line_and_exit_2(tmp_path, tiny_checkpoint, capsys):
    pytest.importorskip("rosbags")
    from runtime.bag import main as bag_main

    _write_bag(tmp_path / "in", 80.0, frames=1)
    out = tmp_path / "out"
    args = ["--model", str(tiny_checkpoint), "--output", str(out), "--image-topic", "/cam/image_raw"]
    code = bag_main([str(tmp_path / "in"), *args, "--size", "56", "--metric-scale", "0.5", "--confidence"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "--confidence" in err[0] and "no depth confidence output" in err[0]


def test_attention_explicit_for_da3_and_refused_on_models_without_a_switch(small_metric):
    x = _network_input(picture(), (56, 70))
    with torch.no_grad():
        fused = small_metric(x)["depth"]
        small_metric.set_attention("explicit")
        explicit = small_metric(x)["depth"]
        small_metric.set_attention("fused")
    assert not torch.equal(fused, explicit)  # another computation ...
    assert float((fused - explicit).abs().max() / fused.std()) < 1e-4  # ... with the same numbers
    with DepthPredictor(small_metric, input_size=SIZE, attention="explicit", focal=80.0) as predictor:
        assert predictor.info()["attention"] == "explicit"
        kinds = {m.kind for m in small_metric.modules() if hasattr(m, "kind")}
        assert kinds == {"explicit"}
    small_metric.set_attention("fused")

    class Plain(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=1)

    with pytest.raises(InputError, match="Plain has no attention switch") as caught:
        DepthPredictor(Plain(), attention="explicit")
    assert "\n" not in str(caught.value)


def _node(predictor, **settings):
    from rosbags.typesys import Stores, get_typestore

    from runtime.ros.messages import MessageFactory
    from runtime.ros.node import NodeSettings
    from runtime.ros.node_core import NodeCore
    from tests.test_node_cameras import Log, Sink

    store = get_typestore(Stores.ROS2_HUMBLE)
    sinks: dict = {}
    log = Log()
    log.info = log.warning
    make = lambda msgtype, **fields: store.types[msgtype](**fields)  # noqa: E731
    core = NodeCore(
        NodeSettings(model="m", **settings).check(),
        predictor,
        None,
        MessageFactory(make),
        log,
        lambda key, topic: sinks.setdefault(topic, Sink()),
    )
    return core, sinks, log


def test_node_gives_metres_per_camera_from_its_camera_info_and_sky_as_inf(mono_metric):
    """A metres-per-focal model in the node: each camera's metres from its own camera info (the
    bag tool's path: FramePipeline), none for a camera without one, sky as +inf, no points there."""
    pytest.importorskip("rosbags")
    from tests.test_node_cameras import MESSAGES, T0

    cameras = "/cam0/image_raw /cam1/image_raw /cam2/image_raw"
    with DepthPredictor(mono_metric, input_size=SIZE) as predictor:
        core, sinks, log = _node(predictor, image_topics=cameras)
        for k, focal in enumerate((80.0, 160.0)):  # /cam2 has none
            core.camera_info(k)(MESSAGES.info(T0, f"cam{k}", [[focal, 0, 31.5], [0, focal, 23.5], [0, 0, 1]], (48, 64)))
        for k in range(3):
            core.image(k)(MESSAGES.image(T0, picture(), "bgr8", f"cam{k}_optical"))
        assert core.step(timeout=5) == 3
        sky = predictor.predict_batch([picture()], raw=True)[0].sky
    assert "/cam0/depth/relative_inverse" not in sinks and sinks["/cam2/depth/image"].messages == []
    (one,), (two,) = sinks["/cam0/depth/image"].messages, sinks["/cam1/depth/image"].messages
    a, b = _image(one), _image(two)
    assert one.header.frame_id == "cam0_optical" and np.isposinf(a[sky]).all() and np.isposinf(b[sky]).all()
    np.testing.assert_allclose(b[~sky], 2 * a[~sky], rtol=1e-5)  # twice the focal length, twice the metres
    (cloud,) = sinks["/cam0/depth/points"].messages
    assert cloud.width == int((~sky).sum())
    assert any("/cam2/image_raw: no usable camera info" in line and "focal length" in line for line in log.lines)


def test_node_depth_confidence_topic_when_asked_and_refused_without_the_output(small_metric, tiny_model):
    pytest.importorskip("rosbags")
    from runtime.ros.node import parse_args
    from tests.test_node_cameras import MESSAGES, T0

    assert parse_args(["--model", "m.onnx", "--confidence"])[0].confidence is True
    assert parse_args(["--model", "m.onnx"])[0].confidence is False
    with DepthPredictor(small_metric, input_size=SIZE) as predictor:
        core, sinks, _ = _node(predictor)
        assert "depth/confidence" not in sinks  # off by default
        core, sinks, _ = _node(predictor, confidence=True)
        core.camera_info(0)(MESSAGES.info(T0, "cam", [[80.0, 0, 31.5], [0, 80.0, 23.5], [0, 0, 1]], (48, 64)))
        core.image(0)(MESSAGES.image(T0, picture(), "bgr8", "cam_optical"))
        assert core.step(timeout=5) == 1
        expected = predictor.predict_batch([picture()], raw=True)[0].confidence
    (conf,) = sinks["depth/confidence"].messages
    (depth,) = sinks["depth/image"].messages
    assert conf.header.stamp == depth.header.stamp
    np.testing.assert_allclose(_image(conf), expected, rtol=1e-6)
    with DepthPredictor(tiny_model, input_size=SIZE) as plain:
        with pytest.raises(InputError, match="confidence: the model has no depth confidence output"):
            _node(plain, confidence=True, metric_scale=0.5)
