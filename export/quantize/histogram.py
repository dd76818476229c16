"""Streaming activation histograms and the two clipping rules INT8 calibration uses.

ONNX Runtime's own histogram calibrators keep every activation of every sample in memory
before binning (tens of GB for a ViT at 518x518), so ranges are collected here, one sample
at a time, and handed to ONNX Runtime's quantizer as its calibration cache.
"""

from __future__ import annotations

import numpy as np

BINS = 2048
QUANT_LEVELS = 128  # positive INT8 levels


class AbsHistogram:
    """Histogram of ``|x|`` over ``[0, top)`` whose range doubles (merging bin pairs) as needed."""

    def __init__(self, bins: int = BINS) -> None:
        if bins % 2:
            raise ValueError("bins must be even")
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.top = 0.0
        self.lowest = np.inf
        self.highest = -np.inf

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32).ravel()
        if values.size == 0:
            return
        self.lowest = min(self.lowest, float(values.min()))
        self.highest = max(self.highest, float(values.max()))
        magnitude = np.abs(values)
        peak = float(magnitude.max())
        if self.top == 0.0:
            self.top = peak if peak > 0 else 1e-8
        while peak > self.top:
            self.counts = np.concatenate([self.counts.reshape(-1, 2).sum(axis=1), np.zeros(self.bins // 2, np.int64)])
            self.top *= 2.0
        index = np.minimum((magnitude * (self.bins / self.top)).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)

    @property
    def bin_width(self) -> float:
        return self.top / self.bins

    def amax(self) -> float:
        return max(abs(self.lowest), abs(self.highest))

    def percentile(self, percent: float) -> float:
        """Smallest bin edge below which ``percent`` % of the magnitudes fall."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        cdf = np.cumsum(self.counts) / total
        index = int(np.searchsorted(cdf, percent / 100.0, side="left"))
        return min(self.amax(), (index + 1) * self.bin_width)

    def entropy(self, step: int = 8) -> float:
        """The clipping threshold with the least KL divergence between the clipped and the
        128-level quantized distributions (TensorRT's entropy calibration)."""
        counts = self.counts.astype(np.float64)
        if counts.sum() == 0:
            return 0.0
        best, best_i = np.inf, self.bins
        for i in range(QUANT_LEVELS, self.bins + 1, step):
            reference = counts[:i].copy()
            reference[-1] += counts[i:].sum()  # outliers clip into the last kept bin
            nonzero = reference > 0
            # Merge the i kept bins into 128 levels, then spread each level evenly over the
            # bins that were non-empty in it.
            edges = np.linspace(0, i, QUANT_LEVELS + 1).astype(np.int64)
            level_sum = np.add.reduceat(counts[:i], edges[:-1])
            level_nonzero = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
            level_of_bin = np.repeat(np.arange(QUANT_LEVELS), np.diff(edges))
            expanded = np.where(nonzero, level_sum[level_of_bin] / np.maximum(level_nonzero[level_of_bin], 1), 0.0)
            p = reference / reference.sum()
            q_total = expanded.sum()
            if q_total == 0:
                continue
            mask = p > 0
            # A bin holding only clipped outliers gets no share of its level: smooth it, not infinity.
            q = np.where(mask, np.maximum(expanded / q_total, 1e-10), 0.0)
            divergence = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
            if divergence < best:
                best, best_i = divergence, i
        return min(self.amax(), best_i * self.bin_width)

    def threshold(self, method: str, percentile: float = 99.999) -> float:
        if method == "minmax":
            return self.amax()
        if method == "percentile":
            return self.percentile(percentile)
        if method == "entropy":
            return self.entropy()
        raise ValueError(f"unknown calibration method {method!r}")
