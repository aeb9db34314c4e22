"""Opening a map: :func:`open_map` checks it against the model that will query it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime.datasets.geo import UtmZone
from runtime.errors import ArtifactError, MapMismatchError
from runtime.map.build import (
    DESCRIPTORS_FILE,
    INDEX_FILE,
    MAP_FORMAT_VERSION,
    META_FILE,
    PLACES_FILE,
    PROJECTION_FILE,
    index_file_fingerprint,
)
from runtime.map.index import (
    RerankedIndex,
    faiss_module,
    search,
    set_threads,
    stored_vectors,
    to_gpu,
    use_gpu,
)
from runtime.map.places import Places
from runtime.map.whitening import MapProjection
from runtime.model.card import ModelCard

log = logging.getLogger(__name__)


def read_map_meta(path: str | Path) -> dict[str, Any]:
    """``map.json`` of the map at ``path`` (ArtifactError if missing or unreadable)."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise ArtifactError(
            f"'{path}' is not a netvlad-kit map (no {META_FILE}); build one with: "
            "netvlad-map build --model MODEL --dataset DIR --out MAP"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"'{meta_path}' is not valid JSON ({exc}); rebuild the map") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(
            f"'{meta_path}' holds a JSON {type(meta).__name__}, not a map's metadata; rebuild the map"
        )
    version = meta.get("format_version")
    if version != MAP_FORMAT_VERSION:
        raise ArtifactError(
            f"map '{path}' has format version {version!r}; this netvlad-kit reads version {MAP_FORMAT_VERSION}; "
            "rebuild it with netvlad-map build"
        )
    check_meta_fields(meta, meta_path)
    return meta


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


