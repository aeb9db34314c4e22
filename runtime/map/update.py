"""Maps that grow and shrink without a rebuild: :func:`add_to_map` and :func:`remove_from_map`.

Both rewrite the map atomically (a new directory beside it, then a rename: a reader sees the old map or
the new one, never a mix; a running :class:`runtime.localize.localizer.Localizer` picks the new one up with
``reload()``). The trained parts of the index are reused: new places are encoded with the map's IVF
quantiser and PQ codebooks (no training); removed places are dropped and the rest re-encoded with the same
quantisers (a flat map simply drops their rows). The unknown-place calibration is recomputed over the new
set of places, and map.json's ``revision`` counts the changes.

Why not faiss's ``remove_ids``: a map's place ``i`` is FAISS id ``i`` (row ``i`` of places.csv), so ids must
stay contiguous; re-adding the kept descriptors (read from the map's float16 file a chunk at a time) keeps
them so without retraining.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from runtime.errors import ConfigError, MapMismatchError
from runtime.files import atomic_directory, holds_output_lock
from runtime.map.build import (
    DESCRIPTORS_FILE,
    INDEX_FILE,
    PLACES_FILE,
    dataset_places,
    extract_descriptors,
    resolve_dataset,
    write_map_files,
    write_meta,
)
from runtime.map.config import MapConfig
from runtime.map.index import ADD_CHUNK_ROWS, add_in_chunks, faiss_module, index_kind, set_threads
from runtime.map.places import Places
from runtime.map.store import open_descriptors, read_map_meta, read_projection
from runtime.model.backends import Backend, open_backend

log = logging.getLogger(__name__)


def map_config(meta: dict, **changes) -> MapConfig:
    """The :class:`MapConfig` a map was built with, as far as map.json records it."""
    index = meta["index"]
    calibration = meta["calibration"]
    return MapConfig(
        index=index["type"],
        nprobe=int(index.get("nprobe", 16)),
        rerank=int(index.get("rerank", {}).get("candidates", 0)),
        radius_m=float(calibration["radius_m"]),
        unknown_percentile=float(calibration["percentile"]),
        **changes,
    )


def _holds_descriptors(meta: dict) -> bool:
    """Whether the map's index stores the descriptors itself (flat, fp16) rather than codes beside
    ``descriptors.f16.npy`` (sq8, ivfpq)."""
    return index_kind(meta["index"]["type"]).holds_descriptors


def _map_descriptors(path: Path, meta: dict, index) -> np.ndarray:
    """A map's full descriptors ``(N, D)``: the float16 memory map of a map of codes, or the rows a flat
    (float32) or fp16 index holds, as float32."""
    if _holds_descriptors(meta):
        return index.reconstruct_n(0, index.ntotal)  # (N, D) float32: such a map lives in RAM anyway
    return open_descriptors(path)


def _copy_rows(target: np.ndarray, offset: int, source: np.ndarray, rows: np.ndarray | None = None) -> int:
    """Copy ``source`` (or its ``rows``) into ``target`` from ``offset`` a chunk at a time; returns the end."""
    n = source.shape[0] if rows is None else len(rows)
    for start in range(0, n, ADD_CHUNK_ROWS):
        part = (
            source[start : start + ADD_CHUNK_ROWS]
            if rows is None
            else source[rows[start : start + ADD_CHUNK_ROWS]]
        )
        target[offset + start : offset + start + len(part)] = part
    return offset + n


def _embedded_root(meta: dict) -> str | None:
    """The image folder inside a self-contained map (its dataset root is relative to the map), else None."""
    root = meta["dataset"]["root"]
    return None if Path(root).is_absolute() else root


def _carry_images(source: Path, target: Path, images: Sequence[str]) -> None:
    """Give a rewritten self-contained map the ``images`` it keeps (hard links: no copy where possible)."""
    for image in images:
        (target / image).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / image, target / image)
        except OSError:
            shutil.copyfile(source / image, target / image)


def _history(meta: dict, entry: dict) -> list:
    return [
        *meta.get("history", []),
        {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **entry},
    ]


@holds_output_lock("map_path", "map")
def add_to_map(
    map_path: str | Path,
    model: str | Path | Backend,
    dataset,
    split: str = "database",
    backend: str = "auto",
    batch_size: int = 16,
    read_workers: int = 2,
    faiss_threads: int | None = None,
    progress: Callable | None = None,
) -> int:
    """Append the images of ``dataset`` (its ``split``: "database" or "all") to the map at ``map_path``.

    ``model`` must be the model the map was built with (same weights fingerprint and dimension:
    MapMismatchError otherwise). Images from another dataset root are recorded with absolute paths.
    An image already in the map is an error (remove it first). Returns the number of places added.
    """
    map_path = Path(map_path)
    meta = read_map_meta(map_path)
    dataset = resolve_dataset(dataset)
    owned = not isinstance(model, Backend)
    engine = open_backend(model, backend) if owned else model
    try:
        card = engine.card
        built, dim = meta["model"]["fingerprint"], int(meta["descriptor_dim"])
        if built != card.weights_fingerprint or dim != card.descriptor_dim:
            raise MapMismatchError(
                f"map '{map_path}' was built with model {built} ({dim}-D) but '{engine.path}' is "
                f"{card.weights_fingerprint} ({card.descriptor_dim}-D); add with the map's model "
                f"('{meta['model']['file']}'), or rebuild the map with this one"
            )
        new_places, items = dataset_places(dataset, split)
        source_images = new_places.images
        embedded = _embedded_root(meta)
        root = Path(dataset.root).resolve()
        revision = int(meta.get("revision", 0)) + 1
        if embedded is not None:  # a self-contained map: the new images go inside it too
            new_places = new_places.with_images(tuple(f"added-r{revision}/{i}" for i in source_images))
        elif root != Path(
            meta["dataset"]["root"]
        ):  # paths are relative to the map's root: record these in full
            new_places = new_places.with_images(tuple(str(root / image) for image in source_images))
        old_places = Places.read_csv(map_path / PLACES_FILE)
        already = sorted(set(old_places.images) & set(new_places.images))
        if already:
            raise ConfigError(
                f"{len(already)} of the {len(items)} images of '{dataset.name}' are already in map '{map_path}' "
                f"(first: '{already[0]}'); remove them first with: netvlad-map remove --map {map_path} "
                f"--image PATTERN"
            )
        set_threads(faiss_threads)
        t0 = time.perf_counter()
        added = extract_descriptors(
            engine, lambda i: dataset.read_image(*items[i]), len(items), batch_size, read_workers, progress
        )  # (M, D) float32
        projection = read_projection(map_path, meta)
        added = projection.apply(added)  # (M, d): the map's space, centred on the map's own mean (kept)
        extract_s = time.perf_counter() - t0
    finally:
        if owned:
            engine.close()

    faiss = faiss_module()
    index = faiss.read_index(str(map_path / INDEX_FILE))
    old = _map_descriptors(map_path, meta, index)
    places = old_places.concat(new_places)
    config = map_config(meta)
    with atomic_directory(map_path, overwrite=True) as tmp:
        if embedded is not None:
            _carry_images(map_path / embedded, tmp / embedded, old_places.images)
            for source, image in zip(source_images, new_places.images, strict=True):
                (tmp / embedded / image).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / source, tmp / embedded / image)
        if _holds_descriptors(meta):
            index.add(added)
            descriptors = _map_descriptors(tmp, meta, index)
        else:
            descriptors = np.lib.format.open_memmap(
                tmp / DESCRIPTORS_FILE, mode="w+", dtype=np.float16, shape=(len(places), old.shape[1])
            )
            _copy_rows(descriptors, _copy_rows(descriptors, 0, old), added)
            index.add(added)  # encoded with the map's trained quantisers (IVF + PQ codebooks, or SQ ranges)
        new_meta = write_map_files(
            tmp,
            descriptors,
            places,
            config,
            name=meta["name"],
            model=meta["model"],
            dataset=meta["dataset"],
            geo=meta.get("geo"),
            index=index,
            index_info=meta["index"],
            revision=revision,
            progress=progress,
            projection=projection,
        )
        new_meta["history"] = _history(
            meta, {"op": "add", "dataset": str(root), "split": split, "places": len(items)}
        )
        new_meta["build_seconds"] = {
            "extract": round(extract_s, 3),
            "total": round(time.perf_counter() - t0, 3),
        }
        write_meta(tmp, new_meta)
        del descriptors, old
    log.info(
        "added %d places to map '%s' (now %d, revision %d)",
        len(items),
        map_path,
        len(places),
        new_meta["revision"],
    )
    return len(items)


def places_to_remove(
    places: Places, images: Sequence[str] = (), region: Sequence[float] | None = None
) -> np.ndarray:
    """Boolean mask ``(N,)`` of the places whose image matches one of ``images`` (shell patterns, as in
    places.csv) or whose position lies in ``region`` = (easting_min, northing_min, easting_max,
    northing_max) in metres (edges included)."""
    mask = np.zeros(len(places), dtype=bool)
    for pattern in images:
        mask |= np.fromiter(
            (fnmatch.fnmatchcase(image, pattern) for image in places.images), bool, len(places)
        )
    if region is not None:
        if len(region) != 4 or not (region[0] <= region[2] and region[1] <= region[3]):
            raise ConfigError(
                f"region must be easting_min,northing_min,easting_max,northing_max with min <= max, got {tuple(region)}"
            )
        e, n = places.utm[:, 0], places.utm[:, 1]
        mask |= (e >= region[0]) & (e <= region[2]) & (n >= region[1]) & (n <= region[3])
    return mask


@holds_output_lock("map_path", "map")
def remove_from_map(
    map_path: str | Path,
    images: Sequence[str] = (),
    region: Sequence[float] | None = None,
    faiss_threads: int | None = None,
    progress: Callable | None = None,
) -> int:
    """Remove the places matching ``images`` (shell patterns over places.csv's image column) or lying in
    ``region`` (UTM box, metres) from the map at ``map_path``; returns how many were removed.

    Nothing matching, or everything matching, is an error (delete the map instead)."""
    map_path = Path(map_path)
    if not images and region is None:
        raise ConfigError("say what to remove: --image PATTERN (repeatable) and/or --region E0,N0,E1,N1")
    meta = read_map_meta(map_path)
    places = Places.read_csv(map_path / PLACES_FILE)
    remove = places_to_remove(places, images, region)
    what = " and ".join(
        ([f"images {list(images)}"] if images else [])
        + ([f"region {tuple(region)}"] if region is not None else [])
    )
    if not remove.any():
        raise ConfigError(f"no place of map '{map_path}' matches {what}; nothing removed")
    if remove.all():
        raise ConfigError(
            f"{what} matches all {len(places)} places of map '{map_path}'; delete the map instead of emptying it"
        )
    set_threads(faiss_threads)
    t0 = time.perf_counter()
    keep = np.flatnonzero(~remove)  # (K,) rows, in order: place ids stay contiguous
    faiss = faiss_module()
    index = faiss.read_index(str(map_path / INDEX_FILE))
    old = _map_descriptors(map_path, meta, index)
    kept = places.take(keep)
    with atomic_directory(map_path, overwrite=True) as tmp:
        embedded = _embedded_root(meta)
        if embedded is not None:
            _carry_images(map_path / embedded, tmp / embedded, kept.images)
        if _holds_descriptors(meta):
            descriptors = np.ascontiguousarray(old[keep])  # (K, D) float32
            index.reset()
            index.add(descriptors)
        else:
            descriptors = np.lib.format.open_memmap(
                tmp / DESCRIPTORS_FILE, mode="w+", dtype=np.float16, shape=(len(keep), index.d)
            )
            _copy_rows(descriptors, 0, old, keep)
            index.reset()  # drops the codes, keeps the trained quantisers (IVF + PQ codebooks, SQ ranges)
            add_in_chunks(index, descriptors, progress)
        new_meta = write_map_files(
            tmp,
            descriptors,
            kept,
            map_config(meta),
            name=meta["name"],
            model=meta["model"],
            dataset=meta["dataset"],
            geo=meta.get("geo"),
            index=index,
            index_info=meta["index"],
            revision=int(meta.get("revision", 0)) + 1,
            progress=progress,
            projection=read_projection(map_path, meta),
        )
        new_meta["history"] = _history(meta, {"op": "remove", "what": what, "places": int(remove.sum())})
        new_meta["build_seconds"] = {"total": round(time.perf_counter() - t0, 3)}
        write_meta(tmp, new_meta)
        del descriptors, old
    log.info("removed %d places from map '%s' (%d left)", int(remove.sum()), map_path, len(keep))
    return int(remove.sum())
