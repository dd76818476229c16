"""Depth Anything 3 in the runtime: what the numbers are (depth up to scale, depth per focal length),
metres only with a focal length, the family/variant/licence in ``info()`` and every artefact, the
ONNX export run by ONNX Runtime, and the bag tool's metres from each frame's camera info."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from commands.errors import InputError
from runtime import DepthPredictor
from runtime.backends.openvino import openvino_core
from tests.da3_fixtures import da3_state_dict, write_snapshot
from train.models.da3 import DA3_VARIANTS, METRES_PER_FOCAL, DepthAnything3

SIZE = 56  # network short side: small and fast; the numbers' meaning does not depend on it


@pytest.fixture(scope="module")
def small_snapshot(tmp_path_factory):
    return write_snapshot(tmp_path_factory.mktemp("da3") / "DA3-SMALL", "da3-small", da3_state_dict("da3-small"))


@pytest.fixture(scope="module")
def metric_small():
    """DA3-Small's network labelled as a depth-per-focal-length model (as DA3Metric-Large is): what the
    runtime does with the output depends on its kind, not on the network's size."""
    torch.manual_seed(0)
    spec = dataclasses.replace(DA3_VARIANTS["da3-small"], name="da3metric-test", output=METRES_PER_FOCAL)
    model = DepthAnything3(spec).eval()
    model.load_state_dict(da3_state_dict("da3-small"))
    return model


def picture(index: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 5 + index * 20) % 256, (y * 7) % 256, ((x + y) * 3 + index * 50) % 256], axis=-1)
    return image.astype(np.uint8)


def test_snapshot_predictor_says_what_it_outputs(small_snapshot):
    with DepthPredictor(small_snapshot, input_size=SIZE) as predictor:
        depth = predictor.predict(picture())
        info = predictor.info()
    assert depth.shape == (48, 64) and depth.dtype == np.float32 and (depth > 0).all()
    assert predictor.output_kind == "depth_up_to_scale"
    assert (info["family"], info["variant"], info["licence"]) == ("depth-anything-3", "da3-small", "Apache-2.0")
    with pytest.raises(InputError, match="focal="):
        DepthPredictor(small_snapshot, input_size=SIZE, focal=500.0)


def test_metres_per_focal_needs_the_focal_length_and_scales_with_it(metric_small):
    image = picture()
    with DepthPredictor(metric_small, input_size=SIZE) as predictor:
        assert predictor.output_kind == "metres_per_focal"
        with pytest.raises(InputError, match="metres need the camera's focal length"):
            predictor.predict(image)
        raw = predictor.predict_batch([image], raw=True)[0]
        metres = predictor.predict(image, focal=300.0)
        doubled = predictor.predict(image, intrinsics=np.array([[600.0, 0, 32], [0, 600.0, 24], [0, 0, 1]]))
    # The network sees the image at 56x74 (short side 56): focal 300 px there is 300 * 56/48 ...
    h, w = predictor.network_size(image)
    focal_network = 0.5 * (300.0 * w / 64 + 300.0 * h / 48)
    np.testing.assert_allclose(metres, raw * focal_network / 300.0, rtol=1e-6)
    np.testing.assert_allclose(doubled, 2 * metres, rtol=1e-6)
    for bad in (0.0, -5.0, float("nan"), float("inf"), "wide", True, np.bool_(True), "300", b"300"):
        with pytest.raises(InputError, match="focal length"):
            DepthPredictor(metric_small, input_size=SIZE, focal=bad)
    with DepthPredictor(metric_small, input_size=SIZE) as predictor:
        for bad in (True, "600"):  # a bool was 1 px, a string was read as a number
            with pytest.raises(InputError, match=r"^the focal length fx must be a number of pixels, got "):
                predictor.predict(image, focal=bad)
        with pytest.raises(InputError, match="intrinsics must be numbers"):
            predictor.predict(image, intrinsics=("300", "300", "32", "24"))
        # focal= per call to stream, as to predict (a TypeError before); checked at the call
        streamed = list(predictor.stream([image, image], focal=300.0))
        with pytest.raises(InputError, match="focal length"):
            predictor.stream([image], focal=True)
    for depth in streamed:
        np.testing.assert_allclose(depth, metres, rtol=1e-6)


