"""The bag tool against what a hostile recording holds: camera infos that cannot be used, rotated
JPEGs, topics with no usable frame, bad options, unwritable or full outputs, huge frames."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from runtime import ScaleShift
from runtime.bag import parse_args
from runtime.ros.bag import process_bag
from runtime.ros.messages import Conversion
from tests.test_bag import JPEG, RAW, REPO, decode_pointcloud2, read_topics, run_cli, write_bag
from tests.test_reliability import run_child
from tests.tinyfs import run_with_tmpfs, unavailable

POINTS, METRIC = "/camera/depth/points", "/camera/depth/image"
NOTHING_LEFT = "nothing is left under the output name"
SCALE = Conversion(ScaleShift(0.5, 0.1, float("nan"), 0))


def exif_orientation(value: int) -> bytes:
    """A JPEG APP1 segment whose EXIF block says: show the image rotated (6: 90 degrees clockwise)."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, value, 0)  # Orientation, SHORT, one value
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


@pytest.mark.parametrize("kind", ["mcap", "rosbag1"])
def test_camera_infos_that_cannot_be_used_are_skipped_counted_and_never_give_nan_points(tmp_path, predictor, kind):
    bag = tmp_path / ("in.bag" if kind == "rosbag1" else "in")
    bad = {
        1: {"D": np.full(6, 0.01)},  # plumb_bob takes 5
        2: {"D": np.zeros(5)},  # a good one again
        3: {"distortion_model": "rational_polynomial", "D": np.full(6, 0.01)},  # takes 8
        4: {"D": np.array([0.1, np.nan, 0.0, 0.0, np.inf])},
        5: {"distortion_model": "equidistant", "D": np.full(2, 0.01)},  # takes 4
    }
    write_bag(bag, kind, frames=6, camera_infos=bad)
    warnings: list[str] = []
    out = tmp_path / ("out.bag" if kind == "rosbag1" else "out")
    summary = process_bag(predictor, bag, out, RAW, conversion=SCALE, warn=warnings.append)
    assert summary.frames == 6 and summary.camera_infos_skipped == 4
    assert summary.points == 2 and summary.frames_without_camera_info == 4  # frames 0 and 2 have good infos
    assert any("plumb_bob distortion has 5 coefficients, got 6" in w for w in warnings)
    assert any("distortion coefficients must be finite" in w for w in warnings)
    clouds = [msg for _, _, msg in read_topics(out)[POINTS]]
    assert len(clouds) == 2
    for cloud in clouds:
        points, _ = decode_pointcloud2(cloud)
        assert cloud.is_dense and len(points) and np.isfinite(points).all()


def test_a_rotated_jpeg_keeps_the_camera_s_geometry_and_a_size_mismatch_is_warned_once(tmp_path, predictor):
    bag = tmp_path / "in"
    expected = write_bag(bag, "mcap", frames=3, jpeg_segment=exif_orientation(6))
    warnings: list[str] = []
    process_bag(predictor, bag, tmp_path / "out", JPEG, conversion=SCALE, warn=warnings.append)
    depth = read_topics(tmp_path / "out")[METRIC]
    assert [(m.height, m.width) for _, _, m in depth] == [(32, 48)] * 3  # as stored, as calibrated
    assert [image.shape for _, _, image in expected[JPEG]] == [(32, 48, 3)] * 3
    assert not warnings
    swapped = tmp_path / "swapped"
    write_bag(swapped, "mcap", frames=3, camera_infos={0: {"width": 32, "height": 48}})
    warnings.clear()
    process_bag(predictor, swapped, tmp_path / "out2", RAW, conversion=SCALE, warn=warnings.append)
    mismatch = [w for w in warnings if "camera info is for 32x48 images, the frames are 48x32" in w]
    assert len(mismatch) == 1 and "another aspect ratio" in mismatch[0]  # once, not once per frame


def test_a_topic_with_no_decodable_frame_writes_nothing_and_exits_1(tmp_path, predictor, tiny_checkpoint):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", frames=0)  # the topics exist, the image topic holds nothing usable
    summary = process_bag(predictor, bag, tmp_path / "lib_out", RAW)
    assert summary.frames == 0 and not (tmp_path / "lib_out").exists()
    out = tmp_path / "out"
    common = ["--image-topic", RAW, "--output", str(out), "--model", str(tiny_checkpoint), "--size", "56"]
    run = run_cli(str(bag), *common)
    assert run.returncode == 1 and run.stderr.splitlines()[-1] == (
        f"error: no frame of {RAW} could be decoded: nothing was written to {out}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no hidden staging folder


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--depth-topic", "/bad//name", "is not a valid ROS topic name"),
        ("--points-topic", "/camera/1points", "is not a valid ROS topic name"),
        ("--metric-depth-topic", "/camera/depth/", "is not a valid ROS topic name"),
        ("--depth-topic", "camera/depth", "fully qualified, starting with '/'"),
        ("--depth-topic", "/camera/dépth", "is not a valid ROS topic name"),
        ("--max-range", "-5", "--max-range must be a positive number of metres, got -5.0"),
        ("--max-range", "nan", "--max-range must be a positive number of metres, got nan"),
        ("--metric-scale", "inf", "--metric-scale must be a positive finite number, got inf"),
        ("--metric-shift", "nan", "--metric-shift must be a finite number, got nan"),
        ("--point-stride", "0", "must be 1 or more"),
        ("--max-points", "-1", "must be 1 or more"),
        ("--every", "x", "is not a whole number"),
    ],
)
def test_bad_options_are_refused_when_parsed(option, value, message, capsys):
    argv = ["in", "--image-topic", RAW, "--model", "m.onnx", "--output", "o", "--metric-scale", "1", option, value]
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_outputs_that_cannot_be_written_are_refused_before_the_model_loads(tmp_path):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", frames=1)
    (tmp_path / "a_file").write_text("in the way")
    common = ["--image-topic", RAW, "--model", str(tmp_path / "never_loaded.onnx")]
    run = run_cli(str(bag), *common, "--output", str(tmp_path / "a_file" / "out"))
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in run.stderr
    if unavailable():
        pytest.skip(unavailable())
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    command = [sys.executable, "-m", "runtime.bag", str(bag), *common, "--output", str(read_only / "out")]
    run = run_with_tmpfs(command, read_only, read_only=True, cwd=REPO)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "cannot write in" in run.stderr and "Read-only file system" in run.stderr and not run.left


@pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))
def test_a_full_disk_mid_run_is_one_line_and_leaves_nothing(tmp_path, tiny_checkpoint):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", frames=6)
    disk = tmp_path / "disk"
    disk.mkdir()
    command = [sys.executable, "-m", "runtime.bag", str(bag), "--image-topic", RAW, "--output", str(disk / "out")]
    command += ["--model", str(tiny_checkpoint), "--size", "56", "--metric-scale", "0.5"]
    run = run_with_tmpfs(command, disk, size="16k", cwd=REPO)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error")]
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert errors == [f"error: cannot write {disk / 'out'}: No space left on device; {NOTHING_LEFT}"]
    assert run.left == []  # neither the bag nor its staging folder


def test_huge_frames_give_clouds_within_the_point_bound(tmp_path, predictor, tiny_checkpoint):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", frames=2)
    bounded = Conversion(SCALE.metric, max_points=100)
    summary = process_bag(predictor, bag, tmp_path / "out", RAW, conversion=bounded)
    assert (summary.thinned_clouds, summary.largest_stride) == (2, 4)  # 48x32 at stride 4: 96 points
    clouds = [decode_pointcloud2(msg)[0] for _, _, msg in read_topics(tmp_path / "out")[POINTS]]
    assert [len(points) <= 100 for points in clouds] == [True, True]
    common = ["--image-topic", RAW, "--model", str(tiny_checkpoint), "--size", "56", "--metric-scale", "0.5"]
    run = run_cli(str(bag), *common, "--output", str(tmp_path / "cli"), "--max-points", "100")
    assert run.returncode == 0, run.stderr
    assert "2 clouds thinned (stride up to 4 in x and y) to stay within --max-points 100" in run.stdout


# Measured peak of the bag tool on one 7900x7900 frame (62 MP, under the 64 MP decode limit) with
# metric depth and points, tiny model: 2.5 GB (6.5 GB before clouds were bounded); 2.0 GB with
# relative depth only. docs/ros.md "Bags" states it; this bound leaves room for allocator noise.
BAG_64MP_PEAK_MB = 3200
RUN_BAG = """
import runpy, sys
sys.argv = ["runtime.bag", *ARGS]
try:
    runpy.run_module("runtime.bag", run_name="__main__")
except SystemExit as stop:
    RESULT = {"code": stop.code}
"""


def big_frame_bag(path, side: int = 7900) -> None:
    """A ROS 2 bag with one side x side PNG camera frame (a few MB: smooth bands) and its camera info."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types
    bands = (np.arange(side) // 31 % 256).astype(np.uint8)
    png = cv2.imencode(".png", np.dstack([np.broadcast_to(bands, (side, side))] * 3))[1].reshape(-1)
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="c")
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    k = np.array([4000.0, 0, side / 2, 0, 4000.0, side / 2, 0, 0, 1])
    info = types["sensor_msgs/msg/CameraInfo"](
        header=header, height=side, width=side, distortion_model="plumb_bob", d=np.zeros(5), k=k,
        r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0, roi=roi,
    )  # fmt: skip
    image = types["sensor_msgs/msg/CompressedImage"](header=header, format="png", data=png)
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, msg in (("/cam/camera_info", info), ("/cam/image/compressed", image)):
            connection = writer.add_connection(topic, msg.__msgtype__, typestore=store)
            writer.write(connection, 2, store.serialize_cdr(msg, msg.__msgtype__))


@pytest.mark.slow
def test_a_64_megapixel_frame_costs_bounded_memory(tmp_path, tiny_checkpoint):
    big_frame_bag(tmp_path / "big")
    args = [str(tmp_path / "big"), "--image-topic", "/cam/image/compressed", "--output", str(tmp_path / "out")]
    args += ["--model", str(tiny_checkpoint), "--size", "56", "--metric-scale", "0.5"]
    result = run_child(RUN_BAG.replace("ARGS", repr(args)), timeout=300)
    assert result["code"] == 0 and result["peak_mb"] < BAG_64MP_PEAK_MB, result
    clouds = read_topics(tmp_path / "out")["/cam/depth/points"]
    assert len(clouds) == 1 and clouds[0][2].width <= 2**21  # every 6th pixel: 1317 x 1317
