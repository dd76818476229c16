"""Calibration histograms: exact counts under range growth, and the clipping rules."""

from __future__ import annotations

import numpy as np
import pytest

from export.quantize.histogram import AbsHistogram


def test_counts_survive_range_doubling():
    hist = AbsHistogram(bins=8)
    hist.add(np.array([0.1, -0.2, 0.3, 0.4]))  # top 0.4, bin width 0.05
    hist.add(np.array([1.5]))  # top doubles twice to 1.6
    assert hist.top == pytest.approx(1.6)
    assert hist.counts.sum() == 5
    # First pass, width 0.05: 0.1 -> bin 2, 0.2 -> 4, 0.3 -> 6, 0.4 -> 7 (the top bin holds its edge).
    # Two merges of bin pairs map bins 2, 4, 6, 7 to 0, 1, 1, 1; then 1.5 lands in bin 7 of width 0.2.
    assert hist.counts.tolist() == [1, 3, 0, 0, 0, 0, 0, 1]
    assert hist.lowest == pytest.approx(-0.2) and hist.highest == 1.5


def test_minmax_and_percentile_on_known_data():
    hist = AbsHistogram(bins=1000)
    values = np.concatenate([np.linspace(-1, 1, 100_000), [50.0]])  # one outlier
    hist.add(values)
    assert hist.threshold("minmax") == 50.0
    # 99.9 % of the magnitudes lie below ~1 (the outlier is 1 in 100001): bins are 0.05 wide.
    assert hist.threshold("percentile", 99.9) == pytest.approx(1.0, abs=0.05)
    assert hist.threshold("percentile", 100.0) == pytest.approx(50.0)


def test_entropy_clips_rare_outliers_but_keeps_the_bulk():
    rng = np.random.default_rng(0)
    hist = AbsHistogram()
    for _ in range(4):
        hist.add(rng.standard_normal(200_000).astype(np.float32))
    hist.add(np.array([40.0], np.float32))
    threshold = hist.threshold("entropy")
    assert 2.5 < threshold < 20.0  # well inside the outlier, well outside most of the Gaussian


def test_unknown_method_is_an_error():
    hist = AbsHistogram()
    hist.add(np.ones(4))
    with pytest.raises(ValueError, match="unknown calibration method"):
        hist.threshold("kl")
