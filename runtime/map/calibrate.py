"""The "unknown place" verdict and the confidence, calibrated so that they hold across maps and domains.

**Evidence.** A frame's search returns its best places, most similar first. The evidence that the best
one is right is a *scale-free* statistic of that list: how far the best similarity ``s1`` stands above
the similarities of the places elsewhere in the map (farther than ``radius_m`` from the best place),
measured in units of their own spread (see :func:`evidence`). It is unchanged when all of a frame's
similarities shift or shrink together.

**Why scale-free.** The verdict used to threshold a ratio ``s2 / s1`` learnt on map-to-map pairs. Queries
under another condition (night, winter, another camera) have lower, more compressed similarities than map
images have with each other (roughly ``s -> a * s + b``): a ratio moves with ``b``, a gap over a spread
does not, so the impostor distribution the map calibration learns stays the queries'. Measured at the
default operating point (90 %), share of unmapped-place frames flagged, gap / ratio: synthetic small world
with the demo model 0.88 / 0.94, Nordland winter queries with their own place removed 0.88 / 0.87, tiny
world with a weak ImageNet model 0.83 / 0.79, with a pooled-pixel model 0.94 / 0.71: only the gap keeps
>= 80 % everywhere. Neither reaches <= 5 % of correct answers flagged off the day condition: at 80 % of
unmapped places flagged, even a threshold chosen with hindsight flags 11-20 % of the demo model's correct
answers on the synthetic world (day 1 %, night 80 %); that is the descriptors' separability, not the
calibration.

**Calibration.** Each sampled map image plays an unmapped place: its own neighbourhood (within
``radius_m``) is removed from the map and the evidence of the rest is one *impostor* sample. With held-out
queries (:func:`calibrate_on_queries`) the impostors are the queries' own, in the query domain: each
query's true neighbourhood is removed, and the evidence is the ``distance`` ratio, which separates better
but is not scale-free. The impostor distribution is stored as quantiles in ``map.json``.

**Confidence** = the share of impostors whose evidence is lower (the impostor CDF; above its 90th
percentile an exponential tail fitted to the top 10 %, so confidence keeps rising). A frame is an
unknown place when its confidence is below ``percentile / 100``: ``percentile`` % of unmapped places are
flagged, whatever the map's density or the query domain.
"""

from __future__ import annotations

import numpy as np

from runtime.map.index import similarities

SEARCH_CANDIDATES = 32  # places searched per frame: enough to see the similarities of places elsewhere
SPREAD_RANK = 10  # evidence's spread: best elsewhere minus the SPREAD_RANK-th best elsewhere
TAIL_FROM = 0.9  # the confidence's exponential tail starts at this impostor quantile
# The evidence statistics, by the name map.json records (calibration "evidence_kind"):
EVIDENCE = {
    # scale-free: the default, and the one a calibration on the map must use (see the module docstring)
    "gap": "(s1 - s2) / (s2 - s_k): s1 best similarity; s2, s_k: best and k-th best beyond radius_m of it",
    # distances (1 - s): separates right from wrong answers better, but changes with the domain, so only a
    # calibration in the queries' own domain (held-out queries) may use it
    "distance": "(1 - s_k) / (1 - s1): the k-th best distance beyond radius_m of the best place over the best",
}


def evidence(sims: np.ndarray, ids: np.ndarray, utm: np.ndarray, radius_m: float, kind: str = "gap") -> float:
    """The evidence that the best of a frame's candidates is right (``kind``: a key of :data:`EVIDENCE`).

    ``sims (C,)`` candidate similarities, best first, ``ids (C,)`` their places, ``utm (N, 2)`` the map's
    positions. ``s2`` and ``s_k``: the best and the ``SPREAD_RANK``-th best similarity among the candidates
    farther than ``radius_m`` from the best place (the ones available when fewer are). 0 when there is no
    such candidate; large when the best place stands out. ``gap`` is invariant to ``sims -> a * sims + b``
    (``a > 0``), which is what a change of domain does, to first order, to a frame's similarities.
    """
    if sims.size < 2:
        return 0.0
    far = np.linalg.norm(utm[ids] - utm[ids[0]], axis=1) > radius_m  # (C,)
    elsewhere = sims[far]
    if elsewhere.size < 2:
        return 0.0  # every candidate is near the best place: no impostor to compare with
    s1, s2 = float(sims[0]), float(elsewhere[0])
    sk = float(elsewhere[min(SPREAD_RANK, elsewhere.size) - 1])
    if kind == "distance":
        return float((1.0 - sk) / max(1.0 - s1, 1e-6))
    return float(max(0.0, s1 - s2) / max(s2 - sk, 1e-6 * max(abs(s1), 1e-6)))


