"""The places table of a map: one row per indexed image (CSV: id, image, easting, northing, heading, time)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError

COLUMNS = ("id", "image", "easting", "northing", "heading", "time", "split")


@dataclass(frozen=True)
class Places:
    """Geotagged map images; row ``i`` is FAISS id ``i``. Positions in metres (UTM easting, northing)."""

    images: tuple[str, ...]  # relative to the dataset root recorded in map.json
    utm: np.ndarray  # (N, 2) float64
    heading: np.ndarray  # (N,) float64 degrees, NaN where unknown
    time: np.ndarray  # (N,) float64 seconds, NaN where unknown
    split: tuple[str, ...]  # "database" or "queries": where each image came from

    def __len__(self) -> int:
        return len(self.images)

    def take(self, rows: np.ndarray) -> Places:
        """The places at ``rows`` (int indices or a boolean mask), in that order."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, np.int64)
        return Places(
            tuple(self.images[i] for i in rows),
            self.utm[rows],
            self.heading[rows],
            self.time[rows],
            tuple(self.split[i] for i in rows),
        )

    def concat(self, other: Places) -> Places:
        """These places followed by ``other``'s (ids of ``other`` shift by ``len(self)``)."""
        return Places(
            self.images + other.images,
            np.concatenate([self.utm, other.utm]),
            np.concatenate([self.heading, other.heading]),
            np.concatenate([self.time, other.time]),
            self.split + other.split,
        )

    def with_images(self, images: tuple[str, ...]) -> Places:
        return Places(images, self.utm, self.heading, self.time, self.split)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i, image in enumerate(self.images):
            e, n = self.utm[i]
            h, t = self.heading[i], self.time[i]
            writer.writerow(
                [
                    i,
                    image,
                    f"{e:.3f}",
                    f"{n:.3f}",
                    "" if math.isnan(h) else f"{h:.2f}",
                    "" if math.isnan(t) else f"{t:.3f}",
                    self.split[i],
                ]
            )
        return out.getvalue()

    @classmethod
    def read_csv(cls, path: Path) -> Places:
        """Read a map's ``places.csv``; :class:`ArtifactError` naming the row for anything malformed: ids not
        0, 1, 2, ..., a missing image, a non-finite position, heading or time, a short row, bad encoding."""
        images, utm, heading, time, split = [], [], [], [], []
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if tuple(reader.fieldnames or ()) != COLUMNS:
                    raise ArtifactError(f"'{path}' has columns {reader.fieldnames}, expected {list(COLUMNS)}")
                for row_number, row in enumerate(reader, start=2):
                    try:
                        if None in row or None in row.values():
                            raise ValueError(f"{len(COLUMNS)} fields expected")
                        if row["id"].strip() != str(row_number - 2):
                            raise ValueError(
                                f"id {row['id']!r} where {row_number - 2} belongs (ids count from 0)"
                            )
                        if not row["image"]:
                            raise ValueError("no image")
                        position = (_finite(row, "easting"), _finite(row, "northing"))
                        heading.append(_finite(row, "heading") if row["heading"] else math.nan)
                        time.append(_finite(row, "time") if row["time"] else math.nan)
                    except (TypeError, ValueError) as exc:
                        raise ArtifactError(
                            f"'{path}' row {row_number} is malformed ({exc}); rebuild the map"
                        ) from exc
                    utm.append(position)
                    images.append(row["image"])
                    split.append(row["split"])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ArtifactError(f"'{path}' is not a places table ({exc}); rebuild the map") from exc
        return cls(
            tuple(images),
            np.asarray(utm, np.float64).reshape(-1, 2),
            np.asarray(heading, np.float64),
            np.asarray(time, np.float64),
            tuple(split),
        )


def _finite(row: dict, column: str) -> float:
    value = float(row[column])
    if not math.isfinite(value):
        raise ValueError(f"{column} is {row[column]!r}, not a finite number")
    return value


def places_from_dataset(dataset, split: str) -> tuple[Places, list[tuple[str, int]]]:
    """The places of ``dataset`` for ``split`` ("database" or "all") and the (split, index) of each image."""
    parts = [("database", dataset.db_images, dataset.db_utm, dataset.db_heading, dataset.db_time)]
    if split == "all":
        parts.append(("queries", dataset.q_images, dataset.q_utm, dataset.q_heading, dataset.q_time))
    images, utm, heading, time, splits, items = [], [], [], [], [], []
    for name, imgs, positions, head, stamp in parts:
        n = len(imgs)
        images.extend(imgs)
        utm.append(np.asarray(positions, np.float64).reshape(n, 2))
        heading.append(np.full(n, np.nan) if head is None else np.asarray(head, np.float64))
        time.append(np.full(n, np.nan) if stamp is None else np.asarray(stamp, np.float64))
        splits.extend([name] * n)
        items.extend((name, i) for i in range(n))
    places = Places(
        tuple(images), np.concatenate(utm), np.concatenate(heading), np.concatenate(time), tuple(splits)
    )
    return places, items
