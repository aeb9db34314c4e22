"""The one dataset object every source yields: database and query images with metric positions.

Positions are UTM metres ``(easting, northing)``; ground truth is purely geometric (training/README.md, "The protocol"):
potential positives within 10 m, definite negatives beyond 25 m, evaluation positives within 25 m.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import DatasetError
from runtime.protocol import EVAL_RADIUS_M, NEGATIVE_RADIUS_M, POSITIVE_RADIUS_M, Split
from runtime.sources import decode_bgr

logger = logging.getLogger(__name__)


def _as_positions(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DatasetError(f"{what} positions must have shape (N, 2) (easting, northing), got {arr.shape}")
    return arr


def neighbours_within(db_utm: np.ndarray, q_utm: np.ndarray, radius_m: float) -> list[np.ndarray]:
    """For each query, the database indices within ``radius_m`` metres, nearest first (ties: lower index).

    Sweeps the database sorted by easting, so memory stays O(N_db + N_q) even for 250k-image maps.
    Shapes: ``db_utm (N, 2)``, ``q_utm (M, 2)`` -> M int64 arrays.
    """
    order = np.argsort(db_utm[:, 0], kind="stable")
    east_sorted = db_utm[order, 0]
    lo = np.searchsorted(east_sorted, q_utm[:, 0] - radius_m, side="left")
    hi = np.searchsorted(east_sorted, q_utm[:, 0] + radius_m, side="right")
    r2 = float(radius_m) ** 2
    result: list[np.ndarray] = []
    for qi in range(q_utm.shape[0]):
        cand = order[lo[qi] : hi[qi]]
        d2 = np.sum((db_utm[cand] - q_utm[qi]) ** 2, axis=1)
        keep = d2 <= r2
        cand, d2 = cand[keep], d2[keep]
        result.append(cand[np.lexsort((cand, d2))].astype(np.int64))
    return result


@dataclass(frozen=True, eq=False)  # arrays inside: identity equality, hashable
class PlaceDataset:
    """Geotagged database and query images of one place-recognition dataset.

    ``root``: image paths in ``db_images`` / ``q_images`` are relative to it.
    ``db_utm`` ``(N_db, 2)`` and ``q_utm`` ``(N_q, 2)``: float64 easting, northing in metres.
    ``db_heading`` / ``q_heading``: degrees (clockwise from north) or None; ``db_time`` / ``q_time``: seconds
    or None. ``info``: where it came from (``{"source": "synth" | "generic" | "aligned" | "pittsburgh" |
    "tokyo247", ...}``, plus e.g. ``utm_zone``).
    ``unmapped_images`` / ``unmapped_utm`` ``(N_u, 2)``: queries of places that are not in the database
    (none within 25 m), apart from ``q_images``: recall never counts them; the "unknown place" verdict is
    measured on them (:mod:`runtime.evaluation.metrics`). Empty for most datasets.
    """

    name: str
    root: Path
    db_images: tuple[str, ...]
    db_utm: np.ndarray
    q_images: tuple[str, ...]
    q_utm: np.ndarray
    db_heading: np.ndarray | None = None
    q_heading: np.ndarray | None = None
    db_time: np.ndarray | None = None
    q_time: np.ndarray | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    unmapped_images: tuple[str, ...] = ()
    unmapped_utm: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "db_images", tuple(str(p) for p in self.db_images))
        object.__setattr__(self, "q_images", tuple(str(p) for p in self.q_images))
        object.__setattr__(self, "db_utm", _as_positions(self.db_utm, f"{self.name}: database"))
        object.__setattr__(self, "q_utm", _as_positions(self.q_utm, f"{self.name}: queries"))
        object.__setattr__(self, "unmapped_images", tuple(str(p) for p in self.unmapped_images))
        unmapped = np.zeros((0, 2)) if self.unmapped_utm is None else self.unmapped_utm
        object.__setattr__(self, "unmapped_utm", _as_positions(unmapped, f"{self.name}: unmapped"))
        for split, images, utm in (
            ("database", self.db_images, self.db_utm),
            ("queries", self.q_images, self.q_utm),
            ("unmapped", self.unmapped_images, self.unmapped_utm),
        ):
            if len(images) != utm.shape[0]:
                raise DatasetError(
                    f"{self.name}: {split} has {len(images)} images but {utm.shape[0]} positions; "
                    "every image needs exactly one position"
                )
            if not np.all(np.isfinite(utm)):
                raise DatasetError(f"{self.name}: {split} positions contain NaN or infinity")
        for attr, n in (
            ("db_heading", self.num_db),
            ("q_heading", self.num_queries),
            ("db_time", self.num_db),
            ("q_time", self.num_queries),
        ):
            value = getattr(self, attr)
            if value is not None:
                arr = np.asarray(value, dtype=np.float64).reshape(-1)
                if arr.shape[0] != n:
                    raise DatasetError(f"{self.name}: {attr} has {arr.shape[0]} values, expected {n}")
                object.__setattr__(self, attr, arr)
        object.__setattr__(self, "info", dict(self.info))

    @property
    def num_db(self) -> int:
        """Number of database images."""
        return len(self.db_images)

    @property
    def num_queries(self) -> int:
        """Number of query images."""
        return len(self.q_images)

    @property
    def num_unmapped(self) -> int:
        """Number of unmapped-place queries."""
        return len(self.unmapped_images)

    def _images(self, split: str) -> tuple[str, ...]:
        if split in ("database", "db"):
            return self.db_images
        if split in ("queries", "query", "q"):
            return self.q_images
        if split == "unmapped":
            return self.unmapped_images
        raise ValueError(f"split must be 'database', 'queries' or 'unmapped', got {split!r}")

    def image_path(self, split: Split, index: int) -> Path:
        """Absolute path of image ``index`` of ``split`` ("database" or "queries")."""
        return self.root / self._images(split)[index]

    def read_image(self, split: Split, index: int) -> np.ndarray:
        """Decode image ``index`` of ``split``: uint8 ``(H, W, 3)`` RGB, a new array owned by the caller.

        Raises :class:`DatasetError` naming the file when it is missing or cannot be decoded.
        """
        return read_rgb(self.image_path(split, index))

    def positives(self, radius_m: float = EVAL_RADIUS_M) -> list[np.ndarray]:
        """Per query, the database indices within ``radius_m`` metres, nearest first (cached per radius)."""
        key = ("positives", float(radius_m))
        if key not in self._cache:
            self._cache[key] = neighbours_within(self.db_utm, self.q_utm, float(radius_m))
        return self._cache[key]

    def potential_positives(self) -> list[np.ndarray]:
        """Training positives (training/README.md, "The protocol"): per query, database indices within 10 m, nearest first."""
        return self.positives(POSITIVE_RADIUS_M)

    def definite_negatives(self, query_index: int) -> np.ndarray:
        """Training negatives (training/README.md, "The protocol"): database indices farther than 25 m from query ``query_index``."""
        mask = np.ones(self.num_db, dtype=bool)
        mask[self.positives(NEGATIVE_RADIUS_M)[query_index]] = False
        return np.flatnonzero(mask)

    def select(
        self,
        db_indices: Any = None,
        query_indices: Any = None,
        name: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> PlaceDataset:
        """A copy holding only the database images ``db_indices`` and queries ``query_indices`` (in that
        order; None keeps a whole split), with the same root; ``name`` and ``info`` replace this one's."""

        def take(values: Any, idx: np.ndarray | None) -> Any:
            return values if values is None or idx is None else np.asarray(values)[idx]

        db = None if db_indices is None else np.asarray(db_indices, dtype=np.int64)
        q = None if query_indices is None else np.asarray(query_indices, dtype=np.int64)
        return dataclasses.replace(
            self,
            name=self.name if name is None else name,
            db_images=self.db_images if db is None else tuple(self.db_images[i] for i in db),
            db_utm=take(self.db_utm, db),
            db_heading=take(self.db_heading, db),
            db_time=take(self.db_time, db),
            q_images=self.q_images if q is None else tuple(self.q_images[i] for i in q),
            q_utm=take(self.q_utm, q),
            q_heading=take(self.q_heading, q),
            q_time=take(self.q_time, q),
            info=self.info if info is None else info,
        )

    def without_unmatched_queries(self, radius_m: float = EVAL_RADIUS_M) -> PlaceDataset:
        """A copy without the queries that have no database image within ``radius_m`` (count logged)."""
        keep = np.array([len(p) > 0 for p in self.positives(radius_m)], dtype=bool)
        dropped = int(np.count_nonzero(~keep))
        if dropped == 0:
            return self
        logger.info(
            "%s: dropped %d of %d queries with no database image within %g m",
            self.name,
            dropped,
            self.num_queries,
            radius_m,
        )
        info = dict(self.info)
        info["dropped_unmatched_queries"] = int(info.get("dropped_unmatched_queries", 0)) + dropped
        return self.select(query_indices=np.flatnonzero(keep), info=info)

    def __repr__(self) -> str:
        unmapped = f", num_unmapped={self.num_unmapped}" if self.num_unmapped else ""
        return (
            f"PlaceDataset(name={self.name!r}, root='{self.root}', num_db={self.num_db}, "
            f"num_queries={self.num_queries}{unmapped}, source={self.info.get('source')!r})"
        )


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 ``(H, W, 3)`` RGB; :class:`DatasetError` naming the file otherwise."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image '{path}' does not exist; check the dataset root and the image column")
    image = decode_bgr(path)
    if image is None:
        raise DatasetError(
            f"image '{path}' cannot be decoded (expected a PNG or JPEG file); replace or remove it"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
