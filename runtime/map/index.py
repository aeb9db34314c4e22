"""FAISS indexes over L2-normalised descriptors: exact inner product (float32 or float16), 8-bit scalar
quantised, or IVF-PQ; GPU where faiss has one."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.errors import ConfigError
from runtime.optional import require

log = logging.getLogger(__name__)


def faiss_module():
    return require("faiss", "the map's nearest-neighbour index")


def set_threads(threads: int | None) -> None:
    """Set faiss's OpenMP threads (process-wide) when ``threads`` is given.

    Why: on a CPU shared with inference, OpenMP's spinning threads make small searches and trainings
    hundreds of times slower (measured: IVF-PQ training on 300 vectors 6.7 s with the default, 0.01 s with 1).
    """
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"faiss threads must be >= 1, got {threads}")
        faiss_module().omp_set_num_threads(int(threads))


def gpu_available() -> bool:
    faiss = faiss_module()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def use_gpu(choice: str) -> bool:
    """Resolve ``"auto" | "yes" | "no"``; ``yes`` without a faiss GPU build is an error, ``auto`` logs."""
    available = gpu_available()
    if choice == "yes" and not available:
        raise ConfigError(
            "gpu='yes' but this faiss has no GPU support; install it with: pip install 'netvlad-kit[gpu]'"
        )
    if choice == "auto":
        log.debug("faiss on %s", "GPU" if available else "CPU (no faiss GPU build or device)")
    return available and choice != "no"


def gpu_unsupported(index) -> str | None:
    """Why faiss-gpu cannot search ``index`` (None when it can); needs no GPU to answer.

    faiss-gpu's IVF-PQ (the layout ``index_cpu_to_gpu`` makes) takes only 8-bit codes ("Bits per code must
    be 8"), and :func:`ivfpq_sizes` picks fewer bits for maps under 1,024 places. faiss-gpu has no flat
    scalar-quantised index (only IVF ones), so ``fp16`` and ``sq8`` maps are searched on the CPU.
    """
    faiss = faiss_module()
    if isinstance(index, faiss.IndexScalarQuantizer):
        return (
            f"faiss-gpu has no flat scalar-quantised index (this map's is {scalar_quantiser_name(index)}); "
            "rebuild it with --index flat to search it on the GPU"
        )
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        bits = int(faiss.downcast_index(ivf).pq.nbits)
        if bits != 8:
            return (
                f"faiss-gpu searches IVF-PQ codes of 8 bits only, this map's are {bits} bits "
                "(chosen for maps under 1,024 places); rebuild it with --pq-bits 8 to search it on the GPU"
            )
    return None


def to_gpu(index):
    """A GPU copy of ``index`` for search, or ``index`` itself (logged) when faiss-gpu cannot hold it.

    Keep the CPU index for writing. IVF-PQ is cloned with float16 lookup tables: 4,096-D maps get 64
    sub-quantizers, whose float32 tables need 64 sub-quantizers x 256 codes x 4 B = 64 KiB of shared memory
    per block against the 48 KiB limit, and faiss-gpu refuses them ("Consider useFloat16LookupTables").
    A flat index stays float32 on the GPU, so exact search stays exact.
    """
    faiss = faiss_module()
    reason = gpu_unsupported(index)
    if reason:
        log.warning("map index stays on the CPU: %s", reason)
        return index
    options = faiss.GpuClonerOptions()
    # useFloat16: float16 lookup tables for IVF-PQ, but float16 *storage* for a flat index (not wanted)
    options.useFloat16 = faiss.try_extract_index_ivf(index) is not None
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
    gpu_index.referenced_resources = resources  # keep the resources alive with the index
    log.info(
        "map index on the GPU (%s)",
        "IVF-PQ, float16 lookup tables" if options.useFloat16 else "flat, float32",
    )
    return gpu_index


# -- the kinds of map index ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexKind:
    """One kind of map index (``MapConfig.index``, ``netvlad-map build --index``).

    ``holds_descriptors``: the index stores every descriptor itself (float32 or float16), so the map keeps
    no ``descriptors.f16.npy`` and re-ranking would re-score the same numbers; otherwise it stores codes
    and the map keeps the float16 descriptors beside it for exact re-ranking (and add/remove).
    ``rerank``: the default number of candidates re-ranked exactly (0: none).
    """

    name: str
    summary: str
    holds_descriptors: bool
    rerank: int = 0


INDEX_KINDS: dict[str, IndexKind] = {
    kind.name: kind
    for kind in (
        IndexKind("flat", "exact inner product, float32", holds_descriptors=True),
        IndexKind("fp16", "exact inner product over float16 descriptors, half the bytes", True),
        # why 16: on a seeded 1k x 7168 map whose revisits differ from their neighbours by 6e-4 in cosine,
        # 8-bit codes alone keep 0.960 of float32 exact search's top-1, re-ranking 2..16 of them 0.997 (= fp16)
        IndexKind("sq8", "8-bit scalar quantiser over per-dimension ranges, re-ranked", False, rerank=16),
        # why 500: see MapConfig (the 64-byte codes confuse route neighbours at 100k places)
        IndexKind("ivfpq", "IVF-PQ, compressed, approximate, re-ranked", False, rerank=500),
    )
}
SCALAR_QUANTISERS = {"fp16": "SQfp16", "sq8": "SQ8"}  # kind -> faiss factory string (METRIC_INNER_PRODUCT)


def index_kind(name: str) -> IndexKind:
    """The :class:`IndexKind` called ``name``; ConfigError listing the kinds otherwise."""
    if name not in INDEX_KINDS:
        kinds = ", ".join(f"'{k.name}' ({k.summary})" for k in INDEX_KINDS.values())
        raise ConfigError(f"unknown map index {name!r}; choose one of: {kinds}")
    return INDEX_KINDS[name]


# -- the one IVF-PQ sizing rule (the runtime's maps and netvlad-bench search both use it) ----------------

MAX_PQ_BYTES = 64  # bytes of code per place by default: PQ64x8
TRAIN_POINTS_PER_LIST = 40  # faiss's k-means wants >= 39 points per centroid
ADD_CHUNK_ROWS = 32_768  # rows converted to float32 at a time when adding / scanning a (memory-mapped) matrix


@dataclass(frozen=True)
class IvfPqSizes:
    """IVF-PQ shape for a map: ``nlist`` inverted lists, ``pq_m`` sub-quantisers of ``pq_bits`` bits
    (``pq_m * pq_bits / 8`` bytes of code per place), trained on ``train_points`` sampled places."""

    nlist: int
    pq_m: int
    pq_bits: int
    train_points: int

    @property
    def factory(self) -> str:
        return f"IVF{self.nlist},PQ{self.pq_m}x{self.pq_bits}"


def ivf_lists(n: int) -> int:
    """Inverted lists for ``n`` places: the power of two nearest sqrt(n), halved until each list has
    >= 39 training points. sqrt(n) balances the coarse search (nlist centroids) against the list scan (n/nlist
    codes per probe); 1M places -> 1024 lists."""
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return nlist


def pq_subquantizers(dim: int, pq_bytes: int = MAX_PQ_BYTES) -> int:
    """The largest number of sub-quantisers <= ``pq_bytes`` that divides ``dim``."""
    return max(m for m in range(1, min(dim, pq_bytes) + 1) if dim % m == 0)


def ivfpq_sizes(
    n: int, dim: int, nlist: int | None = None, pq_m: int | None = None, pq_bits: int | None = None
) -> IvfPqSizes:
    """IVF-PQ sizes for ``n`` places of ``dim``; each given value is checked, each None is chosen.

    ``pq_bits``: 8 (256 centroids per sub-quantiser) once the map has >= 1024 places, fewer on tiny maps
    (2**bits centroids need points to train on). The training sample: 40 points per list and 64 per PQ
    centroid, capped at the map size (a bounded sample: training on 1M places would cost minutes for
    nothing).
    """
    nlist = ivf_lists(n) if nlist is None else int(nlist)
    if pq_bits is None:
        pq_bits = int(min(8, max(1, math.floor(math.log2(max(2, n // 4))))))
    pq_m = pq_subquantizers(dim) if pq_m is None else int(pq_m)
    if dim % pq_m:
        raise ConfigError(f"pq_m ({pq_m}) must divide the descriptor dimension ({dim})")
    if not 1 <= nlist <= n:
        raise ConfigError(f"nlist ({nlist}) must be in 1..{n} (the number of places)")
    train_points = min(n, max(TRAIN_POINTS_PER_LIST * nlist, 64 * 2**pq_bits))
    return IvfPqSizes(nlist, pq_m, int(pq_bits), train_points)


def training_rows(n: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` sorted distinct rows of ``n`` (sorted: sequential reads from a memory map)."""
    if count >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False)).astype(np.int64)


