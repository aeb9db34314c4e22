"""The map: geotagged images indexed by their descriptors (a directory written atomically).

``index.faiss`` (FAISS, inner product), ``places.csv`` (id, image, easting, northing, heading, time,
split; row i = FAISS id i) and ``map.json`` (model fingerprint, descriptor dimension, metric, index type,
count, the calibrated unknown-place threshold, the dataset root the image paths are relative to).
"""

from runtime.map.build import build_map, extract_descriptors
from runtime.map.config import MapConfig
from runtime.map.places import Places
from runtime.map.store import PlaceMap, open_map, read_map_meta

__all__ = ["MapConfig", "PlaceMap", "Places", "build_map", "extract_descriptors", "open_map", "read_map_meta"]
