"""The ROS 2 node's cameras, tested without rclpy on real rosbags message objects and a real
model: the topics of each camera, the newest frame per camera, and one batched call per cycle
whose numbers are each frame's own ``predict``."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="real message objects come from rosbags' type store")

from rosbags.typesys import Stores, get_typestore

from runtime import InputError, ScaleShift
from runtime.pointcloud import Intrinsics, depth_to_points
from runtime.ros.cameras import CameraSlots, node_cameras, run_cycle, split_topics
from runtime.ros.messages import MessageFactory, metric_depth
from runtime.ros.node import NodeSettings, camera_info_receiver, parse_args
from tests.recording import recorded_predictor
from tests.scene_bag import Messages
from tests.test_bag import decode_pointcloud2, frame

STORE = get_typestore(Stores.ROS2_HUMBLE)
MESSAGES = Messages(STORE)
T0 = 1_700_000_000_000_000_000
ROUNDING = 1e-5  # batched against single calls: float rounding (see tests/test_bag_cameras.py)


def make(msgtype: str, **fields):
    return STORE.types[msgtype](**fields)


class Sink:
    """Where a publisher's messages go: a list (rclpy's Publisher.publish takes one message)."""

    def __init__(self) -> None:
        self.messages: list = []

    def publish(self, message) -> None:
        self.messages.append(message)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str, **_) -> None:
        self.lines.append(text)


def test_cameras_are_named_by_their_image_topics_or_remapped_as_one():
    (one,) = node_cameras([])
    assert (one.image, one.camera_info, one.outputs["relative"]) == ("image", "camera_info", "depth/relative_inverse")
    left, right = node_cameras(split_topics("/stereo/left/image_raw, /stereo/right/image_raw"))
    assert (left.camera_info, right.camera_info) == ("/stereo/left/camera_info", "/stereo/right/camera_info")
    assert right.outputs == {
        "relative": "/stereo/right/depth/relative_inverse",
        "metric": "/stereo/right/depth/image",
        "points": "/stereo/right/depth/points",
        "confidence": "/stereo/right/depth/confidence",  # published when asked for (confidence)
    }
    settings, _ = parse_args(["--model", "m.onnx", "--image-topic", "/cam0/image_raw", "--image-topic", "/cam1/image"])
    assert settings.image_topics == "/cam0/image_raw /cam1/image" and settings.check()
    for topics, match in [
        ("/cam0/image_raw /cam0/image_raw", "/cam0/image_raw given twice"),
        ("/image_raw", "has no namespace"),
    ]:
        with pytest.raises(InputError, match=match):
            NodeSettings(model="m.onnx", image_topics=topics).check()


def test_a_cycle_takes_the_newest_frame_of_every_camera_that_has_one():
    slots = CameraSlots(3)
    assert slots.take(timeout=0.01) is None
    slots.put(0, "old 0")
    slots.put(0, "new 0")
    slots.put(2, "new 2")
    assert slots.take(timeout=0) == [(0, "new 0"), (2, "new 2")]
    assert (slots.received, slots.dropped) == (3, 1)
    woken = []
    waiter = threading.Thread(target=lambda: woken.append(slots.take(timeout=30)))
    waiter.start()
    time.sleep(0.05)
    slots.put(1, "late 1")  # one camera's frame wakes the worker: it never waits for the others
    waiter.join(timeout=30)
    assert woken == [[(1, "late 1")]]
    slots.close()
    assert slots.take(timeout=30) is None  # closed: returns at once


def test_one_batched_call_per_cycle_with_each_cameras_numbers_intrinsics_and_topics(tiny_model):
    predictor, recorded = recorded_predictor(tiny_model, input_size=56)  # its model calls recorded
    settings = NodeSettings(
        model="m", metric_scale=0.5, metric_shift=0.1, image_topics="/cam0/image_raw /cam1/image_raw"
    )
    cameras = node_cameras(split_topics(settings.image_topics))
    log = Log()
    matrices = [[[40.0, 0, 23.5], [0, 42.0, 15.5], [0, 0, 1]], [[60.0, 0, 20.0], [0, 61.0, 17.0], [0, 0, 1]]]
    for camera, matrix in zip(cameras, matrices, strict=True):
        camera.pipeline = settings.pipeline(predictor.output, None)
        camera.publishers = {key: Sink() for key in camera.pipeline.outputs}
        camera_info_receiver(camera.infos, log)(MESSAGES.info(T0, "x", matrix, (32, 48)))
    images = [frame(0), frame(5)]
    single = [predictor.predict(image) for image in images]
    recorded.batches.clear()
    cycle = [(k, MESSAGES.image(T0 + k, image, "bgr8", f"cam{k}_optical")) for k, image in enumerate(images)]
    assert run_cycle(predictor, cameras, cycle, MessageFactory(make), log.warning) == 2
    assert recorded.sizes == [2]  # both cameras' frames in one model call
    scale = ScaleShift(0.5, 0.1, float("nan"), 0)
    for k, camera in enumerate(cameras):
        (relative,) = camera.publishers["relative"].messages
        (metres,) = camera.publishers["metric"].messages
        (points,) = camera.publishers["points"].messages
        assert relative.header.frame_id == metres.header.frame_id == f"cam{k}_optical"
        got = np.frombuffer(bytes(relative.data), "<f4").reshape(32, 48)
        np.testing.assert_allclose(got, single[k], rtol=ROUNDING)
        depth = np.frombuffer(bytes(metres.data), "<f4").reshape(32, 48)
        np.testing.assert_allclose(depth, metric_depth(got, scale), rtol=1e-6)
        cloud = depth_to_points(depth, Intrinsics.from_matrix(matrices[k], width=48, height=32), images[k])
        np.testing.assert_allclose(decode_pointcloud2(points)[0], cloud.points, rtol=1e-5, atol=1e-6)
    # A frame that cannot be decoded is named and left out; the other camera's frame goes on.
    bad = MESSAGES.image(T0, np.zeros((32, 48), "<f4"), "32FC1")
    assert run_cycle(predictor, cameras, [(0, bad), cycle[1]], MessageFactory(make), log.warning) == 1
    assert recorded.sizes == [2, 1] and "/cam0/image_raw: frame skipped" in log.lines[-1] and "32FC1" in log.lines[-1]
    assert [len(c.publishers["relative"].messages) for c in cameras] == [1, 2]
