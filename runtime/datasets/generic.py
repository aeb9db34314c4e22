"""The generic on-disk format: a folder with ``database.csv`` and ``queries.csv``.

Columns: ``image`` (path relative to the folder), then either ``easting`` and ``northing`` (metres) or
``lat`` and ``lon`` (WGS84 degrees, converted to UTM with the ``utm`` package, one zone for the whole
dataset), and optionally ``heading`` (degrees) and ``timestamp`` (seconds).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from runtime.datasets.place import PlaceDataset
from runtime.errors import DatasetError
from runtime.protocol import SPLIT_FILES, UNMAPPED_FILE

logger = logging.getLogger(__name__)

OPTIONAL_COLUMNS = ("heading", "timestamp")


def _float(value: str, csv_path: Path, row: int, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise DatasetError(
            f"{csv_path}, row {row}: column '{column}' must be a finite number, got {value!r}; "
            "fix or remove that row"
        )
    return number


def read_split_csv(csv_path: Path) -> dict[str, list]:
    """Parse one split's CSV into columns; errors name the file, the row (1 = header) and the value.

    Returns ``{"image": [...], "easting"|"lat": [...], ...}`` with floats for numeric columns.
    """
    if not csv_path.is_file():
        raise DatasetError(
            f"'{csv_path}' does not exist; a generic dataset folder needs database.csv and queries.csv"
        )
    try:
        return _read_split_csv(csv_path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(
            f"{csv_path}: not a readable CSV ({exc}); save it as UTF-8 comma-separated text"
        ) from exc


def _read_split_csv(csv_path: Path) -> dict[str, list]:
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        if "image" not in header:
            raise DatasetError(
                f"{csv_path}: missing required column 'image' (found columns: {', '.join(header) or 'none'}); "
                "expected image, easting, northing (or image, lat, lon), optional heading, timestamp"
            )
        if {"easting", "northing"} <= set(header):
            coords = ("easting", "northing")
        elif {"lat", "lon"} <= set(header):
            coords = ("lat", "lon")
        else:
            raise DatasetError(
                f"{csv_path}: missing required columns 'easting' and 'northing' (or 'lat' and 'lon') "
                f"(found columns: {', '.join(header)}); add metric UTM positions or WGS84 latitude/longitude"
            )
        wanted = [c for c in (*coords, *OPTIONAL_COLUMNS) if c in header]
        others = [
            c
            for c in header
            if c and c != "image" and c not in wanted and c not in ("easting", "northing", "lat", "lon")
        ]
        columns: dict[str, list] = {"image": [], **{c: [] for c in wanted}, **{c: [] for c in others}}
        seen: set[tuple] = set()  # (image, values) of the rows kept
        duplicates = 0
        for row_number, row in enumerate(reader, start=2):
            image = (row.get("image") or "").strip()
            if not image:
                raise DatasetError(f"{csv_path}, row {row_number}: empty 'image' value; give a relative path")
            values = tuple(_float((row.get(c) or "").strip(), csv_path, row_number, c) for c in wanted)
            extras = tuple((row.get(c) or "").strip() for c in others)
            key = (image, values, extras)
            if key in seen:  # the same row again: it would count the place twice (and skew recall)
                duplicates += 1
                continue
            seen.add(key)
            columns["image"].append(image)
            for c, v in zip(wanted, values, strict=True):
                columns[c].append(v)
            for c, v in zip(others, extras, strict=True):
                columns[c].append(v)
        if duplicates:
            logger.warning(
                "%s: dropped %d duplicate row(s) (an image listed again with the same values); %d rows kept",
                csv_path,
                duplicates,
                len(columns["image"]),
            )
    columns["_extra"] = others
    if not columns["image"]:
        raise DatasetError(
            f"{csv_path}: the split is empty (no rows after the header); add at least one image"
        )
    return columns


def latlon_to_utm(lat: np.ndarray, lon: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """WGS84 degrees -> (N, 2) UTM metres and the zone label (e.g. ``"17T"``); one zone only."""
    import utm

    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    bad = np.flatnonzero((lat < -80.0) | (lat > 84.0))
    if bad.size:
        raise DatasetError(
            f"{where}, row {int(bad[0]) + 2}: latitude {float(lat[bad[0]])!r} is out of range; UTM covers "
            "-80 to 84 degrees (is lat swapped with lon?)"
        )
    bad = np.flatnonzero((lon < -180.0) | (lon > 180.0))
    if bad.size:
        raise DatasetError(
            f"{where}, row {int(bad[0]) + 2}: longitude {float(lon[bad[0]])!r} is out of range; expected -180 to 180 degrees"
        )
    easting, northing, zone_numbers, zone_letters = [], [], [], []
    for la, lo in zip(lat, lon, strict=True):
        e, n, zn, zl = utm.from_latlon(float(la), float(lo))
        easting.append(e)
        northing.append(n)
        zone_numbers.append(int(zn))
        zone_letters.append(zl)
    zones = sorted(set(zone_numbers))
    hemispheres = sorted({"N" if la >= 0 else "S" for la in lat})
    if len(zones) > 1 or len(hemispheres) > 1:
        raise DatasetError(
            f"{where}: positions span several UTM zones ({', '.join(str(z) for z in zones)}, "
            f"hemispheres {'/'.join(hemispheres)}); metric distances need one zone: split the dataset per zone "
            "or give easting/northing in one common zone"
        )
    label = f"{zones[0]}{zone_letters[0]}"
    return np.stack([easting, northing], axis=1), label


def load_generic(folder: str | Path, name: str | None = None, check_images: bool = True) -> PlaceDataset:
    """Load a generic dataset folder (``database.csv`` + ``queries.csv``, and ``unmapped.csv`` when present:
    queries of places that are not in the database) as a :class:`PlaceDataset`.

    ``check_images``: verify every listed image exists (an error names the first missing one).
    Raises :class:`DatasetError` naming the file, row and value for malformed input.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder '{folder}' does not exist")
    splits = {split: read_split_csv(folder / fname) for split, fname in SPLIT_FILES.items()}
    kinds = {split: ("lat" in cols) for split, cols in splits.items()}
    # the synthetic world leaves synth.json beside its CSVs
    info: dict = {
        "source": "synth" if (folder / "synth.json").is_file() else "generic",
        "folder": str(folder),
    }
    extra = {
        split: {c: tuple(cols[c]) for c in cols["_extra"]} for split, cols in splits.items() if cols["_extra"]
    }
    if extra:
        info["extra_columns"] = extra
    positions: dict[str, np.ndarray] = {}
    if any(kinds.values()):
        if not all(kinds.values()):
            raise DatasetError(
                f"{folder}: database.csv and queries.csv must both use easting/northing or both lat/lon"
            )
        zones = {}
        for split, cols in splits.items():
            positions[split], zones[split] = latlon_to_utm(
                np.array(cols["lat"]), np.array(cols["lon"]), str(folder / SPLIT_FILES[split])
            )

        def zone_key(label: str) -> tuple[str, bool]:  # zone number and hemisphere (bands N..X are north)
            return label[:-1], label[-1] >= "N"

        if zone_key(zones["database"]) != zone_key(zones["queries"]):
            raise DatasetError(
                f"{folder}: database.csv is in UTM zone {zones['database']} but queries.csv in {zones['queries']}; "
                "metric distances need one zone: use easting/northing in one common zone"
            )
        info["utm_zone"] = zones["database"]
    else:
        for split, cols in splits.items():
            positions[split] = np.stack([cols["easting"], cols["northing"]], axis=1)
    if check_images:
        for split, cols in splits.items():
            for row_number, image in enumerate(cols["image"], start=2):
                if not (folder / image).is_file():
                    raise DatasetError(
                        f"{folder / SPLIT_FILES[split]}, row {row_number}: image '{folder / image}' does not exist; "
                        "paths in the image column are relative to the dataset folder"
                    )

    unmapped_images: tuple[str, ...] = ()
    unmapped_utm = None
    if (folder / UNMAPPED_FILE).is_file():
        cols = read_split_csv(folder / UNMAPPED_FILE)
        if ("lat" in cols) != kinds["database"]:
            raise DatasetError(f"{folder}: {UNMAPPED_FILE} must use the same coordinates as database.csv")
        if "lat" in cols:
            unmapped_utm, _ = latlon_to_utm(
                np.array(cols["lat"]), np.array(cols["lon"]), str(folder / UNMAPPED_FILE)
            )
        else:
            unmapped_utm = np.stack([cols["easting"], cols["northing"]], axis=1)
        unmapped_images = tuple(cols["image"])
        if check_images:
            for row_number, image in enumerate(unmapped_images, start=2):
                if not (folder / image).is_file():
                    raise DatasetError(
                        f"{folder / UNMAPPED_FILE}, row {row_number}: image '{folder / image}' does not exist; "
                        "paths in the image column are relative to the dataset folder"
                    )

    def optional(split: str, column: str) -> np.ndarray | None:
        values = splits[split].get(column)
        return None if values is None else np.asarray(values, dtype=np.float64)

    dataset = PlaceDataset(
        name=name or folder.name,
        root=folder,
        db_images=tuple(splits["database"]["image"]),
        db_utm=positions["database"],
        q_images=tuple(splits["queries"]["image"]),
        q_utm=positions["queries"],
        db_heading=optional("database", "heading"),
        q_heading=optional("queries", "heading"),
        db_time=optional("database", "timestamp"),
        q_time=optional("queries", "timestamp"),
        info=info,
        unmapped_images=unmapped_images,
        unmapped_utm=unmapped_utm,
    )
    logger.info("loaded %s: %d database, %d query images", dataset.name, dataset.num_db, dataset.num_queries)
    return dataset


def write_split_csv(
    path: Path,
    images: list[str] | tuple[str, ...],
    utm: np.ndarray,
    heading: np.ndarray | None = None,
    timestamp: np.ndarray | None = None,
    extra: Mapping[str, Sequence] | None = None,
) -> None:
    """Write one split in the generic format (easting/northing), the inverse of :func:`read_split_csv`.

    ``extra``: more columns (e.g. ``{"condition": [...]}``), kept by :func:`load_generic` in
    ``info["extra_columns"][split]``.
    """
    extra = dict(extra or {})
    header = ["image", "easting", "northing"]
    if heading is not None:
        header.append("heading")
    if timestamp is not None:
        header.append("timestamp")
    header.extend(extra)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i, image in enumerate(images):
            row = [image, f"{utm[i, 0]:.3f}", f"{utm[i, 1]:.3f}"]
            if heading is not None:
                row.append(f"{heading[i]:.2f}")
            if timestamp is not None:
                row.append(f"{timestamp[i]:.3f}")
            row.extend(str(values[i]) for values in extra.values())
            writer.writerow(row)
