"""netvlad-kit runtime: lean place recognition (no torch) from frames to positions.

The pipeline, one package per step a frame goes through::

    sources/     camera, RTSP, video, folder, ROS bag -> Frame (BGR)         open_source
    model/       card, preprocessing, backends: pixels -> descriptors        open_backend, ModelCard
    map/         the map: index, projection, sequence matching, verdict      open_map, build_map
    localize/    the Localizer: frame -> Localization (position, trust)      Localizer, LocalizerConfig
    outputs/     results bag, overlay video, live web view
    cli/         netvlad-map, netvlad-run (run_session), console and options
    ros2/        ROS 2 over DDS: netvlad-ros2, netvlad-ros2-map, netvlad-ros2-play
    datasets/    place-recognition datasets with ground truth (and geo)      open_dataset
    evaluation/  recall@N, precision-recall, the raw-pixel baseline

beside the pieces every step shares: :mod:`runtime.errors`, :mod:`runtime.files` (atomic writes, output
locks), :mod:`runtime.optional` (optional imports) and :mod:`runtime.protocol` (the paper's radii).

The names below are the public API: ``from runtime import Localizer, LocalizerConfig, open_source,
open_map``. Importing this package is cheap and side-effect free: each name loads its module (and that
module's heavy dependencies) when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runtime.errors import NetVLADKitError

# public name -> the module that defines it
_PUBLIC = {
    "Backend": "runtime.model.backends.base",
    "open_backend": "runtime.model.backends",
    "ModelCard": "runtime.model.card",
    "read_card": "runtime.model.card",
    "Preprocessor": "runtime.model.preprocess",
    "Frame": "runtime.sources",
    "FrameSource": "runtime.sources",
    "open_source": "runtime.sources",
    "PlaceMap": "runtime.map",
    "MapConfig": "runtime.map",
    "open_map": "runtime.map",
    "build_map": "runtime.map",
    "add_to_map": "runtime.map",
    "remove_from_map": "runtime.map",
    "TemporalConfig": "runtime.map.sequence",
    "Localizer": "runtime.localize",
    "LocalizerConfig": "runtime.localize",
    "Localization": "runtime.localize",
    "RunConfig": "runtime.cli.session",
    "run_session": "runtime.cli.session",
    "PlaceDataset": "runtime.datasets",
    "open_dataset": "runtime.datasets",
    "recall_at_n": "runtime.evaluation",
}

if TYPE_CHECKING:
    from runtime.cli.session import RunConfig, run_session
    from runtime.datasets import PlaceDataset, open_dataset
    from runtime.evaluation import recall_at_n
    from runtime.localize import Localization, Localizer, LocalizerConfig
    from runtime.map import MapConfig, PlaceMap, add_to_map, build_map, open_map, remove_from_map
    from runtime.map.sequence import TemporalConfig
    from runtime.model.backends import open_backend
    from runtime.model.backends.base import Backend
    from runtime.model.card import ModelCard, read_card
    from runtime.model.preprocess import Preprocessor
    from runtime.sources import Frame, FrameSource, open_source


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = [  # the names of _PUBLIC and NetVLADKitError (a test checks they agree)
    "Backend",
    "Frame",
    "FrameSource",
    "Localization",
    "Localizer",
    "LocalizerConfig",
    "MapConfig",
    "ModelCard",
    "NetVLADKitError",
    "PlaceDataset",
    "PlaceMap",
    "Preprocessor",
    "RunConfig",
    "TemporalConfig",
    "add_to_map",
    "build_map",
    "open_backend",
    "open_dataset",
    "open_map",
    "open_source",
    "read_card",
    "recall_at_n",
    "remove_from_map",
    "run_session",
]
__version__ = "0.1.0"
