"""The "unknown place" threshold and the confidence scale, calibrated on the map itself.

For a sample of map images, the nearest *other* place farther than ``radius_m`` gives an impostor
similarity (what a frame from somewhere the map does not cover would score) and the nearest one within
``radius_m`` a genuine one. The threshold is a high percentile of the impostor similarities; a frame whose
best similarity falls below it is an "unknown place". Confidence rises linearly from 0 at the threshold to
1 at the median genuine similarity.
"""

from __future__ import annotations

import numpy as np


def calibrate(
    descriptors: np.ndarray, utm: np.ndarray, radius_m: float, percentile: float, samples: int, seed: int = 0
) -> dict:
    """Calibration numbers for map.json (similarities are inner products of L2-normalised descriptors)."""
    n = descriptors.shape[0]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(samples, n), replace=False)) if n > samples else np.arange(n)
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    impostor, genuine = [], []
    for start in range(0, len(chosen), 256):
        rows = chosen[start : start + 256]
        sims = x[rows] @ x.T  # (B, N)
        dist = np.linalg.norm(utm[rows][:, None, :] - utm[None, :, :], axis=2)  # (B, N) metres
        sims[np.arange(len(rows)), rows] = -np.inf  # never match yourself
        far = np.where(dist > radius_m, sims, -np.inf).max(axis=1)
        near = np.where(dist <= radius_m, sims, -np.inf).max(axis=1)
        impostor.extend(far[np.isfinite(far)].tolist())
        genuine.extend(near[np.isfinite(near)].tolist())
    impostor_a = np.asarray(impostor) if impostor else np.asarray([0.0])
    threshold = float(np.percentile(impostor_a, percentile))
    genuine_median = float(np.median(genuine)) if genuine else 1.0
    return {
        "unknown_threshold": threshold,
        "confidence_full": max(genuine_median, threshold + 1e-3),
        "percentile": percentile,
        "radius_m": radius_m,
        "samples": len(chosen),
        "impostor_similarity": _summary(impostor_a),
        "genuine_similarity": _summary(np.asarray(genuine)) if genuine else None,
    }


def _summary(values: np.ndarray) -> dict:
    return {
        q: float(np.percentile(values, p)) for q, p in (("p10", 10), ("p50", 50), ("p90", 90), ("p99", 99))
    }
