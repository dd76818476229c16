"""Latency statistics, kept free of I/O so tests can check them exactly.

The accuracy metrics are the training core's zero-shot ones (``train.eval``), re-exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from train.eval import align_scale_shift, depth_metrics

__all__ = ["Latency", "align_scale_shift", "depth_metrics", "summarize", "time_calls"]


@dataclass(frozen=True)
class Latency:
    """Seconds per call over the timed runs (after warm-up)."""

    runs: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float

    @property
    def fps(self) -> float:
        return 1.0 / self.median if self.median > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": self.fps}


def summarize(durations: list[float]) -> Latency:
    if not durations:
        raise ValueError("no timed runs")
    values = np.asarray(durations, dtype=np.float64)
    return Latency(
        runs=len(values),
        mean=float(values.mean()),
        median=float(np.percentile(values, 50)),
        p90=float(np.percentile(values, 90)),
        p99=float(np.percentile(values, 99)),
        min=float(values.min()),
    )


def time_calls(
    fn: Callable[[], object],
    warmup: int,
    runs: int,
    clock: Callable[[], float] = time.perf_counter,
    synchronize: Callable[[], None] | None = None,
) -> Latency:
    """Call ``fn`` ``warmup`` times untimed, then time ``runs`` calls one by one.

    ``synchronize`` (for example ``torch.cuda.synchronize``) runs before each clock reading so
    asynchronous device work is inside the measurement.
    """
    for _ in range(warmup):
        fn()
    durations = []
    for _ in range(runs):
        if synchronize:
            synchronize()
        start = clock()
        fn()
        if synchronize:
            synchronize()
        durations.append(clock() - start)
    return summarize(durations)
