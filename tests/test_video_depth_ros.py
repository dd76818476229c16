"""Video Depth Anything in the bag tool and the node: each camera carries its own stream state
from frame to frame; a pause starts it again, an old frame is left out."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from runtime import DepthPredictor
from runtime.ros.bag import process_bag
from runtime.ros.cameras import node_cameras, predict
from runtime.stream_plan import HostCache

from . import scenes
from .robot_bags import Robot
from .scene_bag import CAMERA, LIDAR, START, Messages
from .test_bag import read_topics
from .video_fixtures import frames_bgr, official_stream, worst_rel_std

TOPIC = "/cam/image_raw"


@pytest.fixture(scope="module")
def vda(vda_checkpoint):
    with DepthPredictor(vda_checkpoint, input_size=266) as predictor:
        yield predictor


def test_bag_tool_streams_each_camera_and_restarts_after_a_pause(vda, tmp_path, caplog, monkeypatch):
    made, closed = [], []

    class Counted(HostCache):  # the bag's stream keeps one store: closed when the bag is done
        def __init__(self, shapes):
            super().__init__(shapes)
            made.append(self)

        def close(self):
            closed.append(self)

    monkeypatch.setattr(vda._backend, "stream_store", Counted)
    stamps = [1_000_000_000 + 100_000_000 * i for i in range(4)] + [9_000_000_000]  # a pause before the last
    frames = frames_bgr()[: len(stamps)]
    bag = image_bag(tmp_path / "in", stamps)
    with caplog.at_level(logging.WARNING, logger="runtime.video"):
        summary = process_bag(vda, bag, tmp_path / "out", TOPIC)
    assert summary.frames == 5
    assert len(made) == 1 and closed == made
    got = [
        np.frombuffer(bytes(m.data), "<f4").reshape(240, 320)
        for _, _, m in read_topics(tmp_path / "out")["/cam/depth/relative_inverse"]
    ]
    reference = official_stream()
    assert max(worst_rel_std(d, r) for d, r in zip(got[:4], reference, strict=False)) <= 1e-4
    assert worst_rel_std(got[4], reference[0]) > 1e-2  # frame 4 alone, not frame 0
    np.testing.assert_allclose(got[4], vda.predict(frames[4]), rtol=0, atol=1e-5)  # started again
    assert f"{TOPIC}: Video Depth Anything state reset at frame 4: 7.700 s since the last frame" in caplog.text


def test_node_cycle_keeps_a_stream_per_camera_leaves_out_late_frames_and_restarts_on_a_jump_back(vda):
    cameras = node_cameras(["/a/image_raw", "/b/image_raw"])
    frames, warned = frames_bgr(), []

    def message(t: float):
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=int(t), nanosec=round(t % 1 * 1e9))))

    reference = official_stream()
    for i in range(3):
        taken = [(cameras[0], message(10 + 0.1 * i)), (cameras[1], message(20 + 0.1 * i))]
        depths = predict(vda, taken, [frames[i], frames[i]], warned.append)
        assert all(worst_rel_std(d, reference[i]) <= 1e-4 for d in depths)  # each camera its own stream
    old = predict(vda, [(cameras[0], message(10.05))], [frames[3]], warned.append)
    assert old == [None] and "frame skipped: /a/image_raw: frame at t=10.050000 s is 0.150000 s older" in warned[0]
    # The clock jumped back (a bag played in a loop, a restarted driver): that camera starts again.
    looped = predict(vda, [(cameras[0], message(1.0))], [frames[0]], warned.append)
    assert worst_rel_std(looped[0], reference[0]) <= 1e-4 and len(warned) == 1
    assert cameras[0].video.resets == [(3, "time jumped back 9.200 s (more than max_gap=1 s)")]
    assert cameras[1].video.resets == []


def image_bag(bag, stamps: list[int]):
    """A ROS 2 bag of the test frames on ``TOPIC``, one at each bag time (and header stamp) of ``stamps``."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    messages = Messages(store)
    with Writer2(bag, version=8) as writer:
        conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=store)
        for t, frame in zip(stamps, frames_bgr()[: len(stamps)], strict=True):
            writer.write(conn, t, store.serialize_cdr(messages.image(t, frame), "sensor_msgs/msg/Image"))
    return bag


