"""Several cameras in one pass of the bag tool, on bags written here with rosbags: each camera's
depth under its own namespace with its own camera info, the numbers ``predict`` gives each frame,
frames of equal size in one model call; and the per-camera options and their errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from commands.errors import InputError
from runtime import ScaleShift
from runtime.pointcloud import Intrinsics, depth_to_points
from runtime.ros.bag import process_bag
from runtime.ros.messages import Conversion, metric_depth
from runtime.ros.topics import plan_cameras
from tests.recording import recorded_predictor
from tests.scene_bag import IMAGE, INFO, Messages
from tests.test_bag import decode_pointcloud2, frame, read_topics, run_cli, stamp_ns

STRING = "std_msgs/msg/String"
START = 1_700_000_000_000_000_000
# Batched and single calls of one model differ by the float rounding of a batched matrix product:
# a few float32 steps per pixel (measured 2.9e-7 relative on the tiny model; its output is nearly
# flat, so the project's max|a-b|/std metric would magnify rounding here).
ROUNDING = 1e-5
CAMERAS = {  # image topic: (its camera info topic, frame id, (height, width), 3x3 intrinsics)
    "/cam0/image_raw": ("/cam0/camera_info", "cam0_optical", (32, 48), [[40.0, 0, 23.5], [0, 42.0, 15.5], [0, 0, 1]]),
    "/cam1/image_raw": ("/cam1/camera_info", "cam1_optical", (32, 48), [[60.0, 0, 20.0], [0, 61.0, 17.0], [0, 0, 1]]),
    "/cam2/image_raw": ("/cam2/camera_info", "cam2_optical", (40, 40), [[30.0, 0, 19.5], [0, 30.0, 19.5], [0, 0, 1]]),
}


def write_cameras_bag(path, cameras: list[str], frames: int = 4) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    """A ROS 2 bag with ``cameras`` firing together (1 ms apart), each with its camera info, and a
    text topic between them; returns per camera (bag time, stamp, image) of every frame."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    messages = Messages(store)
    expected: dict[str, list] = {topic: [] for topic in cameras}
    with Writer2(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {topic: writer.add_connection(topic, IMAGE, typestore=store) for topic in cameras}
        infos = {topic: writer.add_connection(CAMERAS[topic][0], INFO, typestore=store) for topic in cameras}
        note = writer.add_connection("/note", STRING, typestore=store)
        for topic in cameras:
            _, frame_id, size, matrix = CAMERAS[topic]
            writer.write(infos[topic], START, store.serialize_cdr(messages.info(START, frame_id, matrix, size), INFO))
        for i in range(frames):
            for c, topic in enumerate(cameras):
                _, frame_id, (height, width), _ = CAMERAS[topic]
                t = START + (i + 1) * 100_000_000 + c * 1_000_000
                image = frame(i * 3 + c, height, width)
                msg = messages.image(t - 4_000_000, image, "bgr8", frame_id)
                writer.write(conns[topic], t, store.serialize_cdr(msg, IMAGE))
                expected[topic].append((t, t - 4_000_000, image))
            text = store.types[STRING](data=f"cycle {i}")
            writer.write(note, START + (i + 1) * 100_000_000 + 5_000_000, store.serialize_cdr(text, STRING))
    return expected


def as_depth(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)


@pytest.mark.parametrize("cameras", [["/cam0/image_raw", "/cam1/image_raw"], ["/cam0/image_raw", "/cam2/image_raw"]])
def test_each_camera_gets_its_own_depth_and_points_and_equal_sizes_share_a_call(tmp_path, tiny_model, cameras):
    bag, out = tmp_path / "in", tmp_path / "out"
    expected = write_cameras_bag(bag, cameras)
    predictor, recorded = recorded_predictor(tiny_model, input_size=56)  # its model calls recorded
    single = [predictor.predict(image) for topic in cameras for _, _, image in expected[topic]]  # one at a time
    recorded.batches.clear()
    scale = ScaleShift(0.5, 0.1, float("nan"), 0)
    summary = process_bag(predictor, bag, out, cameras, conversion=Conversion(scale))
    same_size = CAMERAS[cameras[0]][2] == CAMERAS[cameras[1]][2]
    assert recorded.sizes == ([2] * 4 if same_size else [1] * 8)  # a cycle of two equal frames is one model call
    assert summary.frames == 8 and [s.frames for s in summary.cameras.values()] == [4, 4]
    got = read_topics(out)
    namespaces = [topic.rsplit("/", 1)[0] for topic in cameras]
    outputs = {f"{ns}/depth/{name}" for ns in namespaces for name in ("relative_inverse", "image", "points")}
    assert set(got) == outputs | set(cameras) | {CAMERAS[topic][0] for topic in cameras}
    want = iter(single)
    for topic, ns in zip(cameras, namespaces, strict=True):
        _, frame_id, (height, width), matrix = CAMERAS[topic]
        intrinsics = Intrinsics.from_matrix(matrix, width=width, height=height)
        written = [got[f"{ns}/depth/{name}"] for name in ("relative_inverse", "image", "points")]
        for (t, stamp, image), (t_rel, _, rel), (t_met, _, met), (_, _, pts) in zip(
            expected[topic], *written, strict=True
        ):
            assert t_rel == t_met == t and stamp_ns(rel) == stamp and rel.header.frame_id == frame_id
            relative = next(want)
            assert as_depth(rel).shape == (height, width)
            np.testing.assert_allclose(as_depth(rel), relative, rtol=ROUNDING)
            metres = metric_depth(as_depth(rel), scale)
            np.testing.assert_allclose(as_depth(met), metres, rtol=1e-6)
            xyz, _ = decode_pointcloud2(pts)  # in this camera's optical frame, with its own intrinsics
            np.testing.assert_allclose(xyz, depth_to_points(metres, intrinsics, image).points, rtol=1e-5, atol=1e-6)


def test_every_and_max_frames_count_each_cameras_frames_and_stabilising_is_per_camera(tmp_path, predictor):
    bag = tmp_path / "in"
    write_cameras_bag(bag, ["/cam0/image_raw", "/cam1/image_raw"], frames=6)
    summary = process_bag(
        predictor, bag, tmp_path / "out", ["/cam0/image_raw", "/cam1/image_raw"], every=2, max_frames=2, stabilize=True
    )
    assert {topic: s.frames for topic, s in summary.cameras.items()} == {"/cam0/image_raw": 2, "/cam1/image_raw": 2}
    assert all(s.flicker is not None and s.flicker_unstabilized is not None for s in summary.cameras.values())
    assert summary.flicker is None  # one figure per camera: the cameras' depth ranges are not one video's
    got = read_topics(tmp_path / "out")
    assert [stamp_ns(m) for _, _, m in got["/cam1/depth/relative_inverse"]] == [
        START + k * 100_000_000 + 1_000_000 - 4_000_000 for k in (1, 3)
    ]


def test_per_camera_topics_are_given_once_per_camera_or_not_at_all():
    types = {
        "/cam0/image_raw": IMAGE,
        "/cam0/camera_info": INFO,
        "/cam1/image_raw": IMAGE,
        "/cam1/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
        "/other/camera_info": INFO,
    }
    two = plan_cameras(types, ["/cam0/image_raw", "/cam1/image_raw"])
    assert [c.camera_info for c in two] == ["/cam0/camera_info", None]  # no guessing another camera's info
    assert [c.relative for c in two] == ["/cam0/depth/relative_inverse", "/cam1/depth/relative_inverse"]
    assert two[0].copy == two[1].copy == ["/cam0/image_raw", "/cam0/camera_info", "/cam1/image_raw"]
    named = plan_cameras(
        types, ["/cam0/image_raw", "/cam1/image_raw"], ["/cam0/camera_info", "/other/camera_info"], ["/a", "/b"]
    )
    assert [(c.camera_info, c.relative) for c in named] == [("/cam0/camera_info", "/a"), ("/other/camera_info", "/b")]
    for args, match in [
        ((["/cam0/image_raw", "/cam0/image_raw"],), "image topic /cam0/image_raw given twice"),
        ((["/cam0/image_raw", "/cam9/image_raw"],), "no topic '/cam9/image_raw' in the bag; image topics there"),
        ((["/cam0/image_raw", "/cam1/image_raw"], ["/cam0/camera_info"]), "--camera-info-topic given 1 times for 2"),
        ((["/cam0/image_raw", "/cam1/image_raw"], None, None, ["/m"]), "--metric-depth-topic given 1 times"),
        (
            (["/cam1/image_raw", "/cam1/image_raw/compressed"],),  # one namespace: one set of default outputs
            "output topics must be distinct.*/cam1/depth/image.*give --depth-topic etc. once per camera",
        ),
        ((["/cam0/image_raw", "/cam1/image_raw"], None, ["/a", "/a"]), "must be distinct and not among the copied"),
    ]:
        with pytest.raises(InputError, match=match):
            plan_cameras(types, *args)


def test_cli_two_cameras_and_its_errors(tmp_path, tiny_checkpoint):
    bag = tmp_path / "in"
    write_cameras_bag(bag, ["/cam0/image_raw", "/cam1/image_raw"], frames=2)
    common = ["--model", str(tiny_checkpoint), "--input-size", "56"]
    cameras = ["--image-topic", "/cam0/image_raw", "--image-topic", "/cam1/image_raw"]
    run = run_cli(str(bag), *cameras, "--output", str(tmp_path / "out"), *common)
    assert run.returncode == 0, run.stderr
    assert "4 frames of 2 cameras" in run.stdout
    for ns in ("/cam0", "/cam1"):
        assert f"  {ns}/image_raw: 2 frames" in run.stdout
        assert f"  {ns}/depth/relative_inverse: 2 relative inverse depth images" in run.stdout
    for extra, match in [
        (["--image-topic", "/cam0/image_raw"], "image topic /cam0/image_raw given twice"),
        (["--image-topic", "/cam7/image_raw"], "no topic '/cam7/image_raw' in the bag"),
        (["--depth-topic", "/d0"], "--depth-topic given 1 times for 2 image topics"),
        (["--align-to", "/lidar/points"], "--align-to /lidar/points: no such topic"),  # two cameras are fine
    ]:
        refused = run_cli(str(bag), *cameras, *extra, "--output", str(tmp_path / "refused"), *common)
        assert refused.returncode == 2 and match in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    assert not (tmp_path / "refused").exists()