def _batch(places: int) -> int:
    """Queries per block: ``(batch, N)`` float32 similarities stay under 256 MiB."""
    return int(np.clip(2**26 // max(1, places), 8, 256))


def _similarity_blocks(queries: np.ndarray, descriptors: np.ndarray):
    """Yield ``(start, sims (B, N))`` for blocks of ``queries (M, D)`` against the map ``descriptors (N, D)``."""
    batch = _batch(descriptors.shape[0])
    for start in range(0, queries.shape[0], batch):
        q = np.asarray(queries[start : start + batch], dtype=np.float32)
        yield start, similarities(descriptors, q)


def _top_candidates(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sims (B, N)``: the ``k`` largest, best first -> ``(values (B, k), indices (B, k))``."""
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (B, k) unordered
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(sims, ids, axis=1), ids


def impostor_evidence(
    queries: np.ndarray,
    query_utm: np.ndarray,
    descriptors: np.ndarray,
    utm: np.ndarray,
    radius_m: float,
    candidates: int = SEARCH_CANDIDATES,
    kind: str = "gap",
) -> np.ndarray:
    """Evidence of each query against the map with the query's own neighbourhood removed ``(M,)``.

    ``queries (M, D)`` at ``query_utm (M, 2)`` (map images themselves, or held-out queries), the map
    ``descriptors (N, D)`` (float32 or float16, may be a memory map larger than RAM: read a chunk at a
    time) at ``utm (N, 2)``. Queries with nothing left beyond their neighbourhood are skipped (NaN).
    """
    out = np.full(queries.shape[0], np.nan)
    for start, sims in _similarity_blocks(queries, descriptors):  # sims (B, N)
        stop = start + sims.shape[0]
        near = np.linalg.norm(query_utm[start:stop, None, :] - utm[None, :, :], axis=2) <= radius_m
        sims[near] = -np.inf  # the unmapped place: its neighbourhood is not in the map
        values, ids = _top_candidates(sims, candidates + 1)
        for b in range(sims.shape[0]):
            ok = np.isfinite(values[b])
            if ok.sum() >= 2:
                out[start + b] = evidence(values[b][ok], ids[b][ok], utm, radius_m, kind)
    return out


def genuine_evidence(
    queries: np.ndarray,
    query_utm: np.ndarray,
    descriptors: np.ndarray,
    utm: np.ndarray,
    radius_m: float,
    candidates: int = SEARCH_CANDIDATES,
    kind: str = "gap",
) -> tuple[np.ndarray, np.ndarray]:
    """Evidence of each query against the whole map and whether its best place is right: ``(M,), (M,) bool``."""
    scores = np.zeros(queries.shape[0])
    correct = np.zeros(queries.shape[0], dtype=bool)
    for start, sims in _similarity_blocks(queries, descriptors):  # sims (B, N)
        values, ids = _top_candidates(sims, candidates)  # (B, C)
        for b in range(sims.shape[0]):
            scores[start + b] = evidence(values[b], ids[b], utm, radius_m, kind)
            correct[start + b] = np.linalg.norm(utm[ids[b, 0]] - query_utm[start + b]) <= radius_m
    return scores, correct


def _calibration(
    impostors: np.ndarray, percentile: float, radius_m: float, source: str, kind: str = "gap", **extra
) -> dict:
    values = np.sort(impostors[np.isfinite(impostors)])
    if values.size == 0:
        values = np.zeros(1)
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, 101))
    top = values[values > quantiles[int(TAIL_FROM * 100)]]
    tail_scale = float(np.mean(top - quantiles[int(TAIL_FROM * 100)])) if top.size else 1.0
    level = percentile / 100.0
    return {
        "source": source,
        "evidence_kind": kind,
        "evidence": EVIDENCE[kind],
        "spread_rank": SPREAD_RANK,
        "candidates": SEARCH_CANDIDATES,
        "radius_m": radius_m,
        "percentile": percentile,
        "unknown_below_confidence": level,
        "unknown_threshold": float(np.quantile(values, level)),
        "impostors": int(values.size),
        "impostor_quantiles": [round(float(v), 6) for v in quantiles],
        "tail_scale": max(tail_scale, 1e-6),
        **extra,
    }


def calibrate(
    descriptors: np.ndarray,
    utm: np.ndarray,
    radius_m: float,
    percentile: float,
    samples: int,
    seed: int = 0,
) -> dict:
    """Calibration on the map's own structure: sampled map images play unmapped places (map.json)."""
    n = descriptors.shape[0]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(samples, n), replace=False)) if n > samples else np.arange(n)
    samples_descriptors = np.asarray(descriptors[chosen], dtype=np.float32)  # (S, D), read once
    impostors = impostor_evidence(samples_descriptors, utm[chosen], descriptors, utm, radius_m)
    return _calibration(impostors, percentile, radius_m, "map", samples=int(chosen.size))


def calibrate_on_queries(
    queries: np.ndarray,
    query_utm: np.ndarray,
    descriptors: np.ndarray,
    utm: np.ndarray,
    radius_m: float,
    percentile: float,
    kind: str = "distance",
) -> dict:
    """Calibration on held-out queries: each query, its true neighbourhood removed, plays an unmapped place
    in the query domain, so the evidence may be the ``distance`` ratio, which separates right from wrong
    answers better but is not scale-free (measured on the synthetic world, demo model, calibrated on half
    the queries and scored on the others: 14 % of correct frames flagged against 32 % with ``gap``, 86 % of
    unmapped places flagged). Also records the share of the calibration queries' correct answers flagged."""
    impostors = impostor_evidence(queries, query_utm, descriptors, utm, radius_m, kind=kind)
    scores, correct = genuine_evidence(queries, query_utm, descriptors, utm, radius_m, kind=kind)
    calibration = _calibration(
        impostors, percentile, radius_m, "queries", kind, samples=int(queries.shape[0])
    )
    if correct.any():
        calibration["correct_flagged_on_calibration"] = float(
            np.mean(scores[correct] < calibration["unknown_threshold"])
        )
    return calibration


class Verdict:
    """Evidence -> (confidence, unknown) for one map, from its calibration (map.json ``calibration``)."""

    def __init__(self, calibration: dict, unknown_below: float | None = None) -> None:
        self.quantiles = np.asarray(calibration["impostor_quantiles"], dtype=np.float64)  # (101,)
        self.tail_scale = float(calibration["tail_scale"])
        self.radius_m = float(calibration["radius_m"])
        self.kind = str(calibration.get("evidence_kind", "gap"))
        # tied quantiles (many impostors with the same evidence, e.g. 0): keep the highest level of each
        levels = np.linspace(0.0, 1.0, self.quantiles.size)
        reverse = self.quantiles[::-1]
        self._values, first = np.unique(reverse, return_index=True)  # increasing values
        self._levels = levels[::-1][first]
        self.unknown_below = (
            float(calibration["unknown_below_confidence"]) if unknown_below is None else float(unknown_below)
        )

    def confidence(self, value: float) -> float:
        """The share of impostors (unmapped places) with less evidence than ``value``, in [0, 1]."""
        start = self.quantiles[int(TAIL_FROM * 100)]
        if value <= start:
            return float(np.interp(value, self._values, self._levels, left=0.0))
        return float(1.0 - (1.0 - TAIL_FROM) * np.exp(-(value - start) / self.tail_scale))

    def judge(self, sims: np.ndarray, ids: np.ndarray, utm: np.ndarray) -> tuple[float, float, bool]:
        """``(evidence, confidence, unknown)`` of a frame's candidates (``sims``, ``ids``: best first)."""
        value = evidence(sims, ids, utm, self.radius_m, self.kind)
        confidence = self.confidence(value)
        return value, confidence, confidence < self.unknown_below
