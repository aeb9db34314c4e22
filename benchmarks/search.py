"""Map search benchmark (``netvlad-bench search``): exact against compressed FAISS indexes over map sizes.

For each map size and descriptor dimension it builds, on seeded synthetic descriptors that look like a
place-recognition map (clustered, L2-normalised, queries are noisy revisits of map places), the runtime's
map indexes (:func:`runtime.map.index.build_index`, one per ``netvlad-map build --index`` kind):

- the exact index (``flat``: ``IndexFlatIP``, float32, what the runtime uses by default),
- the scalar-quantised flat scans (``fp16``: ``SQfp16``, 2 bytes per dimension; ``sq8``: ``SQ8``, 1 byte,
  optionally re-ranked exactly against the float16 descriptors) and
- a compressed index (``ivfpq``: ``IndexIVFPQ``, ``nlist`` inverted lists, ``m`` bytes per vector),

and measures per-query latency at batch 1 and per batch at a larger batch (p50/p90/p99), the bytes a
batch-1 query reads from the map, the recall of each index against exact search (does it return exact
search's top-1 within its top-1 / top-10, and how much of exact top-10 it finds; the reference is float32
exact search wherever float32 descriptors fit ``max_gib``), recall of each against the true place, and
index memory. Where faiss has a GPU, the exact search is also timed on it (FP16 flat); elsewhere that part
is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import load_average, machine_info, machine_line
from benchmarks.report import markdown_table, write_report
from benchmarks.timing import summarize_ms, time_calls
from runtime.errors import ConfigError
from runtime.map.index import SCALAR_QUANTISERS, RerankedIndex, build_index, exact_search, pq_subquantizers
from runtime.optional import require

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    # the default: minutes on 2 CPU cores, ~3.3 GiB for the largest 4096-D map
    "default": {"sizes": (10_000, 50_000, 200_000), "dims": (4096,)},
    # the goal: to 1M places of 7168-D (14 GiB of float16 descriptors: pass --scratch DIR to
    # memory-map them; the IndexFlatIP is timed on the 4 GiB of float32 rows that fit and scaled, and exact
    # search streaming the whole memory map is timed for real on a few queries)
    "full": {
        "sizes": (100_000, 1_000_000),
        "dims": (7168,),
        "max_gib": 4.0,
        "num_queries": 100,
        "nprobe": (16, 64),
        "rerank": (0, 500),
    },
    # seconds: what the tests and `make demo` use
    "tiny": {
        "sizes": (4_000,),
        "dims": (256,),
        "num_queries": 200,
        "latency_queries": 20,
        "batch_size": 16,
        "num_modes": 32,
        "pq_bytes": 32,
        "nprobe": (4, 16),
    },
}


@dataclass(frozen=True)
class SearchConfig:
    """What ``netvlad-bench search`` sweeps. Frozen and validated; build it from a preset with overrides."""

    sizes: tuple[int, ...] = PRESETS["default"]["sizes"]  # map sizes (number of places)
    dims: tuple[int, ...] = PRESETS["default"]["dims"]  # descriptor dimensions
    num_queries: int = 500  # queries for recall (noisy revisits of random map places)
    latency_queries: int = 50  # timed batch-1 searches per index
    batch_size: int = 32  # the larger batch, timed per batch
    k: int = 10  # neighbours retrieved
    num_modes: int = 256  # scene types the places cluster around
    query_noise: float = 1.0  # revisit noise relative to the place-specific part (higher is harder)
    route_correlation: float = 0.9  # similarity of the place-specific parts of neighbouring places
    pq_bytes: int = 64  # IVF-PQ code size (sub-quantisers of 8 bits); adjusted down to divide the dimension
    nprobe: tuple[int, ...] = (8, 32)  # inverted lists visited per query
    rerank: tuple[int, ...] = (0, 500)  # candidates re-ranked exactly against float16 descriptors (0: none)
    sq8_rerank: tuple[int, ...] = (
        0,
        16,
    )  # the same for the 8-bit scalar quantiser (16: the runtime's default)
    # RAM for the descriptors: float16 (over it: skipped, or memory-mapped with scratch); float32 originals
    # beside them (the reference for recall) while both fit, else recall is against exact float16 search
    max_gib: float = 6.0
    scratch: str | None = None  # a folder for memory-mapped descriptors of maps over max_gib (deleted after)
    stream_queries: int = 3  # batch-1 queries of exact search streaming a memory-mapped map (timed for real)
    cold: bool = False  # memory-mapped maps: also time batch-1 re-ranking with the page cache evicted
    threads: int = 2  # faiss OpenMP threads
    gpu: bool = True  # also time exact search on the GPU where faiss has one
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.sizes or any(int(s) < 1000 for s in self.sizes):
            problems.append(f"sizes must be map sizes of at least 1000 places, got {self.sizes}")
        if not self.dims or any(int(d) < 8 for d in self.dims):
            problems.append(f"dims must be descriptor dimensions of at least 8, got {self.dims}")
        for name in (
            "num_queries",
            "latency_queries",
            "batch_size",
            "k",
            "num_modes",
            "pq_bytes",
            "threads",
            "stream_queries",
        ):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.nprobe or any(int(p) < 1 for p in self.nprobe):
            problems.append(f"nprobe must be positive integers, got {self.nprobe}")
        for name in ("rerank", "sq8_rerank"):
            if not getattr(self, name) or any(int(r) < 0 for r in getattr(self, name)):
                problems.append(
                    f"{name} must be candidate counts >= 0 (0: no re-ranking), got {getattr(self, name)}"
                )
        if self.query_noise < 0:
            problems.append(f"query_noise must be >= 0, got {self.query_noise}")
        if not 0 <= self.route_correlation < 1:
            problems.append(f"route_correlation must be in [0, 1), got {self.route_correlation}")
        if self.max_gib <= 0:
            problems.append(f"max_gib must be > 0, got {self.max_gib}")
        if problems:
            raise ConfigError("invalid search benchmark config: " + "; ".join(problems))
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        object.__setattr__(self, "nprobe", tuple(int(p) for p in self.nprobe))
        object.__setattr__(self, "rerank", tuple(int(r) for r in self.rerank))
        object.__setattr__(self, "sq8_rerank", tuple(int(r) for r in self.sq8_rerank))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SearchConfig:
        """A named preset (``default``, ``full``, ``tiny``) with ``overrides`` applied."""
        if name not in PRESETS:
            raise ConfigError(f"unknown search preset {name!r}; known presets: {', '.join(PRESETS)}")
        values = dict(PRESETS[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# -- data ---------------------------------------------------------------------------------------------


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def synthetic_map(
    num_places: int,
    dim: int,
    num_queries: int,
    *,
    num_modes: int = 256,
    query_noise: float = 1.0,
    route_correlation: float = 0.9,
    segment: int = 50,
    seed: int = 0,
    chunk: int = 50_000,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded descriptors shaped like a place-recognition map recorded along a route.

    Places cluster around ``num_modes`` scene types (street, facade, vegetation ...): each stretch of
    ``segment`` consecutive places shares one; on top, a place-specific part that drifts along the route
    (an AR(1) walk with correlation ``route_correlation`` between neighbours, so adjacent places look
    alike, as consecutive map images do), equal in energy to the scene part; rows L2-normalised. A query
    revisits a random place with ``query_noise`` noise relative to the place-specific part, L2-normalised.
    Returns ``db (N, D)`` float32, ``queries (M, D)`` float32 and ``true_place (M,)`` int64. ``out``: an
    ``(N, D)`` array to write ``db`` into instead (a float16 memory map for maps larger than RAM).
    """
    rng = np.random.default_rng(seed)
    modes = rng.standard_normal((num_modes, dim), dtype=np.float32)  # (modes, D)
    modes /= np.linalg.norm(modes, axis=1, keepdims=True)
    segment_mode = rng.integers(0, num_modes, size=num_places // segment + 1)
    rho = np.float32(route_correlation)
    fresh = np.float32(math.sqrt(1.0 - route_correlation**2))
    db = np.empty((num_places, dim), dtype=np.float32) if out is None else out
    previous = rng.standard_normal(dim, dtype=np.float32) / np.float32(math.sqrt(dim))
    for start in range(0, num_places, chunk):
        n = min(chunk, num_places - start)
        own = rng.standard_normal((n, dim), dtype=np.float32) / np.float32(math.sqrt(dim))  # (n, D), |.|~1
        own *= fresh
        for i in range(n):  # AR(1) along the route: own_i = rho * own_{i-1} + sqrt(1 - rho^2) * fresh_i
            own[i] += rho * previous
            previous = own[i]
        own += modes[segment_mode[(start + np.arange(n)) // segment]]
        db[start : start + n] = _normalize_rows(own)
    true_place = rng.integers(0, num_places, size=num_queries).astype(np.int64)
    noise = rng.standard_normal((num_queries, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
    # a place's own part has norm ~1/sqrt(2) after normalisation; scale the noise relative to it
    queries = (
        np.asarray(db[true_place], dtype=np.float32) + np.float32(query_noise / math.sqrt(2.0)) * noise
    )  # (M, D)
    return db, _normalize_rows(queries), true_place


# -- indexes ------------------------------------------------------------------------------------------


def build_ivfpq(db: np.ndarray, pq_bytes: int, seed: int = 0, progress: Callable | None = None):
    """The runtime's IVF-PQ (one sizing rule, :func:`runtime.map.index.ivfpq_sizes`) with ``pq_bytes``
    8-bit codes per vector at most; ``db`` may be a float16 memory map."""
    index, info = build_index(
        db, "ivfpq", pq_m=pq_subquantizers(db.shape[1], pq_bytes), seed=seed, progress=progress
    )
    params = {"nlist": info["nlist"], "m": info["pq_m"], "nbits": info["pq_bits"]}
    return index, {**params, "train_points": info["train_points"]}


def build_flat(db: np.ndarray):
    """The exact inner-product index the runtime uses by default (float32 in RAM)."""
    index, _ = build_index(db, "flat")
    return index


def index_bytes(index) -> int:
    """Bytes of an index: exact for compressed indexes (serialised), computed for flat ones."""
    faiss = require("faiss", "map search")
    if isinstance(index, faiss.IndexFlat):
        return int(index.ntotal) * int(index.d) * 4
    return int(faiss.serialize_index(index).nbytes)


def reranked_rows(k: int, candidates: int, size: int) -> int:
    """Float16 rows a :class:`RerankedIndex` reads per query: its ``candidates`` (at least ``k``), 0 without."""
    return max(k, min(candidates, size)) if candidates else 0


def bytes_read_per_query(codes: float, code_bytes: int, rerank_rows: int, dim: int, fixed: int = 0) -> int:
    """Bytes one batch-1 query reads from the map: the ``codes`` it scans of ``code_bytes`` each, the
    ``rerank_rows`` float16 descriptors it re-ranks (``2 * dim`` bytes each) and ``fixed`` (IVF-PQ's coarse
    centroids, scanned by every query)."""
    return round(codes * code_bytes) + rerank_rows * dim * 2 + fixed


def ivf_codes_scanned(index, queries: np.ndarray, k: int) -> float:
    """Codes an IVF index scans per query (faiss's own count, ``indexIVF_stats.ndis``) over ``queries``."""
    faiss = require("faiss", "map search")
    stats = faiss.cvar.indexIVF_stats
    stats.reset()
    index.search(queries, k)
    return stats.ndis / max(1, len(queries))


def compressed_recall(exact_ids: np.ndarray, approx_ids: np.ndarray) -> dict[str, float]:
    """Recall of an approximate index against exact search, the way faiss's benchmarks state it.

    ``1-recall@1`` / ``1-recall@10``: exact top-1 found in the approximate top-1 / top-10;
    ``10-recall@10``: the share of exact top-10 found in the approximate top-10.
    """
    k = min(10, exact_ids.shape[1], approx_ids.shape[1])
    top1 = exact_ids[:, :1]
    return {
        "1-recall@1": float(np.mean(approx_ids[:, 0] == top1[:, 0])),
        "1-recall@10": float(np.mean((approx_ids[:, :k] == top1).any(axis=1))),
        "10-recall@10": float(
            np.mean(
                [len(np.intersect1d(a[:k], e[:k])) / k for a, e in zip(approx_ids, exact_ids, strict=True)]
            )
        ),
    }


def place_recall(ids: np.ndarray, true_place: np.ndarray) -> dict[str, float]:
    """Recall@1/@10 against the place each query revisits."""
    return {
        "place-recall@1": float(np.mean(ids[:, 0] == true_place)),
        "place-recall@10": float(np.mean((ids[:, :10] == true_place[:, None]).any(axis=1))),
    }


def time_search(index, queries: np.ndarray, k: int, batch: int, repeats: int) -> dict[str, Any]:
    """p50/p90/p99 of ``index.search`` over ``repeats`` calls of ``batch`` queries (cycling through them)."""
    position = [0]

    def one_call() -> None:
        start = position[0] % max(1, len(queries) - batch + 1)
        index.search(queries[start : start + batch], k)
        position[0] += batch

    return summarize_ms(time_calls(one_call, repeats=repeats, warmup=1), items_per_sample=batch)


# -- the page cache: maps larger than RAM -------------------------------------------------------------


def evict_from_page_cache(path: str | Path, mapped: np.ndarray | None = None) -> None:
    """Drop ``path``'s pages from the OS page cache, so the next reads come from disk, as they do for a map
    whose descriptors are larger than RAM. ``mapped``: this process's memory map of the file, whose pages
    are unmapped first (the kernel keeps mapped pages). Unprivileged: ``madvise`` + ``posix_fadvise``."""
    import ctypes

    if mapped is not None:
        page = os.sysconf("SC_PAGE_SIZE")
        start = mapped.ctypes.data // page * page
        length = mapped.ctypes.data + mapped.nbytes - start
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if libc.madvise(start, length, mmap.MADV_DONTNEED) != 0:
            raise OSError(ctypes.get_errno(), f"madvise failed on the memory map of {path}")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped: write them back first
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def page_cache_share(path: str | Path) -> float:
    """The share of ``path``'s pages resident in the page cache (``mincore`` over a read-only mapping)."""
    import ctypes

    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    mapped = np.memmap(path, dtype=np.uint8, mode="r")  # (bytes,), page-aligned at offset 0
    page = os.sysconf("SC_PAGE_SIZE")
    resident = np.zeros((size + page - 1) // page, dtype=np.uint8)  # one byte per page, bit 0: resident
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    if libc.mincore(mapped.ctypes.data, size, resident.ctypes.data) != 0:
        raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
    del mapped
    return float(np.mean(resident & 1))


# -- GPU ----------------------------------------------------------------------------------------------


def gpu_search_unavailable() -> str | None:
    """Why exact search cannot run on a GPU here (None when it can)."""
    try:
        faiss = require("faiss", "map search")
    except ImportError as exc:
        return str(exc)
    if not hasattr(faiss, "StandardGpuResources"):
        return "faiss has no GPU support here (faiss-cpu build; pip install 'netvlad-kit[gpu]' for faiss-gpu)"
    if faiss.get_num_gpus() < 1:
        return "faiss-gpu sees no CUDA device"
    return None


def gpu_flat_search(db: np.ndarray, queries: np.ndarray, k: int, batch: int, repeats: int) -> dict[str, Any]:
    """faiss-gpu ``GpuIndexFlatIP`` with FP16 storage: ids and batch-1 / batch latency."""
    faiss = require("faiss", "GPU map search")
    resources = faiss.StandardGpuResources()
    config = faiss.GpuIndexFlatConfig()
    config.useFloat16 = True
    index = faiss.GpuIndexFlatIP(resources, db.shape[1], config)
    index.add(db)
    try:
        _, ids = index.search(queries, k)
        return {
            "ids": ids,
            "batch1": time_search(index, queries, k, 1, repeats),
            f"batch{batch}": time_search(index, queries, k, batch, max(5, repeats // 4)),
            "bytes": int(db.shape[0]) * int(db.shape[1]) * 2,
        }
    finally:
        index.reset()
        del index, resources


# -- the sweep ----------------------------------------------------------------------------------------


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def benchmark_one(
    cfg: SearchConfig, size: int, dim: int, *, step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Build, time and compare the exact and compressed indexes for one map size and dimension.

    The descriptors are float16 (as a map of codes stores them): in RAM, or memory-mapped under
    ``cfg.scratch`` when they exceed ``cfg.max_gib``. While float32 and float16 copies both fit
    ``cfg.max_gib`` they are generated in float32 (the reference: recall is against float32 exact search,
    as a flat map answers) and rounded to float16 for the indexes that store or re-rank float16. Exact
    search for recall reads them a chunk at a time; exact search is *timed* on an in-RAM ``IndexFlatIP`` of
    at most ``cfg.max_gib`` of float32 rows and, for larger maps, scaled linearly to the full size (flat
    search is a linear scan: its time is proportional to the rows), marked ``extrapolated_from``.
    """
    step = step or (lambda _msg: None)
    entry: dict[str, Any] = {"size": size, "dim": dim}
    t0 = time.perf_counter()
    step(f"{size:,} x {dim}: descriptors")
    memmap_file = None
    if size * dim * 2 > cfg.max_gib * 2**30:
        memmap_file = Path(cfg.scratch) / f"search-{size}x{dim}-seed{cfg.seed}.f16.npy"
        memmap_file.parent.mkdir(parents=True, exist_ok=True)
        store = np.lib.format.open_memmap(memmap_file, mode="w+", dtype=np.float16, shape=(size, dim))
        entry["descriptors"] = f"float16 memory map ({size * dim * 2 / 2**30:.1f} GiB on disk)"
    elif size * dim * (4 + 2) <= cfg.max_gib * 2**30:
        store = np.empty((size, dim), dtype=np.float32)
        entry["descriptors"] = f"float32 + float16 in RAM ({size * dim * 6 / 2**30:.2f} GiB)"
    else:
        store = np.empty((size, dim), dtype=np.float16)
        entry["descriptors"] = f"float16 in RAM ({size * dim * 2 / 2**30:.2f} GiB)"
    entry["reference"] = "float32" if store.dtype == np.float32 else "float16"
    try:
        db, queries, true_place = synthetic_map(
            size,
            dim,
            max(cfg.num_queries, cfg.latency_queries, cfg.batch_size),
            num_modes=cfg.num_modes,
            query_noise=cfg.query_noise,
            route_correlation=cfg.route_correlation,
            seed=cfg.seed,
            out=store,
        )
        entry["generate_s"] = time.perf_counter() - t0
        rows16 = db if db.dtype == np.float16 else db.astype(np.float16)  # (N, D): what a map stores
        _measure(cfg, entry, db, rows16, queries, true_place, step, memmap_file)
        del rows16
    finally:
        del store
        if memmap_file is not None:
            memmap_file.unlink(missing_ok=True)
    entry["peak_rss_gib"] = _peak_rss_gib()
    return entry


def _measure(
    cfg: SearchConfig,
    entry: dict,
    db: np.ndarray,
    rows16: np.ndarray,
    queries,
    true_place,
    step,
    memmap_file: Path | None,
) -> None:
    """Exact search (the ground truth) over ``db (N, D)`` (float32, or float16 when that is all there is),
    then the scalar quantisers, IVF-PQ and GPU search against it, into ``entry``. ``rows16 (N, D)``: the
    float16 descriptors the indexes of codes are built from and re-rank against (``db`` itself if float16)."""
    if memmap_file is not None:
        db.flush()  # the generated rows are written back: evictable from the page cache from here on
        entry["page_cache_share_before_truth"] = page_cache_share(memmap_file)
    exact_ids = _measure_exact(cfg, entry, db, queries, true_place, step, memmap_file)
    _measure_scalar(cfg, entry, rows16, queries, true_place, exact_ids, step)
    _measure_compressed(cfg, entry, rows16, queries, true_place, exact_ids, step, memmap_file)
    if cfg.gpu:
        _measure_gpu(cfg, entry, db, queries, exact_ids, step)


def _measure_exact(
    cfg: SearchConfig, entry: dict, db: np.ndarray, queries, true_place, step, memmap_file: Path | None
) -> np.ndarray:
    """IndexFlatIP: build, batch-1 and batched latency (timed on what fits --max-gib, scaled), streamed over
    the memory map; returns the exact top-k ids of the recall queries (num_queries, k)."""
    size, dim = db.shape
    recall_q, recall_truth = queries[: cfg.num_queries], true_place[: cfg.num_queries]
    step(f"{size:,} x {dim}: exact search (ground truth)")
    t0 = time.perf_counter()
    _, exact_ids = exact_search(db, recall_q, cfg.k)
    truth_s = time.perf_counter() - t0

    step(f"{size:,} x {dim}: exact index")
    timed_rows = min(size, max(1, int(cfg.max_gib * 2**30 // (dim * 4))))
    t0 = time.perf_counter()
    flat = build_flat(db[:timed_rows])
    build_flat_s = time.perf_counter() - t0
    scale = size / timed_rows
    exact = {
        "index": "IndexFlatIP",
        "build_s": build_flat_s * scale,
        "bytes": size * dim * 4,
        "bytes_read_per_query": bytes_read_per_query(size, dim * 4, 0, dim),
        "ground_truth_s": truth_s,
        "batch1": _scaled(time_search(flat, queries, cfg.k, 1, cfg.latency_queries), scale),
        f"batch{cfg.batch_size}": _scaled(
            time_search(flat, queries, cfg.k, cfg.batch_size, max(5, cfg.latency_queries // 4)), scale
        ),
        **place_recall(exact_ids, recall_truth),
    }
    if timed_rows < size:
        exact["extrapolated_from"] = timed_rows
    entry["exact"] = exact
    del flat
    if memmap_file is not None:
        step(f"{size:,} x {dim}: exact search streaming the whole memory map, batch 1")
        exact["streamed"] = _time_streamed_exact(db, queries, cfg, None)
        if cfg.cold:
            exact["streamed_cold"] = _time_streamed_exact(db, queries, cfg, memmap_file)
    return exact_ids


def _measure_scalar(
    cfg: SearchConfig, entry: dict, rows16: np.ndarray, queries, true_place, exact_ids: np.ndarray, step
) -> None:
    """The scalar-quantised flat indexes (``fp16``, ``sq8`` with each ``cfg.sq8_rerank`` depth), built as
    the runtime builds them from the float16 descriptors ``rows16 (N, D)``: latency, bytes read per query
    and recall against exact search; skipped (with the reason) when their codes exceed ``cfg.max_gib``."""
    size, dim = rows16.shape
    recall_q, recall_truth = queries[: cfg.num_queries], true_place[: cfg.num_queries]
    entry["scalar"] = {}
    for kind, reranks in (("fp16", (0,)), ("sq8", cfg.sq8_rerank)):
        code_bytes = dim * (2 if kind == "fp16" else 1)
        if size * code_bytes > cfg.max_gib * 2**30:
            reason = f"{size:,} x {dim} {kind} codes need {size * code_bytes / 2**30:.1f} GiB, over --max-gib"
            entry["scalar"][kind] = {"index": SCALAR_QUANTISERS[kind], "skipped": reason}
            continue
        step(f"{size:,} x {dim}: {kind} build")
        t0 = time.perf_counter()
        index, info = build_index(rows16, kind)
        scalar = {"index": info["factory"], "build_s": time.perf_counter() - t0, "bytes": index_bytes(index)}
        scalar["by_rerank"] = {}
        for rerank in reranks:
            step(f"{size:,} x {dim}: {kind}, re-rank {rerank}")
            searched = RerankedIndex(index, rows16, rerank) if rerank else index
            _, ids = searched.search(recall_q, cfg.k)
            read = bytes_read_per_query(size, code_bytes, reranked_rows(cfg.k, rerank, size), dim)
            scalar["by_rerank"][str(rerank)] = {
                "rerank": rerank,
                "bytes_read_per_query": read,
                **_time_batches(searched, queries, cfg),
                **compressed_recall(exact_ids, ids),
                **place_recall(ids, recall_truth),
            }
        entry["scalar"][kind] = scalar
        del index


def _measure_compressed(
    cfg: SearchConfig,
    entry: dict,
    db: np.ndarray,
    queries,
    true_place,
    exact_ids: np.ndarray,
    step,
    memmap_file: Path | None,
) -> None:
    """IVF-PQ: train + add, then per nprobe and re-rank depth its latency and recall against exact search
    (and, with --cold, re-ranking from descriptors not in the page cache)."""
    size, dim = db.shape
    recall_q, recall_truth = queries[: cfg.num_queries], true_place[: cfg.num_queries]
    step(f"{size:,} x {dim}: IVF-PQ train + add")
    t0 = time.perf_counter()
    ivfpq, params = build_ivfpq(db, cfg.pq_bytes, cfg.seed)
    build_s = time.perf_counter() - t0
    compressed = {"index": f"IVF{params['nlist']},PQ{params['m']}", **params, "build_s": build_s}
    compressed["bytes"] = index_bytes(ivfpq)
    compressed["ram_bytes_per_place"] = compressed["bytes"] / size
    compressed["disk_bytes_per_place"] = dim * 2  # the float16 descriptors re-ranking reads
    compressed["by_nprobe"] = {}
    for nprobe in cfg.nprobe:
        ivfpq.nprobe = min(nprobe, params["nlist"])
        scanned = ivf_codes_scanned(ivfpq, recall_q, cfg.k)  # (codes per query)
        for rerank in cfg.rerank:
            step(f"{size:,} x {dim}: IVF-PQ nprobe {nprobe}, re-rank {rerank}")
            searched = RerankedIndex(ivfpq, db, rerank) if rerank else ivfpq
            _, ids = searched.search(recall_q, cfg.k)
            row = {
                "nprobe": nprobe,
                "rerank": rerank,
                "bytes_read_per_query": bytes_read_per_query(
                    scanned,
                    params["m"] * params["nbits"] / 8,
                    reranked_rows(cfg.k, rerank, size),
                    dim,
                    fixed=params["nlist"] * dim * 4,  # the coarse centroids, float32
                ),
                **_time_batches(searched, queries, cfg),
                **compressed_recall(exact_ids, ids),
                **place_recall(ids, recall_truth),
            }
            compressed["by_nprobe"][f"{nprobe}" if not rerank else f"{nprobe}+R{rerank}"] = row
            if rerank and cfg.cold and memmap_file is not None:
                step(f"{size:,} x {dim}: IVF-PQ nprobe {nprobe}, re-rank {rerank}, descriptors not cached")
                answers = {k: v for k, v in row.items() if not k.startswith("batch")}  # the same answers
                cold = {**answers, **_time_cold(searched, queries, cfg, memmap_file), "cold": True}
                compressed["by_nprobe"][f"{nprobe}+R{rerank} cold"] = cold
    entry["compressed"] = compressed


def _measure_gpu(
    cfg: SearchConfig, entry: dict, db: np.ndarray, queries, exact_ids: np.ndarray, step
) -> None:
    """faiss-gpu flat FP16 search and its recall against exact search, or why it was skipped."""
    size, dim = db.shape
    reason = gpu_search_unavailable()
    if reason:
        entry["gpu"] = {"skipped": reason}
    elif size * dim * 4 > cfg.max_gib * 2**30:
        entry["gpu"] = {"skipped": f"{size:,} x {dim} float32 is over --max-gib {cfg.max_gib} in RAM"}
    else:
        step(f"{size:,} x {dim}: GPU flat FP16")
        gpu = gpu_flat_search(np.asarray(db, np.float32), queries, cfg.k, cfg.batch_size, cfg.latency_queries)
        ids = gpu.pop("ids")[: cfg.num_queries]
        entry["gpu"] = {"index": "GpuIndexFlatIP fp16", **gpu, **compressed_recall(exact_ids, ids)}


def _time_batches(searched, queries: np.ndarray, cfg: SearchConfig) -> dict[str, Any]:
    """Batch-1 and batch-``cfg.batch_size`` timings of ``searched``."""
    return {
        "batch1": time_search(searched, queries, cfg.k, 1, cfg.latency_queries),
        f"batch{cfg.batch_size}": time_search(
            searched, queries, cfg.k, cfg.batch_size, max(5, cfg.latency_queries // 4)
        ),
    }


def _time_cold(searched: RerankedIndex, queries: np.ndarray, cfg: SearchConfig, path: Path) -> dict[str, Any]:
    """Batch-1 timing of a re-ranked index with its descriptors file ``path`` evicted from the page cache
    first: ``cfg.latency_queries`` distinct queries, each reading its candidates from disk but for what the
    earlier ones read (batches are not timed: they revisit queries). Records the resident share at the start."""
    evict_from_page_cache(path, searched.descriptors)
    return {
        "page_cache_share_batch1": page_cache_share(path),
        "batch1": time_search(searched, queries, cfg.k, 1, cfg.latency_queries),
    }


def _time_streamed_exact(db: np.ndarray, queries: np.ndarray, cfg: SearchConfig, evict: Path | None) -> dict:
    """Batch-1 exact search streaming all of ``db (N, D)`` a chunk at a time, over ``cfg.stream_queries``
    queries, timed for real (no scaling). ``evict``: the descriptors file, dropped from the page cache before
    each query (untimed), so every query reads the whole map from disk."""
    samples = []
    for query in queries[: cfg.stream_queries]:
        if evict is not None:
            evict_from_page_cache(evict, db)
        start = time.perf_counter()
        exact_search(db, query[None], cfg.k)
        samples.append((time.perf_counter() - start) * 1000.0)
    return summarize_ms(samples)


def _scaled(timing: dict[str, Any], factor: float) -> dict[str, Any]:
    """A timing summary with its milliseconds multiplied by ``factor`` (linear extrapolation in rows)."""
    if factor == 1:
        return timing
    scaled = {k: (v * factor if k.endswith("_ms") else v) for k, v in timing.items()}
    if "throughput_per_s" in scaled:
        scaled["throughput_per_s"] = timing["throughput_per_s"] / factor
    return scaled


def run_search(
    cfg: SearchConfig, out_dir: str | Path | None = None, *, progress: Callable | None = None
) -> dict[str, Any]:
    """Run the sweep; with ``out_dir`` write ``search.json`` and ``search.md`` there. Returns the results.

    ``progress``: optional ``runtime.cli.console.progress``-like factory for a bar over the sweep.
    """
    faiss = require("faiss", "map search")
    faiss.omp_set_num_threads(cfg.threads)
    result: dict[str, Any] = {
        "benchmark": "search",
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(),
        "faiss_threads": cfg.threads,
        "load_average": {"start": load_average()},
        "entries": [],
        "skipped": [],
    }
    cells = [(s, d) for d in cfg.dims for s in cfg.sizes]
    bar = progress(total=len(cells), desc="search sweep", unit="map") if progress else None
    for size, dim in cells:
        gib = size * dim * 2 / 2**30
        if gib > cfg.max_gib and cfg.scratch is None:
            reason = (
                f"{size:,} x {dim} float16 descriptors need {gib:.1f} GiB, over --max-gib {cfg.max_gib}; "
                "pass --scratch DIR to memory-map them from disk"
            )
            log.warning("skipping %s", reason)
            result["skipped"].append({"size": size, "dim": dim, "reason": reason})
        else:
            t0 = time.perf_counter()
            entry = benchmark_one(cfg, size, dim, step=lambda msg: log.info("search: %s", msg))
            entry["total_s"] = time.perf_counter() - t0
            result["entries"].append(entry)
            ex = entry["exact"]["batch1"]["p50_ms"]
            log.info(
                "search: %s x %s done in %.0f s (exact batch-1 p50 %.2f ms)", size, dim, entry["total_s"], ex
            )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result["load_average"]["end"] = load_average()
    if out_dir is not None:
        json_path, md_path = write_report(out_dir, "search", result, search_markdown(result))
        result["files"] = {"json": str(json_path), "markdown": str(md_path)}
    return result


def _streamed_row(entry: dict[str, Any], key: str, base_ms: float) -> list:
    """A table row for exact search streaming the memory-mapped descriptors (``key``: streamed[_cold])."""
    timing = entry["exact"][key]
    label = "exact, streaming the float16 memory map (measured" + (
        ", not cached)" if key.endswith("cold") else ")"
    )
    return [
        f"{entry['size']:,}",
        entry["dim"],
        label,
        "—",
        "—",  # no index: a chunk of the map in RAM at a time
        _kib(entry["size"] * entry["dim"] * 2),  # the whole float16 map
        timing["p50_ms"],
        timing["p99_ms"],
        "—",
        f"{base_ms / max(timing['p50_ms'], 1e-9):.1f}x",
        1.0,
        1.0,
        1.0,
        entry["exact"]["place-recall@1"],
    ]


def _streamed_notes(entry: dict[str, Any], num_queries: int) -> list[str]:
    """Speed-ups of re-ranked rows against the measured streamed exact search, and page-cache evidence."""
    streamed = entry["exact"].get("streamed")
    if streamed is None:
        return []
    notes = [
        f"- {entry['size']:,} x {entry['dim']}: exact search streaming the memory map, measured on "
        f"{streamed['n']} batch-1 queries: p50 {streamed['p50_ms']:,.0f} ms; the ground truth "
        f"({num_queries} queries in one sweep) took {entry['exact']['ground_truth_s']:.0f} s"
    ]
    for key, r in entry["compressed"]["by_nprobe"].items():
        if r["rerank"]:
            cached = (
                ""
                if not r.get("cold")
                else (
                    f", resident share of the descriptors before the run {r['page_cache_share_batch1']:.3f}"
                )
            )
            notes.append(
                f"  - {key}: {streamed['p50_ms'] / max(r['batch1']['p50_ms'], 1e-9):,.0f}x faster than "
                f"streamed exact search (batch-1 p50){cached}"
            )
    return notes


def _kib(count: float) -> float:
    return count / 2**10


def _index_row(
    e: dict[str, Any], label: str, nprobe: Any, index_bytes: int, r: dict, base_ms: float, batch: int
):
    """A table row of one searched index setting ``r`` (its timings, bytes read and recall)."""
    return [
        f"{e['size']:,}",
        e["dim"],
        label,
        nprobe,
        index_bytes / 2**20,
        _kib(r["bytes_read_per_query"]),
        r["batch1"]["p50_ms"],
        r["batch1"]["p99_ms"],
        r[f"batch{batch}"]["per_item_p50_ms"] if f"batch{batch}" in r else "—",
        f"{base_ms / max(r['batch1']['p50_ms'], 1e-9):.1f}x",
        r["1-recall@1"],
        r["1-recall@10"],
        r["10-recall@10"],
        r["place-recall@1"],
    ]


def _entry_rows(e: dict[str, Any], batch: int) -> list[list[Any]]:
    """The table rows of one map size: exact search, streamed exact search, the scalar quantisers, each
    IVF-PQ setting, GPU search."""
    ex = e["exact"]
    base = ex["batch1"]["p50_ms"]
    exact_label = ex["index"] + (
        f" (timed on {ex['extrapolated_from']:,}, scaled)" if "extrapolated_from" in ex else ""
    )
    exact_recall = {"1-recall@1": 1.0, "1-recall@10": 1.0, "10-recall@10": 1.0}
    rows = [_index_row(e, exact_label, "—", ex["bytes"], {**ex, **exact_recall}, base, batch)]
    rows += [_streamed_row(e, key, base) for key in ("streamed", "streamed_cold") if key in ex]
    for scalar in e.get("scalar", {}).values():
        for r in scalar.get("by_rerank", {}).values():
            label = scalar["index"] + (f" + re-rank {r['rerank']} (fp16)" if r["rerank"] else "")
            rows.append(_index_row(e, label, "—", scalar["bytes"], r, base, batch))
    for r in e["compressed"]["by_nprobe"].values():
        label = (
            e["compressed"]["index"]
            + (f" + re-rank {r['rerank']} (fp16)" if r["rerank"] else "")
            + (" (descriptors not cached)" if r.get("cold") else "")
        )
        rows.append(_index_row(e, label, r["nprobe"], e["compressed"]["bytes"], r, base, batch))
    gpu = e.get("gpu", {})
    if "batch1" in gpu:
        rows.append(
            [
                f"{e['size']:,}",
                e["dim"],
                gpu["index"],
                "—",
                gpu["bytes"] / 2**20,
                _kib(gpu["bytes"]),  # the whole float16 map, on the device
                gpu["batch1"]["p50_ms"],
                gpu["batch1"]["p99_ms"],
                gpu[f"batch{batch}"]["per_item_p50_ms"],
                f"{base / max(gpu['batch1']['p50_ms'], 1e-9):.1f}x",
                gpu["1-recall@1"],
                gpu["1-recall@10"],
                gpu["10-recall@10"],
                "—",
            ]
        )
    return rows


def _search_notes(result: dict[str, Any]) -> list[str]:
    """The notes under the table: what was skipped, memory per place, extrapolations, streamed search."""
    cfg = result["config"]
    gpu_skips = {e.get("gpu", {}).get("skipped") for e in result["entries"]} - {None}
    notes = [f"- GPU search skipped: {r}" for r in sorted(gpu_skips)]
    notes += [f"- skipped {s['size']:,} x {s['dim']}: {s['reason']}" for s in result["skipped"]]
    for e in result["entries"]:
        notes += [
            f"- {e['size']:,} x {e['dim']}: {s['index']} skipped: {s['skipped']}"
            for s in e.get("scalar", {}).values()
            if "skipped" in s
        ]
        if e.get("reference") == "float16":
            notes.append(
                f"- {e['size']:,} x {e['dim']}: recall is against exact search over the float16 descriptors "
                "(float32 ones would not fit --max-gib beside them)"
            )
        c = e["compressed"]
        notes.append(
            f"- {e['size']:,} x {e['dim']}: RAM per place {c['ram_bytes_per_place']:.1f} B (codes, ids, "
            f"quantisers); full descriptors for re-ranking {c['disk_bytes_per_place']:,} B per place on disk "
            f"({e['descriptors']}); exact flat float32 {e['dim'] * 4:,} B per place in RAM"
        )
        if "extrapolated_from" in e["exact"]:
            notes.append(
                f"- {e['size']:,} x {e['dim']}: exact search timed on its first {e['exact']['extrapolated_from']:,} "
                "places in RAM and scaled linearly to the full map (a flat scan's time is linear in its rows)"
            )
        notes += _streamed_notes(e, cfg["num_queries"])
    peak = max((e["peak_rss_gib"] for e in result["entries"]), default=0.0)
    notes.append(f"- peak resident memory of the benchmark process: {peak:.1f} GiB")
    return notes


def _load(values: list[float] | None) -> str:
    return "n/a" if not values else "/".join(f"{v:.2f}" for v in values)


def search_markdown(result: dict[str, Any]) -> str:
    """The search benchmark as Markdown: one row per index and map, ratios against exact search."""
    cfg = result["config"]
    batch = cfg["batch_size"]
    load = result.get("load_average", {})
    lines = [
        "# Map search: exact (IndexFlatIP) vs scalar-quantised (SQfp16, SQ8) and compressed (IVF-PQ)",
        "",
        machine_line(result["machine"]),
        f"faiss threads: {result['faiss_threads']}; load average (1/5/15 min) {_load(load.get('start'))} at "
        f"the start, {_load(load.get('end'))} at the end; synthetic clustered L2-normalised descriptors "
        f"({cfg['num_modes']} scene modes, neighbour correlation {cfg['route_correlation']}, query noise "
        f"{cfg['query_noise']}, seed {cfg['seed']}); "
        f'{cfg["num_queries"]} recall queries, k = {cfg["k"]}; recall "vs exact": against float32 exact '
        'search. "KiB read/query": the codes a batch-1 query scans (IVF-PQ: faiss\'s count, with the coarse '
        "centroids) plus the float16 rows it re-ranks. Absolute times are from a shared machine: compare "
        "rows of one run.",
        "",
    ]
    rows = [row for e in result["entries"] for row in _entry_rows(e, batch)]
    lines.append(
        markdown_table(
            [
                "places",
                "dim",
                "index",
                "nprobe",
                "MiB",
                "KiB read/query",
                "batch-1 p50 ms",
                "batch-1 p99 ms",
                f"batch-{batch} ms/query",
                "speed-up vs exact (batch 1)",
                "1-recall@1 vs exact",
                "1-recall@10 vs exact",
                "10-recall@10 vs exact",
                "place recall@1",
            ],
            rows,
            digits=3,
        )
    )
    notes = _search_notes(result)
    lines += ["", *notes]
    return "\n".join(lines)
