"""Geotagged keyframes from a robot's drive: a ROS bag's camera topic + its GPS (``sensor_msgs/NavSatFix``).

:func:`read_drive` gives each image a position interpolated (in UTM metres) at its header stamp between the
GPS fixes around it, skips (and counts) fixes without a fix, images outside the GPS time span and images in
a GPS gap longer than ``max_gap_s``, keeps one keyframe every ``every_m`` metres travelled (so a parked robot
does not fill the map), takes each keyframe's heading from the GPS track (true north: UTM grid convergence
corrected), and writes the keyframes as PNG files. :func:`dataset_from_drive` turns that into the kit's
:class:`PlaceDataset` (the input of ``build_map``); :func:`write_bag_dataset` writes the generic dataset
format (``<split>.csv`` with lat/lon/heading/timestamp + images) so training can use the team's drives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.datasets.geo import UtmZone, grid_bearings
from runtime.datasets.place import PlaceDataset
from runtime.errors import ConfigError, DatasetError
from runtime.sources.rosbag import (
    IMAGE_TYPES,
    NAV_SAT_FIX,
    NO_FIX,
    decode_image,
    open_bag,
    stamp_seconds,
    topic_connections,
)

log = logging.getLogger(__name__)

DEFAULT_EVERY_M = 5.0
DEFAULT_MAX_GAP_S = 5.0


@dataclass(frozen=True)
class DriveConfig:
    """``every_m``: metres travelled between keyframes. ``max_gap_s``: images between two fixes further apart
    than this are skipped (no interpolation across a GPS outage)."""

    image_topic: str
    gps_topic: str
    every_m: float = DEFAULT_EVERY_M
    max_gap_s: float = DEFAULT_MAX_GAP_S

    def __post_init__(self) -> None:
        if not self.every_m >= 0 or not self.max_gap_s > 0:
            raise ConfigError(
                f"--every must be >= 0 metres and max_gap_s > 0, got {self.every_m}, {self.max_gap_s}"
            )


@dataclass
class DriveStats:
    """What happened to every message (logged, and recorded in the dataset's info)."""

    fixes: int = 0
    no_fix: int = 0  # NavSatFix with STATUS_NO_FIX or no finite lat/lon: skipped
    images: int = 0
    outside_gps: int = 0  # images before the first or after the last fix: skipped
    in_gps_gap: int = 0  # images between fixes more than max_gap_s apart: skipped
    not_keyframe: int = 0  # images closer than every_m to the previous keyframe
    corrupt: int = 0  # keyframe candidates whose image could not be decoded
    keyframes: int = 0


@dataclass
class Drive:
    """Keyframes of a drive: image files (relative to ``root``), header times (s), UTM ``(N, 2)`` metres in
    ``zone``, WGS84 lat/lon, headings (degrees from true north, NaN where the robot did not move)."""

    root: Path
    images: list[str]
    time: np.ndarray
    utm: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    heading: np.ndarray
    zone: UtmZone
    stats: DriveStats = field(default_factory=DriveStats)


def _read_fixes(
    reader, connections, bag: Path, topic: str, stats: DriveStats
) -> tuple[np.ndarray, np.ndarray]:
    """Valid fixes, time-sorted: ``times (F,)`` seconds and ``latlon (F, 2)`` degrees."""
    times, latlon = [], []
    for connection, bag_ns, raw in reader.messages(connections=connections):
        stats.fixes += 1
        msg = reader.deserialize(raw, connection.msgtype)
        lat, lon = float(msg.latitude), float(msg.longitude)
        if int(msg.status.status) <= NO_FIX or not (math.isfinite(lat) and math.isfinite(lon)):
            stats.no_fix += 1
            continue
        times.append(stamp_seconds(msg.header, bag_ns))
        latlon.append((lat, lon))
    if not times:
        what = (
            "has no messages"
            if stats.fixes == 0
            else f"has {stats.fixes} messages but none with a fix (all STATUS_NO_FIX)"
        )
        raise DatasetError(
            f"ROS bag '{bag}': GPS topic '{topic}' {what}; record with a GPS lock or choose another --gps-topic"
        )
    order = np.argsort(times, kind="stable")
    return np.asarray(times)[order], np.asarray(latlon, np.float64)[order]


def read_drive(
    bag: str | Path,
    config: DriveConfig,
    out_dir: str | Path,
    prefix: str = "",
    progress: Callable | None = None,
) -> Drive:
    """Keyframes of the drive in ``bag``, written as ``out_dir/<prefix>NNNNNN.png``; see the module doc."""
    import cv2

    bag, out_dir = Path(bag), Path(out_dir)
    stats = DriveStats()
    with open_bag(bag) as reader:
        image_connections = topic_connections(
            reader, bag, config.image_topic, IMAGE_TYPES, "image", "--image-topic"
        )
        gps_connections = topic_connections(
            reader, bag, config.gps_topic, (NAV_SAT_FIX,), "GPS", "--gps-topic"
        )
        fix_t, fix_latlon = _read_fixes(reader, gps_connections, bag, config.gps_topic, stats)
        median = np.median(fix_latlon, axis=0)
        import utm

        _, _, number, band = utm.from_latlon(float(median[0]), float(median[1]))
        zone = UtmZone(int(number), "N" if median[0] >= 0 else "S", band)
        fix_utm = zone.from_latlon(fix_latlon[:, 0], fix_latlon[:, 1])  # (F, 2)
        total = sum(c.msgcount for c in image_connections)
        bar = progress(total=total, desc="bag images", unit="img") if progress else None
        kept_t, kept_utm, names, image_times = [], [], [], []
        out_dir.mkdir(parents=True, exist_ok=True)
        for connection, bag_ns, raw in reader.messages(connections=image_connections):
            stats.images += 1
            if bar is not None:
                bar.update(1)
            msg = reader.deserialize(raw, connection.msgtype)
            t = stamp_seconds(msg.header, bag_ns)
            image_times.append(t)
            if t < fix_t[0] or t > fix_t[-1]:
                stats.outside_gps += 1
                continue
            j = int(np.clip(np.searchsorted(fix_t, t, side="right"), 1, len(fix_t) - 1))
            t0, t1 = fix_t[j - 1], fix_t[j]
            if t1 - t0 > config.max_gap_s:
                stats.in_gps_gap += 1
                continue
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            position = (1 - w) * fix_utm[j - 1] + w * fix_utm[j]  # (2,) metres
            if kept_utm and np.hypot(*(position - kept_utm[-1])) < config.every_m:
                stats.not_keyframe += 1
                continue
            image = decode_image(msg, connection.msgtype)
            if image is None:
                stats.corrupt += 1
                continue
            name = f"{prefix}{len(names):06d}.png"
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(out_dir / name), image):
                raise DatasetError(
                    f"cannot write '{out_dir / name}'; check the folder is writable and has space"
                )
            names.append(name)
            kept_t.append(t)
            kept_utm.append(position)
        if bar is not None:
            bar.close()
    if not names:
        if stats.images == 0:
            raise DatasetError(f"ROS bag '{bag}': image topic '{config.image_topic}' has no messages")
        if stats.outside_gps == stats.images:
            raise DatasetError(
                f"ROS bag '{bag}': none of the {stats.images} images on '{config.image_topic}' "
                f"({min(image_times):.3f} to {max(image_times):.3f} s) lies within the GPS time span "
                f"({fix_t[0]:.3f} to {fix_t[-1]:.3f} s); check that the camera and GPS header stamps use one clock"
            )
        raise DatasetError(
            f"ROS bag '{bag}': no usable image on '{config.image_topic}' ({stats.images} images: "
            f"{stats.outside_gps} outside the GPS time span, {stats.in_gps_gap} in GPS gaps over "
            f"{config.max_gap_s:g} s, {stats.corrupt} undecodable)"
        )
    utm_xy = np.asarray(kept_utm, np.float64).reshape(-1, 2)
    lat, lon = np.array([zone.to_latlon(e, n) for e, n in utm_xy]).T
    heading = (grid_bearings(utm_xy) + zone.convergence_deg(lat, lon)) % 360.0
    stats.keyframes = len(names)
    log.info(
        "%s: %d keyframes every %g m from %d images (%d outside the GPS span, %d in GPS gaps, %d closer than "
        "%g m, %d undecodable); %d of %d fixes had no fix; UTM zone %d%s",
        bag.name,
        stats.keyframes,
        config.every_m,
        stats.images,
        stats.outside_gps,
        stats.in_gps_gap,
        stats.not_keyframe,
        config.every_m,
        stats.corrupt,
        stats.no_fix,
        stats.fixes,
        zone.number,
        zone.band,
    )
    return Drive(out_dir, names, np.asarray(kept_t), utm_xy, lat, lon, heading, zone, stats)


