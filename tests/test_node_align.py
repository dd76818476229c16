"""The ROS 2 node's alignment logic, tested without rclpy on real rosbags message objects: its
parameters, the frame pipeline (metric models, constants, a sparse_depth fit, stabilising), time
matching and the mapping of tf2's documented lookup errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="real message objects come from rosbags' type store")

from rosbags.typesys import Stores, get_typestore

from runtime import DepthPredictor, InputError, ScaleShift
from runtime.metric import OutputKind
from runtime.pointcloud import Intrinsics
from runtime.ros.align import FramePipeline, LiveAligner, buffer_transforms, fixed_transform, tree_transforms
from runtime.ros.messages import Conversion, MessageFactory
from runtime.ros.node import NodeSettings, parse_args
from runtime.ros.tf import NoTransformError, TfTree, TransformTimeError
from tests import scenes
from tests.scene_bag import Messages
from tests.test_bag import decode_pointcloud2

STORE = get_typestore(Stores.ROS2_HUMBLE)
MESSAGES = Messages(STORE)
INTRINSICS = Intrinsics.from_matrix(scenes.K)
T0 = 1_700_000_000_000_000_000


def make(msgtype: str, **fields):
    return STORE.types[msgtype](**fields)


def metres_of(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)


def tree() -> TfTree:
    built = TfTree()
    for parent, child, translation, quaternion in scenes.CHAIN:
        built.add(parent, child, translation, quaternion)
    return built


def test_parameters_are_checked_one_by_one():
    assert NodeSettings(model="m.onnx", sparse_depth_type="points").check().sparse_depth_type == "points"
    for fields, match in [
        ({"sparse_depth_type": "lidar"}, "sparse_depth_type must be"),
        ({"output_kind": "disparity"}, "output_kind must be"),
        ({"max_time_offset": float("nan")}, "max_time_offset: 'nan' is out of range: give a number from 0 to 60"),
        ({"min_sensor_depth": 5.0, "max_sensor_depth": 1.0}, "min_sensor_depth/max_sensor_depth: the sensor depth"),
        ({"min_inliers": 1}, "min_inliers: '1' is out of range: give a whole number at least 2"),
        ({"hold": -1.0}, "hold: '-1.0' is out of range"),
        ({"held_out": 0.95}, "held_out: '0.95' is out of range"),
        ({"extrinsics": "0 0 0 0 0 0"}, "set sparse_depth_type too"),
        ({"extrinsics": "0 0 0", "sparse_depth_type": "points"}, "6 numbers"),
    ]:
        with pytest.raises(InputError, match=match):
            NodeSettings(model="m.onnx", **fields).check()
    settings, _ = parse_args(
        [
            "--model",
            "m.onnx",
            "--sparse-depth-type",
            "image",
            "--max-time-offset",
            "0.02",
            "--stabilize",
            "--output-kind",
            "metric",
            "--max-depth",
            "20",
            "--extrinsics",
            "0 0 0 0 0 0",
            "--depth-range",
            "0.5",
            "30",
            "--min-inliers",
            "50",
        ]
    )
    fit = settings.align_settings().fit  # the bag tool's options, the bag tool's rules
    assert (fit.min_depth, fit.max_depth, fit.min_inliers) == (0.5, 30.0, 50)
    assert (settings.sparse_depth_type, settings.max_time_offset, settings.stabilize) == ("image", 0.02, True)
    assert settings.predictor_options() == {"output_kind": "metric", "max_depth": 20.0}
    assert NodeSettings(model="m").predictor_options() == {"output_kind": None, "max_depth": None}


def test_a_metric_model_publishes_its_metres_on_depth_image_and_no_relative_topic(tmp_path):
    predictor = DepthPredictor(scenes.affine_onnx(tmp_path / "metric.onnx", max_depth=20.0))
    pipeline = NodeSettings(model="m").pipeline(predictor.output, None)
    assert pipeline.outputs == ["metric", "points"]
    depth = scenes.render(scenes.Scene())
    image = scenes.encode(depth / 20.0)
    prediction = predictor.predict(image)
    header = MESSAGES.header(T0, "camera_optical")
    messages = pipeline.messages(MessageFactory(make), header, image, prediction, INTRINSICS)
    assert set(messages) == {"metric", "points"}
    np.testing.assert_array_equal(metres_of(messages["metric"]), prediction)
    assert messages["metric"].encoding == "32FC1" and messages["metric"].header.frame_id == "camera_optical"
    xyz, _ = decode_pointcloud2(messages["points"])
    np.testing.assert_allclose(np.sort(xyz[:, 2]), np.sort(prediction.reshape(-1)), rtol=1e-6)
    for settings, match in [
        (NodeSettings(model="m", metric_scale=0.5), "metric_scale/metric_shift are for relative models"),
        (NodeSettings(model="m", stabilize=True), "stabilize is for relative models"),
    ]:
        with pytest.raises(InputError, match=match):
            settings.pipeline(predictor.output, None)


def test_a_relative_model_gets_metres_only_from_constants_or_a_fit():
    relative = NodeSettings(model="m").pipeline(OutputKind(), None)
    assert relative.outputs == ["relative"]
    constants = NodeSettings(model="m", metric_scale=0.5).pipeline(OutputKind(), None)
    assert constants.outputs == ["relative", "metric", "points"]
    with pytest.raises(InputError, match="not both"):
        FramePipeline(OutputKind(), Conversion(ScaleShift(0.5, 0, 0, 0)), None, LiveAligner(OutputKind(), "x", None))


def test_the_live_fit_matches_each_frame_to_the_nearest_scan_through_tf():
    settings = NodeSettings(model="m", sparse_depth_type="points")
    pipeline = settings.pipeline(OutputKind(), tree_transforms(tree()))
    assert pipeline.outputs == ["relative", "metric", "points"]
    aligner = pipeline.aligner
    rng = np.random.default_rng(0)
    errors = []
    for i, (gain, offset) in enumerate([(1.5, 0.2), (3.0, -0.5), (0.8, 1.0)]):
        stamp = T0 + i * 100_000_000
        depth = scenes.render(scenes.Scene(), camera=(0, 0, 0.05 * i))
        image, relative = scenes.relative_frame(depth, gain, offset)
        aligner.add_sensor(MESSAGES.cloud(stamp + 30_000_000, scenes.Lidar().scan(depth, rng)))
        aligner.add_sensor(MESSAGES.cloud(stamp - 70_000_000, rng.normal(size=(100, 3)).astype(np.float32)))
        header = MESSAGES.header(stamp, "camera_optical")
        messages = pipeline.messages(MessageFactory(make), header, image, relative.astype(np.float32), INTRINSICS)
        assert set(messages) == {"relative", "metric", "points"}
        metres = metres_of(messages["metric"])
        errors.append(np.mean(np.abs(metres[1:] - depth[1:]) / depth[1:]))
    assert max(errors) < 0.02 and list(aligner.log.statuses) == ["fit"]
    late = MESSAGES.header(T0 + 2_000_000_000, "camera_optical")
    out = pipeline.messages(MessageFactory(make), late, image, relative.astype(np.float32), INTRINSICS)
    assert set(out) == {"relative"}  # nothing within 50 ms and past the hold: no metres, never a guess
    assert aligner.log.records[-1]["reason"] == "no sensor message within 50 ms (nearest 1770 ms)"
    # Scans are kept for 2 s behind the newest: one 3 s later leaves the first frame's scan gone.
    aligner.add_sensor(MESSAGES.cloud(T0 + 3_000_000_000, np.ones((5, 3), np.float32)))
    first = MESSAGES.header(T0, "camera_optical")
    pipeline.messages(MessageFactory(make), first, image, relative.astype(np.float32), INTRINSICS)
    assert aligner.log.records[-1]["reason"] == "no sensor message within 50 ms (nearest 3000 ms)"


def depth_camera_scene():
    """A node's pipeline fed by a depth camera placed by fixed extrinsics (no tf), and one scene:
    its depth, the colour image with the network's relative output, and the depth image in mm."""
    settings = NodeSettings(model="m", sparse_depth_type="image", extrinsics="0 0 0 0 0 0")
    settings.check()
    pipeline = settings.pipeline(OutputKind(), fixed_transform(np.eye(4)))
    depth = scenes.render(scenes.Scene())
    image, relative = scenes.relative_frame(depth, 2.0, 0.3)
    return pipeline, depth, image, relative, np.rint(depth * 1000).astype("<u2")