def test_onnx_and_openvino_exports_carry_family_variant_licence_and_kind(tmp_path, small_snapshot):
    onnx = pytest.importorskip("onnx")
    from export.onnx import main as export_main

    out = tmp_path / "da3s.onnx"
    assert export_main(["--checkpoint", str(small_snapshot), "--size", "56x70", "--output", str(out)]) == 0
    written = onnx.load(str(out))
    # The command's export carries the any-view network's depth confidence after depth, like export_onnx
    # of the network does (the command once exported its deployable form, which has depth alone).
    assert [o.name for o in written.graph.output] == ["depth", "depth_conf"]
    meta = {p.key: p.value for p in written.metadata_props}
    assert meta["family"] == "depth-anything-3" and meta["variant"] == "da3-small"
    assert meta["extra_outputs"] == "depth_conf"
    assert meta["output_kind"] == "depth_up_to_scale" and meta["licence"] == "Apache-2.0"
    sidecar = json.loads((tmp_path / "da3s.onnx.json").read_text())
    assert sidecar["family"] == "depth-anything-3" and sidecar["output_kind"] == "depth_up_to_scale"
    with DepthPredictor(out) as ort, DepthPredictor(small_snapshot, fixed_size=(56, 70)) as pt:
        assert ort.backend == "onnxruntime" and ort.output_kind == "depth_up_to_scale"
        assert ort.info()["variant"] == "da3-small"
        a, b = ort.predict(picture()), pt.predict(picture())
    assert np.abs(a - b).max() / b.std() < 1e-3
    assert a.confidence is not None and np.abs(a.confidence - b.confidence).max() / b.confidence.std() < 1e-3

    pytest.importorskip("openvino")
    from export.openvino import main as openvino_main

    xml = tmp_path / "da3s.xml"
    assert openvino_main(["--onnx", str(out), "--fp32", "--output", str(xml)]) == 0
    ir = openvino_core().read_model(str(xml))
    assert ir.get_rt_info(["dav2_edge", "family"]).astype(str) == "depth-anything-3"
    assert ir.get_rt_info(["dav2_edge", "variant"]).astype(str) == "da3-small"
    with DepthPredictor(xml) as vino:
        assert (vino.output_kind, vino.info()["family"], vino.info()["licence"]) == (
            "depth_up_to_scale",
            "depth-anything-3",
            "Apache-2.0",
        )
        assert np.abs(vino.predict(picture()) - a).max() / a.std() < 1e-3


