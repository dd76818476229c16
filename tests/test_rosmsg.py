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
    IMAGE,
    Conversion,
    LatestOnly,
    MessageFactory,
    compressed_to_numpy,
    depth_messages,
    image_to_numpy,
    intrinsics_from_camera_info,
    message_to_image,
)
from runtime.ros.node import NodeSettings, camera_info_receiver, main, serve, split_ros_args
from runtime.ros.node import parse_args as node_args
from runtime.ros.stamps import ByStamp

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
    only = depth_messages(MessageFactory(record, bytes), header, relative, image, None, Conversion())
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
    no_camera = depth_messages(MessageFactory(record, bytes), header, relative, image, None, metric)
    assert list(no_camera) == ["relative", "metric"]
    depth = np.frombuffer(no_camera["metric"].data, "<f4").reshape(2, 2)
    np.testing.assert_allclose(depth[0], [2.0, 1.0])
    assert np.isnan(depth[1, 1])  # REP 118: NaN where there is no depth, not inf or 0
    everything = depth_messages(
        MessageFactory(record, bytes), header, relative, image, Intrinsics(1.0, 1.0, 0.5, 0.5), metric
    )
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


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("metric_scale", float("nan"), "metric_scale must be a positive finite number, got nan"),
        ("metric_scale", float("inf"), "metric_scale must be a positive finite number, got inf"),
        ("metric_scale", -1.0, "metric_scale must be a positive finite number, got -1.0"),
        ("metric_shift", float("nan"), "metric_shift must be a finite number, got nan"),
        ("max_range", float("nan"), "max_range must be a positive number of metres, got nan"),
        ("max_range", -5.0, "max_range must be a positive number of metres, got -5.0"),
    ],
)
def test_node_parameters_follow_the_bag_tool_s_rules(field, value, message, capsys):
    with pytest.raises(InputError, match=f"^{message}$"):
        NodeSettings(**{"model": "m.onnx", "metric_scale": 0.5, field: value}).check()
    flag = "--" + field.replace("_", "-")  # the bag tool refuses the same value with the same words
    from runtime.bag import parse_args

    with pytest.raises(SystemExit):
        parse_args(
            ["in", "--image-topic", "/i", "--model", "m", "--output", "o", "--metric-scale", "1", flag, str(value)]
        )
    assert capsys.readouterr().err.rstrip().endswith(message.replace(field, flag, 1))
    with pytest.raises(SystemExit):  # the node's own command line, before rclpy is even imported
        node_args(["--model", "m.onnx", "--metric-scale", "0.5", flag, str(value)])
    assert capsys.readouterr().err.rstrip().endswith(message.replace(field, flag, 1))
    NodeSettings(model="m.onnx", metric_scale=0.0, max_range=0.0).check()  # 0 turns them off


class RosLog:
    """What the node writes to its ROS logger (rclpy's ``warning``/``error`` with throttling)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def warning(self, text: str, **throttle) -> None:
        self.lines.append(("warning", text))

    def error(self, text: str, **throttle) -> None:
        self.lines.append(("error", text))


def test_a_camera_info_the_lens_model_refuses_means_no_points_not_a_dead_node():
    log, infos = RosLog(), ByStamp(4)
    receive = camera_info_receiver(infos, log)
    common = {"k": [500.0, 0, 320.5, 0, 510.0, 240.5, 0, 0, 1], "width": 640, "height": 480}
    receive(SimpleNamespace(d=[0.1] * 5, distortion_model="plumb_bob", **common))
    assert infos.newest is not None and not log.lines
    receive(SimpleNamespace(d=[0.1] * 6, distortion_model="plumb_bob", **common))
    assert infos.newest is None
    assert log.lines == [
        (
            "warning",
            "camera info unusable, no points: plumb_bob distortion has 5 coefficients, "
            "got 6 ([0.1, 0.1, 0.1, 0.1, 0.1, 0.1]); the camera info is malformed",
        )
    ]


def test_the_depth_worker_logs_a_failing_frame_and_keeps_serving(predictor):
    log, latest, handled, published = RosLog(), LatestOnly(), [], []
    conversion = Conversion(ScaleShift(0.5, 0.1, float("nan"), 0))

    def handle(msg):  # what the node does with a frame, publishing into a list
        handled.append(msg)
        if msg == "device lost":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        image = message_to_image(msg, IMAGE)
        relative = predictor.predict(image)
        published.append(
            depth_messages(
                MessageFactory(record, bytes), None, relative, image, Intrinsics(9.0, 9.0, 7.0, 7.0), conversion
            )
        )

    running = [True]
    worker = threading.Thread(target=serve, args=(latest, handle, log, lambda: running[0]))
    worker.start()
    good = image_msg(np.zeros((16, 16, 3), np.uint8), "bgr8")
    for msg in [image_msg(BGR, "32FC1"), "device lost", good]:
        latest.put(msg)
        deadline = time.monotonic() + 30
        while (not handled or handled[-1] is not msg) and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + 30
    while not published and time.monotonic() < deadline:
        time.sleep(0.01)
    running[0] = False
    worker.join(timeout=5)
    assert not worker.is_alive()  # ended because it was told to, not by an error
    assert [level for level, _ in log.lines] == ["warning", "error"]
    assert "'32FC1' is not supported" in log.lines[0][1]
    assert log.lines[1][1] == "frame skipped: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert len(published) == 1 and set(published[0]) == {"relative", "metric", "points"}  # still serving


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
