"""Map search on the GPU: exact search (torch matmul + top-k, faiss-gpu flat) over N x 4096 FP16 places, and
the runtime's IVF-PQ map moved to the GPU by :func:`runtime.map.index.to_gpu` (float16 lookup tables)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from benchmarks.gpu.common import latency

log = logging.getLogger(__name__)

H100_BANDWIDTH = 3.35e12  # bytes/s of HBM3 (H100 SXM), for the memory-bound floor of exact search


def _places_and_queries(places: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm random places and queries near some of them (float32)."""
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((places, dim), dtype=np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    noise = rng.standard_normal((queries, dim), dtype=np.float32)
    q = db[rng.integers(0, places, queries)] + 0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return db, q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_search(places: int, dim: int, repeats: int, caps: dict[str, str | None]) -> dict[str, Any]:
    """torch FP16 matmul + top-k and faiss-gpu ``GpuIndexFlatIP`` (FP16), batch 1 and 32; top-1 agreement
    with FP32 exact search."""
    if caps["torch_cuda"]:
        return {"missing": caps["torch_cuda"]}
    import torch

    # made on the GPU: 1M x 4096 normal samples take a minute with numpy
    gen = torch.Generator(device="cuda").manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(places, dim, device="cuda", generator=gen), dim=1)
    pick = torch.randint(0, places, (32,), device="cuda", generator=gen)
    noise = torch.nn.functional.normalize(torch.randn(32, dim, device="cuda", generator=gen), dim=1)
    queries = torch.nn.functional.normalize(db[pick] + 0.5 * noise, dim=1)
    host_q = queries.cpu().numpy()
    exact = (queries @ db.T).topk(10, dim=1).indices.cpu().numpy()  # FP32 exact ids
    db16 = db.half()
    host_db = db.cpu().numpy() if not caps["faiss_gpu"] else None  # faiss-gpu adds from host memory
    del db
    out: dict[str, Any] = {
        "places": places,
        "dim": dim,
        "bandwidth_floor_ms": places * dim * 2 / H100_BANDWIDTH * 1e3,
    }
    for batch in (1, 32):
        q16 = queries[:batch].half()
        out[f"torch_fp16_b{batch}"] = latency(
            lambda q=q16, d=db16: (q @ d.T).topk(10, dim=1), repeats, batch, torch.cuda.synchronize
        )
    ids = (queries.half() @ db16.T).topk(10, dim=1).indices.cpu().numpy()
    out["torch_top1_agreement"] = float(np.mean(ids[:, 0] == exact[:, 0]))
    del db16
    torch.cuda.empty_cache()
    if caps["faiss_gpu"]:
        out["faiss_gpu_flat"] = {"missing": caps["faiss_gpu"]}
        return out
    import faiss

    resources = faiss.StandardGpuResources()
    config = faiss.GpuIndexFlatConfig()
    config.useFloat16 = True
    index = faiss.GpuIndexFlatIP(resources, dim, config)
    index.add(host_db)
    for batch in (1, 32):
        out[f"faiss_gpu_flat_fp16_b{batch}"] = latency(
            lambda b=batch: index.search(host_q[:b], 10), repeats, batch
        )
    out["faiss_top1_agreement"] = float(np.mean(index.search(host_q, 10)[1][:, 0] == exact[:, 0]))
    return out


def ivfpq_on_gpu(places: int, dim: int, repeats: int, caps: dict[str, str | None]) -> dict[str, Any]:
    """A 4,096-D IVF-PQ map index (64 sub-quantizers x 8 bits: the one faiss-gpu refused without float16
    lookup tables) built by the runtime on the CPU, moved by ``to_gpu``: the GPU's top-1/top-10 against
    the CPU index on the same queries, and both latencies at batch 1."""
    from runtime.map.index import build_index, search, set_threads, to_gpu

    if caps["faiss_gpu"]:
        return {"missing": caps["faiss_gpu"]}
    set_threads(None)
    db, queries = _places_and_queries(places, dim, 64, seed=1)
    index, info = build_index(db, "ivfpq", nlist=256, pq_m=64, pq_bits=8, nprobe=16)
    gpu_index = to_gpu(index)
    if gpu_index is index:
        return {"error": "to_gpu kept the 8-bit IVF-PQ index on the CPU", "index": info}
    _, cpu_ids = search(index, queries, 10)
    _, gpu_ids = search(gpu_index, queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu_ids, gpu_ids, strict=True)])
    return {
        "index": info,
        "places": places,
        "top1_agreement_gpu_vs_cpu": float(np.mean(cpu_ids[:, 0] == gpu_ids[:, 0])),
        "top10_overlap_gpu_vs_cpu": float(overlap),
        "cpu_b1": latency(lambda: search(index, queries[:1], 10), repeats),
        "gpu_b1": latency(lambda: search(gpu_index, queries[:1], 10), repeats),
    }