def _write_bag(path, focal: float | None, frames: int = 2) -> None:
    """A ROS 2 bag of ``frames`` 48x64 bgr8 images on /cam/image_raw and, with ``focal``, a camera
    info whose K has that focal length."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types

    def header(t: int):
        stamp = types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9)
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id="cam_optical")

    start = 1_700_000_000_000_000_000
    with Writer(path, version=8) as writer:
        image_conn = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=store)
        if focal is not None:
            info_conn = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=store)
            roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            k = np.array([focal, 0, 31.5, 0, focal, 23.5, 0, 0, 1], np.float64)
            info = types["sensor_msgs/msg/CameraInfo"](
                header=header(start), height=48, width=64, distortion_model="plumb_bob", d=np.zeros(5), k=k,
                r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0, roi=roi,
            )  # fmt: skip
            writer.write(info_conn, start, store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
        for i in range(frames):
            t = start + (i + 1) * 100_000_000
            pixels = picture(i)
            msg = types["sensor_msgs/msg/Image"](
                header=header(t), height=48, width=64, encoding="bgr8", is_bigendian=0, step=64 * 3,
                data=pixels.reshape(-1),
            )  # fmt: skip
            writer.write(image_conn, t, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def _depth_images(path) -> dict[str, list[np.ndarray]]:
    from rosbags.highlevel import AnyReader

    out: dict[str, list[np.ndarray]] = {}
    with AnyReader([path]) as reader:
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype == "sensor_msgs/msg/Image" and msg.encoding == "32FC1":
                out.setdefault(conn.topic, []).append(np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, -1))
            elif conn.topic != "/cam/image_raw":
                out.setdefault(conn.topic, [])
    return out


def test_bag_metres_from_camera_info_double_with_its_focal(tmp_path, metric_small):
    pytest.importorskip("rosbags")
    from runtime.ros.bag import process_bag

    results = {}
    with DepthPredictor(metric_small, input_size=SIZE) as predictor:
        for name, focal in (("f", 80.0), ("2f", 160.0), ("none", None)):
            _write_bag(tmp_path / name, focal)
            summary = process_bag(
                predictor, tmp_path / name, tmp_path / f"{name}.out", "/cam/image_raw", warn=lambda text: None
            )
            results[name] = (summary, _depth_images(tmp_path / f"{name}.out"))
    single, double = results["f"][1], results["2f"][1]
    assert "/cam/depth/relative_inverse" not in single and "/cam/depth/relative_inverse" not in double
    assert len(single["/cam/depth/image"]) == 2
    for a, b in zip(single["/cam/depth/image"], double["/cam/depth/image"], strict=True):
        assert a.shape == (48, 64) and np.isfinite(a).all() and (a > 0).all()
        np.testing.assert_allclose(b, 2 * a, rtol=1e-5)
    summary, none = results["none"]
    assert "/cam/depth/image" not in none and "/cam/depth/relative_inverse" not in none
    assert summary.frames_without_camera_info == 2


def test_depth_up_to_scale_aligns_with_a_scale_only_fit_in_depth():
    """A DA3 network's depth is right up to one scale: the per-frame fit finds that scale alone
    (an affine fit in disparity would bend the depth), and without a fit there are no metres."""
    from runtime.align.frame import FrameAligner, SparseSamples
    from runtime.metric import OutputKind

    rng = np.random.default_rng(0)
    truth = 2.0 + 18.0 * rng.random((40, 60))  # metres
    prediction = (truth / 7.5).astype(np.float32)  # the network's depth: right up to the scale 7.5
    sparse = np.zeros_like(truth)
    picks = rng.random(truth.shape) < 0.1
    sparse[picks] = truth[picks] * (1 + 0.01 * rng.standard_normal(picks.sum()))
    aligner = FrameAligner(OutputKind("depth_up_to_scale"))
    assert aligner.settings.fit.shift is False
    result = aligner.align(prediction, SparseSamples.from_map(sparse), 0)
    assert result.status == "fit" and result.record["shift"] == 0.0
    assert np.nanmax(np.abs(result.depth - truth) / truth) < 0.02
    fresh = FrameAligner(OutputKind("depth_up_to_scale"))
    assert fresh.align(prediction, None, 0, "no scan").depth is None


def test_export_of_a_checkpoint_named_as_another_variant_is_one_line_and_exit_2(tmp_path, small_snapshot, capsys):
    from export.onnx import main as export_main

    weights = tmp_path / "bare" / "model.safetensors"  # the weights without their config.json
    weights.parent.mkdir()
    shutil.copy(small_snapshot / "model.safetensors", weights)
    code = export_main(["--checkpoint", str(weights), "--variant", "da3-base", "--output", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "x.onnx").exists()
    assert len(err) == 1 and "does not fit Depth Anything 3 da3-base" in err[0] and "da3-small" in err[0]
    code = export_main(["--checkpoint", str(small_snapshot), "--variant", "da3mono-large"])
    assert code == 2 and "names da3-small, but da3mono-large was asked for" in capsys.readouterr().err


@pytest.mark.slow
def test_bag_cli_with_a_da3metric_large_snapshot(tmp_path):
    """The published layout end to end: ``--model DA3METRIC-LARGE/`` (ViT-L weights, 1.3 GB written here)."""
    from runtime.bag import main as bag_main
    from tests.da3_fixtures import keys

    state = da3_state_dict("da3mono-large")  # DA3Metric-Large has the same keys
    assert [k for k, _ in keys("da3mono-large")] == list(state)
    snapshot = write_snapshot(tmp_path / "DA3METRIC-LARGE", "da3metric-large", state)
    del state
    metres = {}
    for name, focal in (("f", 80.0), ("2f", 160.0), ("none", None)):
        _write_bag(tmp_path / name, focal, frames=1)
        out = tmp_path / f"{name}.out"
        args = [str(tmp_path / name), "--model", str(snapshot), "--output", str(out)]
        assert bag_main([*args, "--image-topic", "/cam/image_raw", "--size", "56"]) == 0
        metres[name] = _depth_images(out)
    assert "/cam/depth/relative_inverse" not in metres["f"]
    np.testing.assert_allclose(metres["2f"]["/cam/depth/image"][0], 2 * metres["f"]["/cam/depth/image"][0], rtol=1e-5)
    assert "/cam/depth/image" not in metres["none"]


def test_bag_cli_refuses_depth_up_to_scale_without_align_to(tmp_path, small_snapshot, capsys):
    pytest.importorskip("rosbags")
    from runtime.bag import main as bag_main

    _write_bag(tmp_path / "in", 80.0, frames=1)
    out = tmp_path / "out"
    args = ["--model", str(small_snapshot), "--output", str(out), "--image-topic", "/cam/image_raw", "--size", "56"]
    code = bag_main([str(tmp_path / "in"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "depth up to an unknown scale" in err[0] and "--align-to" in err[0]


def test_node_refuses_depth_up_to_scale_without_sparse_depth_in_one_line():
    """The bag tool's rule under the node's parameter names (the node's run: tests/test_node_da3.py)."""
    from runtime.metric import OutputKind
    from runtime.ros.node import NodeSettings, check_node_output

    plain, aligned = NodeSettings(model="m"), NodeSettings(model="m", sparse_depth_type="points")
    with pytest.raises(InputError, match=r"depth up to an unknown scale .*\(sparse_depth_type\)"):
        check_node_output(OutputKind("depth_up_to_scale"), plain)
    check_node_output(OutputKind("depth_up_to_scale"), aligned)  # a scale-only fit per frame
    check_node_output(OutputKind("metres_per_focal"), plain)  # metres from each camera's camera info
    with pytest.raises(InputError, match=r"drop the per-frame alignment \(sparse_depth_type\)"):
        check_node_output(OutputKind("metres_per_focal"), aligned)
    check_node_output(OutputKind("relative"), plain)
    check_node_output(OutputKind("metric", 20.0), plain)


def test_requests_that_contradict_a_da3_model_are_refused(small_snapshot, metric_small):
    with pytest.raises(InputError, match="depth up to an unknown scale"):
        DepthPredictor(small_snapshot, input_size=SIZE, max_depth=20.0)
    with DepthPredictor(metric_small, input_size=SIZE, focal=100.0) as predictor:
        with pytest.raises(InputError, match="stabilize is for relative models"):
            next(predictor.stream([picture()], stabilize=True))
        assert predictor.info()["output"]["focal"] == [100.0, 100.0]
        with pytest.raises(InputError, match="not both"):
            predictor.predict(picture(), focal=100.0, intrinsics=(100.0, 100.0, 32.0, 24.0))


def test_verify_fails_an_artefact_whose_extra_output_is_not_finite(tmp_path, small_snapshot):
    """The reference holds depth only; an engine or IR whose depth confidence overflowed (an FP16
    exp: inf) must still fail its check, not pass on its depth (found in review of the TensorRT path)."""
    onnx = pytest.importorskip("onnx")
    from export.onnx import main as export_main
    from runtime.backends.onnxruntime import OnnxRuntimeBackend
    from runtime.reference import load_reference, reference_path, verify_backend

    out = tmp_path / "da3s.onnx"
    assert export_main(["--checkpoint", str(small_snapshot), "--size", "56x70", "--output", str(out)]) == 0
    reference = load_reference(reference_path(out))
    with OnnxRuntimeBackend(out) as backend:
        assert backend.extra_outputs == ("depth_conf",)
        assert verify_backend(backend, reference).passed
    model = onnx.load(str(out))
    producer = next(n for n in model.graph.node if "depth_conf" in n.output)
    producer.output[list(producer.output).index("depth_conf")] = "depth_conf_raw"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(np.inf, np.float32), "overflow"))
    model.graph.node.append(onnx.helper.make_node("Mul", ["depth_conf_raw", "overflow"], ["depth_conf"]))
    broken = tmp_path / "overflowed.onnx"
    onnx.save(model, str(broken))
    with OnnxRuntimeBackend(broken) as backend:
        result = verify_backend(backend, reference)
    assert not result.passed and "non-finite ['depth_conf']" in result.note


def test_verify_of_a_da3_export_reports_abs_rel_after_a_scale_fit_in_depth(tmp_path, small_snapshot, capsys):
    """The export's reference names the output kind; an older reference without it takes the
    artefact's own (its ONNX metadata), not the relative models' fit in disparity."""
    from export.onnx import main as export_main
    from runtime.reference import load_reference, save_reference
    from runtime.verify import main as verify_main

    out = tmp_path / "da3s.onnx"
    assert export_main(["--checkpoint", str(small_snapshot), "--size", "56x56", "--output", str(out)]) == 0
    reference = load_reference(tmp_path / "da3s.onnx.reference.npz")
    assert reference.meta["output_kind"] == "depth_up_to_scale"
    capsys.readouterr()
    for written in (True, False):
        if not written:  # as exports before this wrote it
            del reference.meta["output_kind"]
            save_reference(tmp_path / "da3s.onnx.reference.npz", reference)
        assert verify_main([str(out)]) == 0
        said = capsys.readouterr().out
        assert "AbsRel (scale fit in depth)" in said and "disparity" not in said, said
