"""runtime.datasets: the generic CSV format, aligned sequences (Nordland), dispatch, the raw-pixel baseline."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from runtime.datasets import (
    PlaceDataset,
    frame_spacing_m,
    load_aligned,
    load_generic,
    load_nordland,
    open_dataset,
)
from runtime.errors import DatasetError
from runtime.evaluation.baseline import raw_pixel_recall, thumbnail_descriptors


def write_image(path, rgb=(200, 30, 10), size=(24, 32), seed=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        image = np.zeros((*size, 3), np.uint8)
        image[:] = rgb
    else:
        image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return image


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(str(v) for v in r) for r in rows)]) + "\n")


@pytest.fixture
def generic_dir(tmp_path):
    """Database every 5 m along a street; queries at 2 m, 12 m and 100 m (the last has no positive)."""
    db_rows = []
    for i in range(10):
        write_image(tmp_path / "db" / f"{i}.png", seed=i)
        db_rows.append((f"db/{i}.png", 500000 + 5 * i, 4000000, 90, 100 + i))
    q_rows = []
    for i, e in enumerate((2.0, 12.0, 100.0)):
        write_image(tmp_path / "q" / f"{i}.png", seed=100 + i)
        q_rows.append((f"q/{i}.png", 500000 + e, 4000000, 85, 900 + i))
    write_csv(tmp_path / "database.csv", ["image", "easting", "northing", "heading", "timestamp"], db_rows)
    write_csv(tmp_path / "queries.csv", ["image", "easting", "northing", "heading", "timestamp"], q_rows)
    return tmp_path


def test_generic_positions_positives_and_unmatched_queries(generic_dir, caplog):
    ds = open_dataset(generic_dir)
    assert isinstance(ds, PlaceDataset) and ds.info["source"] == "generic"
    assert (ds.num_db, ds.num_queries) == (10, 3)
    assert ds.db_utm.dtype == np.float64 and ds.db_utm[3].tolist() == [500015.0, 4000000.0]
    assert ds.q_heading.tolist() == [85.0, 85.0, 85.0] and ds.db_time[-1] == 109.0
    # nearest first: query at 2 m -> db 0 (2 m), 1 (3 m), 2 (8 m), ...
    assert ds.positives(10.0)[0].tolist() == [0, 1, 2]
    assert ds.positives(25.0)[1].tolist() == [2, 3, 1, 4, 0, 5, 6, 7]
    assert ds.positives(25.0)[2].tolist() == []
    assert ds.potential_positives()[0].tolist() == [0, 1, 2]
    assert ds.definite_negatives(1).tolist() == [8, 9] and ds.definite_negatives(2).tolist() == list(
        range(10)
    )
    with caplog.at_level(logging.INFO, logger="runtime.datasets.place"):
        kept = ds.without_unmatched_queries(25.0)
    assert kept.num_queries == 2 and kept.q_images == ("q/0.png", "q/1.png")
    assert kept.q_time.tolist() == [900.0, 901.0] and kept.info["dropped_unmatched_queries"] == 1
    assert "dropped 1 of 3 queries" in caplog.text
    assert ds.without_unmatched_queries(1000.0) is ds


def test_select_keeps_rows_of_every_column_in_order(generic_dir):
    ds = open_dataset(generic_dir)
    part = ds.select([9, 3], [2], name="part")
    assert part.name == "part" and part.root == ds.root and part.info == ds.info
    assert part.db_images == (ds.db_images[9], ds.db_images[3]) and part.q_images == (ds.q_images[2],)
    assert part.db_utm.tolist() == ds.db_utm[[9, 3]].tolist() and part.db_time.tolist() == [109.0, 103.0]
    assert part.q_heading.tolist() == [85.0]
    only_db = ds.select(db_indices=[0])
    assert only_db.num_db == 1 and only_db.q_images == ds.q_images and only_db.name == ds.name


def test_read_image_is_rgb_uint8(tmp_path):
    write_image(tmp_path / "a.png", rgb=(200, 30, 10))
    write_csv(tmp_path / "database.csv", ["image", "easting", "northing"], [("a.png", 1, 2)])
    write_csv(tmp_path / "queries.csv", ["image", "easting", "northing"], [("a.png", 1, 2)])
    image = load_generic(tmp_path).read_image("queries", 0)
    assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
    assert image[0, 0].tolist() == [200, 30, 10]


def test_lat_lon_converted_to_one_utm_zone(tmp_path):
    write_image(tmp_path / "a.png")
    # Pittsburgh; 0.001 degrees of latitude is ~111 m
    write_csv(tmp_path / "database.csv", ["image", "lat", "lon"], [("a.png", 40.4400, -79.9950)])
    write_csv(tmp_path / "queries.csv", ["image", "lat", "lon"], [("a.png", 40.4410, -79.9950)])
    ds = load_generic(tmp_path)
    assert ds.info["utm_zone"] == "17T"
    assert 585000 < ds.db_utm[0, 0] < 586000 and 4476000 < ds.db_utm[0, 1] < 4478000
    assert np.linalg.norm(ds.q_utm[0] - ds.db_utm[0]) == pytest.approx(111.0, abs=0.5)


BAD_CSVS = [
    (["image", "x", "y"], [("a.png", 1, 2)],
     "{csv}: missing required columns 'easting' and 'northing' (or 'lat' and 'lon') (found columns: image, x, y); "
     "add metric UTM positions or WGS84 latitude/longitude"),
    (["file", "easting", "northing"], [("a.png", 1, 2)],
     "{csv}: missing required column 'image' (found columns: file, easting, northing); "
     "expected image, easting, northing (or image, lat, lon), optional heading, timestamp"),
    (["image", "easting", "northing"], [("a.png", 1, 2), ("a.png", "12.5m", 3)],
     "{csv}, row 3: column 'easting' must be a finite number, got '12.5m'; fix or remove that row"),
    (["image", "easting", "northing"], [("a.png", 1, "nan")],
     "{csv}, row 2: column 'northing' must be a finite number, got 'nan'; fix or remove that row"),
    (["image", "lat", "lon"], [("a.png", 45.0, 6.0), ("a.png", 95.0, 10.0)],
     "{csv}, row 3: latitude 95.0 is out of range; UTM covers -80 to 84 degrees (is lat swapped with lon?)"),
    (["image", "lat", "lon"], [("a.png", 45.0, 200.0)],
     "{csv}, row 2: longitude 200.0 is out of range; expected -180 to 180 degrees"),
    (["image", "lat", "lon"], [("a.png", 45.0, 5.9), ("a.png", 45.0, 6.1)],
     "{csv}: positions span several UTM zones (31, 32, hemispheres N); metric distances need one zone: "
     "split the dataset per zone or give easting/northing in one common zone"),
    (["image", "easting", "northing"], [],
     "{csv}: the split is empty (no rows after the header); add at least one image"),
    (["image", "easting", "northing"], [("missing.png", 1, 2)],
     "{csv}, row 2: image '{root}/missing.png' does not exist; paths in the image column are relative to the "
     "dataset folder"),
]  # fmt: skip


@pytest.mark.parametrize(("header", "rows", "message"), BAD_CSVS)
def test_bad_csv_errors_name_file_row_and_value(tmp_path, header, rows, message):
    write_image(tmp_path / "a.png")
    if "lat" in header:
        write_csv(tmp_path / "database.csv", ["image", "lat", "lon"], [("a.png", 45.0, 6.0)])
    else:
        write_csv(tmp_path / "database.csv", ["image", "easting", "northing"], [("a.png", 1, 2)])
    write_csv(tmp_path / "queries.csv", header, rows)
    with pytest.raises(DatasetError) as info:
        load_generic(tmp_path)
    assert str(info.value) == message.format(csv=tmp_path / "queries.csv", root=tmp_path)


def test_mixed_zones_across_splits_and_missing_files(tmp_path):
    write_image(tmp_path / "a.png")
    write_csv(tmp_path / "database.csv", ["image", "lat", "lon"], [("a.png", 45.0, 5.0)])
    write_csv(tmp_path / "queries.csv", ["image", "lat", "lon"], [("a.png", 45.0, 7.0)])
    with pytest.raises(DatasetError, match=r"database.csv is in UTM zone 31T but queries.csv in 32T"):
        load_generic(tmp_path)
    write_csv(tmp_path / "database.csv", ["image", "lat", "lon"], [("a.png", 0.5, 7.0)])
    write_csv(tmp_path / "queries.csv", ["image", "lat", "lon"], [("a.png", -0.5, 7.0)])
    with pytest.raises(DatasetError, match=r"database.csv is in UTM zone 32N but queries.csv in 32M"):
        load_generic(tmp_path)  # same zone number, other hemisphere: northings differ by 10,000 km
    (tmp_path / "queries.csv").unlink()
    with pytest.raises(DatasetError, match=r"queries.csv' does not exist; a generic dataset folder needs"):
        load_generic(tmp_path)
    with pytest.raises(DatasetError, match=r"dataset 'nowhere/at/all' does not exist; expected a folder"):
        open_dataset("nowhere/at/all")


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    write_image(tmp_path / "a.png")
    write_csv(tmp_path / "database.csv", ["image", "easting", "northing"], [("a.png", 1, 2)])
    write_csv(tmp_path / "queries.csv", ["image", "easting", "northing"], [("broken.jpg", 1, 2)])
    ds = load_generic(tmp_path)
    with pytest.raises(DatasetError) as info:
        ds.read_image("queries", 0)
    assert str(info.value) == (
        f"image '{tmp_path / 'broken.jpg'}' cannot be decoded (expected a PNG or JPEG file); replace or remove it"
    )
    (tmp_path / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"a.png' does not exist; check the dataset root"):
        ds.read_image("database", 0)


def make_sequences(root, n=8):
    for season, base in (("summer", 0), ("winter", 50)):
        for i in range(n):
            write_image(root / season / f"images-{(i + 1) * 10:05d}.png", seed=base + i)
    (root / "near_uniform.txt").write_text("images-00010.png\nimages-00050.png\n")


def test_aligned_frames_map_to_metric_windows(tmp_path):
    make_sequences(tmp_path)
    ds = open_dataset(f"aligned:{tmp_path / 'summer'},{tmp_path / 'winter'}")
    assert ds.info["frame_spacing_m"] == frame_spacing_m(1) == 20.0
    assert ds.num_db == ds.num_queries == 8
    for qi, pos in enumerate(ds.positives(25.0)):
        assert sorted(pos.tolist()) == [j for j in (qi - 1, qi, qi + 1) if 0 <= j < 8]
        assert pos[0] == qi  # nearest first
    assert [p.tolist() for p in ds.positives(10.0)] == [[i] for i in range(8)]
    ds = load_nordland(tmp_path)  # the Nordland protocol on a sample-shaped folder: exclusions, seconds
    assert ds.info["query_frame_index"] == [1, 2, 3, 5, 6, 7] and ds.info["excluded_queries"] == 2
    assert ds.q_images[0] == "winter/images-00020.png" and ds.q_time[0] == 20.0
    assert [p[0] for p in ds.positives(10.0)] == [1, 2, 3, 5, 6, 7]
    wide = load_aligned(tmp_path / "summer", tmp_path / "winter", window=2)
    assert sorted(wide.positives(25.0)[4].tolist()) == [2, 3, 4, 5, 6]
    assert wide.positives(10.0)[4].tolist() == [4]
    with pytest.raises(DatasetError, match=r"share no file name"):
        load_aligned(tmp_path / "summer", tmp_path)
    with pytest.raises(DatasetError, match=r"aligned sequence folder '.*nope' does not exist"):
        load_aligned(tmp_path / "nope", tmp_path / "winter")
    with pytest.raises(DatasetError) as absent:
        open_dataset(f"nordland:{tmp_path / 'absent'}")
    assert str(absent.value) == (
        f"the Nordland sample is not at '{tmp_path / 'absent'}': the folder does not exist. Put the sample "
        "(summer/ and winter/ image folders) there, or name its folder with --dataset nordland:DIR"
    )
    with pytest.raises(DatasetError, match=r"is not the Nordland sample \(expected summer/ and winter/"):
        load_nordland(tmp_path / "summer")


def test_nordland_sample(nordland_dir):
    ds = open_dataset("nordland")
    assert ds.root == nordland_dir.resolve()
    assert (ds.num_db, ds.num_queries) == (3576, 3576 - 171)
    frames = np.array(ds.info["query_frame_index"])
    p25, p10 = ds.positives(25.0), ds.positives(10.0)
    assert all(p.tolist() == [f] for p, f in zip(p10, frames, strict=True))
    assert all(
        sorted(p.tolist()) == [j for j in (f - 1, f, f + 1) if 0 <= j < 3576]
        for p, f in zip(p25, frames, strict=True)
    )
    assert ds.read_image("queries", 0).shape == (32, 64, 3)


def test_raw_pixel_baseline_numbers(generic_dir):
    ds = load_generic(generic_dir)
    desc = thumbnail_descriptors([ds.read_image("database", i) for i in range(3)])
    assert desc.shape == (3, 16 * 12 * 3)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(desc.mean(axis=1), 0.0, atol=1e-6)
    # queries that ARE database images (at their positions) are found first; a far query is dropped
    same = PlaceDataset("same", generic_dir, ds.db_images, ds.db_utm, ds.db_images[::3], ds.db_utm[::3])
    result = raw_pixel_recall(same, ns=(1, 5), query_groups=["a", "b", "a", "b"])
    assert result == {"all": {1: 1.0, 5: 1.0}, "a": {1: 1.0, 5: 1.0}, "b": {1: 1.0, 5: 1.0}}
