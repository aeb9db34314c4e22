"""Map building on a Ray cluster: descriptor extraction as a Ray Data job, then the same assembly as
:func:`runtime.map.build_map` (``netvlad-map build --ray [ADDRESS]``).

The job, stage by stage (each a Ray Data operator, streamed: images never all sit in memory):

1. ``range(N)``: place rows, in map order;
2. read + preprocess (``map_batches`` tasks on CPU slots): decode each image, convert colour, resize to
   the model card's input -> ``uint8 (B, H, W, 3)``;
3. describe (``map_batches`` over a pool of ``workers`` actors, each holding one backend: one per GPU on
   a GPU cluster, one per CPU slot here) -> ``float32 (B, D)`` with each row's place index;
4. write shards (Parquet, one per block) to ``shards`` (shared storage on a cluster);

then the driver assembles the shards by row into the map's descriptor store and indexes, calibrates and
writes the map exactly as the single-process build does, so both give the same map (descriptors equal to
float rounding, same place order and calibration).

Ray is optional: ``pip install 'netvlad-kit[cluster]'``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError, ConfigError
from runtime.files import atomic_directory, holds_output_lock
from runtime.map.build import (
    _geo_meta,
    dataset_meta,
    dataset_places,
    descriptor_store,
    embed_images,
    resolve_dataset,
    write_map_files,
    write_meta,
)
from runtime.map.config import MapConfig
from runtime.map.index import set_threads
from runtime.optional import require

log = logging.getLogger(__name__)

# Logical CPUs each read+preprocess task and each CPU backend actor reserve: half a slot each, so that on a
# CPU-only Ray every slot can hold a backend actor while decoding still gets scheduled (with whole slots,
# actors on every slot would starve the decode tasks and the job would wait forever).
DECODE_CPUS = 0.5
CPU_WORKER_CPUS = 0.5
SHARD_BYTES = 128 * 2**20  # descriptors per shard (float32): 10M x 7168-D -> ~2,200 shards of ~4,700 rows


def _ray():
    ray = require("ray", "map building on a Ray cluster (--ray)")
    require("ray.data", "map building on a Ray cluster (--ray)")
    return ray


def _read_images(batch: dict, dataset, is_query: np.ndarray, index: np.ndarray, card) -> dict:
    """Ray Data stage 2 (tasks): place rows -> preprocessed images. The rows' (split, index) travel as two
    arrays (not a list of tuples: 10M rows stay ~90 MB in the object store)."""
    from runtime.model.preprocess import Preprocessor

    preprocess = Preprocessor(card)
    rows = np.asarray(batch["id"], dtype=np.int64)
    images = [
        preprocess(dataset.read_image("queries" if is_query[i] else "database", int(index[i])), color="RGB")
        for i in rows
    ]
    return {"row": rows, "image": np.stack(images)}  # (B,), (B, H, W, 3) uint8


class _Describe:
    """Ray Data stage 3: an actor owning one backend; images -> descriptors."""

    def __init__(self, model: str, backend: str, threads: int) -> None:
        from runtime.model.backends import open_backend

        # one actor per CPU slot: one ONNX Runtime thread each (the slots are the parallelism)
        onnx = backend in ("auto", "onnxruntime") and Path(model).suffix.lower() == ".onnx"
        self.backend = open_backend(model, backend, **({"threads": threads} if onnx and threads else {}))

    def __call__(self, batch: dict) -> dict:
        descriptors = self.backend.infer(np.ascontiguousarray(batch["image"]))  # (B, D) float32
        return {"row": batch["row"], "descriptor": descriptors}


def extract_on_ray(
    model: str | Path,
    dataset,
    items: list[tuple[str, int]],
    out: np.ndarray,
    shards: Path,
    workers: int,
    batch_size: int = 16,
    backend: str = "auto",
    gpus_per_worker: float = 0.0,
    progress: Callable | None = None,
) -> dict:
    """Descriptors of ``items`` (``(split, index)`` of ``dataset``) into ``out (N, D)`` through a Ray Data
    job on the connected Ray cluster; shards go to ``shards``. Returns timings and throughput."""
    ray = _ray()
    from runtime.model.card import read_card

    card = read_card(model)
    n = len(items)
    t0 = time.perf_counter()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress is not None
    threads = 1 if gpus_per_worker == 0 else 0
    cpus_per_worker = CPU_WORKER_CPUS if gpus_per_worker == 0 else 1.0
    is_query = np.asarray([split == "queries" for split, _ in items], dtype=bool)  # (N,)
    index = np.asarray([i for _, i in items], dtype=np.int64)  # (N,)
    # blocks (= shards): enough to keep every worker busy, and none over SHARD_BYTES of descriptors
    rows_per_shard = max(batch_size, SHARD_BYTES // (4 * card.descriptor_dim))
    blocks = max(1, min(n // batch_size, max(4 * workers, -(-n // rows_per_shard))))
    ds = (
        ray.data.range(n, override_num_blocks=blocks)
        .map_batches(
            _read_images,
            fn_kwargs={"dataset": dataset, "is_query": is_query, "index": index, "card": card},
            batch_size=batch_size,
            num_cpus=DECODE_CPUS,
        )
        .map_batches(
            _Describe,
            fn_constructor_args=(str(model), backend, threads),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
        )
    )
    ds.write_parquet(str(shards))
    extract_s = time.perf_counter() - t0
    seen = np.zeros(n, dtype=bool)
    import pyarrow.parquet as pq  # comes with ray[data]; reads Ray's tensor columns once ray is imported

    for shard in sorted(Path(shards).rglob("*.parquet")):  # one shard at a time: bounded memory
        table = pq.read_table(shard)
        rows = table.column("row").to_numpy()  # (B,)
        column = table.column("descriptor").combine_chunks()
        out[rows] = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float32)  # (B, D)
        seen[rows] = True
    if not seen.all():
        raise ArtifactError(
            f"the Ray job returned no descriptor for {int((~seen).sum())} of {n} images (first row "
            f"{int(np.flatnonzero(~seen)[0])}); see the Ray logs and rerun"
        )
    return {
        "extract": round(extract_s, 3),
        "assemble_shards": round(time.perf_counter() - t0 - extract_s, 3),
        "images_per_s": round(n / max(extract_s, 1e-9), 2),
    }


@holds_output_lock("out", "map")
def build_map_on_ray(
    model: str | Path,
    dataset,
    out: str | Path,
    config: MapConfig | None = None,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    backend: str = "auto",
    shards: str | Path | None = None,
    progress: Callable | None = None,
) -> Path:
    """:func:`runtime.map.build_map`, with descriptor extraction as a Ray Data job.

    ``address``: a Ray cluster (``ray://host:10001`` or ``auto``); None starts a local Ray on this
    machine's cores (and stops it afterwards). ``workers``: backend actors (default: one per GPU with
    ``gpus_per_worker``, else one per CPU of the cluster). ``shards``: where the job writes descriptor
    shards (default: a temporary folder beside ``out``; on a cluster, a path every node can write),
    removed once assembled. ``model`` must be a path (each actor opens its own backend).
    """
    config = config or MapConfig()
    out = Path(out)
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"map '{out}' already exists; choose another --out or pass --overwrite")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    ray = _ray()
    from runtime.model.card import read_card

    card = read_card(model)
    dataset = resolve_dataset(dataset)
    places, items = dataset_places(dataset, config.split)
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        if workers is None:
            workers = (
                int(resources.get("GPU", 0) / gpus_per_worker) if gpus_per_worker else int(resources["CPU"])
            )
            workers = max(1, workers)
        log.info(
            "building a map of %d places from '%s' on Ray (%s, %d workers, resources %s)",
            len(items),
            dataset.name,
            address or "local",
            workers,
            {k: v for k, v in resources.items() if k in ("CPU", "GPU")},
        )
        set_threads(config.faiss_threads)
        t0 = time.perf_counter()
        shard_dir = (
            Path(shards) if shards else Path(tempfile.mkdtemp(prefix=f".{out.name}.shards.", dir=out.parent))
        )
        try:
            with atomic_directory(out, overwrite=config.overwrite) as tmp:
                descriptors = descriptor_store(tmp, len(items), card.descriptor_dim, config)
                timings = extract_on_ray(
                    model,
                    dataset,
                    items,
                    descriptors,
                    shard_dir,
                    workers,
                    config.batch_size,
                    backend,
                    gpus_per_worker,
                    progress,
                )
                model_info = {
                    "file": Path(model).name,
                    "fingerprint": card.weights_fingerprint,
                    "backbone": card.backbone,
                    "precision": card.precision,
                    "input_size": [card.input_height, card.input_width],
                    "backend": f"{workers} Ray actors ({backend})",
                }
                meta = write_map_files(
                    tmp,
                    descriptors,
                    places,
                    config,
                    name=out.name,
                    model=model_info,
                    dataset=dataset_meta(dataset, config.split),
                    geo=_geo_meta(dataset),
                    progress=progress,
                )
                if config.embed_images:
                    meta["dataset"]["root"] = embed_images(tmp, Path(dataset.root), places.images)
                meta["build_seconds"] = {**timings, "total": round(time.perf_counter() - t0, 3)}
                meta["ray"] = {
                    "address": address or "local",
                    "workers": workers,
                    "gpus_per_worker": gpus_per_worker,
                }
                write_meta(tmp, meta)
                del descriptors
        finally:
            shutil.rmtree(shard_dir, ignore_errors=True)
    finally:
        if started:
            ray.shutdown()
    log.info(
        "wrote map '%s': %d places on Ray, extraction %.1f images/s", out, len(items), timings["images_per_s"]
    )
    return out
