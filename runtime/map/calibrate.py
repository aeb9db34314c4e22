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

**With sequence matching** (:mod:`runtime.map.sequence`) the verdict judges the reported place's *line*, not
its frame: the evidence is how much lower (better) the best line's score is than that of the best line
ending elsewhere: farther than ``radius_m`` and ``TemporalConfig.suppress`` places from it (:func:`sequence_evidence`). Line scores sum contrast-enhanced
differences, z-scores within each place's own neighbourhood, so this gap is scale-free too. Its calibration
plays stretches of the map as unmapped routes (:func:`impostor_sequence_evidence`): 64 stretches of
``frames + 10`` consecutive places at random, each with every place within ``radius_m`` of it removed from
the map, its own images matched as a sequence against the rest; each frame with a full window is one
impostor sample. Stored beside the per-frame calibration as map.json ``calibration.sequence``, with the
:class:`~runtime.map.sequence.TemporalConfig` it holds for (the default: ``netvlad-run --temporal``); cost 64 x
30 exact map searches (as many as the per-frame calibration's 2,000) and matcher updates: 6-8 s for 1k
places of 7,168-D descriptors, 26 s for 100k places of 256-D (seeded route), on 2 shared cores.
The first ``frames - 1`` frames of a sequence (window not full), maps built before it (warned once) and
other TemporalConfigs (warned once) keep the per-frame verdict. Measured
(``python -m benchmarks.sequence_verdict``, demo model, descriptors centred on the map mean, 20 frames):
synthetic small world 0 of 992 correct frames flagged (per frame: 16-24 %), unmapped streets 99.6 % flagged
after the query video in one sequence, 98.8 % from a fresh one, AUC-PR 0.9999; Nordland winter -> summer
8.9 % of correct frames flagged (R@1 0.874; AUC-PR 0.975), and of winter stretches with their own
neighbourhood removed from the map (unmapped places in the query domain) 94 % flagged. Map stretches show
more evidence than unmapped places in another domain (the map's neighbours of a removed stretch still
resemble it), so the threshold errs towards flagging: at 90 % it flags 98-99.6 % of the synthetic world's
unmapped frames, and Nordland's correct frames flagged are near the statistic's own limit there (about 5.5 %
even at a hindsight threshold that flags 80 % of the winter impostors).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from runtime.map.index import ADD_CHUNK_ROWS, similarities
from runtime.map.sequence import (
    SequenceMatch,
    SequenceMatcher,
    TemporalConfig,
    place_spacing,
    still_similarity,
)

log = logging.getLogger(__name__)

SEARCH_CANDIDATES = 32  # places searched per frame: enough to see the similarities of places elsewhere
SPREAD_RANK = 10  # evidence's spread: best elsewhere minus the SPREAD_RANK-th best elsewhere
SEQUENCE_STRETCHES = 64  # stretches of the map played as unmapped routes by the sequence calibration
SEQUENCE_EXTRA = 10  # frames each stretch runs past a full window: impostor samples per stretch - 1
SEQUENCE_EVIDENCE = (
    "best line elsewhere minus best line: sequence scores (sums of contrast-enhanced differences) of the best "
    "line and of the best line ending beyond elsewhere_m of it (radius_m, and at least TemporalConfig.suppress "
    "places)"
)
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


def search_candidates(utm: np.ndarray, radius_m: float, samples: int = 32, seed: int = 0) -> int:
    """Places to search per frame for the verdict: :data:`SEARCH_CANDIDATES` beyond the places that lie
    within ``radius_m`` of a place (the most of ``samples`` sampled places, at most 512), so that a dense
    map (places a metre apart: 50 within 25 m) still leaves candidates *elsewhere* to compare with, and to
    take a stream's impostor samples from (:mod:`runtime.localize.stream_verdict`)."""
    n = len(utm)
    if n == 0:
        return SEARCH_CANDIDATES
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, size=min(samples, n), replace=False)
    most = max(int(np.count_nonzero(np.linalg.norm(utm - utm[i], axis=1) <= radius_m)) for i in picked)
    return SEARCH_CANDIDATES + min(most, 512)


