"""``build_map_from_bag``: a map straight from a robot's drive (a ROS bag with a camera and a GPS topic).

A separate input path in front of :func:`runtime.map.build.build_map`: the drive's keyframes
(:func:`runtime.datasets.rosbag.read_drive`) become an ordinary :class:`PlaceDataset`, and the builder copies
their images into the map (``embed_images``), so the map is self-contained and keeps the bag's UTM zone.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from runtime.datasets.rosbag import DriveConfig, dataset_from_drive, read_drive
from runtime.map.build import build_map
from runtime.map.config import MapConfig


def build_map_from_bag(
    model,
    bag: str | Path,
    drive: DriveConfig,
    out: str | Path,
    config: MapConfig | None = None,
    progress: Callable | None = None,
    backend: str = "auto",
) -> Path:
    """Build the map at ``out`` from the keyframes of ``bag`` (see :class:`DriveConfig`); returns ``out``."""
    bag, out = Path(bag), Path(out)
    config = (config or MapConfig()).replace(embed_images=True)
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"map '{out}' already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.keyframes-", dir=out.parent))
    try:
        keyframes = read_drive(bag, drive, staging, progress=progress)
        dataset = dataset_from_drive(keyframes, bag.stem or bag.name, bag)
        return build_map(model, dataset, out, config, progress=progress, backend=backend)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
