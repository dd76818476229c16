"""The ROS 2 node with a model of depth up to scale (DA3-Small here), tested without rclpy as the
other node tests are: its core fed real message objects and a real DA3 snapshot at a small size.
Its metres come from a scale-only fit in depth per frame to ``sparse_depth``, the bag tool's
``--align-to`` code path; without a sensor it refuses in one line, exit code 2."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="real message objects come from rosbags' type store")

from commands.runner import command
from runtime import DepthPredictor, InputError
from runtime.ros.align import tree_transforms
from runtime.ros.messages import MessageFactory
from runtime.ros.node import NodeSettings, check_node_output, load_predictor
from runtime.ros.node_core import NodeCore
from tests import scenes
from tests.da3_fixtures import da3_state_dict, write_snapshot
from tests.test_node_align import make, metres_of, tree
from tests.test_node_cameras import Log, Sink
from tests.test_robot_node import replay_into

SIZE = 56  # network short side: small and fast
SCALE = 3.0  # the sensor sees the network's depth times this
GAINS = [(1.5, 0.2), (3.0, -0.5), (0.8, 1.0)]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return write_snapshot(tmp_path_factory.mktemp("da3") / "DA3-SMALL", "da3-small", da3_state_dict("da3-small"))


def sensor_points(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every 3rd pixel's ``depth`` with 1 % range noise, as a lidar behind the test robot's tf
    chain sees it (the velodyne frame)."""
    rows, cols = np.mgrid[0 : depth.shape[0] : 3, 0 : depth.shape[1] : 3].reshape(2, -1)
    z = depth[rows, cols] * (1 + 0.01 * rng.standard_normal(rows.size))
    k = scenes.K
    camera = np.stack([(cols - k[0, 2]) / k[0, 0] * z, (rows - k[1, 2]) / k[1, 1] * z, z], axis=1)
    lidar_from_camera = np.linalg.inv(scenes.camera_from_lidar())
    return (camera @ lidar_from_camera[:3, :3].T + lidar_from_camera[:3, 3]).astype(np.float32)


def test_the_node_and_the_bag_tool_give_depth_up_to_scale_the_same_scale_only_metres(tmp_path, snapshot):
    """A bag whose lidar sees the network's own depth times ``SCALE``: the bag tool (``--align-to``)
    and the node's core (``sparse_depth_type:=points``, its frame fed in bag order) publish the same
    metres on ``depth/image``, no relative topic, and the fit is a scale alone in depth: the metres
    are the network's depth times one number per frame (an affine fit in disparity would bend them),
    and that number is the sensor's ``SCALE``."""
    from runtime.ros.bag import process_bag
    from tests.robot_bags import Robot
    from tests.scene_bag import CAMERA, CLOUD, LIDAR, START
    from tests.test_bag import read_topics

    settings = NodeSettings(model=str(snapshot), input_size=SIZE, sparse_depth_type="points").check()
    predictor = load_predictor(settings)  # what the node's rclpy shell loads
    assert predictor.output_kind == "depth_up_to_scale"
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    rng = np.random.default_rng(0)
    network = []
    for i, (gain, offset) in enumerate(GAINS):
        image, _ = scenes.relative_frame(scenes.render(scenes.Scene(), camera=(0, 0, 0.05 * i)), gain, offset)
        stamp = robot.frame(i, image=image, lidar_delay=None)
        network.append(predictor.predict(image))
        cloud = robot.messages.cloud(stamp + 3_000_000, sensor_points(SCALE * network[-1], rng))
        robot.add(stamp + 3_000_000, LIDAR, CLOUD, cloud)
    bag = robot.write(tmp_path / "in")
    with DepthPredictor(snapshot, input_size=SIZE) as bag_predictor:
        summary = process_bag(bag_predictor, bag, tmp_path / "out", CAMERA, align_to=LIDAR)
    topics = read_topics(tmp_path / "out")
    assert summary.metric == 3 and "/cam/depth/relative_inverse" not in topics
    from_bag = [metres_of(m) for _, _, m in topics["/cam/depth/image"]]

    sinks: dict[str, Sink] = {}
    publisher = lambda key, topic: sinks.setdefault(topic, Sink())  # noqa: E731
    core = NodeCore(settings, predictor, tree_transforms(tree()), MessageFactory(make), Log(), publisher)
    assert sorted(sinks) == ["depth/image", "depth/points"]  # no relative topic, as the bag tool
    replay_into(core, robot)
    predictor.close()
    from_node = [metres_of(m) for m in sinks["depth/image"].messages]
    assert len(from_node) == len(from_bag) == 3 and len(sinks["depth/points"].messages) == 3
    live = core.cameras[0].pipeline.aligner
    assert live.log.statuses == {"fit": 3} and live.aligner.settings.fit.shift is False
    for node, bag_metres, depth in zip(from_node, from_bag, network, strict=True):
        np.testing.assert_allclose(node, bag_metres, rtol=1e-6)
        ratio = node / depth
        assert np.ptp(ratio) / np.mean(ratio) < 1e-4  # one scale for the whole frame
        assert abs(np.mean(ratio) / SCALE - 1) < 0.005  # the sensor's scale, through 1 % noise
    assert all(record["shift"] == 0.0 for record in live.log.records)
    assert "metric depth: 3 fitted, 0 held, 0 without" in core.status()


def test_the_node_refuses_depth_up_to_scale_without_a_sensor_in_one_line(snapshot, capsys):
    """The node's equivalent of the bag tool's refusal without ``--align-to``: one line naming
    ``sparse_depth_type``, exit code 2 through the commands' runner, the model closed."""
    settings = NodeSettings(model=str(snapshot), input_size=SIZE).check()

    @command("python -m runtime.ros2")
    def main(argv=None) -> int:  # run_node's steps before rclpy serves anything
        load_predictor(settings)
        return 0

    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "depth up to an unknown scale" in err[0] and "(sparse_depth_type)" in err[0], err
    with DepthPredictor(snapshot, input_size=SIZE) as predictor:
        kind = predictor.output
    for fields, match in [
        ({"sparse_depth_type": "points", "stabilize": True}, "stabilize is for relative models"),
        ({"metric_scale": 0.5}, "depth up to an unknown scale"),
    ]:
        with pytest.raises(InputError, match=match):
            check_node_output(kind, NodeSettings(model="m", **fields))
    check_node_output(kind, NodeSettings(model="m", sparse_depth_type="image"))
