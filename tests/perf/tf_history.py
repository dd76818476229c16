"""Alignment cost per frame with an hour of ``/tf`` at 100 Hz against no ``/tf`` history at all:
``PYTHONPATH=. python -m tests.perf.tf_history`` (interleaved rounds, medians, one process).

The lidar hangs under ``base_link`` on a ``/tf`` edge (``odom`` is not on the path; the edge the
path uses is streamed for an hour and keeps its 10 s history); the other tree has the same path
in ``/tf_static``. Each frame: decode a 20k-point cloud's transform lookup, project, fit (640x480).
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import numpy as np

from runtime.align import AlignSettings, FrameAligner
from runtime.metric import OutputKind
from runtime.pointcloud import Intrinsics
from runtime.ros.align import frame_samples, tree_transforms
from runtime.ros.messages import POINT_CLOUD2
from runtime.ros.tf import TfTree

HEIGHT, WIDTH, POINTS, RATE, SECONDS = 480, 640, 20_000, 100, 3600
INTRINSICS = Intrinsics.from_matrix([525, 0, 319.5, 0, 525, 239.5, 0, 0, 1])
OPTICAL = (-0.5, 0.5, -0.5, 0.5)
SECOND = 1_000_000_000


def cloud(points: np.ndarray, stamp: int) -> SimpleNamespace:
    fields = [SimpleNamespace(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")]
    header = SimpleNamespace(frame_id="velodyne", stamp=SimpleNamespace(sec=stamp // SECOND, nanosec=stamp % SECOND))
    data = points.astype("<f4").view(np.uint8).reshape(-1)
    return SimpleNamespace(
        header=header, height=1, width=len(points), fields=fields, is_bigendian=False, point_step=12,
        row_step=12 * len(points), data=data,
    )  # fmt: skip


def trees() -> tuple[TfTree, TfTree, float]:
    """(an hour of /tf on the lidar's edge, the same edge static, seconds spent feeding the hour)."""
    hour, static = TfTree(), TfTree()
    for tree in (hour, static):
        tree.add("base_link", "camera_optical", (0, 0, 0), OPTICAL)
    static.add("base_link", "velodyne", (0, 0, 0), OPTICAL)
    started = time.perf_counter()
    for k in range(RATE * SECONDS):
        hour.add("base_link", "velodyne", (0, 0, 0), OPTICAL, stamp=k * SECOND // RATE, static=False)
    return hour, static, time.perf_counter() - started


def measure(rounds: int = 15) -> dict[str, float]:
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 20.0, (HEIGHT, WIDTH))
    relative = (2.0 / depth + 0.3).astype(np.float32)
    rows, cols = rng.integers(0, HEIGHT, POINTS), rng.integers(0, WIDTH, POINTS)
    z = depth[rows, cols]
    points = np.stack([(cols - 319.5) / 525 * z, (rows - 239.5) / 525 * z, z], 1)
    hour, static, feed = trees()
    stamp = (SECONDS - 5) * SECOND + SECOND // 300  # between two records: interpolated
    msg = cloud(points, stamp)
    times: dict[str, list[float]] = {"hour": [], "static": []}
    for _ in range(rounds):
        for name, tree in (("hour", hour), ("static", static)):
            aligner = FrameAligner(OutputKind(), AlignSettings())
            started = time.perf_counter()
            samples, why = frame_samples(
                msg, POINT_CLOUD2, "camera_optical", INTRINSICS, relative.shape, tree_transforms(tree), aligner
            )
            aligner.align(relative, samples, stamp, why)
            times[name].append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(1000):
        hour.lookup("camera_optical", "velodyne", stamp)
    lookup = (time.perf_counter() - started) / 1000
    hour_ms, static_ms = (1e3 * statistics.median(times[k]) for k in ("hour", "static"))
    return {
        "frame_ms_hour_of_tf": hour_ms,
        "frame_ms_no_history": static_ms,
        "ratio": hour_ms / static_ms,
        "lookup_us": 1e6 * lookup,
        "records_kept": len(hour._dynamic["velodyne"]),
        "feed_us_per_record": 1e6 * feed / (RATE * SECONDS),
    }


def measure_old(path: str, seconds: int = SECONDS) -> dict[str, float]:
    """An older ``runtime/ros/tf.py`` (``git show REV:runtime/ros/tf.py > FILE``) fed the same hour:
    its lookup time, for the record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("runtime.ros._tf_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    tree = module.TfTree()
    tree.add("base_link", "camera_optical", (0, 0, 0), OPTICAL)
    for k in range(RATE * seconds):
        tree.add("base_link", "velodyne", (0, 0, 0), OPTICAL, stamp=k * SECOND // RATE, static=False)
    stamp = (seconds - 5) * SECOND + SECOND // 300
    started = time.perf_counter()
    for _ in range(20):
        tree.lookup("camera_optical", "velodyne", stamp)
    return {"before_lookup_ms": 1e3 * (time.perf_counter() - started) / 20}


if __name__ == "__main__":
    import sys

    results = measure()
    if len(sys.argv) > 1:  # the tf.py to compare with
        results.update(measure_old(sys.argv[1]))
    for key, value in results.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
