"""The map's index helpers: the one IVF-PQ sizing rule, chunked exact search, exact re-ranking (real FAISS)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.map.index import RerankedIndex, build_index, exact_search, ivfpq_sizes


def _unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_one_sizing_rule_for_every_map_size():
    million = ivfpq_sizes(1_000_000, 7168)
    assert million.factory == "IVF1024,PQ64x8" and million.train_points == 40 * 1024
    assert ivfpq_sizes(10_000_000, 4096).factory == "IVF4096,PQ64x8"
    assert ivfpq_sizes(100_000, 4096).factory == "IVF256,PQ64x8"
    small = ivfpq_sizes(300, 64)
    assert small.factory == "IVF4,PQ64x6" and small.train_points == 300  # capped at the map
    assert ivfpq_sizes(40, 100).factory == "IVF1,PQ50x3"  # 50 divides 100; 40 places: 8 centroids
    with pytest.raises(ConfigError, match=re.escape("pq_m (48) must divide the descriptor dimension (100)")):
        ivfpq_sizes(1000, 100, pq_m=48)
    with pytest.raises(
        ConfigError, match=re.escape("nlist (2000) must be in 1..1000 (the number of places)")
    ):
        ivfpq_sizes(1000, 64, nlist=2000)


def test_exact_search_in_chunks_equals_brute_force_on_float16_rows():
    db = _unit_rows(1000, 32, 0).astype(np.float16)
    queries = _unit_rows(7, 32, 1)
    sims, ids = exact_search(db, queries, 5, chunk_rows=64)  # 16 chunks, the last one partial
    brute = queries @ db.astype(np.float32).T  # (7, 1000)
    expected = np.argsort(-brute, axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(brute, expected, axis=1), rtol=1e-6)


def test_reranked_index_returns_exact_order_and_similarities_of_its_candidates():
    db = _unit_rows(2000, 64, 2)
    stored = db.astype(np.float16)
    index, info = build_index(stored, "ivfpq", pq_m=8, nprobe=4)
    assert info["factory"] == "IVF32,PQ8x8"
    queries = db[:50] + 0.05 * _unit_rows(50, 64, 3)
    reranked = RerankedIndex(index, stored, candidates=64)
    sims, ids = reranked.search(queries, 3)
    # each answer is the exact ranking of the compressed index's 64 candidates by the float16 descriptors
    _, candidates = index.search(queries, 64)
    for row in range(50):
        exact = stored[candidates[row]].astype(np.float32) @ queries[row].astype(np.float32)
        order = np.argsort(-exact, kind="stable")[:3]
        np.testing.assert_array_equal(ids[row], candidates[row][order])
        np.testing.assert_allclose(sims[row], exact[order], rtol=1e-6)
    assert (ids[:, 0] == np.arange(50)).mean() == 1.0  # every query finds the place it revisits
    with pytest.raises(ConfigError, match=re.escape("index 2000 x 64-D, descriptors (1999, 64)")):
        RerankedIndex(index, stored[:-1], 10)
