"""ROS 1 bags with tf (``tf2_msgs/TFMessage`` in /tf_static), written by the project's own test helper,
aligned by the bag tool; and a bag run that ends without frames prints no record it did not write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from runtime import DepthPredictor
from runtime.ros.bag import process_bag
from tests import scenes
from tests.scene_bag import CAMERA, LIDAR, write_scene_bag
from tests.test_bag import read_topics

REPO = Path(__file__).resolve().parents[1]
METRIC = "/cam/depth/image"


@pytest.fixture(scope="module")
def relative_model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "relative.onnx")


def test_a_ros1_bag_with_tf_is_written_and_aligned_through_its_tf(tmp_path, relative_model):
    bag = tmp_path / "in.bag"
    expected = write_scene_bag(bag, "rosbag1", frames=3)  # "tf2_msgs/msg/TFMessage is unknown" before
    assert "/tf_static" in read_topics(bag)
    summary = process_bag(DepthPredictor(relative_model), bag, tmp_path / "out.bag", CAMERA, align_to=LIDAR)
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 3
    body = (slice(1, None), slice(None))  # row 0 holds the model's header codes
    for _, _, msg in read_topics(tmp_path / "out.bag")[METRIC]:
        metres = np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)
        truth = expected.depth[expected.stamps.index(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)]
        assert np.nanmedian(np.abs(metres[body] - truth[body]) / truth[body]) < 0.02


def test_a_run_without_frames_prints_no_per_frame_record(tmp_path, relative_model):
    bag = tmp_path / "empty.bag"
    write_scene_bag(bag, "rosbag1", frames=2, image_encoding="yuv-unknown")  # scans, but no decodable frame
    out = tmp_path / "out.bag"
    argv = [str(bag), "--image-topic", CAMERA, "--model", str(relative_model), "--output", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "runtime.bag", *argv, "--align-to", LIDAR], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 1 and "could be decoded: nothing was written" in done.stderr, done.stderr
    assert "per-frame record: None" not in done.stdout and "None" not in done.stdout, done.stdout
    assert not out.exists()
