"""Stabilise that cannot collapse: a scene cut, a black or constant frame, a degenerate fit restart
from the frame's own scale or hold the reference, never a flat map; the flicker figure measures what
is published (metres when aligned) and never calls a flat output stable."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import DepthPredictor
from runtime.align import FlickerMeter, Stabilizer
from runtime.align.stabilize import flicker_lines
from tests import scenes

BODY = (slice(1, None), slice(None))
CUT = scenes.Scene(
    floor=0.4,
    wall=2.5,
    boxes=[scenes.Box((-0.3, -0.8, 0.8), (0.5, 0.3, 1.2)), scenes.Box((0.6, -0.2, 1.5), (1.4, 0.4, 2.0))],
)


def frame(scene: scenes.Scene, gain: float, offset: float, camera=(0.0, 0.0, 0.0)):
    depth = scenes.render(scene, camera=camera)
    image, relative = scenes.relative_frame(depth, gain, offset)
    return image, relative.astype(np.float32), depth


def spread(values: np.ndarray) -> float:
    low, high = np.percentile(values[BODY][np.isfinite(values[BODY])], [5, 95])
    return float(high - low)


def test_a_scene_cut_restarts_from_the_new_frames_own_scale_never_a_flat_map():
    stabilizer = Stabilizer()
    rng = np.random.default_rng(0)
    for i in range(3):
        image, relative, _ = frame(scenes.Scene(), rng.uniform(0.6, 4.0), rng.uniform(-0.8, 1.5), (0, 0, 0.05 * i))
        stabilizer(image, relative)
    for i in range(4):  # another scene from here on
        image, relative, _ = frame(CUT, rng.uniform(0.6, 4.0), rng.uniform(-0.8, 1.5), (0, 0, 0.02 * i))
        out = stabilizer(image, relative)
        assert spread(out) > 0.25 * spread(relative), (i, stabilizer.last)  # a map with depth, not a constant
        assert np.corrcoef(out[BODY].ravel(), relative[BODY].ravel())[0, 1] > 0.99
    assert stabilizer.resets >= 1
    assert stabilizer.flicker_out.collapsed == 0


def test_a_black_frame_keeps_the_scale_of_the_frames_before_it():
    stabilizer = Stabilizer()
    rng = np.random.default_rng(1)
    first = None
    for i in range(6):
        gain, offset = rng.uniform(0.6, 4.0), rng.uniform(-0.8, 1.5)
        image, relative, depth = frame(scenes.Scene(), gain, offset)
        if i == 3:  # a black frame (lens cap, exposure glitch): the network's output is flat
            image, relative = np.zeros_like(image), np.full_like(relative, 0.7)
        out = stabilizer(image, relative)
        if i == 3:
            np.testing.assert_array_equal(out, relative)  # passed on as it is, the reference untouched
            continue
        first = (gain, offset) if first is None else first
        want = first[0] * scenes.NEAREST / depth + first[1]
        np.testing.assert_allclose(out[BODY], want[BODY], rtol=3e-3, atol=3e-3)  # the first frame's scale
    assert stabilizer.flat == 1 and stabilizer.resets == 0


def test_a_flat_output_is_never_reported_as_stable():
    meter = FlickerMeter()
    rng = np.random.default_rng(2)
    image, relative, _ = frame(scenes.Scene(), 2.0, 0.3)
    meter.update(image, relative)
    meter.update(image, relative * 1.001)
    assert meter.figure is not None and meter.figure < 0.01
    for _ in range(3):
        meter.update(image, np.full_like(relative, 0.5) + rng.normal(0, 1e-6, relative.shape).astype(np.float32))
    assert meter.collapsed == 3 and meter.figure is None
    assert flicker_lines(meter.figure, None, meter.collapsed) == [
        "  flicker: not measured: 3 frames of the published depth are flat maps (no depth)"
    ]


def test_the_flicker_of_an_aligned_run_is_the_flicker_of_its_metres(tmp_path):
    pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")
    from runtime.ros.bag import process_bag
    from tests.scene_bag import CAMERA, LIDAR, write_scene_bag

    model = scenes.affine_onnx(tmp_path / "relative.onnx")
    bag = tmp_path / "in"
    write_scene_bag(bag, "mcap", frames=6, speed=0.0)  # a still camera: the true flicker is ~0
    raw = process_bag(DepthPredictor(model), bag, tmp_path / "raw", CAMERA)
    aligned = process_bag(DepthPredictor(model), bag, tmp_path / "aligned", CAMERA, align_to=LIDAR)
    assert raw.flicker > 0.1  # the network's relative output, published as it is
    assert aligned.flicker < 0.01  # the published metres hold still