def dataset_from_drive(drive: Drive, name: str, bag: Path) -> PlaceDataset:
    """The drive's keyframes as the database of a :class:`PlaceDataset` (no queries): ``build_map``'s input."""
    return PlaceDataset(
        name=name,
        root=drive.root,
        db_images=tuple(drive.images),
        db_utm=drive.utm,
        q_images=(),
        q_utm=np.zeros((0, 2)),
        db_heading=drive.heading,
        db_time=drive.time,
        info={"source": "rosbag", "bag": str(bag), "utm_zone": f"{drive.zone.number}{drive.zone.band}"},
    )


def write_bag_dataset(
    bag: str | Path,
    config: DriveConfig,
    folder: str | Path,
    split: str = "database",
    overwrite: bool = False,
    progress: Callable | None = None,
) -> Path:
    """Write a drive in the generic dataset format: ``folder/<split>.csv`` (image, lat, lon, heading,
    timestamp) and the keyframes in ``folder/<split>/``. Record two drives of one route (``--split database``
    then ``--split queries``) to get a dataset that training and ``netvlad-map build --dataset`` read."""
    from runtime.datasets.generic import SPLIT_FILES
    from runtime.files import atomic_write_text

    if split not in SPLIT_FILES:
        raise ConfigError(f"--split must be one of {', '.join(SPLIT_FILES)}, got {split!r}")
    folder = Path(folder)
    csv_path = folder / SPLIT_FILES[split]
    if (csv_path.exists() or (folder / split).exists()) and not overwrite:
        raise ConfigError(
            f"'{csv_path}' or '{folder / split}' already exists; pass --overwrite to replace them"
        )
    drive = read_drive(bag, config, folder, prefix=f"{split}/", progress=progress)
    known = np.flatnonzero(~np.isnan(drive.heading))
    header = "image,lat,lon,heading,timestamp" if known.size else "image,lat,lon,timestamp"
    lines = [header]
    for i, image in enumerate(drive.images):
        # the CSV format needs a number: a keyframe where the robot stood still takes its nearest known heading
        nearest = known[np.argmin(np.abs(known - i))] if known.size else -1
        heading = f",{drive.heading[nearest]:.2f}" if known.size else ""
        lines.append(f"{image},{drive.lat[i]:.9f},{drive.lon[i]:.9f}{heading},{drive.time[i]:.6f}")
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    other = folder / SPLIT_FILES["queries" if split == "database" else "database"]
    if not other.exists():
        log.info(
            "wrote %s; %s is still missing: write it from another drive of the route", csv_path, other.name
        )
    return csv_path
