"""netvlad-bench search: real FAISS indexes on seeded synthetic maps; recall numbers, report files."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.search import (
    SearchConfig,
    compressed_recall,
    evict_from_page_cache,
    gpu_search_unavailable,
    page_cache_share,
    run_search,
    synthetic_map,
)
from runtime.errors import ConfigError
from runtime.map.index import ivf_lists, pq_subquantizers

TEST_CFG = dict(
    sizes=(4000,),
    dims=(128,),
    pq_bytes=16,
    nprobe=(2, 16),
    num_queries=300,
    latency_queries=5,
    batch_size=8,
    threads=1,
)


def test_synthetic_map_is_seeded_normalised_and_route_correlated():
    db, queries, truth = synthetic_map(2000, 64, 50, num_modes=8, seed=3)
    db2, _, truth2 = synthetic_map(2000, 64, 50, num_modes=8, seed=3)
    assert db.dtype == np.float32 and db.shape == (2000, 64) and queries.shape == (50, 64)
    np.testing.assert_array_equal(db, db2)
    np.testing.assert_array_equal(truth, truth2)
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    neighbours = np.sum(db[1:] * db[:-1], axis=1).mean()
    far = np.sum(db[1000:] * db[:-1000], axis=1).mean()
    assert neighbours > 0.8 > 0.3 > far  # adjacent places look alike, distant ones do not


def test_compressed_recall_counts_exact_top1_and_overlap():
    exact = np.array([[0, 1, 2], [5, 6, 7]])
    approx = np.array([[0, 9, 8], [6, 5, 4]])
    r = compressed_recall(exact, approx)
    assert r["1-recall@1"] == 0.5 and r["1-recall@10"] == 1.0
    assert r["10-recall@10"] == pytest.approx((1 / 3 + 2 / 3) / 2)


def test_index_shapes():
    assert pq_subquantizers(4096, 64) == 64
    assert pq_subquantizers(7168, 64) == 64
    assert pq_subquantizers(100, 64) == 50
    assert ivf_lists(10_000) == 128 and ivf_lists(1_000_000) == 1024
    assert 39 * ivf_lists(4000) <= 4000


def test_search_sweep_recall_bands_and_report(tmp_path):
    result = run_search(SearchConfig.preset("tiny", **TEST_CFG), tmp_path)
    (entry,) = result["entries"]
    exact, compressed = entry["exact"], entry["compressed"]
    assert exact["place-recall@1"] >= 0.97  # the seeded revisits are findable by exact search
    assert compressed["index"] == "IVF64,PQ16"
    assert exact["bytes"] == 4000 * 128 * 4
    assert compressed["bytes"] < exact["bytes"] / 5  # 16-byte codes + ids + codebooks
    low, high = compressed["by_nprobe"]["2"], compressed["by_nprobe"]["16"]
    # IVF-PQ with 16 bytes per vector confuses neighbouring places: the seeded map gives 193 of 300 queries
    # the exact top-1 (far below exact, far above chance), and keeps it in the top 10 for all of them
    for r in (low, high):
        assert r["1-recall@1"] == pytest.approx(193 / 300, abs=0.02)
        assert r["1-recall@10"] == 1.0
    assert high["1-recall@10"] >= low["1-recall@10"]
    # re-ranking 500 candidates exactly against the float16 descriptors recovers exact search's top-1
    reranked = compressed["by_nprobe"]["16+R500"]
    assert reranked["rerank"] == 500 and reranked["1-recall@1"] >= 0.99 > high["1-recall@1"]
    # the scalar quantisers against float32 exact search (the descriptors fit: generated in float32)
    assert entry["reference"] == "float32" and exact["bytes_read_per_query"] == 4000 * 128 * 4
    fp16, sq8 = entry["scalar"]["fp16"]["by_rerank"], entry["scalar"]["sq8"]["by_rerank"]
    assert entry["scalar"]["fp16"]["index"] == "SQfp16" and entry["scalar"]["sq8"]["index"] == "SQ8"
    assert list(fp16) == ["0"] and list(sq8) == ["0", "16"]
    for r in (fp16["0"], sq8["0"], sq8["16"]):
        assert r["1-recall@1"] >= 0.99 and r["1-recall@10"] == 1.0
    # a flat scan reads every code; re-ranking adds its 16 float16 rows
    assert fp16["0"]["bytes_read_per_query"] == 4000 * 128 * 2
    assert sq8["0"]["bytes_read_per_query"] == 4000 * 128
    assert sq8["16"]["bytes_read_per_query"] == 4000 * 128 + 16 * 128 * 2
    # IVF-PQ: the 64 float32 centroids, the codes in the lists probed (faiss's count), the re-ranked rows
    for r in (low, high):
        assert 64 * 128 * 4 < r["bytes_read_per_query"] <= 64 * 128 * 4 + 4000 * 16
    assert reranked["bytes_read_per_query"] == high["bytes_read_per_query"] + 500 * 128 * 2
    # 16-byte codes + 8-byte ids per place, plus the quantisers (PQ codebooks, IVF centroids) spread over 4000
    assert 16 + 8 < compressed["ram_bytes_per_place"] < 70 and compressed["disk_bytes_per_place"] == 256
    for timing in (exact["batch1"], high["batch8"]):
        assert {"p50_ms", "p99_ms", "n"} <= set(timing) and timing["n"] >= 1
    reason = gpu_search_unavailable()
    if reason:  # faiss-cpu: said so, with the reason
        assert entry["gpu"] == {"skipped": reason}
    else:
        assert entry["gpu"]["1-recall@1"] >= 0.95 and entry["gpu"]["batch1"]["p50_ms"] > 0
    data = json.loads((tmp_path / "search.json").read_text())
    assert data["benchmark"] == "search" and data["machine"]["cores"] >= 1
    assert "numpy" in data["machine"]["libraries"] and data["config"]["sizes"] == [4000]
    assert len(data["load_average"]["start"]) == len(data["load_average"]["end"]) == 3
    md = (tmp_path / "search.md").read_text()
    assert "IVF64,PQ16" in md and "IndexFlatIP" in md and "1-recall@1 vs exact" in md
    assert "| SQfp16 |" in md and "| SQ8 + re-rank 16 (fp16) |" in md and "KiB read/query" in md
    assert "load average (1/5/15 min)" in md


def test_search_skips_maps_over_the_memory_limit(tmp_path):
    cfg = SearchConfig.preset("tiny", **{**TEST_CFG, "sizes": (4000, 1_000_000), "max_gib": 0.1})
    result = run_search(cfg, None)
    assert [e["size"] for e in result["entries"]] == [4000]
    (skip,) = result["skipped"]
    assert (
        skip["size"] == 1_000_000
        and "float16 descriptors need 0.2 GiB, over --max-gib 0.1; pass --scratch DIR" in skip["reason"]
    )


def test_search_memory_maps_descriptors_over_the_limit_and_scales_exact_timing(tmp_path):
    # 4000 x 128 float16 is 1 MiB: over a 0.5 MiB limit, so memory-mapped under scratch and deleted after;
    # the exact index is timed on the 1024 float32 rows (0.5 MiB) that fit and scaled to 4000
    # exact search streaming the whole memory map is timed for real on --stream-queries queries; --cold adds
    # the same timings with the descriptors evicted from the page cache (same answers, resident share noted)
    scratch = str(tmp_path / "scratch")
    cfg = SearchConfig.preset(
        "tiny",
        **{
            **TEST_CFG,
            "max_gib": 0.5 / 1024,
            "scratch": scratch,
            "rerank": (50,),
            "stream_queries": 2,
            "cold": True,
        },
    )
    result = run_search(cfg, tmp_path / "out")
    (entry,) = result["entries"]
    assert entry["descriptors"].startswith("float16 memory map") and entry["reference"] == "float16"
    assert entry["exact"]["extrapolated_from"] == 1024 and entry["exact"]["bytes"] == 4000 * 128 * 4
    assert entry["exact"]["streamed"]["n"] == 2 and entry["exact"]["streamed_cold"]["n"] == 2
    assert list((tmp_path / "scratch").iterdir()) == []
    warm, cold = entry["compressed"]["by_nprobe"]["16+R50"], entry["compressed"]["by_nprobe"]["16+R50 cold"]
    assert warm["1-recall@1"] >= 0.99 and cold["1-recall@1"] == warm["1-recall@1"] and cold["cold"]
    assert 0.0 <= cold["page_cache_share_batch1"] <= 1.0 and "page_cache_share_batch1" not in warm
    assert entry["gpu"]["skipped"]
    md = (tmp_path / "out" / "search.md").read_text()
    assert "exact, streaming the float16 memory map (measured, not cached)" in md
    assert "4,000 x 128: recall is against exact search over the float16 descriptors" in md
    assert "IVF64,PQ16 + re-rank 50 (fp16) (descriptors not cached)" in md


def _on_tmpfs(path) -> bool:
    """Whether ``path`` is on a RAM file system (its pages are its storage: they cannot be evicted)."""
    mounts = [line.split() for line in Path("/proc/mounts").read_text(encoding="utf-8").splitlines()]
    best = max((m for m in mounts if str(path).startswith(m[1])), key=lambda m: len(m[1]))
    return best[2] in ("tmpfs", "ramfs")


def test_evicting_a_memory_mapped_file_from_the_page_cache(tmp_path):
    path = tmp_path / "d.f16.npy"
    mapped = np.lib.format.open_memmap(path, "w+", np.float16, (4096, 256))  # 2 MiB
    mapped[:] = 1.0
    mapped.flush()
    assert float(mapped.sum(dtype=np.float64)) == 4096 * 256  # every page read: resident
    assert page_cache_share(path) == 1.0
    if _on_tmpfs(tmp_path):
        pytest.skip("tmp_path is on tmpfs: its pages cannot leave memory")
    evict_from_page_cache(path, mapped)  # the mapping's pages too, not only the unmapped ones
    assert page_cache_share(path) == 0.0
    assert float(mapped[100:200].sum(dtype=np.float64)) == 100 * 256  # still readable: from disk again
    assert page_cache_share(path) > 0.0  # (with the kernel's read-ahead around the rows read)


def test_search_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="sizes must be map sizes of at least 1000 places, got \\(10,\\)"):
        SearchConfig(sizes=(10,))
    with pytest.raises(ConfigError, match="unknown search preset 'huge'; known presets: default, full, tiny"):
        SearchConfig.preset("huge")
