"""The node's core, built and driven without rclpy: real message objects, a real model, the tf
chain of the test robot; its callbacks fed as rclpy would, its worker's step run by hand."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="real message objects come from rosbags' type store")

from runtime import DepthPredictor
from runtime.ros.align import tree_transforms
from runtime.ros.messages import MessageFactory
from runtime.ros.node import NodeSettings
from runtime.ros.node_core import NodeCore
from tests import scenes
from tests.test_node_align import MESSAGES, T0, make, metres_of, tree
from tests.test_node_cameras import Log, Sink

PERIOD = 100_000_000


def test_the_core_publishes_each_cameras_fitted_metres_without_rclpy(tmp_path):
    model = scenes.affine_onnx(tmp_path / "relative.onnx")
    settings = NodeSettings(model=str(model), sparse_depth_type="points", min_inliers=30).check()
    sinks: dict[str, Sink] = {}
    log = Log()
    log.info = log.warning
    core = NodeCore(
        settings,
        DepthPredictor(model),
        tree_transforms(tree()),
        MessageFactory(make),
        log,
        lambda key, topic: sinks.setdefault(topic, Sink()),
    )
    assert sorted(sinks) == ["depth/image", "depth/points", "depth/relative_inverse"]
    assert core.sensor_msgtype == "sensor_msgs/msg/PointCloud2"
    rng = np.random.default_rng(0)
    core.camera_info(0)(MESSAGES.info(T0, "camera_optical"))
    truths = []
    for i, (gain, offset) in enumerate([(1.5, 0.2), (3.0, -0.5), (0.8, 1.0)]):
        stamp = T0 + i * PERIOD
        depth = scenes.render(scenes.Scene(), camera=(0, 0, 0.05 * i))
        image, _ = scenes.relative_frame(depth, gain, offset)
        core.sensor(MESSAGES.cloud(stamp + 4_000_000, scenes.Lidar().scan(depth, rng)))
        core.image(0)(MESSAGES.image(stamp, image))
        assert core.step(timeout=5) == 1
        truths.append(depth)
    metres = [metres_of(m) for m in sinks["depth/image"].messages]
    assert len(metres) == 3 and len(sinks["depth/points"].messages) == 3
    for got, truth in zip(metres, truths, strict=True):
        assert np.mean(np.abs(got[1:] - truth[1:]) / truth[1:]) < 0.02
    assert core.aligners[0].aligner.settings.fit.min_inliers == 30  # the node's --min-inliers
    assert "metric depth: 3 fitted, 0 held, 0 without" in core.status()
    assert core.step(timeout=0.01) == 0  # nothing new: nothing published
    core.close()


def test_the_core_says_once_when_the_sensor_can_never_give_metres(tmp_path):
    model = scenes.affine_onnx(tmp_path / "relative.onnx")
    settings = NodeSettings(model=str(model), sparse_depth_type="image").check()
    log = Log()
    errors: list[str] = []
    log.error = lambda text, **_: errors.append(text)
    core = NodeCore(settings, DepthPredictor(model), None, MessageFactory(make), log, lambda *_: Sink())
    for k in range(3):  # an 8-bit "depth" image: no metres whatever the transforms
        core.sensor(MESSAGES.image(T0 + k, np.full((8, 8), 3, np.uint8), "8UC1"))
    assert len(errors) == 1 and "sparse_depth can never give metres as sent" in errors[0] and "'8UC1'" in errors[0]


def test_the_bag_tool_and_the_node_give_a_frame_the_same_metres_through_one_sensor_interface(tmp_path):
    """One bag's frames through the bag tool (its sensor index: ``BagAligner.camera``) and its
    messages fed in bag order to the node's core (its live buffer: ``LiveAligner``): the frame
    pipeline calls both the same way, so each frame gets the same fit and the same metres."""
    from runtime.ros.align import SensorAligner
    from runtime.ros.bag import process_bag
    from runtime.ros.bag_align import CameraSensor
    from tests.robot_bags import Robot
    from tests.scene_bag import CAMERA, LIDAR, START
    from tests.test_bag import read_topics

    model = scenes.affine_onnx(tmp_path / "relative.onnx")
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    for i, (gain, offset) in enumerate([(1.5, 0.2), (3.0, -0.5), (0.8, 1.0)]):
        robot.frame(i, gain=gain, offset=offset)
    bag = robot.write(tmp_path / "in")
    summary = process_bag(DepthPredictor(model), bag, tmp_path / "out", CAMERA, align_to=LIDAR)
    assert summary.metric == 3
    from_bag = [metres_of(m) for _, _, m in read_topics(tmp_path / "out")["/cam/depth/image"]]

    sinks: dict[str, Sink] = {}
    settings = NodeSettings(model=str(model), sparse_depth_type="points").check()
    publisher = lambda key, topic: sinks.setdefault(topic, Sink())  # noqa: E731
    core = NodeCore(settings, DepthPredictor(model), tree_transforms(tree()), MessageFactory(make), Log(), publisher)
    replay_into(core, robot)
    from_node = [metres_of(m) for m in sinks["depth/image"].messages]
    assert len(from_node) == len(from_bag) == 3
    for node, bag_metres, truth in zip(from_node, from_bag, robot.depth, strict=True):
        np.testing.assert_allclose(node, bag_metres, rtol=1e-6)
        assert np.mean(np.abs(node[1:] - truth[1:]) / truth[1:]) < 0.02
    live = core.cameras[0].pipeline.aligner
    assert isinstance(live, SensorAligner) and live.log.statuses == {"fit": 3}
    bag_side = summary.alignment.camera(CAMERA)
    assert isinstance(bag_side, CameraSensor) and isinstance(bag_side, SensorAligner)
    assert bag_side.log.statuses == {"fit": 3}


def replay_into(core: NodeCore, robot) -> None:
    """A recorded robot's messages, in stamp order, into the node's callbacks (camera 0), a worker
    step after each frame once its scan is in; then the node is closed."""
    from tests.scene_bag import CAMERA, CAMERA_INFO, LIDAR

    events = sorted(robot.events, key=lambda e: (e[0], e[1]))
    for k, (_, _, topic, _, message) in enumerate(events):
        {CAMERA_INFO: core.camera_info(0), LIDAR: core.sensor, CAMERA: core.image(0)}.get(topic, lambda m: None)(
            message
        )
        if k + 1 == len(events) or events[k + 1][2] == CAMERA:  # a frame's scan is in: the worker's step
            core.step(timeout=5)
    core.close()