def add_in_chunks(index, descriptors: np.ndarray, progress: Callable | None = None) -> None:
    """Add ``descriptors (N, D)`` (float16/float32, possibly a memory map) a chunk at a time (bounded RAM)."""
    n = descriptors.shape[0]
    bar = progress(total=n, desc="index add", unit="place") if progress and n > ADD_CHUNK_ROWS else None
    for start in range(0, n, ADD_CHUNK_ROWS):
        chunk = np.ascontiguousarray(descriptors[start : start + ADD_CHUNK_ROWS], dtype=np.float32)
        index.add(chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()


def new_ivfpq(dim: int, sizes: IvfPqSizes, seed: int = 0):
    """An untrained IVF-PQ inner-product index of ``sizes``."""
    faiss = faiss_module()
    index = faiss.index_factory(dim, sizes.factory, faiss.METRIC_INNER_PRODUCT)
    ivfpq = faiss.downcast_index(index)
    # polysemous training (Hamming-ordered codes) costs seconds to minutes and is unused by IVF search
    ivfpq.do_polysemous_training = False
    ivfpq.cp.seed = seed
    ivfpq.pq.cp.seed = seed
    return index


def descriptor_ranges(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(min (D,), max (D,))`` float32 of ``descriptors (N, D)``, read a chunk at a time."""
    low = np.full(descriptors.shape[1], np.inf, np.float32)
    high = np.full(descriptors.shape[1], -np.inf, np.float32)
    for start in range(0, descriptors.shape[0], ADD_CHUNK_ROWS):
        chunk = np.asarray(descriptors[start : start + ADD_CHUNK_ROWS], dtype=np.float32)  # (c, D)
        np.minimum(low, chunk.min(axis=0), out=low)
        np.maximum(high, chunk.max(axis=0), out=high)
    return low, high


def scalar_quantiser_name(index) -> str:
    """The factory string of a faiss ``IndexScalarQuantizer`` (``SQfp16``, ``SQ8``)."""
    faiss = faiss_module()
    names = {faiss.ScalarQuantizer.QT_fp16: "SQfp16", faiss.ScalarQuantizer.QT_8bit: "SQ8"}
    return names.get(int(index.sq.qtype), f"SQ (faiss quantiser type {int(index.sq.qtype)})")


def new_scalar_quantiser(descriptors: np.ndarray, kind: str):
    """A scalar-quantised flat inner-product index (``fp16`` or ``sq8``) for ``descriptors
    (N, D)``, trained where it needs it.

    ``sq8`` encodes each dimension in 256 steps between its minimum and maximum over *every* place
    (faiss's ``RS_minmax`` fitted on the two rows ``[min; max]`` gives exactly those ranges: bounded memory,
    and no place falls outside, as it would outside a sample's). Places added later (``netvlad-map add``)
    keep these ranges and are clipped to them; re-ranking against the float16 descriptors absorbs that.
    """
    faiss = faiss_module()
    index = faiss.index_factory(descriptors.shape[1], SCALAR_QUANTISERS[kind], faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:  # sq8: its per-dimension ranges (fp16 needs none)
        index.train(np.stack(descriptor_ranges(descriptors)))  # (2, D): the minima, the maxima
    return index


def build_index(
    descriptors: np.ndarray,
    kind: str,
    nlist=None,
    pq_m=None,
    pq_bits=None,
    nprobe: int = 16,
    seed: int = 0,
    progress: Callable | None = None,
):
    """A CPU FAISS index of ``kind`` (:data:`INDEX_KINDS`) over ``descriptors (N, D)`` (float16/float32, may
    be a memory map); returns ``(index, description dict)``. IVF-PQ trains on a bounded sample
    (:func:`ivfpq_sizes`), ``sq8`` on the per-dimension ranges of every place."""
    faiss = faiss_module()
    index_kind(kind)
    n, dim = descriptors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        info = {"type": "flat", "factory": "Flat"}
    elif kind in SCALAR_QUANTISERS:
        index = new_scalar_quantiser(descriptors, kind)
        info = {"type": kind, "factory": SCALAR_QUANTISERS[kind], "code_bytes": int(index.code_size)}
    elif kind == "ivfpq":
        sizes = ivfpq_sizes(n, dim, nlist, pq_m, pq_bits)
        index = new_ivfpq(dim, sizes, seed)
        rows = training_rows(n, sizes.train_points, seed)
        index.train(np.ascontiguousarray(descriptors[rows], dtype=np.float32))  # (train_points, D)
        faiss.extract_index_ivf(index).nprobe = min(nprobe, sizes.nlist)
        info = {
            "type": "ivfpq",
            "factory": sizes.factory,
            "nlist": sizes.nlist,
            "pq_m": sizes.pq_m,
            "pq_bits": sizes.pq_bits,
            "nprobe": min(nprobe, sizes.nlist),
            "train_points": sizes.train_points,
        }
    add_in_chunks(index, descriptors, progress)
    return index, info


# -- exact search over a (memory-mapped) descriptor matrix, and exact re-ranking ------------------------


def exact_search(
    descriptors: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int = ADD_CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries (M, D)`` over ``descriptors (N, D)`` read a chunk at a
    time (a memory map larger than RAM works): ``(similarities (M, k) float32, ids (M, k) int64)``."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = descriptors.shape[0]
    k = max(1, min(int(k), n))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, chunk_rows):
        chunk = np.asarray(descriptors[start : start + chunk_rows], dtype=np.float32)  # (c, D)
        sims = q @ chunk.T  # (M, c)
        ids = np.broadcast_to(np.arange(start, start + len(chunk), dtype=np.int64), sims.shape)
        all_s = np.concatenate([best_s, sims], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        keep = np.argpartition(-all_s, k - 1, axis=1)[:, :k] if all_s.shape[1] > k else None
        if keep is not None:
            all_s = np.take_along_axis(all_s, keep, axis=1)
            all_i = np.take_along_axis(all_i, keep, axis=1)
        best_s, best_i = all_s, all_i
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def similarities(
    descriptors: np.ndarray, queries: np.ndarray, chunk_rows: int = ADD_CHUNK_ROWS
) -> np.ndarray:
    """All inner products ``queries (M, D) float32`` x ``descriptors (N, D)`` -> ``(M, N) float32``, reading
    ``descriptors`` (float16/float32, may be a memory map) a chunk at a time."""
    n = descriptors.shape[0]
    out = np.empty((len(queries), n), dtype=np.float32)
    for start in range(0, n, chunk_rows):
        chunk = np.asarray(descriptors[start : start + chunk_rows], dtype=np.float32)  # (c, D)
        out[:, start : start + len(chunk)] = queries @ chunk.T
    return out


class RerankedIndex:
    """A compressed index whose top ``candidates`` are re-ranked exactly against the full descriptors.

    ``descriptors (N, D)``: float16 (usually a read-only memory map of the map's ``descriptors.f16.npy``:
    only the candidates' rows are read, so the full vectors stay on disk and in the page cache, not in the
    process). Similarities returned are exact inner products with the float16 descriptors. Thread-safe for
    searching (the memory map is read-only; faiss searches are).
    """

    def __init__(self, index, descriptors: np.ndarray, candidates: int) -> None:
        if descriptors.shape != (index.ntotal, index.d):
            raise ConfigError(
                f"re-ranking needs one descriptor per indexed place: index {index.ntotal} x {index.d}-D, "
                f"descriptors {descriptors.shape}"
            )
        if candidates < 1:
            raise ConfigError(f"re-rank candidates must be >= 1, got {candidates}")
        self.index = index
        self.descriptors = descriptors
        self.candidates = int(candidates)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        _, candidates = self.index.search(q, max(k, min(self.candidates, self.ntotal)))  # (M, C)
        sims = np.full((len(q), k), -np.finfo(np.float32).max, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for row, found in enumerate(candidates):
            found = np.unique(found[found >= 0])  # sorted rows: sequential reads from the memory map
            exact, top = top_by_inner_product(self.descriptors[found], q[row], k)  # (k',), positions in found
            sims[row, : len(top)], ids[row, : len(top)] = exact, found[top]
        return sims, ids


def top_by_inner_product(rows: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of ``rows (C, D)`` (float16, or float32) by inner product with ``query (D,) float32``:
    ``(similarities (min(k, C),) float32, positions (min(k, C),) int64 into rows)``, best first.

    Scored by a throwaway faiss index over the rows (``SQfp16``, whose codes are the float16 bits, or a
    flat one): faiss's SIMD kernels on this thread. Why not ``rows.astype(np.float32) @ query``: numpy's
    float16 cast runs ~2 ns per element, and its matrix-vector product goes to a multi-threaded BLAS whose
    threads, on cores another process keeps busy, took 8 ms for 100 x 7168 rows (0.04 ms with one
    thread); this takes 0.16 ms (measured on the 2 shared cores).
    """
    faiss = faiss_module()
    dim = rows.shape[1]
    if rows.dtype == np.float16:
        scorer = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        scorer.add_sa_codes(np.ascontiguousarray(rows).view(np.uint8))  # (C, 2 D) bytes: SQfp16's codes
    else:
        scorer = faiss.IndexFlatIP(dim)
        scorer.add(np.ascontiguousarray(rows, dtype=np.float32))
    sims, positions = scorer.search(np.ascontiguousarray(query, dtype=np.float32)[None], min(k, len(rows)))
    return sims[0], positions[0]


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: ``(similarities (M, k) float32, ids (M, k) int64)``, best first; -1 pads."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(int(k), index.ntotal))
    sims, ids = index.search(q, k)
    return sims, ids


def stored_vectors(index):
    """A function ``ids (M,) int64 -> (M, D) float32`` returning the descriptors stored in ``index``.

    A CPU flat index is read in place (no copy of the map); a re-ranked compressed index reads its full
    float16 descriptors; other indexes reconstruct their vectors (``fp16`` exactly, ``sq8`` and IVF-PQ alone
    their decoded approximation; an IVF index needs its direct map, built here once). The vectors are in the index's
    space (whitened when the map is: :meth:`runtime.map.PlaceMap.prepare`).
    """
    if isinstance(index, RerankedIndex):  # the full float16 descriptors it re-ranks with
        return lambda ids: np.asarray(index.descriptors[np.asarray(ids, dtype=np.int64)], dtype=np.float32)
    faiss = faiss_module()
    if hasattr(index, "get_xb"):  # IndexFlat on the CPU: a zero-copy view of the (N, D) vectors
        vectors = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        return lambda ids: vectors[ids]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return lambda ids: index.reconstruct_batch(np.asarray(ids, dtype=np.int64))
