"""The map: geotagged images indexed by their descriptors (a directory written atomically).

``index.faiss`` (FAISS, inner product), ``places.csv`` (id, image, easting, northing, heading, time,
split; row i = FAISS id i) and ``map.json`` (model fingerprint, descriptor dimension, metric, index type,
count, the calibrated unknown-place threshold, the dataset root the image paths are relative to, the
revision counting in-place changes). A map of codes (``sq8``, IVF-PQ) also keeps ``descriptors.f16.npy``, the
full descriptors (N, D) float16 that search memory-maps to re-rank the index's candidates exactly.
Maps grow and shrink in place with :func:`add_to_map` / :func:`remove_from_map`.

The package owns everything that is stored with a map or fitted to it: building it from a dataset or a
bag (descriptors through :mod:`runtime.model`), the FAISS index and its search (:mod:`runtime.map.index`),
the map's projection (:mod:`runtime.map.whitening`), sequence matching along the map's route order
(:mod:`runtime.map.sequence`) and the unknown-place verdict calibrated on the map's own places
(:mod:`runtime.map.calibrate`, which plays stretches of the map through the sequence matcher; both live
here so that building a map needs nothing from :mod:`runtime.localize`). May import model, sources,
datasets and the shared top-level modules; never localize, outputs or the command line.
"""

from runtime.map.build import build_map, extract_descriptors
from runtime.map.config import MapConfig
from runtime.map.places import Places
from runtime.map.store import PlaceMap, open_map, read_map_meta
from runtime.map.update import add_to_map, remove_from_map

__all__ = [
    "MapConfig",
    "PlaceMap",
    "Places",
    "add_to_map",
    "build_map",
    "extract_descriptors",
    "open_map",
    "read_map_meta",
    "remove_from_map",
]
