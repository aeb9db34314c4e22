"""FAISS indexes over L2-normalised descriptors: exact inner product, or IVF-PQ; GPU where faiss has one."""

from __future__ import annotations

import logging
import math

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
    be 8"), and :func:`ivfpq_sizes` picks fewer bits for maps under 1,024 places.
    """
    faiss = faiss_module()
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


def ivfpq_sizes(
    n: int, dim: int, nlist: int | None, pq_m: int | None, pq_bits: int | None
) -> tuple[int, int, int]:
    """IVF-PQ sizes for ``n`` vectors of ``dim``: (nlist, m, bits), each checked against what faiss trains."""
    if nlist is None:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # >= 39 training points per list
    if pq_bits is None:
        pq_bits = int(min(8, max(1, math.floor(math.log2(max(2, n // 4))))))  # 2**bits centroids need points
    if pq_m is None:
        pq_m = max(m for m in range(1, min(dim, 64) + 1) if dim % m == 0)
    if dim % pq_m:
        raise ConfigError(f"pq_m ({pq_m}) must divide the descriptor dimension ({dim})")
    if nlist > n:
        raise ConfigError(f"nlist ({nlist}) must not exceed the number of places ({n})")
    return nlist, pq_m, pq_bits


def build_index(descriptors: np.ndarray, kind: str, nlist=None, pq_m=None, pq_bits=None, nprobe: int = 16):
    """A CPU FAISS index over ``descriptors (N, D) float32``; returns ``(index, description dict)``."""
    faiss = faiss_module()
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    n, dim = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        info = {"type": "flat", "factory": "Flat"}
    elif kind == "ivfpq":
        nlist, m, bits = ivfpq_sizes(n, dim, nlist, pq_m, pq_bits)
        factory = f"IVF{nlist},PQ{m}x{bits}"
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        # polysemous training (Hamming-ordered codes) costs seconds to minutes and is unused by IVF search
        faiss.downcast_index(index).do_polysemous_training = False
        index.train(x)
        faiss.extract_index_ivf(index).nprobe = min(nprobe, nlist)
        info = {
            "type": "ivfpq",
            "factory": factory,
            "nlist": nlist,
            "pq_m": m,
            "pq_bits": bits,
            "nprobe": min(nprobe, nlist),
        }
    else:
        raise ConfigError(f"index must be 'flat' or 'ivfpq', got {kind!r}")
    index.add(x)
    return index, info


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: ``(similarities (M, k) float32, ids (M, k) int64)``, best first; -1 pads."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(int(k), index.ntotal))
    sims, ids = index.search(q, k)
    return sims, ids