def _batch(places: int) -> int:
    """Queries per block of a sweep (the ``(batch, chunk)`` similarities and positions stay small); the
    blocks keep the shapes of the per-block sweep this one replaced, so the similarities are bit-identical."""
    return int(np.clip(2**26 // max(1, places), 8, 256))


def _top_candidates(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sims (B, N)``: the ``k`` largest, best first -> ``(values (B, k), indices (B, k))``."""
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (B, k) unordered
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(sims, ids, axis=1), ids


def top_over_map(
    queries: np.ndarray,
    descriptors: np.ndarray,
    k: int,
    exclude: Callable[[slice, slice], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` similarities of ``queries (M, D)`` over the map ``descriptors (N, D)`` in one sweep:
    each chunk of the map (float32 or float16, may be a memory map larger than RAM) is read once, for every
    block of queries. ``exclude(queries, places)``: a ``(B, c)`` bool mask of the (query, place) pairs of those
    slices left out (similarity -inf). Returns ``(values (M, k) float32, ids (M, k) int64)``, best first.
    """
    q = np.asarray(queries, dtype=np.float32)
    n = descriptors.shape[0]
    k = min(int(k), n)
    if len(q) == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    blocks = [slice(s, s + _batch(n)) for s in range(0, len(q), _batch(n))]
    best_values = np.full((len(q), 0), -np.inf, np.float32)  # (M, <=k) so far
    best_ids = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, ADD_CHUNK_ROWS):
        rows = np.asarray(descriptors[start : start + ADD_CHUNK_ROWS], dtype=np.float32)  # (c, D), read once
        places = slice(start, start + len(rows))
        merged = [
            _merge_top(
                best_values[b], best_ids[b], q[b] @ rows.T, places, k, exclude(b, places) if exclude else None
            )
            for b in blocks
        ]
        best_values = np.concatenate([values for values, _ in merged])
        best_ids = np.concatenate([ids for _, ids in merged])
    return best_values, best_ids


def _merge_top(
    values: np.ndarray, ids: np.ndarray, sims: np.ndarray, places: slice, k: int, left_out: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of a block's best so far ``values, ids (B, <=k)`` and its similarities ``sims (B, c)`` to
    the map rows ``places`` (``left_out (B, c)``: pairs set to -inf) -> ``(values (B, k), ids (B, k))``."""
    if left_out is not None:
        sims[left_out] = -np.inf
    place_ids = np.broadcast_to(np.arange(places.start, places.stop, dtype=np.int64), sims.shape)
    top_values, top = _top_candidates(np.concatenate([values, sims], axis=1), k)  # (B, k)
    return top_values, np.take_along_axis(np.concatenate([ids, place_ids], axis=1), top, axis=1)


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
    ``descriptors (N, D)`` (float32 or float16, may be a memory map larger than RAM: read once, a chunk at a
    time) at ``utm (N, 2)``. Queries with nothing left beyond their neighbourhood are skipped (NaN).
    """

    def near(rows: slice, places: slice) -> np.ndarray:  # (B, c): the unmapped place's neighbourhood
        return np.linalg.norm(query_utm[rows, None, :] - utm[None, places, :], axis=2) <= radius_m

    values, ids = top_over_map(queries, descriptors, candidates + 1, exclude=near)  # (M, C + 1)
    out = np.full(queries.shape[0], np.nan)
    for row in range(queries.shape[0]):
        ok = np.isfinite(values[row])
        if ok.sum() >= 2:
            out[row] = evidence(values[row][ok], ids[row][ok], utm, radius_m, kind)
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
    values, ids = top_over_map(queries, descriptors, candidates)  # (M, C)
    scores = np.array([evidence(v, i, utm, radius_m, kind) for v, i in zip(values, ids, strict=True)])
    correct = np.linalg.norm(utm[ids[:, 0]] - query_utm, axis=1) <= radius_m
    return scores.reshape(queries.shape[0]), correct


def sequence_elsewhere_m(radius_m: float, spacing_m: float, config: TemporalConfig) -> float:
    """How far a line must end from the best one to be another answer (:func:`sequence_evidence`): beyond
    ``radius_m`` and at least ``config.suppress`` places (``spacing_m`` apart) away.

    A line ending a place or two beside the best one is the same trajectory shifted by a frame or so (the
    matcher's own non-maximum suppression treats ends closer than ``suppress`` places as one hypothesis):
    it shares most of the best line's frames and evidence, so comparing with it measures how sharply the
    line is placed, not whether another stretch of the route explains the frames as well. Where places are
    farther apart than ``radius_m / suppress`` (Nordland's 20 m, a sparse map or a slow robot's), it used to
    be the competitor: measured with an untrained ImageNet model on Nordland winter against the summer map
    (the sets of ``netvlad-bench verdict --nordland``, replayed on cached descriptors), correct frames flagged 9.9 -> 6.1 % (1x), 22.5 -> 14.8 % (2x),
    with a stretch of the route removed from the map 11.2 -> 6.3 % and its unmapped frames flagged 91.1 ->
    90.5 %; where places are dense (5 m) nothing changes.
    """
    return max(float(radius_m), config.suppress * float(spacing_m))


def sequence_evidence(match: SequenceMatch, utm: np.ndarray, elsewhere_m: float) -> float:
    """The evidence that a sequence's best line is right: how much lower (better) its score is than that of
    the best line ending farther than ``elsewhere_m`` from it (:data:`SEQUENCE_EVIDENCE`;
    :func:`sequence_elsewhere_m`).

    ``match``: :meth:`~runtime.map.sequence.SequenceMatcher.update`'s ranking of a frame's line ends, ``utm
    (N, 2)`` the map's positions. A line's score sums contrast-enhanced differences (z-scores within each
    place's neighbourhood), so the gap is in units of the map's own spread: a change of domain that shifts
    and scales the similarities leaves it unchanged. 0 when no valid line ends elsewhere.
    """
    scores = match.scores  # (E,) ascending
    if scores.size < 2 or not np.isfinite(scores[0]):
        return 0.0
    far = np.linalg.norm(utm[match.ids] - utm[match.ids[0]], axis=1) > elsewhere_m  # (E,)
    elsewhere = scores[far & np.isfinite(scores)]
    return float(elsewhere[0] - scores[0]) if elsewhere.size else 0.0


def _rows(descriptors: np.ndarray, keep: np.ndarray | None = None):
    """``ids -> (M, D) float32`` rows of ``descriptors`` (through ``keep``: ids of a map with places removed)."""
    if keep is None:
        return lambda ids: np.asarray(descriptors[ids], dtype=np.float32)
    return lambda ids: np.asarray(descriptors[keep[ids]], dtype=np.float32)


def _near(utm: np.ndarray, points: np.ndarray, radius_m: float) -> np.ndarray:
    """Which places ``utm (N, 2)`` lie within ``radius_m`` of any of ``points (L, 2)`` ``(N,) bool``: exact
    distances only inside the points' bounding box grown by the radius (a few ms at 100k places)."""
    lo, hi = points.min(axis=0) - radius_m, points.max(axis=0) + radius_m
    box = np.flatnonzero(
        (utm[:, 0] >= lo[0]) & (utm[:, 0] <= hi[0]) & (utm[:, 1] >= lo[1]) & (utm[:, 1] <= hi[1])
    )
    near = np.zeros(len(utm), dtype=bool)
    d = np.linalg.norm(utm[box][:, None, :] - points[None, :, :], axis=2)  # (B, L) metres
    near[box[(d <= radius_m).any(axis=1)]] = True
    return near


def impostor_sequence_evidence(
    descriptors: np.ndarray,
    utm: np.ndarray,
    radius_m: float,
    config: TemporalConfig | None = None,
    stretches: int = SEQUENCE_STRETCHES,
    extra: int = SEQUENCE_EXTRA,
    seed: int = 0,
    played: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Sequence evidence of the map's own stretches played as unmapped routes: ``(evidence (S,), stretches
    used)``.

    A stretch is ``config.frames + extra`` consecutive places of the map (``descriptors (N, D)`` in route
    order, at ``utm (N, 2)``); every place within ``radius_m`` of it is removed from the map, its images are
    matched as a sequence against the rest (the frame's top ``config.candidates`` places, as the Localizer
    searches them), and every frame with a full window gives one impostor sample. ``stretches`` (at most)
    start at random places: cost ``stretches * (frames + extra)`` map searches, whatever the map's size.
    ``played``: the images matched along a stretch, ``(N, D)`` aligned with the map (row ``i`` taken at place
    ``i``, as Nordland's winter frames are): None plays the map's own (the calibration); queries measure the
    verdict on unmapped routes in their own domain.
    """
    config = config or TemporalConfig()
    n = descriptors.shape[0]
    length = config.frames + extra
    if n < 2 * length:
        return np.empty(0), 0
    spacing = place_spacing(utm)  # as the Localizer computes it: the same contrast window
    elsewhere_m = sequence_elsewhere_m(radius_m, spacing, config)
    stop = still_similarity(_rows(descriptors), n, config.stop_fraction) if config.stops else np.inf
    rng = np.random.default_rng(seed)
    count = min(stretches, n - length + 1)
    starts = np.sort(rng.choice(n - length + 1, size=count, replace=False))
    group = max(1, _batch(n) // length)  # stretches per block of similarities
    out: list[float] = []
    used = 0
    for g in range(0, count, group):
        block = starts[g : g + group]
        frames = (block[:, None] + np.arange(length)[None, :]).reshape(-1)  # (G * length,) place ids
        queries = np.asarray((descriptors if played is None else played)[frames], dtype=np.float32)
        sims = similarities(descriptors, queries)  # (G * length, N)
        for b in range(len(block)):
            rows = slice(b * length, (b + 1) * length)
            keep = np.flatnonzero(~_near(utm, utm[frames[rows]], radius_m))  # the map without the route
            if keep.size < 2 * length:
                continue
            stretch_sims = sims[rows][:, keep]  # (length, K): against the map without the stretch
            _, top = _top_candidates(stretch_sims, config.candidates)
            matcher = SequenceMatcher(
                _rows(descriptors, keep), keep.size, config, place_spacing_m=spacing, stop_similarity=stop
            )
            kept_utm = utm[keep]
            for t in range(length):
                match = matcher.update(queries[rows][t], top[t], similarities=stretch_sims[t])
                if match.frames >= config.frames:
                    out.append(sequence_evidence(match, kept_utm, elsewhere_m))
            used += 1
    return np.asarray(out), used


def calibrate_sequences(
    descriptors: np.ndarray,
    utm: np.ndarray,
    radius_m: float,
    percentile: float,
    config: TemporalConfig | None = None,
    stretches: int = SEQUENCE_STRETCHES,
    seed: int = 0,
) -> dict | None:
    """The sequence verdict's calibration on the map's own stretches (map.json ``calibration.sequence``), or
    None when the map is too short for any (fewer than ``2 * (frames + SEQUENCE_EXTRA)`` places)."""
    config = config or TemporalConfig()
    impostors, used = impostor_sequence_evidence(descriptors, utm, radius_m, config, stretches, seed=seed)
    if impostors.size == 0:
        log.info(
            "map of %d places too short to calibrate the sequence verdict; with sequence matching the verdict "
            "stays per frame",
            descriptors.shape[0],
        )
        return None
    distribution = _impostor_distribution(impostors, percentile)
    log.info(
        "sequence verdict calibrated on %d stretches of the map: line evidence below %.3f (flags %g%% of "
        "unmapped routes)",
        used,
        distribution["unknown_threshold"],
        percentile,
    )
    return {
        "source": "map",
        "evidence_kind": "sequence",
        "evidence": SEQUENCE_EVIDENCE,
        "radius_m": radius_m,
        "elsewhere_m": sequence_elsewhere_m(radius_m, place_spacing(utm), config),
        **distribution,
        "stretches": used,
        "frames_per_stretch": config.frames + SEQUENCE_EXTRA,
        "temporal": dataclasses.asdict(config),
    }


def _impostor_distribution(impostors: np.ndarray, percentile: float) -> dict:
    """The stored form of an impostor evidence distribution: 101 quantiles, the exponential tail's scale
    above the ``TAIL_FROM`` quantile, and the operating point (flags ``percentile`` % of impostors)."""
    values = np.sort(impostors[np.isfinite(impostors)])
    if values.size == 0:
        values = np.zeros(1)
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, 101))
    top = values[values > quantiles[int(TAIL_FROM * 100)]]
    tail_scale = float(np.mean(top - quantiles[int(TAIL_FROM * 100)])) if top.size else 1.0
    level = percentile / 100.0
    return {
        "percentile": percentile,
        "unknown_below_confidence": level,
        "unknown_threshold": float(np.quantile(values, level)),
        "impostors": int(values.size),
        "impostor_quantiles": [round(float(v), 6) for v in quantiles],
        "tail_scale": max(tail_scale, 1e-6),
    }


def _calibration(
    impostors: np.ndarray, percentile: float, radius_m: float, source: str, kind: str = "gap", **extra
) -> dict:
    distribution = _impostor_distribution(impostors, percentile)
    return {
        "source": source,
        "evidence_kind": kind,
        "evidence": EVIDENCE[kind],
        "spread_rank": SPREAD_RANK,
        "candidates": SEARCH_CANDIDATES,
        "radius_m": radius_m,
        **distribution,
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
    calibration = _calibration(impostors, percentile, radius_m, "map", samples=int(chosen.size))
    return _with_sequence(calibration, descriptors, utm, radius_m, percentile, seed)


def _with_sequence(
    calibration: dict,
    descriptors: np.ndarray,
    utm: np.ndarray,
    radius_m: float,
    percentile: float,
    seed: int = 0,
) -> dict:
    """``calibration`` with the sequence verdict's (for the default :class:`TemporalConfig`) when the map
    is long enough."""
    sequence = calibrate_sequences(descriptors, utm, radius_m, percentile, seed=seed)
    return calibration if sequence is None else {**calibration, "sequence": sequence}


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
    return _with_sequence(calibration, descriptors, utm, radius_m, percentile)


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
        sequence = calibration.get("sequence")
        # the sequence evidence's own impostor distribution, and the TemporalConfig it was calibrated with
        self.sequence = Verdict(sequence, unknown_below) if sequence else None
        self.sequence_config = sequence["temporal"] if sequence else None
        # how far another line must end (maps calibrated before sequence_elsewhere_m: the radius)
        self.sequence_elsewhere_m = (
            float(sequence.get("elsewhere_m", sequence["radius_m"])) if sequence else None
        )
        self._warned: set[str] = set()

    def confidence(self, value: float) -> float:
        """The share of impostors (unmapped places) with less evidence than ``value``, in [0, 1]."""
        start = self.quantiles[int(TAIL_FROM * 100)]
        if value <= start:
            return float(np.interp(value, self._values, self._levels, left=0.0))
        return float(1.0 - (1.0 - TAIL_FROM) * np.exp(-(value - start) / self.tail_scale))

    def judge(
        self, sims: np.ndarray, ids: np.ndarray, utm: np.ndarray, stream=None
    ) -> tuple[float, float, bool]:
        """``(evidence, confidence, unknown)`` of a frame's candidates (``sims``, ``ids``: best first).
        ``stream``: a :class:`~runtime.localize.stream_verdict.StreamVerdict` whose confidence (the map's
        mixed with the stream's own impostors) replaces the map's."""
        value = evidence(sims, ids, utm, self.radius_m, self.kind)
        confidence = (self if stream is None else stream).confidence(value)
        return value, confidence, confidence < self.unknown_below

    def judge_place(
        self,
        place: int,
        sims: np.ndarray,
        ids: np.ndarray,
        utm: np.ndarray,
        match: SequenceMatch | None = None,
        config: TemporalConfig | None = None,
        stream=None,
    ) -> tuple[float, float, bool, bool]:
        """``(evidence, confidence, unknown, by_sequence)`` of the reported ``place``: its line against the
        lines elsewhere when sequence matching (``match``, ``config``) can be judged (:meth:`judge_sequence`),
        else its similarity among the frame's candidates (``sims``, ``ids``: best first) against those
        elsewhere (:meth:`judge`, the reported place put first; ``stream``: the stream's calibration)."""
        if match is not None and config is not None:
            judged = self.judge_sequence(match, config, utm)
            if judged is not None:
                return (*judged, True)
        order = np.r_[np.flatnonzero(ids == place), np.flatnonzero(ids != place)]
        return (*self.judge(sims[order], ids[order], utm, stream), False)

    def judge_sequence(
        self, match: SequenceMatch, config: TemporalConfig, utm: np.ndarray
    ) -> tuple[float, float, bool] | None:
        """``(evidence, confidence, unknown)`` of a sequence's best line (:func:`sequence_evidence`, against
        the map's sequence calibration), or None when the verdict must stay per frame (:meth:`judge`): the
        window is not full yet (the first ``frames - 1`` frames of a sequence), the map has no sequence
        calibration (built before it existed, or too short) or it was calibrated for another
        :class:`TemporalConfig` than ``config`` (both warned once)."""
        if self.sequence is None:
            self._warn_once(
                "missing",
                "the map has no sequence calibration (rebuild it, or netvlad-map add/remove to update it); "
                "with sequence matching the verdict stays per frame",
            )
            return None
        if dataclasses.asdict(config) != self.sequence_config:
            self._warn_once(
                "config",
                f"the map's sequence verdict is calibrated for TemporalConfig({self.sequence_config}), not "
                f"{config}; the verdict stays per frame",
            )
            return None
        if match.frames < config.frames:
            return None
        value = sequence_evidence(match, utm, self.sequence_elsewhere_m)
        confidence = self.sequence.confidence(value)
        return value, confidence, confidence < self.unknown_below

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)
