"""The bag tool on bags written here with rosbags: ROS 2 mcap and sqlite3, ROS 1; raw and JPEG images."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from commands.errors import InputError
from runtime import ScaleShift
from runtime.pointcloud import Intrinsics, depth_to_points
from runtime.ros.bag import process_bag
from runtime.ros.messages import Conversion, metric_depth
from runtime.ros.topics import default_topics, plan_topics

REPO = Path(__file__).resolve().parents[1]
IMAGE, COMPRESSED, INFO, STRING = (
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "sensor_msgs/msg/CameraInfo",
    "std_msgs/msg/String",
)
RAW, JPEG, INFO_TOPIC, NOTE = "/camera/image_raw", "/camera/image_raw/compressed", "/camera/camera_info", "/note"
K = [40.0, 0.0, 23.5, 0.0, 42.0, 15.5, 0.0, 0.0, 1.0]
ENCODINGS = ["rgb8", "bgr8", "mono8", "mono16", "bgra8", "rgba8"]
START = 1_700_000_000_000_000_000


def frame(index: int, height: int = 32, width: int = 48) -> np.ndarray:
    """A BGR test picture that differs from frame to frame."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 5 + index * 20) % 256, (y * 7) % 256, ((x + y) * 3 + index * 50) % 256], axis=-1)
    return image.astype(np.uint8)


