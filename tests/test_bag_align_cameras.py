"""--align-to with several cameras in one pass of the bag tool, on a bag written here with rosbags:
two cameras at different poses in one tf tree (different intrinsics and optical frames), each with
its own per-frame scale and shift of the network output, and one lidar whose every message serves
a frame of each camera. The second camera's messages reach the bag 450 ms after their stamp (a
camera with transport latency), so each of its frames is read after the other camera's next few
frames have used up (and would, with one bound for all cameras, have released) the scan it needs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from commands.errors import InputError
from runtime import DepthPredictor
from runtime.align import AlignSettings
from runtime.metric import OutputKind
from runtime.ros.bag import open_bag, process_bag, rosbags_modules
from runtime.ros.bag_align import REORDER, SEVERAL_EXTRINSICS, BagAligner
from tests import scenes
from tests.scene_bag import CLOUD, IMAGE, INFO, LIDAR, PERIOD, START, TF, Messages
from tests.test_bag_align import abs_rel, images, run_bag

CAM0, CAM1 = "/cam0/image_raw", "/cam1/image_raw"
K1 = np.array([[100.0, 0.0, 80.0], [0.0, 100.0, 60.0], [0.0, 0.0, 1.0]])  # a wider lens than scenes.K
# The test robot's chain with camera_optical renamed cam0_optical, and a second camera 0.75 m ahead,
# 0.3 m to the right and 0.1 m higher, looking the same way.
CHAIN = [
    ("base_link", "camera_link", *scenes.CHAIN[0][2:]),
    ("camera_link", "cam0_optical", *scenes.CHAIN[1][2:]),
    scenes.CHAIN[2],
    ("base_link", "cam1_link", (1.0, -0.35, 0.7), scenes.CHAIN[0][3]),
    ("cam1_link", "cam1_optical", (0.0, 0.0, 0.0), scenes.OPTICAL),
]
LATENCY1 = 450_000_000  # ns between cam1's stamp and its bag time


def cam1_in_cam0() -> np.ndarray:
    """Where cam1's optical frame sits in cam0's (a translation: the two look the same way)."""
    cam0 = scenes.pose(*CHAIN[0][2:]) @ scenes.pose(*CHAIN[1][2:])
    cam1 = scenes.pose(*CHAIN[3][2:]) @ scenes.pose(*CHAIN[4][2:])
    relative = np.linalg.inv(cam0) @ cam1
    np.testing.assert_allclose(relative[:3, :3], np.eye(3), atol=1e-12)
    return relative[:3, 3]


def write_two_cameras_bag(path: Path, frames: int, seed: int = 0) -> dict[str, dict[str, list]]:
    """The bag (see the module doc); per camera its true depth, stamps and (gain, offset) per frame."""
    rng = np.random.default_rng(seed)
    store = get_typestore(Stores.ROS2_HUMBLE)
    messages, serialize = Messages(store), store.serialize_cdr
    scene, lidar, offset1 = scenes.Scene(), scenes.Lidar(), cam1_in_cam0()
    expected = {camera: {"depth": [], "stamps": [], "affine": []} for camera in (CAM0, CAM1)}
    with Writer2(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        topics = [(CAM0, IMAGE), (CAM1, IMAGE), ("/cam0/camera_info", INFO), ("/cam1/camera_info", INFO)]
        conns = {topic: writer.add_connection(topic, kind, typestore=store) for topic, kind in topics}
        conns[LIDAR] = writer.add_connection(LIDAR, CLOUD, typestore=store)
        tf = writer.add_connection("/tf_static", TF, typestore=store)
        writer.write(tf, START - 1, serialize(messages.tf(START, CHAIN), TF))
        for ns, frame_id, k in (("/cam0", "cam0_optical", scenes.K), ("/cam1", "cam1_optical", K1)):
            writer.write(conns[f"{ns}/camera_info"], START, serialize(messages.info(START, frame_id, k), INFO))
        for i in range(frames):
            stamp = START + (i + 1) * PERIOD
            ahead = (0.0, 0.0, 0.05 * i)
            depth0 = scenes.render(scene, camera=ahead)
            depth1 = scenes.render(scene, K1, camera=offset1 + ahead)
            for camera, depth, when, latency in ((CAM0, depth0, stamp, 0), (CAM1, depth1, stamp + 1_000_000, LATENCY1)):
                gain, shift = float(rng.uniform(0.6, 4.0)), float(rng.uniform(-0.8, 1.5))
                image, _ = scenes.relative_frame(depth, gain, shift)
                msg = messages.image(when, image, frame_id=f"{camera[:5]}_optical".lstrip("/"))
                writer.write(conns[camera], when + latency, serialize(msg, IMAGE))
                expected[camera]["depth"].append(depth)
                expected[camera]["stamps"].append(when)
                expected[camera]["affine"].append((gain, shift))
            when = stamp + 3_000_000  # one scan a cycle, 3 ms after cam0's frame and 2 ms after cam1's
            writer.write(conns[LIDAR], when, serialize(messages.cloud(when, lidar.scan(depth0, rng)), CLOUD))
    return expected


@pytest.fixture(scope="module")
def relative_model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "relative.onnx")


def test_each_camera_is_fitted_on_its_own_to_the_shared_lidar(tmp_path, relative_model):
    bag, out = tmp_path / "in", tmp_path / "out"
    expected = write_two_cameras_bag(bag, frames=6)
    summary = process_bag(DepthPredictor(relative_model), bag, out, [CAM0, CAM1], align_to=LIDAR)
    assert summary.metric == 12 and {c: s.metric for c, s in summary.cameras.items()} == {CAM0: 6, CAM1: 6}
    for camera, ns in ((CAM0, "/cam0"), (CAM1, "/cam1")):
        truth = expected[camera]["depth"]
        errors = [abs_rel(m, t) for m, t in zip(images(out, f"{ns}/depth/image"), truth, strict=True)]
        assert max(errors) <= 0.02, (camera, errors)  # its own intrinsics, optical frame and fit

    record = json.loads((tmp_path / "out.alignment.json").read_text())
    frames = record["frames"]
    assert sorted(record["cameras"]) == [CAM0, CAM1] and record["summary"]["frames"] == 12
    for camera, offset_ms in ((CAM0, 3.0), (CAM1, 2.0)):
        mine = [f for f in frames if f["camera"] == camera]
        assert [f["status"] for f in mine] == ["fit"] * 6 and record["cameras"][camera]["status"] == {"fit": 6}
        # A frame of each camera fitted to the same scan (one a cycle), the late camera's included.
        assert [f["sensor_offset_ms"] for f in mine] == [offset_ms] * 6
        assert [f["stamp_ns"] for f in mine] == expected[camera]["stamps"] and [f["frame"] for f in mine] == [*range(6)]
        for f, (gain, shift) in zip(mine, expected[camera]["affine"], strict=True):
            # metric disparity = scale * (gain * NEAREST / depth + shift) + fitted shift: this camera's
            # own network affine each frame, never the other camera's or a blend (header codes: 16 bits)
            assert f["scale"] == pytest.approx(1 / (gain * scenes.NEAREST), rel=0.02)
            assert f["shift"] == pytest.approx(-shift / (gain * scenes.NEAREST), abs=0.02 * abs(f["scale"]))
    # each scan released once both its frames were fitted and it is older than the reorder window
    kept = [summary.alignment.stamps[k] for k in summary.alignment.buffered]
    assert kept and min(kept) >= max(expected[CAM0]["stamps"]) - (REORDER + 0.05) * 1e9 - 5e6


def test_the_command_aligns_two_cameras_and_refuses_one_camera_extrinsics(tmp_path, relative_model):
    bag = tmp_path / "in"
    write_two_cameras_bag(bag, frames=3)
    common = ["--image-topic", CAM0, "--image-topic", CAM1, "--model", str(relative_model), "--align-to", LIDAR]
    run = run_bag(str(bag), *common, "--output", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for camera, ns in ((CAM0, "/cam0"), (CAM1, "/cam1")):
        heading = lines.index(f"  {camera}: 3 frames")  # each camera's own fit lines under its heading
        block = lines[heading + 1 : heading + 8]
        assert any(line.startswith(f"  {ns}/depth/image: 3 depth images in metres") for line in block), block
        assert any("aligned to /lidar/points: 3 frames fitted, 0 jumps held back" in line for line in block), block
    assert run.stdout.count("per-frame record:") == 1
    extrinsics = scenes.extrinsics_args(scenes.camera_from_lidar())
    refused = run_bag(str(bag), *common, "--output", str(tmp_path / "x"), "--extrinsics", *extrinsics)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert SEVERAL_EXTRINSICS in refused.stderr
    assert not (tmp_path / "x").exists()
    reader = open_bag(rosbags_modules(), bag)
    try:  # a camera without camera info (none beside it, none named) is refused by its topic
        with pytest.raises(InputError, match=f"no camera info beside {CAM1}; name it with --camera-info-topic"):
            BagAligner.prepare(reader, LIDAR, {CAM0: "/cam0/camera_info", CAM1: None})
    finally:
        reader.close()


def test_a_camera_that_stops_holds_no_scans_back_and_frames_without_camera_info_release_theirs():
    """The buffer with a camera whose frames stop after three (a driver that died): once it trails
    the other by over CAMERA_LAG its old match no longer pins every later scan. The frames carry no
    camera info (they get no fit) but still release the scans they were matched to."""
    scans = [START + k * PERIOD for k in range(40)]
    cameras = [CAM0, CAM1]
    aligner = BagAligner(LIDAR, CLOUD, scans, lambda *_: np.eye(4), "tf", None, AlignSettings(), 0.05, cameras)
    aligner.start(OutputKind())
    header = Messages(get_typestore(Stores.ROS2_HUMBLE)).header
    waiting, largest = [], 0
    for k, stamp in enumerate(scans):
        aligner.observe(LIDAR, stamp, b"", lambda k=k: SimpleNamespace(scan=k))
        for camera in cameras[: 2 if k < 3 else 1]:
            frame = SimpleNamespace(
                header=header(stamp + 1_000_000, "x"), topic=camera, timestamp=stamp, intrinsics=None
            )
            aligner.match(frame)
            waiting.append(frame)
        while waiting and aligner.ready(waiting[0]):
            frame = waiting.pop(0)  # through the camera's sensor input, as the frame pipeline calls it
            aligner.camera(frame.topic).align(frame.header, np.ones((4, 4), np.float32), frame.intrinsics)
        largest = max(largest, len(aligner.buffered))
    assert not waiting and aligner.logs[CAM0].statuses == {"none": 40} and len(aligner.logs[CAM1].records) == 3
    # held back for a second of cam1's lag, then let go: the buffer keeps the reorder window only
    assert largest <= 13 and aligner.buffered == [34, 35, 36, 37, 38, 39]
    assert all(r["reason"] == "no camera info" for r in aligner.log.records)
