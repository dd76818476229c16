"""Latency statistics, kept free of I/O so tests can check them exactly.

The accuracy metrics are the runtime's zero-shot ones (``runtime.accuracy``), re-exported, and
``kind_metrics``: the same AbsRel and delta1 for each output kind (``runtime.metric``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from runtime.accuracy import align_scale_shift, depth_metrics, int8_metric
from runtime.accuracy import kind_metrics as runtime_kind_metrics

__all__ = ["Latency", "align_scale_shift", "depth_metrics", "kind_metrics", "summarize", "time_calls"]

# How each output kind is compared with its reference (``kind_metrics``), as the report says it:
# the wording alone; the kinds and their metrics are the runtime's (``runtime.accuracy.KIND_METRICS``).
KIND_WORDING = {
    "relative": "after a least-squares scale and shift in disparity (the zero-shot protocol)",
    "depth_up_to_scale": "after a least-squares scale alone in depth",
    "metric": "in metres as output, no fit",
    "metres_per_focal": "in depth per focal length as output, no fit",
}


def kind_metrics(pred: np.ndarray, ref: np.ndarray, kind: str = "relative") -> dict:
    """AbsRel and delta1 of ``pred`` against ``ref`` as the output kind means its numbers, by the
    metric an INT8 artefact of that kind is held to (``runtime.accuracy.int8_metric``): relative
    inverse depth after a scale and shift in disparity; depth up to scale after one least-squares
    scale in depth (a shift would change the shape of the scene); metres (or metres per focal
    length) as they are."""
    return runtime_kind_metrics(pred, ref, int8_metric(kind or "relative"))


def kind_wording(kind: str) -> str:
    """How the report says ``kind``'s outputs were compared; ``ValueError`` for a kind the runtime
    has no metric for."""
    kind = kind or "relative"  # no kind: an older DA-V2 artefact, relative as int8_metric takes it
    int8_metric(kind)
    return KIND_WORDING[kind]


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
