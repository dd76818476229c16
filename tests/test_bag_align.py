"""--align-to, metric models and --stabilize in the bag tool, on bags written here with rosbags:
a scene with exact depth, a relative "network" (a tiny ONNX file run by ONNX Runtime) whose scale
and shift change every frame, a lidar behind a tf chain, a depth camera."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from runtime import DepthPredictor, InputError, ScaleShift, fit_scale_shift
from runtime.align import AlignSettings, FilterSettings
from runtime.ros.bag import process_bag
from runtime.ros.messages import Conversion
from tests import scenes
from tests.scene_bag import CAMERA, DEPTH, LIDAR, write_scene_bag
from tests.test_bag import decode_pointcloud2, read_topics

REPO = Path(__file__).resolve().parents[1]
RELATIVE, METRIC, POINTS = "/cam/depth/relative_inverse", "/cam/depth/image", "/cam/depth/points"
BODY = (slice(1, None), slice(None))  # row 0 holds the model's header codes


@pytest.fixture(scope="module")
def relative_model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "relative.onnx")


@pytest.fixture(scope="module")
def metric_model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "metric.onnx", max_depth=20.0)


def images(path: Path, topic: str) -> list[np.ndarray]:
    return [
        np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width) for _, _, msg in read_topics(path)[topic]
    ]


def abs_rel(metres: np.ndarray, truth: np.ndarray) -> float:
    """AbsRel over the image body; a pixel without a depth counts as an error of 1."""
    metres, truth = metres[BODY], truth[BODY]
    valid = np.isfinite(metres) & (metres > 0)
    return float(np.mean(np.where(valid, np.abs(metres - truth) / truth, 1.0)))


def run_bag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.bag", *args], cwd=REPO, capture_output=True, text=True)


def test_the_align_command_as_written_scores_the_bag_against_its_own_lidar(tmp_path, relative_model):
    bag, out = tmp_path / "in", tmp_path / "out"
    expected = write_scene_bag(bag, "mcap", frames=8)
    run = run_bag(
        str(bag),
        "--image-topic",
        "/cam/image_raw",
        "--model",
        str(relative_model),
        "--output",
        str(out),
        "--align-to",
        "/lidar/points",
    )
    assert run.returncode == 0, run.stderr
    assert "aligned to /lidar/points: 8 frames fitted, 0 jumps held back, 0 on a held fit, 0 without" in run.stdout
    assert "held-out sensor points (median over frames): AbsRel" in run.stdout and "flicker:" in run.stdout
    assert "400 not finite, 1600 behind the camera" in run.stdout  # the lidar's NaN returns and rear half
    got = read_topics(out)
    assert set(got) == {CAMERA, "/cam/camera_info", RELATIVE, METRIC, POINTS}
    metres = images(out, METRIC)
    errors = [abs_rel(m, truth) for m, truth in zip(metres, expected.depth, strict=True)]
    assert max(errors) <= 0.02, errors
    for relative, want in zip(images(out, RELATIVE), expected.relative, strict=True):
        np.testing.assert_allclose(relative, want, rtol=1e-5, atol=1e-6)
    xyz, _ = decode_pointcloud2(got[POINTS][0][2])
    assert len(xyz) >= scenes.HEIGHT * scenes.WIDTH - 2 and np.isfinite(xyz).all()
    record = json.loads((tmp_path / "out.alignment.json").read_text())
    assert record["sensor_topic"] == LIDAR and record["transforms"].startswith("tf (3 transforms)")
    assert [f["status"] for f in record["frames"]] == ["fit"] * 8
    for frame in record["frames"]:
        held = frame["held_out"]
        assert held["points"] > 400 and held["delta1"] > 0.9 and held["abs_rel"] < 0.1  # 5 % outliers in there
        assert frame["sensor_offset_ms"] == 3.0 and frame["inliers"] > 1800
    assert record["summary"]["held_out_median"]["abs_rel"] < 0.06
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left

    # The same bag with constants fitted on frame 0 (on its exact depth, the best constants can be):
    first = fit_scale_shift(expected.relative[0][BODY], expected.depth[0][BODY])
    process_bag(DepthPredictor(relative_model), bag, tmp_path / "constants", CAMERA, conversion=Conversion(first))
    constant_errors = [
        abs_rel(m, t) for m, t in zip(images(tmp_path / "constants", METRIC), expected.depth, strict=True)
    ]
    assert constant_errors[0] < 0.01 and np.median(constant_errors[1:]) > 0.3


def test_a_metric_model_publishes_its_own_metres_and_no_relative_topic(tmp_path, metric_model):
    bag = tmp_path / "in"
    expected = write_scene_bag(bag, "sqlite3", frames=3, metric_max_depth=20.0)
    predictor = DepthPredictor(metric_model)
    summary = process_bag(predictor, bag, tmp_path / "out", CAMERA)
    assert summary.metric == summary.points == 3
    got = read_topics(tmp_path / "out")
    assert RELATIVE not in got and set(got) == {CAMERA, "/cam/camera_info", METRIC, POINTS}
    camera_images = [scenes.encode(d / 20.0) for d in expected.depth]
    for metres, image, truth in zip(images(tmp_path / "out", METRIC), camera_images, expected.depth, strict=True):
        np.testing.assert_array_equal(metres, predictor.predict(image))  # the model's output, as it is
        np.testing.assert_allclose(metres, truth, atol=20 / 65535)
    with pytest.raises(InputError, match=r"the model outputs metric depth .*--metric-scale/--metric-shift"):
        process_bag(predictor, bag, tmp_path / "x", CAMERA, conversion=Conversion(ScaleShift(1.0, 0.0, 0.0, 0)))
    with pytest.raises(InputError, match="--stabilize is for relative models"):
        process_bag(predictor, bag, tmp_path / "y", CAMERA, stabilize=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    corrected = process_bag(predictor, bag, tmp_path / "aligned", CAMERA, align_to=LIDAR)
    statuses = [f["status"] for f in corrected.alignment.log.records]
    assert statuses == ["fit"] * 3 and all(abs(f["scale"] - 1) < 0.01 for f in corrected.alignment.log.records)
    assert RELATIVE not in read_topics(tmp_path / "aligned")
    run = run_bag(str(bag), "--image-topic", CAMERA, "--model", str(metric_model), "--output", str(tmp_path / "cli"))
    assert run.returncode == 0 and "metric depth in metres (up to 20 m)" in run.stdout, run.stderr
    assert "3 depth images in metres (32FC1, REP 118) from the model's output" in run.stdout
    assert "relative inverse depth images" not in run.stdout


def test_frames_without_a_usable_scan_are_held_for_a_bounded_time_then_get_no_metres(tmp_path, relative_model):
    bag = tmp_path / "in"
    rng = np.random.default_rng(3)
    garbage = rng.uniform(-20, 20, (3000, 3)).astype(np.float32)
    delays = [3_000_000, -20_000_000, None, None, 3_000_000, 80_000_000, 3_000_000, 3_000_000]
    scans = {6: np.zeros((0, 3), np.float32), 7: garbage}
    expected = write_scene_bag(bag, "mcap", frames=8, lidar_delay=delays, scans=scans)
    predictor = DepthPredictor(relative_model)
    align = {"settings": AlignSettings(temporal=FilterSettings(hold=0.15))}
    summary = process_bag(predictor, bag, tmp_path / "out", CAMERA, align_to=LIDAR, align_options=align)
    records = summary.alignment.log.records
    assert [r["status"] for r in records] == ["fit", "fit", "held", "none", "fit", "held", "none", "none"]
    assert records[1]["sensor_offset_ms"] == 20.0  # recorded before its image: still the nearest
    assert records[2]["reason"] == "no sensor message within 50 ms (nearest 120 ms)"
    assert records[5]["reason"] == "no sensor message within 50 ms (nearest 80 ms)"
    assert records[6]["reason"] == "too few points (0 < 20)"
    assert records[7]["reason"].startswith(("too few inliers", "no positive scale", "inliers span too little"))
    assert summary.metric == 5  # no message for the frames past the hold: never a guess
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, _, m in read_topics(tmp_path / "out")[METRIC]]
    assert stamps == [s for i, s in enumerate(expected.stamps) if i not in (3, 6, 7)]
    lines = "\n".join(summary.alignment.log.lines(LIDAR))
    assert "3 frames fitted, 0 jumps held back, 2 on a held fit, 3 without metric depth" in lines
    assert "3 no sensor message within 50 ms" in lines and "1 too few points" in lines
    held = images(tmp_path / "out", METRIC)[2]  # frame 2 on frame 1's fit, mapped through its own anchors
    assert abs_rel(held, expected.depth[2]) < 0.05


def test_no_transform_path_is_refused_before_anything_is_written_and_extrinsics_stand_in(tmp_path, relative_model):
    bag = tmp_path / "in.bag"
    expected = write_scene_bag(bag, "rosbag1", frames=4, tf=False)
    common = ["--image-topic", CAMERA, "--model", str(relative_model), "--align-to", LIDAR]
    run = run_bag(str(bag), *common, "--output", str(tmp_path / "out.bag"))
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "no transform between 'velodyne' and 'camera_optical': the transforms found are none" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bag"]
    extrinsics = scenes.extrinsics_args(scenes.camera_from_lidar())
    run = run_bag(str(bag), *common, "--output", str(tmp_path / "out.bag"), "--extrinsics", *extrinsics)
    assert run.returncode == 0, run.stderr
    assert max(abs_rel(m, t) for m, t in zip(images(tmp_path / "out.bag", METRIC), expected.depth, strict=True)) <= 0.02
    assert json.loads((tmp_path / "out.bag.alignment.json").read_text())["transforms"] == "--extrinsics"
    for extra, message in [
        (["--metric-scale", "0.5"], "not both"),
        (["--max-time-offset", "-1"], "--max-time-offset: '-1' is out of range"),
        (["--held-out", "0.95"], "--held-out: '0.95' is out of range"),
        (["--extrinsics", "1", "2"], "6 numbers"),
    ]:
        bad = run_bag(str(bag), *common, "--output", str(tmp_path / "bad.bag"), *extra)
        assert bad.returncode == 2 and message in bad.stderr, (extra, bad.stderr)
    alone = run_bag(
        str(bag),
        "--image-topic",
        CAMERA,
        "--model",
        str(relative_model),
        "--output",
        "x.bag",
        "--extrinsics",
        *extrinsics,
    )
    assert alone.returncode == 2 and "give --align-to TOPIC too" in alone.stderr
    wrong = run_bag(
        str(bag),
        "--image-topic",
        CAMERA,
        "--model",
        str(relative_model),
        "--output",
        "x.bag",
        "--align-to",
        "/cam/camera_info",
    )
    assert wrong.returncode == 2 and "PointCloud2 topics there: /lidar/points" in wrong.stderr


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_a_depth_camera_aligns_frame_by_frame(tmp_path, relative_model, encoding):
    bag = tmp_path / "in"
    expected = write_scene_bag(bag, "mcap", frames=3, depth_camera=True, depth_encoding=encoding)
    summary = process_bag(DepthPredictor(relative_model), bag, tmp_path / "out", CAMERA, align_to=DEPTH)
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 3
    assert summary.alignment.sensor_info_topic == "/depth/camera_info"
    errors = [abs_rel(m, t) for m, t in zip(images(tmp_path / "out", METRIC), expected.depth, strict=True)]
    assert max(errors) <= 0.01, errors


def test_a_depth_encoding_that_can_never_give_metres_is_refused_before_the_run(tmp_path, relative_model):
    bag = tmp_path / "in"
    write_scene_bag(bag, "mcap", frames=2, depth_camera=True, depth_encoding="mono8")
    with pytest.raises(InputError, match=r"--align-to /depth/image_rect_raw can never give metres: .*'mono8'"):
        process_bag(DepthPredictor(relative_model), bag, tmp_path / "out", CAMERA, align_to=DEPTH)
    assert not (tmp_path / "out").exists()


def test_a_scan_recorded_after_the_last_frame_read_is_still_used(tmp_path, relative_model):
    bag = tmp_path / "in"
    write_scene_bag(bag, "mcap", frames=5, lidar_delay=[40_000_000] * 5)
    summary = process_bag(DepthPredictor(relative_model), bag, tmp_path / "out", CAMERA, align_to=LIDAR, max_frames=3)
    assert [r["status"] for r in summary.alignment.log.records] == ["fit"] * 3 and summary.metric == 3


def test_stabilised_relative_depth_stops_flickering(tmp_path, relative_model):
    bag = tmp_path / "in"
    expected = write_scene_bag(bag, "mcap", frames=6, speed=0.0)
    raw = process_bag(DepthPredictor(relative_model), bag, tmp_path / "raw", CAMERA)
    steady = process_bag(DepthPredictor(relative_model), bag, tmp_path / "steady", CAMERA, stabilize=True)
    assert raw.flicker > 0.1 and raw.flicker_unstabilized is None
    assert steady.flicker < 0.002 and steady.flicker_unstabilized == pytest.approx(raw.flicker)
    gain, offset = expected.affine[0]
    for relative, truth in zip(images(tmp_path / "steady", RELATIVE), expected.depth, strict=True):
        # every frame on the first frame's scale and shift
        np.testing.assert_allclose(relative[BODY], (gain * scenes.NEAREST / truth + offset)[BODY], rtol=2e-3, atol=2e-3)


def _labelled(source: Path, path: Path, kind: str) -> Path:
    """The metric affine model labelled with another output kind (as a DA3 export is)."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "output_kind":
            prop.value = kind
        elif prop.key == "max_depth":
            prop.value = ""
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind", ["metres_per_focal", "depth_up_to_scale"])
def test_the_summary_lists_exactly_the_topics_the_bag_holds(tmp_path, metric_model, kind, capsys):
    """DA3's kinds write no relative inverse depth: the summary's topic lines are the output bag's
    topics, and its metres' source is the one used (camera info, or the fit per frame)."""
    from runtime.bag import main as bag_main

    bag = tmp_path / "in"
    write_scene_bag(bag, "mcap", frames=2, metric_max_depth=20.0)
    model = _labelled(metric_model, tmp_path / f"{kind}.onnx", kind)
    args = [str(bag), "--image-topic", CAMERA, "--model", str(model), "--output", str(tmp_path / "out")]
    align = ["--align-to", LIDAR] if kind == "depth_up_to_scale" else []
    assert bag_main(args + align) == 0
    out = capsys.readouterr().out
    listed = {line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  /")}
    written = set(read_topics(tmp_path / "out")) - {CAMERA, "/cam/camera_info"}
    assert listed == written == {METRIC, POINTS}, out
    source = "a fit per frame" if align else "the model's output and each frame's camera info"
    assert f"2 depth images in metres (32FC1, REP 118) from {source}" in out, out
