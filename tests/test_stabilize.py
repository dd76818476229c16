"""Relative depth held on one scale without a sensor, and the flicker figure that needs no ground truth."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import DepthPredictor, InputError
from runtime.align import FlickerMeter, Stabilizer
from runtime.io.video import write_depth_video
from tests import scenes

REPO = Path(__file__).resolve().parents[1]
BODY = (slice(1, None), slice(None))


def frames_of(scene_at, count: int, seed: int = 0):
    """(image, model output, true depth, (gain, offset)) for ``count`` frames of ``scene_at(i)``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        depth = scenes.render(scene_at(i))
        gain, offset = rng.uniform(0.6, 4.0), rng.uniform(-0.8, 1.5)
        image, relative = scenes.relative_frame(depth, gain, offset)
        out.append((image, relative.astype(np.float32), depth, (gain, offset)))
    return out


def moving_box(i: int) -> scenes.Scene:
    return scenes.Scene(boxes=[scenes.Box((-2.0 + 0.3 * i, 0.2, 3.0), (-1.0 + 0.3 * i, 1.2, 4.0))])


def test_the_flicker_figure():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 10, (60, 80)).astype(np.float32)
    image = rng.integers(0, 100, (60, 80, 3), dtype=np.uint8)
    meter = FlickerMeter()
    assert meter.update(image, values) is None  # one frame: nothing to compare
    assert meter.update(image, values) == 0.0
    spread = np.subtract(*np.percentile(values, [95, 5]))
    assert meter.update(image, values + 0.5) == pytest.approx(0.5 / spread, rel=1e-5)
    other = image + 150
    assert meter.update(other, values * 3) is None  # nothing stayed the same: not measurable
    assert meter.figure == pytest.approx(0.5 * 0.5 / spread, rel=1e-5)


def test_a_still_scene_through_a_flickering_network_holds_still():
    sequence = frames_of(lambda i: scenes.Scene(), 6)
    stabilizer = Stabilizer()
    gain, offset = sequence[0][3]
    for image, relative, depth, _ in sequence:
        steady = stabilizer(image, relative)
        want = gain * scenes.NEAREST / depth + offset  # the first frame's scale and shift
        np.testing.assert_allclose(steady[BODY], want[BODY], rtol=1e-3, atol=1e-3)
    assert stabilizer.flicker_in.figure > 0.1 and stabilizer.flicker_out.figure < 1e-3
    assert stabilizer.moving == 0 and stabilizer.resets == 0


def test_a_moving_object_is_fitted_on_the_pixels_that_did_not_change():
    sequence = frames_of(moving_box, 6, seed=1)
    stabilizer = Stabilizer()
    gain, offset = sequence[0][3]
    for image, relative, depth, _ in sequence:
        steady = stabilizer(image, relative)
        want = gain * scenes.NEAREST / depth + offset
        np.testing.assert_allclose(steady[BODY], want[BODY], rtol=5e-3, atol=5e-3)  # the box too
    assert stabilizer.moving == 0 and stabilizer.flicker_out.figure < 1e-3


def test_a_moving_camera_falls_back_to_all_pixels():
    rng = np.random.default_rng(0)
    relative = scenes.NEAREST / scenes.render(scenes.Scene())
    stabilizer = Stabilizer()
    stabilizer(rng.integers(0, 255, (*relative.shape, 3), dtype=np.uint8), relative)
    moved = rng.integers(0, 255, (*relative.shape, 3), dtype=np.uint8)  # (almost) every pixel changed
    out = stabilizer(moved, relative * 2 + 1)
    assert stabilizer.moving == 1 and np.allclose(out, relative, rtol=1e-4)


def test_stream_stabilises_and_refuses_metric_models(tmp_path):
    relative_model = DepthPredictor(scenes.affine_onnx(tmp_path / "r.onnx"))
    sequence = frames_of(lambda i: scenes.Scene(), 4)
    images = [image for image, *_ in sequence]
    by_hand = Stabilizer()
    want = [by_hand(image, relative_model.predict(image)) for image in images]
    given = Stabilizer()
    got = list(relative_model.stream(iter(images), stabilize=given))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert given.frames == 4 and given.flicker_out.figure < 1e-3
    plain = list(relative_model.stream(iter(images), stabilize=True))
    np.testing.assert_allclose(plain[-1], got[-1], rtol=1e-6)
    metric_model = DepthPredictor(scenes.affine_onnx(tmp_path / "m.onnx", max_depth=20.0))
    with pytest.raises(InputError, match="stabilize is for relative models"):
        next(metric_model.stream(iter(images), stabilize=True))


def write_lossless_video(path: Path, images: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, images[0].shape[1::-1])
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write FFV1 (lossless) video")
    for image in images:
        writer.write(image)
    writer.release()
    return path


def test_the_video_command_reports_flicker_with_and_without_stabilize(tmp_path):
    model = scenes.affine_onnx(tmp_path / "r.onnx")
    images = [image for image, *_ in frames_of(moving_box, 8, seed=2)]
    video = write_lossless_video(tmp_path / "clip.avi", images)
    plain = write_depth_video(DepthPredictor(model), str(video), tmp_path / "plain.mp4")
    steady = write_depth_video(DepthPredictor(model), str(video), tmp_path / "steady.mp4", stabilize=True)
    assert plain.frames == steady.frames == 8
    assert plain.flicker > 0.1 and steady.flicker < 0.005
    assert steady.flicker_unstabilized == pytest.approx(plain.flicker)

    # The stabilised video's colours hold still too where the scene did: one colour range for all frames.
    capture = cv2.VideoCapture(str(tmp_path / "steady.mp4"))
    written = [capture.read()[1].astype(int) for _ in range(8)]
    for i in range(1, 8):
        still = np.abs(images[i].astype(int) - images[i - 1].astype(int)).max(axis=2) == 0
        change = np.abs(written[i] - written[i - 1]).max(axis=2)[still]
        assert np.median(change) <= 1 and np.percentile(change, 99) <= 12  # MPEG-4 noise, not flicker
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            str(video),
            "--model",
            str(model),
            "--output-dir",
            str(tmp_path / "cli"),
            "--stabilize",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    found = re.search(r"flicker: ([0-9.]+) % of the depth range .*; ([0-9.]+) % before --stabilize", run.stdout)
    assert found and float(found[1]) < 0.5 < float(found[2]), run.stdout
