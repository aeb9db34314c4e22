"""Aligned sequences: two folders whose same-named files show the same place (e.g. Nordland).

There are no GPS tags, only frame alignment, so metric positions are derived from the frame index along
a straight line: frame ``i`` (rank in the sorted list of names both folders share) sits at easting
``i * spacing_m``. The spacing is chosen so that the metric thresholds reproduce the frame protocol:

- ``positives(25.0)`` == the frames within ``window`` of the same index (soft match, default +-1),
- ``positives(10.0)`` == the same frame (strict match), while ``spacing_m > 10``.

With the default ``window=1``: ``spacing_m = 20`` (1 frame = 20 m <= 25 m < 40 m = 2 frames).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from runtime.datasets.place import PlaceDataset
from runtime.errors import DatasetError
from runtime.protocol import EVAL_RADIUS_M, IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

# Where the Nordland sample lives, relative to the repository root (never copied into it).
NORDLAND_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "nordland"


def frame_spacing_m(window: int) -> float:
    """Metres between consecutive frames so that a 25 m radius covers exactly +-``window`` frames.

    ``25 / (window + 0.25)``: window 1 -> 20 m, window 2 -> 11.1 m (both still > 10 m, so the 10 m
    potential positives are the same frame only); window 3 -> 7.7 m.
    """
    if window < 0:
        raise DatasetError(f"the positive window must be >= 0 frames, got {window}")
    return EVAL_RADIUS_M / (window + 0.25)


def _list_images(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DatasetError(f"aligned sequence folder '{folder}' does not exist or is not a directory")
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_exclusions(path: Path) -> set[str]:
    if not path.is_file():
        raise DatasetError(f"exclusion list '{path}' does not exist; give one file name per line")
    return {
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    }


def _frame_seconds(names: list[str]) -> np.ndarray | None:
    numbers = []
    for name in names:
        match = re.search(r"(\d+)\D*$", name)
        if match is None:
            return None
        numbers.append(float(match.group(1)))
    return np.asarray(numbers, dtype=np.float64)


def load_aligned(
    db_dir: str | Path,
    q_dir: str | Path,
    *,
    window: int = 1,
    exclude: str | Path | set[str] | None = None,
    name: str | None = None,
    frame_seconds: float | None = None,
) -> PlaceDataset:
    """Load two frame-aligned image folders as a :class:`PlaceDataset` (see the module docstring).

    ``db_dir`` / ``q_dir``: the database and query sequences; only names present in both are used, in
    sorted order. ``window``: soft-match half-width in frames (sets the metric frame spacing).
    ``exclude``: file names (or a file listing them) left out of the queries (the database keeps them).
    ``frame_seconds``: if given, timestamps = trailing number in the file name x this factor.
    """
    db_dir, q_dir = Path(db_dir).resolve(), Path(q_dir).resolve()
    db_names, q_names = _list_images(db_dir), _list_images(q_dir)
    common = sorted(set(db_names) & set(q_names))
    if not common:
        raise DatasetError(
            f"aligned folders '{db_dir}' ({len(db_names)} images) and '{q_dir}' ({len(q_names)} images) share no "
            "file name; the same name must show the same place in both"
        )
    only = (len(db_names) - len(common)) + (len(q_names) - len(common))
    if only:
        logger.warning("%d images are in only one of '%s' and '%s' and were ignored", only, db_dir, q_dir)
    excluded = (
        exclude if isinstance(exclude, set) else (_read_exclusions(Path(exclude)) if exclude else set())
    )
    spacing = frame_spacing_m(window)
    positions = np.zeros((len(common), 2), dtype=np.float64)
    positions[:, 0] = np.arange(len(common)) * spacing  # (N, 2): easting = frame rank x spacing
    q_keep = np.array([n not in excluded for n in common], dtype=bool)
    if not q_keep.any():
        raise DatasetError(f"every query of '{q_dir}' is excluded; the query split is empty")
    root = Path(*_common_parent(db_dir, q_dir))
    db_rel = tuple(str((db_dir / n).relative_to(root)) for n in common)
    q_rel = tuple(str((q_dir / n).relative_to(root)) for n, k in zip(common, q_keep, strict=True) if k)
    times = _frame_seconds(common) if frame_seconds is not None else None
    if times is not None:
        times = times * frame_seconds
    dataset = PlaceDataset(
        name=name or f"{db_dir.name}-vs-{q_dir.name}",
        root=root,
        db_images=db_rel,
        db_utm=positions,
        q_images=q_rel,
        q_utm=positions[q_keep],
        db_time=times,
        q_time=None if times is None else times[q_keep],
        info={
            "source": "aligned",
            "window_frames": int(window),
            "frame_spacing_m": spacing,
            "excluded_queries": int(np.count_nonzero(~q_keep)),
            "query_frame_index": np.flatnonzero(q_keep).tolist(),
        },
    )
    logger.info(
        "loaded %s: %d database, %d query frames (%d excluded), %.1f m per frame",
        dataset.name,
        dataset.num_db,
        dataset.num_queries,
        int(np.count_nonzero(~q_keep)),
        spacing,
    )
    return dataset


def _common_parent(a: Path, b: Path) -> tuple[str, ...]:
    a_parts, b_parts = a.parts, b.parts
    shared = []
    for x, y in zip(a_parts, b_parts, strict=False):
        if x != y:
            break
        shared.append(x)
    return tuple(shared) or ("/",)


def load_nordland(root: str | Path | None = None, window: int = 1) -> PlaceDataset:
    """Nordland, the usual protocol: database = ``summer/``, queries = ``winter/``, minus ``near_uniform.txt``.

    Frames are every 10th second of the 1-fps footage, so timestamps are the frame number in seconds.
    """
    root = Path(root) if root is not None else NORDLAND_DIR
    if not root.exists():
        where = "" if root != NORDLAND_DIR else " (where 'nordland' looks for it)"
        raise DatasetError(
            f"the Nordland sample is not at '{root}'{where}: the folder does not exist. Put the sample "
            "(summer/ and winter/ image folders) there, or name its folder with --dataset nordland:DIR"
        )
    if not (root / "summer").is_dir() or not (root / "winter").is_dir():
        raise DatasetError(
            f"'{root}' is not the Nordland sample (expected summer/ and winter/ folders inside)"
        )
    exclude = root / "near_uniform.txt"
    dataset = load_aligned(
        root / "summer",
        root / "winter",
        window=window,
        exclude=exclude if exclude.is_file() else None,
        name="nordland-winter-vs-summer",
        frame_seconds=1.0,
    )
    return dataclasses.replace(dataset, info=dict(dataset.info, dataset="nordland"))
