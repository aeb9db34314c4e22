"""The map's index helpers: the one IVF-PQ sizing rule, chunked exact search, exact re-ranking (real FAISS)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.map.config import MapConfig
from runtime.map.index import RerankedIndex, build_index, exact_search, faiss_module, ivfpq_sizes


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


def _one_recall_at_1(ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """The share of queries whose top-1 is exact float32 search's top-1."""
    return float(np.mean(ids[:, 0] == exact_ids[:, 0]))


def _route(n: int, dim: int, correlation: float, seed: int) -> np.ndarray:
    """``(n, dim)`` unit rows along a route: an AR(1) walk, neighbouring places alike (as map images are)."""
    fresh = _unit_rows(n, dim, seed)
    walk = np.empty_like(fresh)
    previous = fresh[0]
    for i in range(n):
        previous = walk[i] = correlation * previous + np.sqrt(1 - correlation**2) * fresh[i]
    return walk / np.linalg.norm(walk, axis=1, keepdims=True)


def test_scalar_quantised_indexes_against_float32_exact_search():
    db = _route(2000, 256, correlation=0.999, seed=4)  # (2000, 256): neighbours 0.999 alike in cosine
    queries = db[::10] + 0.1 * _unit_rows(200, 256, 6)  # (200, 256): noisy revisits of every 10th place
    _, exact_ids = exact_search(db, queries, 10)  # float32 exact search: the reference
    stored = db.astype(np.float16)  # what a map of codes keeps beside them for re-ranking
    fp16, info16 = build_index(db, "fp16")
    sq8, info8 = build_index(stored, "sq8")
    assert info16 == {"type": "fp16", "factory": "SQfp16", "code_bytes": 512}
    assert info8 == {"type": "sq8", "factory": "SQ8", "code_bytes": 256}
    # sq8's ranges are each dimension's minimum and maximum over every place (faiss keeps min, max - min)
    low, high = stored.astype(np.float32).min(axis=0), stored.astype(np.float32).max(axis=0)
    trained = faiss_module().vector_to_array(sq8.sq.trained)
    np.testing.assert_allclose(trained, np.concatenate([low, high - low]), rtol=1e-6)
    recalls = {}
    for name, index in (("fp16", fp16), ("sq8", sq8), ("sq8+R16", RerankedIndex(sq8, stored, 16))):
        _, ids = index.search(queries, 10)
        recalls[name] = _one_recall_at_1(ids, exact_ids)
        if name != "sq8+R16":  # written and read back, it answers the same
            again = faiss_module().deserialize_index(faiss_module().serialize_index(index))
            np.testing.assert_array_equal(again.search(queries, 10)[1], ids)
    # float16 keeps exact search's top-1; 8-bit codes alone lose a few near-identical route neighbours
    # (0.985 here), and re-ranking their top 16 against the float16 descriptors wins them back
    assert recalls["fp16"] >= 0.99 and recalls["sq8+R16"] >= 0.99 > recalls["sq8"] >= 0.95


def test_an_unknown_index_kind_lists_the_kinds():
    expected = (
        "unknown map index 'hnsw'; choose one of: 'flat' (exact inner product, float32), 'fp16' (exact "
        "inner product over float16 descriptors, half the bytes), 'sq8' (8-bit scalar quantiser over "
        "per-dimension ranges, re-ranked), 'ivfpq' (IVF-PQ, compressed, approximate, re-ranked)"
    )
    with pytest.raises(ConfigError) as raised:
        build_index(_unit_rows(10, 8, 0), "hnsw")
    assert str(raised.value) == expected
    with pytest.raises(ConfigError) as raised:
        MapConfig(index="hnsw")
    assert str(raised.value) == f"invalid map config: {expected}"
    with pytest.raises(ConfigError, match=re.escape("a 'fp16' index holds the descriptors themselves")):
        MapConfig(index="fp16", rerank=16)
    assert MapConfig(index="sq8").rerank_candidates == 16 and MapConfig(index="fp16").rerank_candidates == 0
    assert MapConfig(index="ivfpq").rerank_candidates == 500
    assert MapConfig(index="sq8", rerank=0).rerank_candidates == 0
