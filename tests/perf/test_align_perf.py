"""pytest-benchmark cases for per-frame metric depth and stabilising at 640x480:
``pytest tests/perf/test_align_perf.py -m perf --benchmark-only``."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.align import AlignSettings, FrameAligner, Stabilizer, sample_points
from runtime.metric import OutputKind
from runtime.pointcloud import Intrinsics

pytest.importorskip("pytest_benchmark")
pytestmark = pytest.mark.perf

HEIGHT, WIDTH, POINTS = 480, 640, 20_000
INTRINSICS = Intrinsics.from_matrix([525, 0, 319.5, 0, 525, 239.5, 0, 0, 1], (0.05, -0.1, 0.001, 0.0005, 0.0))


@pytest.fixture(scope="module")
def frame():
    """A 640x480 relative map and a 20k-point scan (a third of it behind or beside the camera)."""
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 20.0, (HEIGHT, WIDTH))
    relative = (2.0 / depth + 0.3).astype(np.float32)
    rows, cols = rng.integers(0, HEIGHT, POINTS), rng.integers(0, WIDTH, POINTS)
    z = depth[rows, cols]
    points = np.stack([(cols - 319.5) / 525 * z, (rows - 239.5) / 525 * z, z], 1)
    points[: POINTS // 3, 2] *= -1
    return relative, points


def align_frame(aligner, relative, points):
    samples = sample_points(points, INTRINSICS, HEIGHT, WIDTH, 0.1, 100.0)
    return aligner.align(relative, samples, 0)


def test_align_640x480_20k_points(benchmark, frame):
    aligner = FrameAligner(OutputKind(), AlignSettings())
    result = benchmark(align_frame, aligner, *frame)
    assert result.depth is not None


def test_stabilize_640x480(benchmark, frame):
    relative, _ = frame
    image = np.random.default_rng(1).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    stabilizer = Stabilizer()
    stabilizer(image, relative)
    benchmark(stabilizer, image, relative * 1.1 + 0.2)