# the fields every reader of map.json relies on: (path, check, what it must be)
_REQUIRED_FIELDS = (
    (("count",), lambda v: _is_int(v, 0), "an integer >= 0"),
    (("descriptor_dim",), lambda v: _is_int(v, 1), "an integer >= 1"),
    (("model",), lambda v: isinstance(v, dict), "an object"),
    (("model", "fingerprint"), lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    (("dataset",), lambda v: isinstance(v, dict), "an object"),
    (("dataset", "root"), lambda v: isinstance(v, str), "a string"),
    (("index",), lambda v: isinstance(v, dict), "an object"),
    (("calibration",), lambda v: isinstance(v, dict), "an object"),
    (("projection",), lambda v: isinstance(v, dict), "an object"),
    (("projection", "dim"), lambda v: _is_int(v, 1), "an integer >= 1"),
)


def check_meta_fields(meta: dict[str, Any], meta_path: Path) -> None:
    """ArtifactError naming the first field of ``map.json`` that is missing or of the wrong kind."""
    for keys, ok, what in _REQUIRED_FIELDS:
        value: Any = meta
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not ok(value):
            raise ArtifactError(
                f"'{meta_path}' field '{'.'.join(keys)}' must be {what}, found {value!r}; the map is damaged "
                "or was edited by hand: rebuild it with netvlad-map build"
            )


class PlaceMap:
    """An opened map: FAISS index + places + metadata + its projection. Thread-safe for searching.

    :meth:`search` takes the model's descriptors and applies the map's projection first (:meth:`prepare`:
    centred, and whitened when the map was built with it), so callers never see the index's own space.
    """

    def __init__(self, path: Path, meta: dict, index, places: Places, projection: MapProjection) -> None:
        self.path = path
        self.meta = meta
        self.index = index
        self.places = places
        self.projection = projection
        self._vectors = None

    @property
    def revision(self) -> int:
        """How many times the map was changed in place (``netvlad-map add/remove``) since it was built."""
        return int(self.meta.get("revision", 0))

    @property
    def descriptor_dim(self) -> int:
        return int(self.meta["descriptor_dim"])

    @property
    def dataset_root(self) -> Path:
        """Where the place images are: absolute, or relative to the map (a self-contained map)."""
        return self.path / self.meta["dataset"]["root"]  # an absolute root replaces the map's path

    @property
    def geo(self) -> UtmZone | None:
        """The map's UTM zone when it was built from lat/lon (positions convert back to lat/lon), else None."""
        return UtmZone.from_meta(self.meta.get("geo"))

    def __len__(self) -> int:
        return len(self.places)

    def prepare(self, descriptors: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
        """The model's descriptors ``(M, D)`` in the index's space ``(M, d)``: centred on ``centre (D,)`` (None:
        the map's mean; a query stream's own: :mod:`runtime.localize.adapt`), whitened when the map has it."""
        return self.projection.apply(descriptors, centre)

    def search(
        self, descriptors: np.ndarray, k: int, centre: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Model ``descriptors (M, D) float32`` -> ``(similarities (M, k) float32, place ids (M, k) int64)``."""
        return self.search_prepared(self.prepare(descriptors, centre), k)

    def search_prepared(self, prepared: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for descriptors already in the index's space (:meth:`prepare`)."""
        return search(self.index, prepared, k)

    def descriptors(self, ids: np.ndarray) -> np.ndarray:
        """The stored descriptors of places ``ids (M,) int64`` -> ``(M, D) float32`` (exact for a flat index,
        float16-rounded for fp16 and for a re-ranked index, the decoded approximation for sq8 or IVF-PQ
        codes alone). Sequence matching reads them around its candidates."""
        if self._vectors is None:
            self._vectors = stored_vectors(self.index)
        return self._vectors(np.asarray(ids, dtype=np.int64))

    def image_path(self, place_id: int) -> Path:
        return self.dataset_root / self.places.images[place_id]


def open_descriptors(path: str | Path) -> np.ndarray:
    """The full descriptors ``(N, D) float16`` of the compressed map at ``path``, memory-mapped read-only."""
    file = Path(path) / DESCRIPTORS_FILE
    if not file.is_file():
        raise ArtifactError(
            f"map '{path}' re-ranks against '{DESCRIPTORS_FILE}', which is missing; rebuild the map "
            "(or build it with --rerank 0 to search the compressed codes alone)"
        )
    try:
        return np.load(file, mmap_mode="r")
    except ValueError as exc:
        raise ArtifactError(f"'{file}' cannot be read ({exc}); rebuild the map") from exc


def open_map(
    path: str | Path,
    card: ModelCard | None = None,
    model_name: str = "the model",
    override: bool = False,
    gpu: str = "auto",
    threads: int | None = 1,
) -> PlaceMap:
    """Open the map at ``path``; with ``card``, check it was built by the same weights and dimension.

    A mismatch raises MapMismatchError naming the map, both models and the rebuild command, unless
    ``override`` (then it only logs a warning; a dimension mismatch is always an error). ``threads``:
    faiss's OpenMP threads (process-wide; 1 suits one query at a time beside inference; None: leave as is).
    """
    path = Path(path)
    meta = read_map_meta(path)
    if card is not None:
        built = meta["model"]["fingerprint"]
        dim = int(meta["descriptor_dim"])
        if built != card.weights_fingerprint or dim != card.descriptor_dim:
            message = (
                f"map '{path}' was built with model {built} ({dim}-D) but '{model_name}' is "
                f"{card.weights_fingerprint} ({card.descriptor_dim}-D); rebuild it with: netvlad-map build "
                f"--model {model_name} --dataset {meta['dataset']['root']} --out {path} --overwrite"
            )
            if not override or dim != card.descriptor_dim:
                raise MapMismatchError(message)
            log.warning("%s (overridden: results may be meaningless)", message)
    for name in (INDEX_FILE, PLACES_FILE):
        if not (path / name).is_file():
            raise ArtifactError(
                f"map '{path}' is incomplete: '{name}' is missing; rebuild it with netvlad-map build"
            )
    recorded = meta.get("index_file")  # maps written before this check have none
    if recorded is not None and index_file_fingerprint(path / INDEX_FILE) != recorded:
        raise ArtifactError(
            f"'{path / INDEX_FILE}' is not the index this map was built with (map.json records {recorded}, "
            f"the file is {index_file_fingerprint(path / INDEX_FILE)}): it was replaced, perhaps by another map's "
            "or model's; rebuild the map with netvlad-map build"
        )
    faiss = faiss_module()
    set_threads(threads)
    try:
        index = faiss.read_index(str(path / INDEX_FILE))
    except RuntimeError as exc:
        raise ArtifactError(
            f"'{path / INDEX_FILE}' cannot be read by faiss ({exc}); rebuild the map"
        ) from exc
    places = Places.read_csv(path / PLACES_FILE)
    projection = read_projection(path, meta)
    index_dim = projection.dim
    if index.ntotal != len(places) or index.ntotal != int(meta["count"]) or index.d != index_dim:
        raise ArtifactError(
            f"map '{path}' is inconsistent: index has {index.ntotal} x {index.d}-D, places.csv {len(places)} rows, "
            f"map.json {meta['count']} x {index_dim}-D; rebuild it with netvlad-map build"
        )
    if use_gpu(gpu):
        index = to_gpu(index)
    rerank = meta["index"].get("rerank")
    if rerank:
        descriptors = open_descriptors(path)
        if descriptors.shape != (index.ntotal, index.d):
            raise ArtifactError(
                f"map '{path}' is inconsistent: {DESCRIPTORS_FILE} is {descriptors.shape}, the index "
                f"{index.ntotal} x {index.d}-D; rebuild it with netvlad-map build"
            )
        index = RerankedIndex(index, descriptors, int(rerank["candidates"]))
    log.info(
        "opened map '%s': %d places, %s%s",
        path,
        len(places),
        meta["index"]["factory"],
        f", top {rerank['candidates']} re-ranked exactly" if rerank else "",
    )
    return PlaceMap(path, meta, index, places, projection)


def read_projection(path: Path, meta: dict) -> MapProjection:
    """The map's projection (its mean, and its whitening when fitted), checked against the model the map
    was built with."""
    described = meta["projection"]
    if not (path / PROJECTION_FILE).is_file():
        raise ArtifactError(
            f"map '{path}' is incomplete: '{PROJECTION_FILE}' is missing; rebuild it with netvlad-map build"
        )
    projection = MapProjection.load(path / PROJECTION_FILE)
    if (
        projection.fingerprint != meta["model"]["fingerprint"]
        or projection.in_dim != int(meta["descriptor_dim"])
        or projection.dim != int(described["dim"])
    ):
        raise ArtifactError(
            f"map '{path}': '{PROJECTION_FILE}' ({projection.in_dim} -> {projection.dim}-D, model "
            f"{projection.fingerprint}) does not belong to this map (model {meta['model']['fingerprint']}, "
            f"{meta['descriptor_dim']} -> {described['dim']}-D); rebuild it with netvlad-map build"
        )
    return projection