def test_a_repeated_stamp_in_a_bag_leaves_that_frame_out_and_the_bag_goes_on(vda, tmp_path):
    """Two images on one topic at the same bag time: the stream refuses the second (its stamp is
    the last one's), and the bag tool leaves it out and goes on (it ended the run before)."""
    stamps = [1_000_000_000, 1_100_000_000, 1_100_000_000, 1_200_000_000]
    summary = process_bag(vda, image_bag(tmp_path / "in", stamps), tmp_path / "out", TOPIC)
    assert summary.frames == 3 and len(summary.skipped) == 1 == len(summary.cameras[TOPIC].skipped)
    assert summary.skipped[0][0] == 1_100_000_000 and "the same stamp as the last" in summary.skipped[0][1]
    assert len(read_topics(tmp_path / "out")["/cam/depth/relative_inverse"]) == 3


def test_bag_times_50_ns_apart_are_two_stamps_not_a_repeated_one(vda, tmp_path):
    """Bag times in integer nanoseconds reach the stream exactly: in float seconds a 2023 clock's
    stamps 50 ns apart are one number, and the second frame was refused as a repeated stamp."""
    start = 1_700_000_000_000_000_000
    stamps = [start, start + 50, start + 100_000_050, start + 200_000_050]
    summary = process_bag(vda, image_bag(tmp_path / "in", stamps), tmp_path / "out", TOPIC)
    assert summary.skipped == [] and summary.frames == 4
    written = read_topics(tmp_path / "out")["/cam/depth/relative_inverse"]
    assert [t for t, _, _ in written] == stamps


def test_node_stamps_50_ns_apart_are_two_frames_and_an_exact_repeat_is_named_to_the_nanosecond(vda):
    camera = node_cameras(["/c/image_raw"])[0]
    frames, warned = frames_bgr(), []

    def message(sec: int, nanosec: int):
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)))

    for i, nanosec in enumerate((0, 50)):
        depth = predict(vda, [(camera, message(1_700_000_000, nanosec))], [frames[i]], warned.append)
        assert depth[0] is not None and warned == []
    assert predict(vda, [(camera, message(1_700_000_000, 50))], [frames[2]], warned.append) == [None]
    assert "a second frame at t=1700000000.00000005 s (the same stamp as the last)" in warned[0]


def test_max_frames_counts_the_frames_written_not_one_left_out_for_its_stamp(vda, tmp_path):
    stamps = [1_000_000_000, 1_100_000_000, 1_100_000_000, 1_200_000_000, 1_300_000_000]
    summary = process_bag(vda, image_bag(tmp_path / "in", stamps), tmp_path / "out", TOPIC, max_frames=3)
    assert summary.frames == 3 and [t for t, _ in summary.skipped] == [1_100_000_000]
    written = read_topics(tmp_path / "out")["/cam/depth/relative_inverse"]
    assert [t for t, _, _ in written] == [1_000_000_000, 1_100_000_000, 1_200_000_000]


def test_an_align_to_run_releases_the_scan_of_a_frame_left_out_for_its_stamp_and_counts_it(vda, tmp_path):
    """A second image at the bag time of frame 1 (a driver that published it twice): the stream
    refuses it after the aligner matched it to frame 1's scan; the scan is released as an aligned
    frame's is (BagAligner.forget), the summary lists the frame, each written frame gets its scan
    (the random test network's depth fits no scene: no fit is kept, the scans are used all the same)."""
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    for i in range(4):
        stamp = robot.frame(i)
        if i == 1:
            twice = robot.frame(i, stamp=stamp, lidar_delay=None)
    summary = process_bag(vda, robot.write(tmp_path / "in"), tmp_path / "out", CAMERA, align_to=LIDAR)
    aligner = summary.alignment
    assert summary.frames == 4 and [t for t, _ in summary.skipped] == [twice]
    assert "the same stamp as the last" in summary.skipped[0][1]
    records = aligner.log.records
    assert [r["stamp_ns"] for r in records] == [START + (i + 1) * 100_000_000 for i in range(4)]
    assert all(r["sensor_offset_ms"] == 3.0 and r["fit_points"] > 1000 for r in records), records
    assert aligner._matches == {} and set(aligner._needed.values()) <= {0}  # every scan released
