"""Geography of a map: its UTM zone, UTM <-> WGS84 lat/lon, and headings from a GPS track.

A map built from latitude/longitude (a generic CSV with ``lat``/``lon`` columns, or a ROS bag's NavSatFix)
keeps its zone in ``map.json`` (``"geo": {"utm_zone": 33, "band": "W", "hemisphere": "N"}``), so every
position the localiser reports in UTM metres can be converted back to lat/lon. A map built from easting and
northing alone has no zone: its positions stay metric only.

Headings are degrees clockwise from true north, in [0, 360).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from runtime.errors import ArtifactError


@dataclass(frozen=True)
class UtmZone:
    """A UTM zone: number 1..60, latitude band letter (C..X, optional) and hemisphere "N" or "S"."""

    number: int
    hemisphere: str
    band: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.number <= 60 or self.hemisphere not in ("N", "S"):
            raise ArtifactError(
                f"invalid UTM zone {self.number}{self.hemisphere}: expected a zone 1..60 and hemisphere N or S"
            )

    @classmethod
    def from_label(cls, label: str) -> UtmZone:
        """``"33W"`` (zone number + latitude band, as the ``utm`` package names it) -> UtmZone."""
        label = str(label).strip().upper()
        if len(label) < 2 or not label[:-1].isdigit() or not label[-1].isalpha():
            raise ArtifactError(f"invalid UTM zone label {label!r}; expected a number and a band, e.g. '33W'")
        band = label[-1]
        return cls(int(label[:-1]), "N" if band >= "N" else "S", band)

    @classmethod
    def from_meta(cls, geo: Mapping | None) -> UtmZone | None:
        """The zone recorded in a map.json's ``geo`` entry (None when the map is not geographic)."""
        if not geo:
            return None
        return cls(int(geo["utm_zone"]), str(geo["hemisphere"]), str(geo.get("band", "")))

    def to_meta(self) -> dict:
        return {"utm_zone": self.number, "band": self.band, "hemisphere": self.hemisphere}

    @property
    def label(self) -> str:
        """``"33N"`` style: zone number and hemisphere (the ROS frame id suffix)."""
        return f"{self.number}{self.hemisphere}"

    def to_latlon(self, easting: float, northing: float) -> tuple[float, float]:
        """UTM metres in this zone -> WGS84 (lat, lon) degrees."""
        import utm

        lat, lon = utm.to_latlon(
            float(easting), float(northing), self.number, northern=self.hemisphere == "N", strict=False
        )
        return float(lat), float(lon)

    def from_latlon(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """WGS84 degrees -> ``(N, 2)`` UTM metres in *this* zone (forced, even near a zone border)."""
        import utm

        lat = np.atleast_1d(np.asarray(lat, np.float64))
        lon = np.atleast_1d(np.asarray(lon, np.float64))
        e, n, _, _ = utm.from_latlon(
            lat, lon, force_zone_number=self.number, force_northern=self.hemisphere == "N"
        )
        return np.stack([np.asarray(e, np.float64), np.asarray(n, np.float64)], axis=1)

    def convergence_deg(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Grid convergence (degrees): true bearing = grid bearing + convergence (zero on the central meridian)."""
        central = (self.number - 1) * 6 - 180 + 3
        lat_r, dlon = (
            np.radians(np.asarray(lat, np.float64)),
            np.radians(np.asarray(lon, np.float64) - central),
        )
        return np.degrees(np.arctan(np.tan(dlon) * np.sin(lat_r)))


def zone_of_dataset(info: Mapping) -> UtmZone | None:
    """The UTM zone a dataset's lat/lon were converted in (``info["utm_zone"]``, e.g. "33W"), else None."""
    label = info.get("utm_zone")
    return UtmZone.from_label(label) if label else None


def grid_bearings(utm: np.ndarray) -> np.ndarray:
    """Grid bearing (degrees clockwise from grid north) of travel at each point of a track ``(N, 2)``.

    Central differences (one-sided at the ends); NaN where the track does not move or has one point.
    """
    utm = np.asarray(utm, np.float64).reshape(-1, 2)
    if len(utm) < 2:
        return np.full(len(utm), np.nan)
    step = np.gradient(utm, axis=0)  # (N, 2) metres per sample
    bearing = np.degrees(np.arctan2(step[:, 0], step[:, 1])) % 360.0
    bearing[np.hypot(step[:, 0], step[:, 1]) < 1e-6] = np.nan
    return bearing
