"""Time as robots have it: sensor stamps out of order within a window are matched; a clock that
jumps back or a far-future stamp resets the node's buffer (said once) and never stops its pruning;
a camera whose frame stamps run slightly backwards keeps every lidar fit in the bag tool."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="real message objects come from rosbags' type store")

from runtime import DepthPredictor
from runtime.metric import OutputKind
from runtime.ros.align import MAX_SENSOR_MESSAGES, LiveAligner, tree_transforms
from runtime.ros.bag import process_bag
from runtime.ros.cameras import node_cameras
from runtime.ros.node import CAMERA_INFOS, camera_info_receiver
from tests import scenes
from tests.robot_bags import PERIOD, Robot
from tests.scene_bag import CAMERA, LIDAR, START
from tests.test_bag_align import METRIC, abs_rel, images
from tests.test_node_align import INTRINSICS, MESSAGES, tree

SECOND = 1_000_000_000


def live(warned: list[str]) -> LiveAligner:
    return LiveAligner(OutputKind(), "sensor_msgs/msg/PointCloud2", tree_transforms(tree()), warn=warned.append)


def frame_at(aligner: LiveAligner, stamp: int, rng: np.random.Generator) -> tuple[float, str]:
    depth = scenes.render(scenes.Scene())
    _, relative = scenes.relative_frame(depth, 2.0, 0.3)
    result = aligner.align(MESSAGES.header(stamp, "camera_optical"), relative.astype(np.float32), INTRINSICS)
    if result.depth is None:
        return float("nan"), result.record.get("reason", "")
    return float(np.mean(np.abs(result.depth[1:] - depth[1:]) / depth[1:])), ""


def scan(stamp: int, rng: np.random.Generator, good: bool = True):
    depth = scenes.render(scenes.Scene())
    points = scenes.Lidar().scan(depth, rng) if good else rng.normal(size=(50, 3)).astype(np.float32)
    return MESSAGES.cloud(stamp, points)


def test_out_of_order_sensor_stamps_are_matched_to_the_nearest():
    rng, warned = np.random.default_rng(0), []
    aligner = live(warned)
    for k in (3, 1, 2, 0, 5, 4):  # arrival order
        aligner.add_sensor(scan(START + k * PERIOD, rng, good=k == 2))
    error, why = frame_at(aligner, START + 2 * PERIOD + 10_000_000, rng)
    assert error < 0.02 and not why and not warned and aligner.buffered == 6


def test_a_clock_jump_back_or_a_far_future_stamp_resets_the_buffer_once_and_pruning_goes_on():
    rng, warned = np.random.default_rng(1), []
    aligner = live(warned)
    for k in range(30):  # 3 s at 10 Hz
        aligner.add_sensor(scan(START + k * PERIOD, rng, good=False))
    assert aligner.buffered == 21  # 2 s behind the newest
    aligner.add_sensor(scan(START + 3600 * SECOND, rng, good=False))  # one stamp an hour ahead
    restart = START - 50 * SECOND  # then a looping bag's clock, back before the start
    for k in range(300):
        aligner.add_sensor(scan(restart + k * PERIOD, rng, good=k == 299))
    assert aligner.buffered == 21 and aligner.resets == 2  # bounded as before, whatever the stamps said
    assert len(warned) == 1 and "jumped +3597.1 s" in warned[0]
    error, why = frame_at(aligner, restart + 299 * PERIOD + 5_000_000, rng)
    assert error < 0.02, why  # frames on the new clock are fitted again


def test_the_buffer_is_bounded_by_count_too():
    warned = []
    aligner = live(warned)
    for k in range(3 * MAX_SENSOR_MESSAGES):  # a 1 kHz sensor: 0.3 s of it
        aligner.add_sensor(MESSAGES.cloud(START + k * 1_000_000, np.ones((3, 3), np.float32)))
    assert aligner.buffered == MAX_SENSOR_MESSAGES and not warned


def test_a_camera_whose_stamps_run_slightly_backwards_keeps_every_lidar_fit(tmp_path):
    """Frames 1 and 2, 3 and 4 recorded with swapped stamps (a driver's queue reordering them)."""
    model = scenes.affine_onnx(tmp_path / "relative.onnx")
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    order = [0, 2, 1, 4, 3, 5]
    for slot, i in enumerate(order):
        robot.frame(i, stamp=START + (i + 1) * PERIOD, time=START + (slot + 1) * PERIOD + 5_000_000)
    bag = robot.write(tmp_path / "in")
    summary = process_bag(DepthPredictor(model), bag, tmp_path / "out", CAMERA, align_to=LIDAR)
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 6, summary.alignment.log.records
    # robot.depth and the output are both in bag order
    errors = [abs_rel(m, t) for m, t in zip(images(tmp_path / "out", METRIC), robot.depth, strict=True)]
    assert max(errors) < 0.01, errors  # a scan of the other loop (0.4 m away) would be off by several %


def test_the_node_pairs_a_frame_with_the_camera_info_of_its_stamp():
    camera = node_cameras([])[0]
    receive = camera_info_receiver(camera.infos, SimpleNamespace(warning=print))
    first, second = scenes.K.copy(), scenes.K.copy()
    second[0, 0] = second[1, 1] = 150.0
    receive(MESSAGES.info(START, "camera_optical", first))
    receive(MESSAGES.info(START + PERIOD, "camera_optical", second))
    assert camera.intrinsics_at(START).fx == 120.0 and camera.intrinsics_at(START + PERIOD).fx == 150.0
    assert camera.intrinsics_at(START + 5).fx == 150.0  # no info of its stamp: the newest
    for k in range(40):
        receive(MESSAGES.info(START + k, "camera_optical", first))
    assert len(camera.infos) == CAMERA_INFOS  # bounded


def test_a_bag_whose_clock_jumps_back_or_holds_a_far_future_stamp_pairs_each_frame_with_its_own_scan(tmp_path):
    """A looping sim-time bag: frames 4-7 carry the stamps of frames 0-3 again (their scans too), and
    one scan in between is stamped an hour ahead; every frame gets its own scan's metres."""
    model = scenes.affine_onnx(tmp_path / "relative.onnx")
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    for i in range(8):
        robot.frame(i, stamp=START + (i % 4 + 1) * PERIOD, time=START + (i + 1) * PERIOD, speed=0.1)
    future = START + 3600 * SECOND
    robot.add(
        START + 450_000_000, LIDAR, "sensor_msgs/msg/PointCloud2", MESSAGES.cloud(future, np.ones((9, 3), np.float32))
    )
    bag = robot.write(tmp_path / "in")
    summary = process_bag(DepthPredictor(model), bag, tmp_path / "out", CAMERA, align_to=LIDAR)
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 8, summary.alignment.log.records
    errors = [abs_rel(m, t) for m, t in zip(images(tmp_path / "out", METRIC), robot.depth, strict=True)]
    assert max(errors) < 0.01, errors  # a scan of the other loop (0.4 m away) would be off by several %