def encode(image: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(payload, what the tool should decode it to, step) for a BGR picture in ``encoding``."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    rgb = image[..., ::-1]
    if encoding == "rgb8":
        pixels, expected = rgb, image
    elif encoding == "bgr8":
        pixels, expected = image, image
    elif encoding == "mono8":
        pixels, expected = gray, gray
    elif encoding == "mono16":
        pixels, expected = gray.astype("<u2") * 257, gray  # full 16-bit range scales back exactly
    elif encoding == "bgra8":
        pixels, expected = np.dstack([image, np.full(gray.shape, 7, np.uint8)]), image
    else:
        pixels, expected = np.dstack([rgb, np.full(gray.shape, 7, np.uint8)]), image
    pixels = np.ascontiguousarray(pixels)
    step = pixels.strides[0] + 4  # rows padded, as some drivers do
    padded = np.zeros((pixels.shape[0], step), np.uint8)
    padded[:, : pixels.strides[0]] = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    return padded.reshape(-1), expected, step


def write_bag(
    path: Path, kind: str, frames: int = 6, camera_infos: dict[int, dict] | None = None, jpeg_segment: bytes = b""
) -> dict:
    """A bag with raw images (every encoding), JPEGs, camera info, a text topic and broken messages.

    ``camera_infos`` adds a camera info before frame i with those fields changed (``D``, ``K``,
    ``width``, ...); ``jpeg_segment`` goes into every JPEG after its start marker (an EXIF block).
    Returns what the tool should find: per image topic, (bag time, stamp, decoded image) of
    every good frame, and the number of broken ones.
    """
    ros1 = kind == "rosbag1"
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    types = store.types
    if ros1:
        writer = Writer1(path)
    else:
        plugin = StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3
        writer = Writer2(path, version=8, storage_plugin=plugin)
    serialize = store.serialize_ros1 if ros1 else store.serialize_cdr

    def header(t: int, seq: int):
        stamp = types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9)
        fields = {"stamp": stamp, "frame_id": "camera_optical"}
        return types["std_msgs/msg/Header"](**({"seq": seq} | fields if ros1 else fields))

    expected = {RAW: [], JPEG: [], "broken": 2}
    with writer:
        conns = {
            topic: writer.add_connection(topic, msgtype, typestore=store)
            for topic, msgtype in [(INFO_TOPIC, INFO), (RAW, IMAGE), (JPEG, COMPRESSED), (NOTE, STRING)]
        }
        info_fields = dict(height=32, width=48, distortion_model="plumb_bob", binning_x=0, binning_y=0)
        info_fields["roi"] = types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        matrices = {"D": np.zeros(5), "K": np.array(K), "R": np.eye(3).ravel(), "P": np.zeros(12)}
        info_fields.update({(k if ros1 else k.lower()): v for k, v in matrices.items()})
        info = types[INFO](header=header(START, 0), **info_fields)
        writer.write(conns[INFO_TOPIC], START, serialize(info, INFO))
        for i in range(frames):
            t = START + (i + 1) * 100_000_000
            stamp_t = t - 5_000_000  # header stamps differ from bag times; both must be kept
            if camera_infos and i in camera_infos:
                changed = {(k if ros1 or len(k) > 1 else k.lower()): v for k, v in camera_infos[i].items()}
                update = types[INFO](header=header(t - 10, i), **(info_fields | changed))
                writer.write(conns[INFO_TOPIC], t - 10, serialize(update, INFO))
            image = frame(i)
            encoding = ENCODINGS[i % len(ENCODINGS)]
            data, decoded, step = encode(image, encoding)
            msg = types[IMAGE](
                header=header(stamp_t, i),
                height=32,
                width=48,
                encoding=encoding,
                is_bigendian=0,
                step=step,
                data=data,
            )
            writer.write(conns[RAW], t, serialize(msg, IMAGE))
            expected[RAW].append((t, stamp_t, decoded))
            jpeg = cv2.imencode(".jpg", image)[1].tobytes()
            jpeg = np.frombuffer(jpeg[:2] + jpeg_segment + jpeg[2:], np.uint8)
            compressed = types[COMPRESSED](header=header(stamp_t, i), format="jpeg", data=jpeg)
            writer.write(conns[JPEG], t, serialize(compressed, COMPRESSED))
            stored = cv2.imdecode(jpeg, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # as the camera sent it
            expected[JPEG].append((t, stamp_t, stored))
            writer.write(conns[NOTE], t + 1, serialize(types[STRING](data=f"frame {i}"), STRING))
            if i == 2:  # a raw image whose payload was cut short, and a message cut in half
                short = types[IMAGE](
                    header=header(t + 2, 99),
                    height=32,
                    width=48,
                    encoding="bgr8",
                    is_bigendian=0,
                    step=144,
                    data=data[:50],
                )
                writer.write(conns[RAW], t + 2, serialize(short, IMAGE))
                raw = bytes(serialize(compressed, COMPRESSED))
                writer.write(conns[RAW], t + 3, raw[: len(raw) // 2])
                garbage = types[COMPRESSED](
                    header=header(t + 2, 99), format="jpeg", data=np.frombuffer(b"\xff\xd8junk", np.uint8)
                )
                writer.write(conns[JPEG], t + 2, serialize(garbage, COMPRESSED))
                writer.write(conns[JPEG], t + 3, raw[: len(raw) // 3])
    return expected


def read_topics(path: Path) -> dict[str, list[tuple[int, bytes, object]]]:
    """{topic: [(bag time, raw bytes, message or None)]} in the order the bag gives them."""
    out: dict[str, list] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for conn, t, raw in reader.messages():
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception:
                msg = None
            out.setdefault(conn.topic, []).append((t, bytes(raw), msg))
    return out


def digest(path: Path) -> str:
    """A hash of a bag file or folder, names and bytes."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    sha = hashlib.sha256()
    for file in (f for f in files if f.is_file()):
        sha.update(str(file.relative_to(path.parent)).encode() + file.read_bytes())
    return sha.hexdigest()


def decode_pointcloud2(msg) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (and RGB colours) from a PointCloud2, read by its field offsets as the spec says."""
    assert msg.height == 1 and msg.row_step == msg.point_step * msg.width and not msg.is_bigendian
    offsets = {f.name: (f.offset, f.datatype, f.count) for f in msg.fields}
    assert all(offsets[a][1:] == (7, 1) for a in "xyz")  # FLOAT32, one each
    data = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.width, msg.point_step)
    points = np.stack([data[:, o : o + 4].copy().view("<f4")[:, 0] for o in (offsets[a][0] for a in "xyz")], axis=1)
    colors = None
    if "rgb" in offsets:
        packed = data[:, offsets["rgb"][0] : offsets["rgb"][0] + 4].copy().view("<u4")[:, 0]
        colors = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return points, colors


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.mark.parametrize("kind", ["mcap", "sqlite3", "rosbag1"])
def test_bag_tool_writes_depth_and_points_for_every_good_frame(tmp_path, predictor, kind):
    bag = tmp_path / ("in.bag" if kind == "rosbag1" else "in")
    expected = write_bag(bag, kind)
    before, before_digest = read_topics(bag), digest(bag)
    out = tmp_path / ("out.bag" if kind == "rosbag1" else "out")
    scale = ScaleShift(0.5, 0.1, float("nan"), 0)
    summary = process_bag(predictor, bag, out, RAW, conversion=Conversion(scale, point_stride=2))
    assert summary.frames == len(expected[RAW]) and len(summary.skipped) == expected["broken"]
    got = read_topics(out)
    assert digest(bag) == before_digest  # the input is untouched
    relative, metric, points = default_topics(RAW, IMAGE)
    assert relative == "/camera/depth/relative_inverse" and points == "/camera/depth/points"
    assert set(got) == {RAW, INFO_TOPIC, relative, metric, points}
    for topic in (RAW, INFO_TOPIC):  # copied byte for byte, broken messages included
        assert [(t, raw) for t, raw, _ in got[topic]] == [(t, raw) for t, raw, _ in before[topic]]
    intrinsics = Intrinsics.from_matrix(K, width=48, height=32)
    for (t, stamp, image), (t_rel, _, rel), (t_met, _, met), (t_pts, _, pts) in zip(
        expected[RAW], got[relative], got[metric], got[points], strict=True
    ):
        assert t_rel == t_met == t_pts == t
        for msg in (rel, met, pts):
            assert stamp_ns(msg) == stamp and msg.header.frame_id == "camera_optical"
        for msg in (rel, met):
            assert (msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian) == ("32FC1", 32, 48, 192, 0)
        want = predictor.predict(image)
        np.testing.assert_allclose(np.frombuffer(bytes(rel.data), "<f4").reshape(32, 48), want, rtol=1e-6, atol=1e-7)
        want_m = metric_depth(want, scale)
        got_m = np.frombuffer(bytes(met.data), "<f4").reshape(32, 48)
        np.testing.assert_allclose(got_m, want_m, rtol=1e-5)
        cloud = depth_to_points(want_m, intrinsics, image, stride=2)
        xyz, rgb = decode_pointcloud2(pts)
        np.testing.assert_allclose(xyz, cloud.points, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(rgb, cloud.colors)


def test_compressed_topic_relative_depth_only_every_other_frame(tmp_path, predictor):
    bag = tmp_path / "in"
    expected = write_bag(bag, "mcap")
    out = tmp_path / "out"
    summary = process_bag(predictor, bag, out, JPEG, every=2, max_frames=2, copy_topics=[])
    # Frames 0 and 2 of the JPEG topic's messages 0, 1, 2, broken, broken, 3: the broken ones come after frame 2.
    assert summary.frames == 2 and not summary.skipped
    got = read_topics(out)
    assert list(got) == ["/camera/depth/relative_inverse"]  # no metric conversion given: no metric depth, no points
    written = got["/camera/depth/relative_inverse"]
    for (t, stamp, image), (t_out, _, msg) in zip(expected[JPEG][0:3:2], written, strict=True):
        assert t_out == t and stamp_ns(msg) == stamp
        np.testing.assert_allclose(
            np.frombuffer(bytes(msg.data), "<f4").reshape(32, 48), predictor.predict(image), rtol=1e-6, atol=1e-7
        )


def test_requests_that_cannot_work_are_refused_before_writing(tmp_path, predictor):
    bag = tmp_path / "in"
    write_bag(bag, "sqlite3", frames=1)
    with pytest.raises(InputError, match=r"no topic '/camera/missing'.*image topics there: /camera/image_raw"):
        process_bag(predictor, bag, tmp_path / "a", "/camera/missing")
    with pytest.raises(InputError, match="not images"):
        process_bag(predictor, bag, tmp_path / "b", NOTE)
    with pytest.raises(InputError, match="output is a ROS 2 bag folder"):
        process_bag(predictor, bag, tmp_path / "c.bag", RAW)
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="exists; choose another"):
        process_bag(predictor, bag, tmp_path / "exists", RAW)
    with pytest.raises(InputError, match="not among the copied"):
        process_bag(predictor, bag, tmp_path / "d", RAW, depth_topic=NOTE, copy_topics=[NOTE])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "in"]  # nothing written, no leftovers
    types = {RAW: IMAGE, "/cam/info": INFO, "/other/camera_info": INFO}
    assert plan_topics(types, RAW).camera_info is None  # two candidates, none beside the image: no guess
    assert plan_topics(types | {"/camera/camera_info": INFO}, RAW).camera_info == "/camera/camera_info"
    assert plan_topics({RAW: IMAGE, "/cam/info": INFO}, RAW).camera_info == "/cam/info"


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.bag", *args], cwd=REPO, capture_output=True, text=True, **kwargs
    )


def test_cli_summary_and_usage_errors(tmp_path, tiny_checkpoint):
    bag = tmp_path / "in.bag"
    write_bag(bag, "rosbag1", frames=3)
    out = tmp_path / "out.bag"
    common = ["--model", str(tiny_checkpoint), "--input-size", "56"]
    run = run_cli(str(bag), "--image-topic", RAW, "--output", str(out), "--metric-scale", "0.5", *common)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and "3 frames" in run.stdout and "frames/s" in run.stdout
    assert "skipped 2 image messages" in run.stdout and "point clouds" in run.stdout
    assert out.is_file()
    again = run_cli(str(bag), "--image-topic", RAW, "--output", str(out), *common)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr
    wrong = run_cli(str(bag), "--image-topic", "/nope", "--output", str(tmp_path / "x.bag"), *common)
    assert (
        wrong.returncode == 2 and "image topics there: /camera/image_raw, /camera/image_raw/compressed" in wrong.stderr
    )
    assert "Traceback" not in wrong.stderr
    assert run_cli(str(bag), "--output", "x.bag", *common).returncode == 2  # no --image-topic


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_no_bag_under_the_output_name(tmp_path, tiny_checkpoint, sig):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", frames=600)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "runtime.bag", str(bag), "--image-topic", RAW, "--output", str(out)]
    proc = subprocess.Popen(
        [*command, "--model", str(tiny_checkpoint), "--input-size", "56"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    staging = []
    while not staging and time.monotonic() < deadline and proc.poll() is None:
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
        time.sleep(0.01)
    assert staging, f"the tool never started writing: {proc.communicate()}"
    time.sleep(0.3)
    assert proc.poll() is None, "the run finished before it could be interrupted; make the bag bigger"
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL and not out.exists()
        assert any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # nothing could clean up
        # The next run (here a short one) removes the staging folder the killed process left.
        rerun = run_cli(*command[3:], "--model", str(tiny_checkpoint), "--input-size", "56", "--max-frames", "1")
        assert rerun.returncode == 0, rerun.stderr
    else:  # SIGTERM (a supervisor stopping it) is handled like Ctrl-C
        word, code = ("interrupted", 130) if sig == signal.SIGINT else ("terminated (SIGTERM)", 143)
        assert proc.returncode == code and word in stderr and "Traceback" not in stderr
        assert not out.exists()
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # cleaned up
