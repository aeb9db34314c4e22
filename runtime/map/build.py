"""``build_map``: a model + a geotagged dataset -> a map directory (FAISS index, places.csv, map.json)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from runtime.atomic import atomic_directory
from runtime.backends import Backend, open_backend
from runtime.map.calibrate import calibrate
from runtime.map.config import MapConfig
from runtime.map.index import build_index, faiss_module, gpu_unsupported, search, set_threads
from runtime.map.places import places_from_dataset
from runtime.preprocess import Preprocessor

log = logging.getLogger(__name__)

MAP_FORMAT_VERSION = 2  # 2: unknown_threshold is a distinctiveness ratio (1: a similarity)
INDEX_FILE, PLACES_FILE, META_FILE = "index.faiss", "places.csv", "map.json"


def extract_descriptors(
    backend: Backend,
    read_image: Callable[[int], np.ndarray],
    count: int,
    batch_size: int = 16,
    workers: int = 2,
    progress: Callable | None = None,
) -> np.ndarray:
    """Descriptors of ``count`` images: ``read_image(i) -> uint8 (H, W, 3) RGB`` -> ``float32 (count, D)``.

    Images are read and preprocessed by ``workers`` threads one batch ahead of inference. Pure function of
    its inputs, so a distributed job (one shard of indices per worker) can call it unchanged.
    """
    preprocess = Preprocessor(backend.card)
    if backend.max_batch is not None:
        batch_size = min(batch_size, backend.max_batch)
    batches = [range(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]
    out = np.empty((count, backend.card.descriptor_dim), dtype=np.float32)
    bar = progress(total=count, desc="map descriptors", unit="img") if progress else None

    def load(indices: Sequence[int]) -> np.ndarray:
        return np.stack([preprocess(read_image(i), color="RGB") for i in indices])  # (B, H, W, 3)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(load, b) for b in batches[:2]]
        for bi, indices in enumerate(batches):
            images = pending[bi].result()
            if bi + 2 < len(batches):
                pending.append(pool.submit(load, batches[bi + 2]))
            pending[bi] = None  # free the batch
            out[indices.start : indices.stop] = backend.infer(images)
            if bar is not None:
                bar.update(len(indices))
    if bar is not None:
        bar.close()
    return out


def measure_index_recall(index, exact_index, descriptors: np.ndarray, samples: int = 1000) -> dict:
    """Recall of a compressed index against exact search, with map images as queries (self excluded).

    R@1: the compressed top-1 equals the exact top-1; R@10: the exact top-1 is in the compressed top-10.
    """
    n = descriptors.shape[0]
    rows = np.linspace(0, n - 1, min(samples, n)).astype(np.int64)
    k = min(n, 11)
    _, exact = search(exact_index, descriptors[rows], k)
    _, approx = search(index, descriptors[rows], k)
    r1 = r10 = 0
    for qi, row in enumerate(rows):
        e = [i for i in exact[qi] if i != row and i >= 0]
        a = [i for i in approx[qi] if i != row and i >= 0]
        if not e:
            continue
        r1 += bool(a) and a[0] == e[0]
        r10 += e[0] in a[:10]
    total = max(1, len(rows))
    return {"recall_at_1": float(r1) / total, "recall_at_10": float(r10) / total, "queries": len(rows)}


def _geo_meta(dataset) -> dict | None:
    """The UTM zone of a dataset given in lat/lon (so positions convert back), None for metric-only data."""
    from runtime.geo import zone_of_dataset

    zone = zone_of_dataset(dataset.info)
    return None if zone is None else zone.to_meta()


def build_map(
    model: str | Path | Backend,
    dataset,
    out: str | Path,
    config: MapConfig | None = None,
    progress: Callable | None = None,
    backend: str = "auto",
) -> Path:
    """Build a map at ``out`` from ``model`` (a model path or an open backend) and ``dataset``.

    ``dataset``: a :class:`runtime.datasets.PlaceDataset` or a spec for ``open_dataset``. Writes ``out``
    atomically (a failure leaves nothing, or the previous map when ``config.overwrite``); returns ``out``.
    """
    config = config or MapConfig()
    out = Path(out)
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"map '{out}' already exists; choose another --out or pass --overwrite")
    if not hasattr(dataset, "db_images"):
        from runtime.datasets import open_dataset

        dataset = open_dataset(dataset)
    owned = not isinstance(model, Backend)
    engine = open_backend(model, backend) if owned else model
    try:
        return _build(engine, dataset, out, config, progress)
    finally:
        if owned:
            engine.close()


def _build(engine: Backend, dataset, out: Path, config: MapConfig, progress) -> Path:
    places, items = places_from_dataset(dataset, config.split)
    if not items:
        from runtime.errors import DatasetError

        raise DatasetError(f"dataset '{dataset.name}' has no images in split '{config.split}'")
    card = engine.card
    log.info(
        "building a map of %d places from '%s' (%s) with %s",
        len(items),
        dataset.name,
        config.split,
        engine.describe(),
    )
    set_threads(config.faiss_threads)
    t0 = time.perf_counter()
    descriptors = extract_descriptors(
        engine,
        lambda i: dataset.read_image(*items[i]),
        len(items),
        config.batch_size,
        config.read_workers,
        progress,
    )
    extract_s = time.perf_counter() - t0
    index, index_info = build_index(
        descriptors, config.index, config.nlist, config.pq_m, config.pq_bits, config.nprobe
    )
    if config.index != "flat":
        exact, _ = build_index(descriptors, "flat")
        index_info["recall_vs_exact"] = measure_index_recall(index, exact, descriptors)
        log.info("%s recall against exact search: %s", index_info["factory"], index_info["recall_vs_exact"])
    index_info["built_on"] = "cpu"  # trained and filled by faiss on the CPU; open_map moves it to a GPU
    index_info["gpu_search"] = gpu_unsupported(index) or "supported"
    calibration = calibrate(
        descriptors, places.utm, config.radius_m, config.unknown_percentile, config.calibration_samples
    )
    log.info(
        "unknown-place threshold: distinctiveness ratio %.4f (flags %g%% of unmapped places)",
        calibration["unknown_threshold"],
        config.unknown_percentile,
    )
    meta = {
        "format_version": MAP_FORMAT_VERSION,
        "name": out.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "count": len(items),
        "metric": "inner_product",
        "descriptor_dim": card.descriptor_dim,
        "model": {
            "file": engine.path.name,
            "fingerprint": card.weights_fingerprint,
            "backbone": card.backbone,
            "precision": card.precision,
            "input_size": [card.input_height, card.input_width],
            "backend": engine.describe(),
        },
        "dataset": {
            "name": dataset.name,
            "root": str(Path(dataset.root).resolve()),
            "source": dict(dataset.info).get("source"),
            "split": config.split,
        },
        "geo": _geo_meta(dataset),
        "index": index_info,
        "calibration": calibration,
        "unknown_threshold": calibration["unknown_threshold"],
        "build_seconds": {"extract": round(extract_s, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    faiss = faiss_module()
    with atomic_directory(out, overwrite=config.overwrite) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / PLACES_FILE).write_text(places.to_csv(), encoding="utf-8")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info(
        "wrote map '%s': %d places, %s index, %.1f s",
        out,
        len(items),
        index_info["type"],
        time.perf_counter() - t0,
    )
    return out
