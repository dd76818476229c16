"""Camera info as ROS defines it: paired with its image by stamp (one recorded just after its image
serves it), each sensor projected with its own camera info only, ROI and binning as image_geometry
applies them, the transform checked for the frame of the data. On bags written here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from runtime import DepthPredictor
from runtime.ros.bag import process_bag
from runtime.ros.messages import intrinsics_from_camera_info
from runtime.ros.tf import NoTransformError
from tests import scenes
from tests.robot_bags import Robot
from tests.scene_bag import CAMERA, DEPTH, DEPTH_INFO, IMAGE, INFO, LIDAR, START
from tests.test_bag_align import METRIC, abs_rel, images


@pytest.fixture(scope="module")
def relative_model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "relative.onnx")


def run(robot: Robot, tmp_path: Path, model: Path, align_to: str = LIDAR, name: str = "out"):
    bag = tmp_path / "in"
    if not bag.exists():
        robot.write(bag)
    summary = process_bag(DepthPredictor(model), bag, tmp_path / name, CAMERA, align_to=align_to)
    return summary, images(tmp_path / name, METRIC)


def test_a_camera_info_recorded_just_after_its_image_with_its_stamp_serves_it(tmp_path, relative_model):
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    for i in range(3):
        stamp = robot.frame(i)
        robot.info(stamp + 1_000_000, stamp=stamp)  # image, then its camera info
    summary, metres = run(robot, tmp_path, relative_model)
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 3  # the first frame too
    assert max(abs_rel(m, t) for m, t in zip(metres, robot.depth, strict=True)) < 0.02


def test_a_depth_camera_projects_with_its_own_camera_info_only(tmp_path, relative_model):
    """The depth camera has its own lens (not the colour camera's); its camera info comes late."""
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    own = np.array([[90.0, 0.0, 70.0], [0.0, 90.0, 50.0], [0.0, 0.0, 1.0]])
    messages = robot.messages
    for i in range(4):
        stamp = robot.frame(i, lidar_delay=None)
        depth = scenes.render(scenes.Scene(), k=own, camera=(0.0, 0.0, 0.05 * i))
        millimetres = np.clip(np.rint(depth * 1000), 0, 65535).astype("<u2")
        robot.add(stamp + 2_000_000, DEPTH, IMAGE, messages.image(stamp + 2_000_000, millimetres, "16UC1"))
        if i == 1:  # its camera info arrives with its second image
            robot.add(stamp + 2_000_001, DEPTH_INFO, INFO, messages.info(stamp + 2_000_000, "camera_optical", own))
    summary, metres = run(robot, tmp_path, relative_model, align_to=DEPTH)  # three: the first has none
    records = summary.alignment.log.records
    assert [r["status"] for r in records] == ["none", "fit", "fit", "fit"], records
    assert "own camera info" in records[0]["reason"]  # never the colour camera's intrinsics
    assert summary.alignment.log.reasons == {"sensor message unusable": 1}
    assert max(abs_rel(m, t) for m, t in zip(metres, robot.depth[1:], strict=True)) < 0.02


def test_roi_and_binning_as_image_geometry_applies_them():
    roi = SimpleNamespace(x_offset=100, y_offset=40, width=400, height=300, do_rectify=False)
    info = SimpleNamespace(
        k=[600.0, 0, 320.0, 0, 600.0, 240.0, 0, 0, 1], d=[0.0] * 5, distortion_model="plumb_bob",
        width=640, height=480, binning_x=2, binning_y=2, roi=roi,
    )  # fmt: skip
    got = intrinsics_from_camera_info(info)
    assert (got.fx, got.fy, got.cx, got.cy, got.width, got.height) == (300.0, 300.0, 110.0, 100.0, 200, 150)
    info.binning_x = info.binning_y = 0  # 0: no binning
    info.roi = SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False)  # all zero: full
    got = intrinsics_from_camera_info(info)
    assert (got.cx, got.cy, got.width, got.height) == (320.0, 240.0, 640, 480)


def test_a_cropped_camera_is_offset_not_rescaled(tmp_path, relative_model):
    """The frames are a 168x112 window at (50, 30) of a 268x180 sensor whose camera info is the full one."""
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    full = scenes.K.copy()
    full[0, 2], full[1, 2] = full[0, 2] + 50, full[1, 2] + 30
    roi = robot.store.types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=50, y_offset=30, height=scenes.HEIGHT, width=scenes.WIDTH, do_rectify=False
    )
    message = robot.messages.info(START, "camera_optical", full, size=(180, 268))
    message.roi = roi
    robot.add(START, "/cam/camera_info", INFO, message)
    for i in range(2):
        robot.frame(i)
    summary, metres = run(robot, tmp_path, relative_model)
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 2
    assert max(abs_rel(m, t) for m, t in zip(metres, robot.depth, strict=True)) < 0.02


def test_the_transform_check_uses_the_images_frame_and_says_when_the_camera_info_disagrees(tmp_path, relative_model):
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START, frame_id="camera_link")  # a driver that names the body frame in its camera info
    for i in range(2):
        robot.frame(i)
    warned: list[str] = []
    bag = robot.write(tmp_path / "in")
    summary = process_bag(
        DepthPredictor(relative_model), bag, tmp_path / "out", CAMERA, align_to=LIDAR, warn=warned.append
    )
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 2
    assert any("are in frame 'camera_optical' but /cam/camera_info says 'camera_link'" in w for w in warned)
    assert max(abs_rel(m, t) for m, t in zip(images(tmp_path / "out", METRIC), robot.depth, strict=True)) < 0.02
    # The other way round: the images name a frame tf does not know, the camera info a known one.
    lost = Robot()
    lost.tf(START - 1, scenes.CHAIN)
    lost.info(START)
    lost.frame(0, frame_id="cam_lens")
    lost.write(tmp_path / "lost")
    with pytest.raises(NoTransformError, match="'cam_lens'"):
        process_bag(DepthPredictor(relative_model), tmp_path / "lost", tmp_path / "x", CAMERA, align_to=LIDAR)
