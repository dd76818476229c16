"""Transport-free ROS pieces: image decoding, camera info, depth messages, the node's frame dropping."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from runtime import InputError, ScaleShift
from runtime.pointcloud import Intrinsics
from runtime.ros.messages import (
    Conversion,
    LatestOnly,
    compressed_to_numpy,
    depth_messages,
    image_to_numpy,
    intrinsics_from_camera_info,
)
from runtime.ros.node import NodeSettings, main, split_ros_args

BGR = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4 * 5, 3)[np.random.default_rng(0).permutation(20)].reshape(4, 5, 3)


def image_msg(pixels: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0) -> SimpleNamespace:
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    if pixels.dtype == np.uint16:
        rows = rows.astype(">u2" if big_endian else "<u2").view(np.uint8)
    data = np.zeros((height, rows.shape[1] + pad), np.uint8)
    data[:, : rows.shape[1]] = rows
    return SimpleNamespace(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=data.shape[1],
        data=data.tobytes(),
    )


def test_every_supported_encoding_decodes_to_bgr_or_gray():
    gray = cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY)
    alpha = np.full((4, 5, 1), 9, np.uint8)
    cases = [
        (BGR[..., ::-1], "rgb8", {}, BGR),
        (BGR, "bgr8", {"pad": 3}, BGR),
        (np.concatenate([BGR, alpha], axis=2), "bgra8", {}, BGR),
        (np.concatenate([BGR[..., ::-1], alpha], axis=2), "rgba8", {}, BGR),
        (gray, "mono8", {"pad": 1}, gray),
        (gray.astype(np.uint16) * 257, "mono16", {}, gray),
        (gray.astype(np.uint16) * 257, "mono16", {"big_endian": True}, gray),
    ]
    for pixels, encoding, options, expected in cases:
        np.testing.assert_array_equal(
            image_to_numpy(image_msg(pixels, encoding, **options)), expected, err_msg=encoding
        )


def test_images_that_cannot_be_decoded_say_why():
    msg = image_msg(BGR, "bgr8")
    with pytest.raises(InputError, match="'32FC1' is not supported"):
        image_to_numpy(SimpleNamespace(**{**vars(msg), "encoding": "32FC1"}))
    with pytest.raises(InputError, match="needs rows of 15 bytes"):
        image_to_numpy(SimpleNamespace(**{**vars(msg), "data": msg.data[:40]}))
    with pytest.raises(InputError, match="over the limit"):
        image_to_numpy(msg, max_pixels=10)
    jpeg = cv2.imencode(".png", BGR)[1].tobytes()
    np.testing.assert_array_equal(compressed_to_numpy(SimpleNamespace(format="png", data=jpeg)), BGR)
    with pytest.raises(InputError, match="not camera images"):
        compressed_to_numpy(SimpleNamespace(format="16UC1; compressedDepth png", data=jpeg))
    with pytest.raises(InputError):
        compressed_to_numpy(SimpleNamespace(format="jpeg", data=b"\xff\xd8 not really"))


def test_camera_info_from_ros1_and_ros2_field_names():
    k = [500.0, 0, 320.5, 0, 510.0, 240.5, 0, 0, 1]
    common = {"distortion_model": "plumb_bob", "width": 640, "height": 480}
    ros2 = intrinsics_from_camera_info(SimpleNamespace(k=k, d=[0.1, 0, 0, 0, 0], **common))
    ros1 = intrinsics_from_camera_info(SimpleNamespace(K=k, D=[0.1, 0, 0, 0, 0], **common))
    assert ros1 == ros2 == Intrinsics(500.0, 510.0, 320.5, 240.5, (0.1, 0.0, 0.0, 0.0, 0.0), "plumb_bob", 640, 480)
    with pytest.raises(InputError, match="not calibrated"):
        intrinsics_from_camera_info(SimpleNamespace(k=[0.0] * 9, d=[], **common))


def record(msgtype: str, **fields):
    return SimpleNamespace(msgtype=msgtype, **fields)


def test_depth_messages_follow_the_conventions():
    relative = np.array([[1.0, 2.0], [4.0, 0.0]], np.float32)
    image = np.zeros((2, 2, 3), np.uint8)
    header = SimpleNamespace(frame_id="cam")
    only = depth_messages(record, bytes, header, relative, image, None, Conversion())
    assert list(only) == ["relative"]  # no metric conversion: nothing in metres, no points
    msg = only["relative"]
    assert (msg.msgtype, msg.encoding, msg.step, msg.is_bigendian, msg.header) == (
        "sensor_msgs/msg/Image",
        "32FC1",
        8,
        0,
        header,
    )
    np.testing.assert_array_equal(np.frombuffer(msg.data, "<f4").reshape(2, 2), relative)
    metric = Conversion(ScaleShift(0.5, 0.0, float("nan"), 0))
    no_camera = depth_messages(record, bytes, header, relative, image, None, metric)
    assert list(no_camera) == ["relative", "metric"]
    depth = np.frombuffer(no_camera["metric"].data, "<f4").reshape(2, 2)
    np.testing.assert_allclose(depth[0], [2.0, 1.0])
    assert np.isnan(depth[1, 1])  # REP 118: NaN where there is no depth, not inf or 0
    everything = depth_messages(record, bytes, header, relative, image, Intrinsics(1.0, 1.0, 0.5, 0.5), metric)
    points = everything["points"]
    assert points.msgtype == "sensor_msgs/msg/PointCloud2" and points.width == 3 and points.is_dense
    assert [f.name for f in points.fields] == ["x", "y", "z", "rgb"] and points.header is header


def test_latest_only_keeps_the_newest_frame_and_counts_the_dropped_ones():
    box: LatestOnly = LatestOnly()
    assert box.take(timeout=0.01) is None
    assert box.put(1) is False and box.put(2) is True and box.put(3) is True
    assert box.take() == 3 and (box.received, box.dropped) == (3, 2)
    assert box.take(timeout=0.01) is None  # taken items are gone


def test_a_slow_consumer_only_ever_sees_newer_frames():
    box: LatestOnly = LatestOnly()
    taken = []

    def consume():
        while (item := box.take(timeout=1.0)) is not None:
            taken.append(item)
            time.sleep(0.005)  # inference slower than the camera

    worker = threading.Thread(target=consume)
    worker.start()
    for frame in range(300):
        box.put(frame)
        time.sleep(0.0005)
    time.sleep(0.05)
    box.close()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert taken == sorted(taken) and taken[-1] == 299  # in order, ending on the newest
    assert box.dropped > 0 and len(taken) + box.dropped == box.received == 300


def test_node_arguments_and_settings():
    ours, ros = split_ros_args(["--model", "m.onnx", "--ros-args", "-r", "image:=/cam", "--", "--input-size", "364"])
    assert ours == ["--model", "m.onnx", "--input-size", "364"] and ros == ["--ros-args", "-r", "image:=/cam"]
    assert split_ros_args(["--ros-args", "-p", "model:=x"]) == ([], ["--ros-args", "-p", "model:=x"])
    assert NodeSettings(model="m.onnx").check().conversion() == Conversion(None, 1, None, True)
    converted = NodeSettings(model="m", metric_scale=0.5, max_range=8.0, point_stride=2).conversion()
    assert (converted.metric.scale, converted.max_range, converted.point_stride) == (0.5, 8.0, 2)
    with pytest.raises(InputError, match="no model"):
        NodeSettings().check()
    with pytest.raises(InputError, match="point_stride"):
        NodeSettings(model="m", point_stride=0).check()


@pytest.mark.skipif(importlib.util.find_spec("rclpy") is not None, reason="rclpy is installed here")
def test_the_node_without_ros_says_how_to_get_rclpy(capsys):
    assert main(["--model", "m.onnx", "--ros-args", "-r", "image:=/cam"]) == 2  # a missing library
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source /opt/ros/<distro>/setup.bash" in err


def test_robotics_modules_import_without_ros_or_torch():
    code = (
        "import sys, runtime.bag, runtime.ros2, runtime.ros.messages, runtime.pointcloud, runtime.io.video; "
        "bad = {'rosbags', 'rclpy', 'torch', 'train'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
