"""Per-stage latency statistics in constant memory, for runs of any length (a live camera for days).

A log-spaced histogram from 1 µs to 1000 s (:data:`BINS_PER_DECADE` bins per decade, so a reported
percentile is within half a bin, about 0.6 %, of the exact one) plus an exact count, sum, minimum and
maximum. Storing every sample instead grows a long run's memory by ~0.2 KB per frame.
"""

from __future__ import annotations

import math

import numpy as np

BINS_PER_DECADE = 200
LOW_S, HIGH_S = 1e-6, 1e3
_DECADES = round(math.log10(HIGH_S / LOW_S))


class LatencyStats:
    """Streaming latency statistics of one stage, in seconds."""

    def __init__(self) -> None:
        self.counts = np.zeros(_DECADES * BINS_PER_DECADE + 2, dtype=np.int64)  # [under, bins..., over]
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, seconds: float) -> None:
        if not math.isfinite(seconds):
            return
        self.count += 1
        self.total += seconds
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)
        if seconds < LOW_S:
            self.counts[0] += 1
        elif seconds >= HIGH_S:
            self.counts[-1] += 1
        else:
            self.counts[1 + int(math.log10(seconds / LOW_S) * BINS_PER_DECADE)] += 1

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) in seconds (0 when empty), clipped to the exact min and max."""
        if self.count == 0:
            return 0.0
        rank = q / 100.0 * (self.count - 1)  # as numpy's default (linear) method ranks, 0-based
        b = int(np.searchsorted(np.cumsum(self.counts), rank + 1, side="left"))
        if b == 0:
            value = self.min
        elif b == len(self.counts) - 1:
            value = self.max
        else:
            value = LOW_S * 10 ** ((b - 1 + 0.5) / BINS_PER_DECADE)  # the bin's geometric centre
        return float(min(max(value, self.min), self.max))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary_ms(self) -> dict[str, float]:
        """``{"p50", "p99", "mean"}`` in milliseconds, rounded to µs."""
        return {
            "p50": round(self.percentile(50) * 1000, 3),
            "p99": round(self.percentile(99) * 1000, 3),
            "mean": round(self.mean * 1000, 3),
        }
