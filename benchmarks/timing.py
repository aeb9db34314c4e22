"""Wall-clock timing helpers: warm-up, repeated runs, percentiles. Never used to assert in tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


def summarize_ms(samples_ms: Sequence[float], items_per_sample: int = 1) -> dict[str, Any]:
    """p50/p90/p99/mean in milliseconds of ``samples_ms`` and throughput in items per second.

    ``items_per_sample``: how many items (images, queries) one sample processed (the batch size).
    """
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0}
    p50, p90, p99 = (float(np.percentile(arr, p)) for p in PERCENTILES)
    mean = float(arr.mean())
    return {
        "n": int(arr.size),
        "batch": int(items_per_sample),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": mean,
        "per_item_p50_ms": p50 / items_per_sample,
        "throughput_per_s": items_per_sample * 1000.0 / mean if mean > 0 else float("inf"),
    }


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 2, min_seconds: float = 0.0) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then at least ``repeats`` times; return each call's ms.

    With ``min_seconds`` > 0 it keeps going (up to 10x ``repeats``) until that much time was measured, so
    fast calls get enough samples for a stable p99.
    """
    for _ in range(max(0, warmup)):
        fn()
    samples: list[float] = []
    total = 0.0
    while len(samples) < repeats or (total < min_seconds * 1000.0 and len(samples) < 10 * repeats):
        start = time.perf_counter()
        fn()
        ms = (time.perf_counter() - start) * 1000.0
        samples.append(ms)
        total += ms
    return samples