def test_extrinsics_and_a_depth_camera_without_tf():
    pipeline, depth, image, relative, millimetres = depth_camera_scene()
    pipeline.aligner.add_sensor(MESSAGES.image(T0 + 5_000_000, millimetres, "16UC1", "depth_optical"))
    header = MESSAGES.header(T0, "camera_optical")
    # Before the depth camera's own camera info: no metres (never the colour camera's intrinsics).
    early = pipeline.messages(MessageFactory(make), header, image, relative.astype(np.float32), INTRINSICS)
    assert "metric" not in early and "own camera info" in pipeline.aligner.log.records[-1]["reason"]
    pipeline.aligner.set_sensor_info(INTRINSICS)
    messages = pipeline.messages(MessageFactory(make), header, image, relative.astype(np.float32), INTRINSICS)
    metres = metres_of(messages["metric"])
    assert np.mean(np.abs(metres[1:] - depth[1:]) / depth[1:]) < 0.01


def test_tf2_lookup_errors_become_counted_reasons():
    class LookupException(Exception):
        pass

    class ExtrapolationException(Exception):
        pass

    def lookup(target, source, time):
        if source == "nowhere":
            raise LookupException('"nowhere" passed to lookupTransform argument source_frame does not exist')
        if time > 10:
            raise ExtrapolationException("Lookup would require extrapolation into the future")
        t = SimpleNamespace(x=1.0, y=2.0, z=3.0)
        r = SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0)
        return SimpleNamespace(transform=SimpleNamespace(translation=t, rotation=r))

    transforms = buffer_transforms(lookup, lambda ns: ns, (LookupException,), (ExtrapolationException,))
    np.testing.assert_allclose(transforms("camera", "lidar", 5)[:3, 3], [1, 2, 3])
    with pytest.raises(NoTransformError, match="no transform between 'nowhere' and 'camera'"):
        transforms("camera", "nowhere", 5)
    with pytest.raises(TransformTimeError, match="extrapolation"):
        transforms("camera", "lidar", 50)
    aligner = LiveAligner(OutputKind(), "sensor_msgs/msg/PointCloud2", transforms)
    aligner.add_sensor(MESSAGES.cloud(T0, np.ones((50, 3), np.float32), frame_id="nowhere"))
    result = aligner.align(MESSAGES.header(T0, "camera"), np.ones((4, 4), np.float32), INTRINSICS)
    assert result.depth is None and result.record["reason"].startswith("no transform: no transform between")
    assert aligner.log.reasons == {"no transform": 1}


def test_a_depth_camera_message_takes_its_own_stamps_camera_info_in_the_node():
    """As the bag tool does (runtime.ros.stamps.ByStamp): a newer camera info of another stamp (here
    one that cannot be used) does not take away the one a depth image was recorded with."""
    pipeline, depth, image, relative, millimetres = depth_camera_scene()
    sensor_stamp = T0 + 5_000_000
    pipeline.aligner.add_sensor(MESSAGES.image(sensor_stamp, millimetres, "16UC1", "depth_optical"))
    pipeline.aligner.set_sensor_info(INTRINSICS, sensor_stamp)
    pipeline.aligner.set_sensor_info(None, T0 + 40_000_000)  # newer, another stamp, unusable
    header = MESSAGES.header(T0, "camera_optical")
    messages = pipeline.messages(MessageFactory(make), header, image, relative.astype(np.float32), INTRINSICS)
    metres = metres_of(messages["metric"])
    assert np.mean(np.abs(metres[1:] - depth[1:]) / depth[1:]) < 0.01
    assert pipeline.aligner.sensor_intrinsics is None  # the newest, for messages without their own
