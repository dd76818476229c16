"""Latency statistics, kept free of I/O so tests can check them exactly.

The accuracy metrics are the runtime's zero-shot ones (``runtime.accuracy``), re-exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from runtime.accuracy import align_scale_shift, depth_metrics

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
    cv: float  # coefficient of variation: standard deviation / mean

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
        cv=float(values.std() / values.mean()) if values.mean() > 0 else 0.0,
    )


def time_calls(
    fns: dict[str, Callable[[], object]],
    calls: int,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions alternating (``calls`` turns, each
    calling every function once) so all of them see the same moments of the machine.

    ``warmup`` untimed calls of the first function come before (waking its threads and filling
    its caches). ``synchronize`` (for example ``torch.cuda.synchronize``) runs before each clock
    reading so asynchronous device work is inside the measurement.
    """
    first = next(iter(fns.values()))
    for _ in range(warmup):
        first()
    durations: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            if synchronize:
                synchronize()
            start = clock()
            fn()
            if synchronize:
                synchronize()
            durations[name].append(clock() - start)
    return durations
