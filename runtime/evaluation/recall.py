"""Recall@N, the place-recognition metric (training/README.md, "The protocol"), shared by every stage.

A query counts as found at N when one of its top-N database images is a positive (within 25 m by
default). Training evaluation, the runtime's map checks, the export parity gate and the benchmarks all
call these two functions, so a recall figure means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_NS = (1, 5, 10, 20)


def rank_database(db_descriptors: np.ndarray, query_descriptors: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most similar database descriptors for each query, best first.

    Exact inner-product search (cosine for L2-normalised descriptors) in float32 with numpy, in query
    blocks to bound memory. Shapes: ``db (N, D)``, ``queries (M, D)`` -> ``(M, min(k, N))`` int64.
    Ties are broken by the lower database index, so results are deterministic.
    """
    db = np.ascontiguousarray(db_descriptors, dtype=np.float32)
    queries = np.ascontiguousarray(query_descriptors, dtype=np.float32)
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise ValueError(
            f"descriptors must be 2-D with the same dimension, got database {db.shape} and queries {queries.shape}"
        )
    k = min(int(k), db.shape[0])
    ranked = np.empty((queries.shape[0], k), dtype=np.int64)
    block = max(1, (64 << 20) // max(1, 4 * db.shape[0]))  # ~64 MB of similarities per block
    for start in range(0, queries.shape[0], block):
        sims = queries[start : start + block] @ db.T  # (B, N)
        # stable sort of -sims keeps the lower index first among equal similarities
        ranked[start : start + block] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ranked


def recall_at_n(
    ranked: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS
) -> dict[int, float]:
    """Fraction of queries with a positive among their top-N, for each N in ``ns``.

    ``ranked``: ``(M, k)`` database indices per query, best first (``k >= max(ns)`` or the whole database).
    ``positives``: per query, the database indices that count as correct. Queries without any positive
    must be dropped by the caller beforehand (training/README.md, "The protocol"); they raise here rather than count as misses.
    """
    ranked = np.asarray(ranked)
    if len(positives) != ranked.shape[0]:
        raise ValueError(f"{ranked.shape[0]} ranked queries but {len(positives)} positive lists")
    empty = [i for i, p in enumerate(positives) if len(p) == 0]
    if empty:
        raise ValueError(
            f"{len(empty)} queries have no positive (first: query {empty[0]}); drop them before computing recall"
        )
    first_hit = first_hit_rank(ranked, positives)
    total = max(1, ranked.shape[0])
    return {int(n): float(np.count_nonzero(first_hit < n)) / total for n in ns}


def first_hit_rank(ranked: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """Per query, the 0-based rank of its first positive in ``ranked`` ``(M, k)`` -> ``(M,)`` int64.

    A query is found at N exactly when its rank is ``< N``; the int64 maximum when none of the ``k`` is a
    positive. Per-query outcomes, for paired comparisons of two models on the same queries.
    """
    ranked = np.asarray(ranked)
    first_hit = np.full(ranked.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
    for qi, pos in enumerate(positives):
        hits = np.flatnonzero(np.isin(ranked[qi], pos))
        if hits.size:
            first_hit[qi] = hits[0]
    return first_hit
