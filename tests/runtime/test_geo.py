"""Geographic output: a map built from lat/lon keeps its UTM zone; Localizations carry lat/lon, heading and
an uncertainty from the spread of the candidates (real ONNX Runtime, real FAISS, a small world on disk)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import utm

from runtime import Localizer, LocalizerConfig
from runtime.datasets.geo import UtmZone, grid_bearings
from runtime.map import build_map, read_map_meta
from runtime.sources import ImageFolderSource
from tests.runtime.helpers import make_onnx_model, make_stand_in_world


def to_latlon_csv(root, zone=33, heading=90.0):
    """Rewrite the world's easting/northing CSVs as lat/lon (zone ``zone`` N) with a heading column."""
    for split in ("database", "queries"):
        path = root / f"{split}.csv"
        rows = list(csv.DictReader(path.read_text().splitlines()))
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "lat", "lon", "heading"])
            for row in rows:
                lat, lon = utm.to_latlon(float(row["easting"]), float(row["northing"]), zone, northern=True)
                writer.writerow([row["image"], f"{lat:.9f}", f"{lon:.9f}", heading])


@pytest.fixture(scope="module")
def geo_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo")
    model, _ = make_onnx_model(root / "model.onnx")
    metric = make_stand_in_world(root / "data", places=40)
    to_latlon_csv(root / "data")
    from runtime.datasets import load_generic

    geo_map = build_map(model, load_generic(root / "data"), root / "geo-map")
    metric_map = build_map(model, metric, root / "metric-map")
    return {"root": root, "model": model, "data": root / "data", "geo": geo_map, "metric": metric_map}


def test_map_from_latlon_keeps_its_zone(geo_world):
    assert read_map_meta(geo_world["geo"])["geo"] == {"utm_zone": 33, "band": "T", "hemisphere": "N"}
    assert read_map_meta(geo_world["metric"])["geo"] is None


def test_localizations_carry_latlon_heading_and_uncertainty(geo_world):
    config = LocalizerConfig(top_k=5, position_radius_m=65.0)  # neighbours 30 and 60 m away join in
    with (
        Localizer.open(geo_world["model"], geo_world["geo"], config=config) as localizer,
        ImageFolderSource(geo_world["data"] / "queries") as source,
    ):
        results = list(localizer.run(source))
    assert [r.best.place_id for r in results] == list(range(40))
    db = list(csv.DictReader((geo_world["data"] / "database.csv").read_text().splitlines()))
    for r in results:
        lat, lon = utm.to_latlon(*r.position, 33, northern=True)
        assert (r.lat, r.lon) == pytest.approx((lat, lon), abs=1e-9)
        assert r.heading == pytest.approx(90.0)
        # the uncertainty is the weighted RMS spread of the candidates within the radius, >= 15 m
        best = np.array([r.best.easting, r.best.northing])
        near = [m for m in r.matches if np.hypot(m.easting - best[0], m.northing - best[1]) <= 65.0]
        w = np.array([m.similarity for m in near])
        xy = np.array([[m.easting, m.northing] for m in near])
        mean = (xy * w[:, None]).sum(0) / w.sum()
        assert r.position == pytest.approx(tuple(mean), abs=1e-6)
        spread = np.sqrt((w * ((xy - mean) ** 2).sum(1)).sum() / w.sum())
        assert r.uncertainty_m == pytest.approx(max(spread, 15.0), rel=1e-9)
    assert max(r.uncertainty_m for r in results) > 15.0  # some frames do average several places
    # with only the best place in the radius, the position is that place's lat/lon, 15 m = half the spacing
    with Localizer.open(geo_world["model"], geo_world["geo"]) as localizer:
        loc = localizer.localize(_read(geo_world["data"], 7))
    assert loc.best.place_id == 7 and loc.uncertainty_m == pytest.approx(15.0)
    assert (loc.lat, loc.lon) == pytest.approx((float(db[7]["lat"]), float(db[7]["lon"])), abs=1e-7)
    record = json.loads(json.dumps(loc.to_record()))
    assert record["lat"] == pytest.approx(loc.lat) and record["lon"] == pytest.approx(loc.lon)
    assert record["heading"] == 90.0 and record["uncertainty_m"] == 15.0


def test_metric_map_reports_no_latlon_or_heading(geo_world):
    with Localizer.open(geo_world["model"], geo_world["metric"]) as localizer:
        loc = localizer.localize(_read(geo_world["data"], 3))
    assert loc.best.place_id == 3 and loc.lat is None and loc.lon is None and loc.heading is None
    record = loc.to_record()
    assert "lat" not in record and "heading" not in record and record["uncertainty_m"] == 15.0


def test_zone_labels_and_bearings():
    assert UtmZone.from_label("33W") == UtmZone(33, "N", "W")
    assert UtmZone.from_label("19H").hemisphere == "S"
    zone = UtmZone(33, "N")
    e, n = zone.from_latlon(67.28, 14.40)[0]
    assert zone.to_latlon(e, n) == pytest.approx((67.28, 14.40), abs=1e-7)
    track = np.array([[0, 0], [0, 10], [10, 10], [10, 10]], float)  # north, then east, then parked
    assert grid_bearings(track)[:2] == pytest.approx([0.0, 45.0])
    assert grid_bearings(track)[2] == pytest.approx(90.0) and np.isnan(grid_bearings(track[:1])).all()
    # east of the central meridian (15 E) in the north, grid north lies east of true north
    assert zone.convergence_deg(67.28, 16.0) == pytest.approx(0.922, abs=1e-3)


def _read(folder, i):
    import cv2

    return cv2.imread(str(folder / "queries" / f"{i:04d}.png"))
