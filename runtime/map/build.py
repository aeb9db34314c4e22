"""``build_map``: a model + a geotagged dataset -> a map directory (FAISS index, places.csv, map.json)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from runtime.files import atomic_directory, check_not_dataset, check_replaceable_map, clean_stale, output_lock
from runtime.map.calibrate import calibrate, calibrate_on_queries
from runtime.map.config import MapConfig
from runtime.map.index import (
    RerankedIndex,
    build_index,
    exact_search,
    faiss_module,
    gpu_unsupported,
    index_kind,
    search,
    set_threads,
)
from runtime.map.places import Places, places_from_dataset
from runtime.map.whitening import MapProjection, map_whitening_dim
from runtime.model.backends import Backend, open_backend
from runtime.model.preprocess import Preprocessor

log = logging.getLogger(__name__)

# 4: descriptors centred on the map's mean (projection.npz); 3: calibrated evidence quantiles and confidence,
# optional whitening; 2: a distinctiveness ratio; 1: a similarity
MAP_FORMAT_VERSION = 4
INDEX_FILE, PLACES_FILE, META_FILE = "index.faiss", "places.csv", "map.json"
# full descriptors (N, D) float16 of a compressed map, memory-mapped at search time for exact re-ranking
DESCRIPTORS_FILE = "descriptors.f16.npy"
EMBEDDED_IMAGES = "images"  # where a self-contained map keeps its place images (MapConfig.embed_images)
PROJECTION_FILE = "projection.npz"  # the map's descriptor space: its mean, and its whitening when fitted


def extract_descriptors(
    backend: Backend,
    read_image: Callable[[int], np.ndarray],
    count: int,
    batch_size: int = 16,
    workers: int = 2,
    progress: Callable | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Descriptors of ``count`` images: ``read_image(i) -> uint8 (H, W, 3) RGB`` -> ``float32 (count, D)``.

    Images are read and preprocessed by ``workers`` threads one batch ahead of inference. Pure function of
    its inputs, so a distributed job (one shard of indices per worker) can call it unchanged. ``out``: an
    array ``(count, D)`` to write into instead (a float16 memory map for maps larger than RAM); returned.
    """
    preprocess = Preprocessor(backend.card)
    if backend.max_batch is not None:
        batch_size = min(batch_size, backend.max_batch)
    batches = [range(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]
    if out is None:
        out = np.empty((count, backend.card.descriptor_dim), dtype=np.float32)
    elif out.shape != (count, backend.card.descriptor_dim):
        raise ValueError(f"out must be ({count}, {backend.card.descriptor_dim}), got {out.shape}")
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


def measure_index_recall(index, descriptors: np.ndarray, samples: int = 1000) -> dict:
    """Recall of a compressed index against exact search, with map images as queries (self excluded).

    R@1: the compressed top-1 equals the exact top-1; R@10: the exact top-1 is in the compressed top-10.
    Exact search reads ``descriptors`` (float16/float32, may be a memory map) a chunk at a time.
    """
    n = descriptors.shape[0]
    rows = np.linspace(0, n - 1, min(samples, n)).astype(np.int64)
    k = min(n, 11)
    queries = np.asarray(descriptors[rows], dtype=np.float32)
    _, exact = exact_search(descriptors, queries, k)
    _, approx = search(index, queries, k)
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
    from runtime.datasets.geo import zone_of_dataset

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
    check_replaceable_map(out, config.overwrite, META_FILE)
    dataset = resolve_dataset(dataset)
    check_not_dataset(out, Path(dataset.root))
    with output_lock(out, "map"):
        clean_stale(out)
        check_replaceable_map(out, config.overwrite, META_FILE)  # again: a writer may have just finished
        owned = not isinstance(model, Backend)
        engine = open_backend(model, backend) if owned else model
        try:
            return _build(engine, dataset, out, config, progress)
        finally:
            if owned:
                engine.close()


def resolve_dataset(dataset):
    """A :class:`runtime.datasets.PlaceDataset` (or anything shaped like one) from itself or a spec."""
    if not hasattr(dataset, "db_images"):
        from runtime.datasets import open_dataset

        dataset = open_dataset(dataset)
    return dataset


def dataset_places(dataset, split: str) -> tuple[Places, list[tuple[str, int]]]:
    """The places of ``dataset`` in ``split``; an error naming the dataset when there are none."""
    places, items = places_from_dataset(dataset, split)
    if not items:
        from runtime.errors import DatasetError

        raise DatasetError(f"dataset '{dataset.name}' has no images in split '{split}'")
    return places, items


def descriptor_store(directory: Path, count: int, dim: int, config: MapConfig) -> np.ndarray:
    """Where a map's descriptors are extracted to: RAM (float32) for a map whose index holds them anyway
    (``flat``, ``fp16``: the recall check then compares against float32 exact search); for an index of
    codes (``sq8``, ``ivfpq``), its float16 ``descriptors.f16.npy`` as a writable memory map (a map larger
    than RAM builds with bounded memory, and the file is what search re-ranks against)."""
    if index_kind(config.index).holds_descriptors:
        return np.empty((count, dim), dtype=np.float32)
    return np.lib.format.open_memmap(
        directory / DESCRIPTORS_FILE, mode="w+", dtype=np.float16, shape=(count, dim)
    )


def model_meta(engine: Backend) -> dict:
    card = engine.card
    return {
        "file": engine.path.name,
        "fingerprint": card.weights_fingerprint,
        "backbone": card.backbone,
        "precision": card.precision,
        "input_size": [card.input_height, card.input_width],
        "backend": engine.describe(),
    }


def _build(engine: Backend, dataset, out: Path, config: MapConfig, progress) -> Path:
    places, items = dataset_places(dataset, config.split)
    log.info(
        "building a map of %d places from '%s' (%s) with %s",
        len(items),
        dataset.name,
        config.split,
        engine.describe(),
    )
    set_threads(config.faiss_threads)
    t0 = time.perf_counter()
    with atomic_directory(out, overwrite=config.overwrite) as tmp:
        if config.whitening:  # model descriptors in RAM, the map's whitened ones in its store
            model_descriptors = extract_descriptors(
                engine,
                lambda i: dataset.read_image(*items[i]),
                len(items),
                config.batch_size,
                config.read_workers,
                progress,
            )
            projection = fit_map_whitening(model_descriptors, engine.card, config)
            descriptors = descriptor_store(tmp, len(items), projection.dim, config)
            projection.apply_to(model_descriptors, descriptors)
            del model_descriptors
        else:
            descriptors = descriptor_store(tmp, len(items), engine.card.descriptor_dim, config)
            extract_descriptors(
                engine,
                lambda i: dataset.read_image(*items[i]),
                len(items),
                config.batch_size,
                config.read_workers,
                progress,
                out=descriptors,
            )
            projection = MapProjection.centring(descriptors, engine.card.weights_fingerprint)
            projection.apply_to(
                descriptors, descriptors
            )  # (N, D): the model's descriptors -> the map's space
        extract_s = time.perf_counter() - t0
        calibration = None
        if config.calibration == "queries":
            calibration = calibrate_on_held_out_queries(
                engine, dataset, descriptors, places.utm, projection, config, progress
            )
        meta = write_map_files(
            tmp,
            descriptors,
            places,
            config,
            name=out.name,
            model=model_meta(engine),
            dataset=dataset_meta(dataset, config.split),
            geo=_geo_meta(dataset),
            progress=progress,
            projection=projection,
            calibration=calibration,
        )
        if config.embed_images:
            meta["dataset"]["root"] = embed_images(tmp, Path(dataset.root), places.images)
        meta["build_seconds"] = {"extract": round(extract_s, 3), "total": round(time.perf_counter() - t0, 3)}
        write_meta(tmp, meta)
        del descriptors  # close the memory map before the directory is renamed
    log.info(
        "wrote map '%s': %d places, %s index, %.1f s",
        out,
        len(items),
        meta["index"]["type"],
        time.perf_counter() - t0,
    )
    return out


def dataset_meta(dataset, split: str) -> dict:
    return {
        "name": dataset.name,
        "root": str(Path(dataset.root).resolve()),
        "source": dict(dataset.info).get("source"),
        "split": split,
    }


def embed_images(directory: Path, root: Path, images: Sequence[str]) -> str:
    """Copy the place images into ``directory/images`` (a self-contained map); returns the root to record,
    relative to the map."""
    for image in images:
        target = directory / EMBEDDED_IMAGES / image
        if not target.resolve().is_relative_to((directory / EMBEDDED_IMAGES).resolve()):
            from runtime.errors import DatasetError

            raise DatasetError(
                f"image path '{image}' leaves the dataset folder; it cannot be embedded in a map"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / image, target)
    return EMBEDDED_IMAGES


def write_meta(directory: Path, meta: dict) -> None:
    """Write ``map.json``, with the fingerprint of the ``index.faiss`` written beside it (checked at open)."""
    if (directory / INDEX_FILE).is_file():
        meta = {**meta, "index_file": index_file_fingerprint(directory / INDEX_FILE)}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def index_file_fingerprint(path: Path, edge: int = 1 << 20) -> str:
    """``SIZE:HASH`` of an index file: its byte size and the sha256 of its first and last MiB (constant
    time for a map of any size), enough to tell an index.faiss copied in from another map or model."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(edge))
        if size > edge:
            fh.seek(max(edge, size - edge))
            digest.update(fh.read(edge))
    return f"{size}:{digest.hexdigest()[:16]}"


def write_map_files(
    directory: Path,
    descriptors: np.ndarray,
    places: Places,
    config: MapConfig,
    *,
    name: str,
    model: dict,
    dataset: dict,
    geo: dict | None = None,
    index=None,
    index_info: dict | None = None,
    revision: int = 0,
    progress: Callable | None = None,
    projection: MapProjection | None = None,
    calibration: dict | None = None,
) -> dict:
    """Index, calibrate and write a map's files into ``directory`` (the temporary directory of an atomic
    write); returns map.json's content (written by the caller once it has added its timings).

    ``descriptors (N, D)``: row i is place i (float32 in RAM, or the float16 memory map of
    ``descriptors.f16.npy`` already in ``directory``). ``projection``: the map's (``descriptors`` are then
    in the index's space: centred, or whitened); None: ``descriptors`` are the model's, and are centred on
    their mean here, in place. ``index``/``index_info``: a filled index to write instead of building one
    (``netvlad-map add`` reuses the trained quantisers). ``calibration``: the verdict's, when made on
    held-out queries (None: calibrated on the map's own descriptors here).
    """
    if (config.whitening and projection is None) or (config.calibration == "queries" and calibration is None):
        from runtime.errors import ConfigError

        raise ConfigError(
            "whitening and calibration on queries are fitted by build_map (netvlad-map build --dataset, in one "
            "process); this builder does not fit them: build without --whiten / --calibration queries"
        )
    if projection is None:  # the map's own domain: every descriptor centred on the map's mean
        projection = MapProjection.centring(descriptors, model["fingerprint"])
        projection.apply_to(descriptors, descriptors)
    if index is None:
        index, index_info = build_index(
            descriptors,
            config.index,
            config.nlist,
            config.pq_m,
            config.pq_bits,
            config.nprobe,
            progress=progress,
        )
    index_info = dict(index_info)
    if index_info["type"] != "flat":  # recall against exact search over the map's own descriptors
        searched = index
        rerank = config.rerank_candidates
        if rerank:
            index_info["rerank"] = {"candidates": rerank, "file": DESCRIPTORS_FILE, "dtype": "float16"}
            searched = RerankedIndex(index, descriptors, rerank)
        else:
            index_info.pop("rerank", None)
        index_info["recall_vs_exact"] = measure_index_recall(searched, descriptors)
        log.info("%s recall against exact search: %s", index_info["factory"], index_info["recall_vs_exact"])
    index_info["built_on"] = "cpu"  # trained and filled by faiss on the CPU; open_map moves it to a GPU
    index_info["gpu_search"] = gpu_unsupported(index) or "supported"
    if calibration is None:
        calibration = calibrate(
            descriptors, places.utm, config.radius_m, config.unknown_percentile, config.calibration_samples
        )
    log.info(
        "unknown-place verdict calibrated on the %s: evidence below %.4f (flags %g%% of unmapped places)",
        calibration["source"],
        calibration["unknown_threshold"],
        config.unknown_percentile,
    )
    faiss_module().write_index(index, str(directory / INDEX_FILE))
    projection.save(directory / PROJECTION_FILE)
    (directory / PLACES_FILE).write_text(places.to_csv(), encoding="utf-8")
    if isinstance(descriptors, np.memmap):
        descriptors.flush()
    return {
        "format_version": MAP_FORMAT_VERSION,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "revision": revision,
        "count": len(places),
        "metric": "inner_product",
        "descriptor_dim": projection.in_dim,
        "model": model,
        "dataset": dataset,
        "geo": geo,
        "index": index_info,
        "calibration": calibration,
        "projection": projection.describe(),
    }


def fit_map_whitening(descriptors: np.ndarray, card, config: MapConfig) -> MapProjection:
    """Centring and PCA-whitening fitted without labels on the map's own model descriptors ``(N, D)``."""
    dim = config.whitening_dim or map_whitening_dim(descriptors.shape[0], card.descriptor_dim)
    whitening = MapProjection.whitening(
        descriptors, dim, card.weights_fingerprint, config.whitening_shrinkage
    )
    log.info(
        "whitening fitted on the map's %d descriptors: %d -> %d-D",
        descriptors.shape[0],
        card.descriptor_dim,
        dim,
    )
    return whitening


def calibrate_on_held_out_queries(
    engine: Backend, dataset, descriptors, utm, projection: MapProjection, config: MapConfig, progress
) -> dict:
    """The verdict's calibration on up to ``config.calibration_queries`` of the dataset's queries (evenly
    spaced), each playing an unmapped place in the query domain (:func:`calibrate_on_queries`)."""
    if config.split != "database" or dataset.num_queries == 0:
        from runtime.errors import ConfigError

        raise ConfigError(
            "calibration='queries' needs a map of the database split of a dataset with queries; "
            f"'{dataset.name}' has {dataset.num_queries} queries and the map is split '{config.split}'; "
            "use calibration='map'"
        )
    count = min(config.calibration_queries, dataset.num_queries)
    chosen = np.unique(np.linspace(0, dataset.num_queries - 1, count).astype(np.int64))
    queries = extract_descriptors(
        engine,
        lambda i: dataset.read_image("queries", int(chosen[i])),
        len(chosen),
        config.batch_size,
        config.read_workers,
        progress,
    )
    queries = projection.apply(queries)
    calibration = calibrate_on_queries(
        queries, dataset.q_utm[chosen], descriptors, utm, config.radius_m, config.unknown_percentile
    )
    calibration["query_indices"] = f"{len(chosen)} evenly spaced of {dataset.num_queries}"
    return calibration
