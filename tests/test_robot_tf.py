"""tf as tf2 has it, in the bag tool and the tree: one parent per frame (the newest), /tf streamed
into a bounded sorted history, invalid transforms counted and named. On bags written here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from runtime import DepthPredictor, InputError
from runtime.ros.bag import process_bag
from runtime.ros.tf import NoTransformError, TfTree
from tests import scenes
from tests.robot_bags import Robot
from tests.scene_bag import CAMERA, LIDAR, START
from tests.test_bag_align import METRIC, abs_rel, images

IDENTITY = (0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def relative_model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "relative.onnx")


def run(robot: Robot, tmp_path: Path, model: Path, **options):
    bag = robot.write(tmp_path / "in")
    summary = process_bag(DepthPredictor(model), bag, tmp_path / "out", CAMERA, align_to=LIDAR, **options)
    return summary, images(tmp_path / "out", METRIC) if summary.frames else []


def test_a_later_tf_static_re_parents_a_frame_and_the_newest_parent_wins(tmp_path, relative_model):
    robot = Robot()
    stale = ("camera_link", "velodyne", (0.3, 0.2, 0.1), scenes.yaw(0.1))  # the lidar's first, wrong mount
    robot.tf(START - 2, [*scenes.CHAIN[:2], stale])
    robot.tf(START - 1, [scenes.CHAIN[2]])  # re-mounted under base_link: the true pose
    robot.info(START)
    for i in range(3):
        robot.frame(i)
    summary, metres = run(robot, tmp_path, relative_model)
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 3
    assert max(abs_rel(m, t) for m, t in zip(metres, robot.depth, strict=True)) < 0.02
    assert any("frame 'velodyne' re-parented" in note for note in summary.alignment.notes)


def test_a_zero_quaternion_is_named_by_the_refusal_it_causes(tmp_path, relative_model):
    robot = Robot()
    parent, child, translation, _ = scenes.CHAIN[2]
    robot.tf(START - 1, [*scenes.CHAIN[:2], (parent, child, translation, (0.0, 0.0, 0.0, 0.0))])
    robot.info(START)
    robot.frame(0)
    with pytest.raises(NoTransformError) as info:
        run(robot, tmp_path, relative_model)
    assert "left out as invalid: 1 invalid base_link->velodyne on /tf_static (zero quaternion)" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_tf_is_streamed_into_a_bounded_history_and_invalid_records_are_counted_not_blamed_on_the_sensor(
    tmp_path, relative_model
):
    """base_link->velodyne on /tf at 50 Hz (a turning lidar mount held still), written *after* the scans
    it serves; one record with a NaN translation among them."""
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN[:2])
    robot.info(START)
    for k in range(30):
        stamp = START + k * 20_000_000
        translation = (math.nan, 0.0, 0.0) if k == 12 else scenes.CHAIN[2][2]
        robot.tf(
            stamp + 15_000_000, [(*scenes.CHAIN[2][:2], translation, scenes.CHAIN[2][3])], static=False, stamp=stamp
        )
    for i in range(4):
        robot.frame(i)
    summary, metres = run(robot, tmp_path, relative_model)
    aligner = summary.alignment
    assert [r["status"] for r in aligner.log.records] == ["fit"] * 4, aligner.log.records
    assert max(abs_rel(m, t) for m, t in zip(metres, robot.depth, strict=True)) < 0.02
    assert "invalid transforms left out: 1 invalid base_link->velodyne on /tf (not finite)" in aligner.notes
    assert aligner.tf_topics == ["/tf"] and len(aligner.tree._dynamic["velodyne"]) == 29


def test_a_frame_without_tf_at_its_stamp_is_counted_as_such():
    tree = TfTree(tolerance=0.1)
    tree.add("odom", "base_link", (0, 0, 0), IDENTITY, stamp=0, static=False)
    with pytest.raises(InputError, match="not finite"):
        tree.add("odom", "base_link", (math.nan, 0, 0), IDENTITY, stamp=1, static=False, where="/tf")
    assert tree.invalid_lines() == ["1 invalid odom->base_link on /tf (not finite)"]


def test_one_parent_per_frame_and_a_bounded_sorted_history_with_log_lookups():
    tree = TfTree(cache=10.0)
    tree.add("odom", "base_link", (0, 0, 0), IDENTITY, stamp=0, static=False)
    tree.add("map", "base_link", (1, 0, 0), IDENTITY, stamp=0, static=False)  # re-parented: the newest wins
    assert tree.edges == ["map->base_link"] and len(tree.notes) == 1
    tree.add("odom", "base_link", (2, 0, 0), IDENTITY, stamp=1, static=False)
    assert tree.edges == ["odom->base_link"] and len(tree.notes) == 1  # said once per frame
    second = 1_000_000_000
    for k in range(2000, 0, -1):  # 20 s at 100 Hz, newest first: out of order, kept sorted
        tree.add("odom", "base_link", (k / 100, 0, 0), IDENTITY, stamp=k * second // 100, static=False)
    track = tree._dynamic["base_link"]
    assert track.stamps == sorted(track.stamps) and len(track) <= 10 * 100 + 64
    np.testing.assert_allclose(tree.lookup("odom", "base_link", 15 * second + second // 200)[0, 3], 15.005)
    with pytest.raises(Exception, match="ms from the nearest record kept"):
        tree.lookup("odom", "base_link", 5 * second)  # older than the cache: gone, as in tf2
    tree.keep_history({"other"})
    assert len(track) == 0  # an edge no camera-sensor path uses keeps no history
