"""Benchmark numbers are right: latency statistics on a fake clock, metrics by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.stats import depth_metrics, summarize, time_calls


class FakeClock:
    """Each call to the timed function advances time by the next scripted duration."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self):
        return self.now

    def work(self):
        self.calls += 1
        self.now += self.durations.pop(0)


def test_latency_statistics_on_a_fake_clock():
    clock = FakeClock([9.0, 9.0] + [0.01 * i for i in range(1, 101)])  # two slow warm-up calls
    durations = time_calls({"work": clock.work}, calls=100, warmup=2, clock=clock)["work"]
    stats = summarize(durations)
    assert clock.calls == 102 and stats.runs == 100
    assert stats.min == pytest.approx(0.01)
    assert stats.median == pytest.approx(0.505)  # numpy's linear interpolation between 0.50 and 0.51
    assert stats.p90 == pytest.approx(0.901)
    assert stats.p99 == pytest.approx(0.9901)
    assert stats.mean == pytest.approx(0.505)
    assert stats.fps == pytest.approx(1 / 0.505)
    assert stats.cv == pytest.approx(np.std(durations) / 0.505)


def test_calls_alternate_and_only_the_first_function_warms_up():
    events = []
    clock = FakeClock([1.0, 0.1, 0.2, 0.1, 0.2])
    durations = time_calls(
        {
            "model": lambda: (events.append("model"), clock.work()),
            "e2e": lambda: (events.append("e2e"), clock.work()),
        },
        calls=2,
        warmup=1,
        clock=clock,
    )
    assert events == ["model", "model", "e2e", "model", "e2e"]
    assert durations == {"model": [pytest.approx(0.1)] * 2, "e2e": [pytest.approx(0.2)] * 2}


def test_synchronize_is_called_around_each_timed_run():
    events = []
    clock = FakeClock([0.1] * 3)
    time_calls(
        {"run": lambda: (events.append("run"), clock.work())},
        3,
        clock=clock,
        synchronize=lambda: events.append("sync"),
    )
    assert events == ["sync", "run", "sync"] * 3


def test_summary_needs_runs():
    with pytest.raises(ValueError):
        summarize([])


def test_metrics_by_hand():
    ref = np.array([[1.0, 2.0], [4.0, 0.5]])  # disparities; depths 1, 0.5, 0.25, 2
    # a scaled and shifted copy aligns exactly: zero error, all within 1.25
    exact = depth_metrics(3.0 * ref + 1.0, ref)
    assert exact["abs_rel"] == pytest.approx(0.0, abs=1e-12) and exact["delta1"] == 1.0
    # a prediction that cannot be aligned: constant except one pixel
    pred = np.array([[1.0, 1.0], [1.0, 2.0]])
    # least squares of ref on pred: scale s, shift t with s*1+t for three pixels (mean 7/3) and
    # s*2+t = 0.5 -> t + s = 7/3, t + 2s = 0.5 -> s = -11/6, t = 25/6
    aligned = np.array([[7 / 3, 7 / 3], [7 / 3, 0.5]])
    depth_pred, depth_ref = 1 / aligned.ravel(), 1 / ref.ravel()
    expected_abs_rel = np.mean(np.abs(depth_pred - depth_ref) / depth_ref)
    ratios = np.maximum(depth_pred / depth_ref, depth_ref / depth_pred)
    got = depth_metrics(pred, ref)
    assert got["abs_rel"] == pytest.approx(expected_abs_rel)
    assert got["delta1"] == pytest.approx(np.mean(ratios < 1.25))
    # depths 3/7 vs 1, 0.5, 0.25 and 2 vs 2: ratios 2.33, 1.17, 1.71, 1 -> two of four within 1.25
    assert got["delta1"] == pytest.approx(0.5)


def test_invalid_reference_pixels_are_ignored():
    ref = np.array([1.0, 2.0, np.inf, 0.0, 4.0])
    pred = np.array([2.0, 4.0, 123.0, 55.0, 8.0])
    assert depth_metrics(pred, ref)["abs_rel"] == pytest.approx(0.0, abs=1e-12)
