"""The "unknown place" threshold and the confidence scale, calibrated on the map itself.

The verdict uses a *distinctiveness ratio* rather than an absolute similarity: for a frame whose best
place has similarity ``s1``, ``s2`` is the best similarity among places farther than ``radius_m`` from that
place, and ``ratio = s2 / s1`` (1 when ``s1 <= 0``). A frame of a mapped place has one place that stands
out (small ratio); a frame of an unmapped place resembles several unrelated places about equally (ratio
near 1). Why a ratio: absolute similarities shift with conditions (night, fog, season): measured on the
synthetic world with a k-means-initialised model, database-to-database impostor similarities (median 0.41)
exceed night/fog query-to-database *genuine* ones (median 0.19), so any absolute threshold learnt on the
map rejects every query, whereas the ratio separates correct (median 0.79) from wrong matches (0.97).

Calibration: each sampled map image plays an unmapped place: its own neighbourhood (within
``radius_m``) is removed, and the ratio of the remaining best place ``a`` to the best place farther than
``radius_m`` from ``a`` is an impostor ratio. The threshold is the ``100 - percentile`` percentile of those,
so ``percentile`` % of unmapped frames are flagged. Confidence falls linearly from 1 at ``ratio <=
threshold / 2`` (the best place twice as similar as anywhere else) to 0 at the threshold.
"""

from __future__ import annotations

import numpy as np

from runtime.map.index import similarities


def distinctiveness(s1: float, s2: float) -> float:
    """``s2 / s1`` clipped to [0, 1]; 1 (no evidence) when ``s1 <= 0``."""
    if s1 <= 0:
        return 1.0
    return float(min(1.0, max(0.0, s2 / s1)))


def calibrate(
    descriptors: np.ndarray, utm: np.ndarray, radius_m: float, percentile: float, samples: int, seed: int = 0
) -> dict:
    """Calibration numbers for map.json (similarities are inner products of L2-normalised descriptors).

    ``descriptors (N, D)``: float32 or float16, may be a memory map larger than RAM (read a chunk at a time).
    """
    n = descriptors.shape[0]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(samples, n), replace=False)) if n > samples else np.arange(n)
    ratios, impostor_sims, genuine_sims = [], [], []
    batch = int(np.clip(2**26 // max(1, n), 8, 256))  # (batch, N) float32 similarities: <= 256 MiB
    for start in range(0, len(chosen), batch):
        rows = chosen[start : start + batch]
        sims = similarities(descriptors, np.asarray(descriptors[rows], dtype=np.float32))  # (B, N)
        sims[np.arange(len(rows)), rows] = -np.inf  # never match yourself
        dist = np.linalg.norm(utm[rows][:, None, :] - utm[None, :, :], axis=2)  # (B, N) metres
        far = dist > radius_m
        near_best = np.where(~far, sims, -np.inf).max(axis=1)
        genuine_sims.extend(near_best[np.isfinite(near_best)].tolist())
        for b in range(len(rows)):
            candidates = np.where(far[b], sims[b], -np.inf)
            a = int(np.argmax(candidates))
            if not np.isfinite(candidates[a]):
                continue  # the whole map is within radius_m of this image
            impostor_sims.append(float(candidates[a]))
            away = np.linalg.norm(utm - utm[a], axis=1) > radius_m  # (N,)
            s2 = np.where(away, candidates, -np.inf).max()
            if np.isfinite(s2):
                ratios.append(distinctiveness(float(candidates[a]), float(s2)))
    ratios_a = np.asarray(ratios) if ratios else np.asarray([1.0])
    threshold = float(np.percentile(ratios_a, 100.0 - percentile))
    return {
        "verdict": "unknown when s2/s1 > unknown_threshold (s1: best similarity; s2: best beyond radius_m of it)",
        "unknown_threshold": threshold,
        "confidence_full": threshold / 2.0,
        "percentile": percentile,
        "radius_m": radius_m,
        "samples": len(chosen),
        "impostor_ratio": _summary(ratios_a),
        "impostor_similarity": _summary(np.asarray(impostor_sims)) if impostor_sims else None,
        "genuine_similarity": _summary(np.asarray(genuine_sims)) if genuine_sims else None,
    }


def _summary(values: np.ndarray) -> dict:
    return {
        q: float(np.percentile(values, p)) for q, p in (("p10", 10), ("p50", 50), ("p90", 90), ("p99", 99))
    }
