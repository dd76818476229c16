"""Honest runs: --copy-all copies every topic the run does not write and refuses only a real clash;
an --align-to topic that can never give metres is refused before the run (exit 2); a run with no
metric frame ends with exit 1; a metric model's per-frame correction is said; the node's cycle leaves
out only the camera whose frame is bad, named by its topic. On bags written here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from runtime import DepthPredictor, InputError
from runtime.ros.bag import process_bag
from runtime.ros.cameras import node_cameras, run_cycle, split_topics
from runtime.ros.messages import MessageFactory
from runtime.ros.node import NodeSettings
from tests import scenes
from tests.robot_bags import Robot
from tests.scene_bag import CAMERA, CLOUD, IMAGE, LIDAR, START, write_scene_bag
from tests.test_bag import frame, read_topics
from tests.test_node_cameras import MESSAGES, T0, Log, Sink, make

REPO = Path(__file__).resolve().parents[1]
RECORDED = "/cam/depth/image"  # a recorded depth camera under the name a metric run would write


@pytest.fixture(scope="module")
def relative_model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "relative.onnx")


def run_bag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.bag", *args], cwd=REPO, capture_output=True, text=True)


def robot_bag(path: Path, frames: int = 2, recorded: bool = False, **frame_options) -> Robot:
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    for i in range(frames):
        stamp = robot.frame(i, **frame_options)
        if recorded:
            metres = scenes.render(scenes.Scene()).astype("<f4")
            robot.add(stamp + 1, RECORDED, IMAGE, robot.messages.image(stamp, metres, "32FC1"))
    robot.write(path)
    return robot


def test_copy_all_copies_a_recorded_topic_the_run_does_not_write_and_refuses_only_a_real_clash(
    tmp_path, relative_model
):
    bag = tmp_path / "in"
    robot_bag(bag, recorded=True)
    predictor = DepthPredictor(relative_model)
    summary = process_bag(predictor, bag, tmp_path / "relative", CAMERA, copy_all=True)  # writes relative only
    got = read_topics(tmp_path / "relative")
    assert summary.frames == 2 and len(got[RECORDED]) == 2 and "/cam/depth/relative_inverse" in got
    assert set(read_topics(bag)) <= set(got)  # every recorded topic is in the output
    process_bag(predictor, bag, tmp_path / "named", CAMERA, copy_topics=[RECORDED])  # naming it is fine too
    with pytest.raises(InputError, match=f"--copy-all: {RECORDED} is recorded in the bag and this run writes it"):
        process_bag(predictor, bag, tmp_path / "aligned", CAMERA, copy_all=True, align_to=LIDAR)  # would write it
    assert not (tmp_path / "aligned").exists()


def _cloud(robot: Robot, stamp: int, **changes):
    message = robot.messages.cloud(stamp, np.ones((40, 3), np.float32))
    for name, value in changes.items():
        setattr(message, name, value)
    return message


@pytest.mark.parametrize("case", ["8UC1", "16SC1", "INT16", "row_step 0"])
def test_a_sensor_that_can_never_give_metres_is_refused_before_the_run(tmp_path, relative_model, case):
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    stamp = robot.frame(0, lidar_delay=None)
    if case in ("8UC1", "16SC1"):
        values = np.full((8, 8), 3, "<u1" if case == "8UC1" else "<i2")
        topic = "/depth/image_rect_raw"
        robot.add(stamp, topic, IMAGE, robot.messages.image(stamp, values, case))
        robot.add(
            stamp, "/depth/camera_info", "sensor_msgs/msg/CameraInfo", robot.messages.info(stamp, "camera_optical")
        )
    else:
        topic = LIDAR
        message = _cloud(robot, stamp)
        if case == "INT16":
            for field in message.fields[:3]:
                field.datatype = 3
        else:
            message.row_step = 0
        robot.add(stamp, topic, CLOUD, message)
    bag = robot.write(tmp_path / "in")
    with pytest.raises(InputError, match=f"--align-to {topic} can never give metres"):
        process_bag(DepthPredictor(relative_model), bag, tmp_path / "out", CAMERA, align_to=topic)
    assert not (tmp_path / "out").exists()


def test_the_colour_topic_is_refused_with_exit_2_and_a_run_without_metres_exits_1(tmp_path, relative_model):
    bag = tmp_path / "in"
    robot_bag(bag, frames=3, lidar_delay=400_000_000)  # every scan far beyond --max-time-offset
    common = [str(bag), "--image-topic", CAMERA, "--model", str(relative_model)]
    colour = run_bag(*common, "--output", str(tmp_path / "colour"), "--align-to", CAMERA)
    assert colour.returncode == 2 and "a camera's own image topic" in colour.stderr, colour.stderr
    assert not (tmp_path / "colour").exists()
    none = run_bag(*common, "--output", str(tmp_path / "none"), "--align-to", LIDAR)
    assert none.returncode == 1, none.stderr
    assert "no frame got metric depth from --align-to /lidar/points" in none.stderr
    assert "3 without metric depth" in none.stdout


def test_a_metric_models_per_frame_correction_is_said(tmp_path):
    model = scenes.affine_onnx(tmp_path / "metric.onnx", max_depth=20.0)
    bag = tmp_path / "in"
    write_scene_bag(bag, "mcap", frames=2, metric_max_depth=20.0)
    run = run_bag(
        str(bag), "--image-topic", CAMERA, "--model", str(model), "--output", str(tmp_path / "o"), "--align-to", LIDAR
    )
    assert run.returncode == 0, run.stderr
    assert "its scale is corrected frame by frame against /lidar/points" in run.stdout
    assert "published as it is" not in run.stdout
    assert "from the model's output, its scale corrected per frame" in run.stdout


def test_the_nodes_cycle_leaves_out_only_the_camera_whose_frame_is_bad(predictor):
    settings = NodeSettings(model="m", image_topics="/cam0/image_raw /cam1/image_raw")
    cameras = node_cameras(split_topics(settings.image_topics))
    for camera in cameras:
        camera.pipeline = settings.pipeline(predictor.output, None)
        camera.publishers = {key: Sink() for key in camera.pipeline.outputs}
    log = Log()
    tiny = MESSAGES.image(T0, frame(0, 6, 6), "bgr8", "cam0_optical")  # decodes, but smaller than a patch
    good = MESSAGES.image(T0, frame(1), "bgr8", "cam1_optical")
    assert run_cycle(predictor, cameras, [(0, tiny), (1, good)], MessageFactory(make), log.warning) == 1
    assert [len(c.publishers["relative"].messages) for c in cameras] == [0, 1]
    assert log.lines[-1].startswith("/cam0/image_raw: frame skipped")
