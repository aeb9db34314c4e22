"""From a robot: maps and datasets from a drive's ROS bag (camera + noisy, gappy GPS), localising another bag
through netvlad-run, and the kit's errors for bad bags. Real rosbags writers, ONNX Runtime and FAISS."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest
import utm
from typer.testing import CliRunner

from runtime.cli.map import app as map_app
from runtime.cli.run import app as run_app
from runtime.datasets import load_generic
from runtime.datasets.rosbag import DriveConfig, read_drive
from runtime.errors import DatasetError, SourceError
from runtime.map import open_map, read_map_meta
from runtime.map.from_bag import build_map_from_bag
from tests.runtime.bags import ZONE, write_bag
from tests.runtime.helpers import make_onnx_model, make_stand_in_world

pytest.importorskip("rosbags", reason="needs rosbags (pip install 'netvlad-kit[ros]')")
runner = CliRunner()

T0, E0, N0, PLACES, SPACING = 1700000000.0, 500000.0, 5000000.0, 24, 10.0
PARKED_AT, GAP = 8, (14, 16)  # the robot waits 6 s at place 8; no GPS around places 14..16
CAM, GPS = "/camera/image_raw", "/gps/fix"


def drive_timeline():
    """Images ``(t, place)`` and the true track knots ``(t, easting)``: 10 m every 2 s, a 6 s stop."""
    images, knots, t = [], [], T0
    for i in range(PLACES):
        knots.append((t, E0 + SPACING * i))
        images.append((t, i))
        if i == PARKED_AT:
            images += [(t + k, i) for k in range(1, 7)]
            t += 6.0
            knots.append((t, E0 + SPACING * i))
        t += 2.0
    return images, np.array(knots)


def gps_fixes(knots, seed=0, noise_m=0.3):
    """5 Hz fixes from 3 s after the first image to 1 s before the last, noisy, every 7th without a fix,
    none in a 6 s window around places 14..16 (a GPS outage)."""
    rng = np.random.default_rng(seed)
    place_t = {i: t for t, i in drive_timeline()[0][::-1]}  # first image time of each place
    fixes = []
    for k, t in enumerate(np.arange(T0 + 3.0, knots[-1, 0] - 1.0, 0.2)):
        if place_t[GAP[0]] - 1.0 < t < place_t[GAP[1]] + 1.0:
            continue
        e = np.interp(t, knots[:, 0], knots[:, 1]) + rng.normal(0, noise_m)
        n = N0 + rng.normal(0, noise_m)
        lat, lon = utm.to_latlon(e, n, ZONE, northern=True)
        fixes.append((float(t), 0.0, 0.0, -1) if k % 7 == 3 else (float(t), lat, lon, 0))
    return fixes


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    root = tmp_path_factory.mktemp("robot")
    model, _ = make_onnx_model(root / "model.onnx")
    world = make_stand_in_world(root / "world", places=PLACES, spacing_m=SPACING, seed=5)
    images, knots = drive_timeline()
    db = [cv2.imread(str(world.image_path("database", i))) for i in range(PLACES)]
    queries = [cv2.imread(str(world.image_path("queries", i))) for i in range(PLACES)]
    fixes = gps_fixes(knots)
    map_bag = write_bag(root / "mapping.bag", "ros1", [(t, db[i]) for t, i in images], fixes)
    query_images = [(T0 + 1000 + i, queries[i]) for i in range(PLACES)]
    query_bag = write_bag(root / "patrol", "sqlite3", query_images, encoding="jpeg")
    return {"root": root, "model": model, "map_bag": map_bag, "query_bag": query_bag, "fixes": fixes}


EXPECTED_PLACES = [i for i in range(2, PLACES - 1) if not GAP[0] <= i <= GAP[1]]  # 0, 1, 23 outside GPS


def test_drive_keyframes_skip_what_they_must(robot, tmp_path):
    drive = read_drive(robot["map_bag"], DriveConfig(CAM, GPS, every_m=5.0), tmp_path)
    s = drive.stats
    assert (s.images, s.outside_gps, s.in_gps_gap, s.not_keyframe, s.corrupt) == (30, 3, 3, 6, 0)
    assert s.keyframes == len(EXPECTED_PLACES) == 18
    assert s.fixes == len(robot["fixes"]) and s.no_fix == sum(f[3] == -1 for f in robot["fixes"]) > 10
    truth = E0 + SPACING * np.array(EXPECTED_PLACES)
    assert np.abs(drive.utm[:, 0] - truth).max() < 1.0 and np.abs(drive.utm[:, 1] - N0).max() < 1.0
    assert drive.zone.number == ZONE and drive.zone.band == "T"
    assert np.abs(drive.heading - 90.0).max() < 5.0  # driving east; grid convergence ~0 at 15 E
    first_time = {i: t for t, i in drive_timeline()[0][::-1]}
    assert drive.time.tolist() == pytest.approx([first_time[i] for i in EXPECTED_PLACES])
    assert drive.images[3] == "000003.png" and cv2.imread(str(tmp_path / "000003.png")).shape == (96, 128, 3)
    # with 25 m between keyframes, every third place is kept (and the first one after the GPS outage)
    sparse = read_drive(robot["map_bag"], DriveConfig(CAM, GPS, every_m=25.0), tmp_path / "sparse")
    kept = E0 + SPACING * np.array([2, 5, 8, 11, 17, 20])
    assert sparse.stats.keyframes == 6 and np.abs(sparse.utm[:, 0] - kept).max() < 1.0


def test_map_from_a_bag_then_localise_another_bag(robot, tmp_path):
    map_dir = tmp_path / "map"
    args = ["build", "--model", str(robot["model"]), "--rosbag", str(robot["map_bag"]), "--out", str(map_dir)]
    result = runner.invoke(map_app, [*args, "--image-topic", CAM, "--gps-topic", GPS, "--every", "5", "-q"])
    assert result.exit_code == 0, result.output
    meta = read_map_meta(map_dir)
    assert meta["count"] == 18 and meta["geo"] == {"utm_zone": ZONE, "band": "T", "hemisphere": "N"}
    assert meta["dataset"]["root"] == "images" and meta["dataset"]["source"] == "rosbag"
    assert not list(tmp_path.glob(".map.keyframes-*"))  # the staging folder is gone
    moved = tmp_path / "elsewhere" / "map"  # self-contained: it works from anywhere
    shutil.move(map_dir, moved)
    place_map = open_map(moved)
    assert all(place_map.image_path(i).is_file() for i in range(18))
    assert np.nanmax(np.abs(place_map.places.heading - 90.0)) < 5.0
    jsonl = tmp_path / "patrol.jsonl"
    result = runner.invoke(
        run_app,
        [
            "--model",
            str(robot["model"]),
            "--map",
            str(moved),
            "--rosbag",
            str(robot["query_bag"]),
            "--topic",
            CAM,
            "--jsonl",
            str(jsonl),
            "--out-bag",
            str(tmp_path / "results"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    check_result_bag(tmp_path / "results", records)
    assert len(records) == PLACES and [r["timestamp"] for r in records] == [
        T0 + 1000 + i for i in range(PLACES)
    ]
    for r in records:
        place = int(r["source"].split("#")[1])
        if place in EXPECTED_PLACES:  # mapped places are found, with lat/lon and heading
            assert r["matches"][0]["id"] == EXPECTED_PLACES.index(place)
            lat, lon = utm.to_latlon(r["easting"], r["northing"], ZONE, northern=True)
            # the record rounds lat/lon to 1e-8 degrees and easting/northing to 1 mm (~1.3e-8 degrees of
            # longitude here): recomputed from the rounded metres they agree to within the sum, 2e-8
            assert r["lat"] == pytest.approx(lat, abs=2e-8) and r["lon"] == pytest.approx(lon, abs=2e-8)
            error_m = np.hypot(r["easting"] - (E0 + SPACING * place), r["northing"] - N0)
            assert error_m <= 2 * r["uncertainty_m"]  # the truth lies within two sigmas
            assert abs(r["heading"] - 90.0) < 5.0 and r["uncertainty_m"] >= 4.5  # half the ~10 m spacing


def test_bag_dataset_for_training(robot, tmp_path):
    folder = tmp_path / "drives"
    bag_dataset = ["bag-dataset", "--rosbag", str(robot["map_bag"]), "--image-topic", CAM, "--gps-topic", GPS]
    bag_dataset += ["--out", str(folder)]
    for split in ("database", "queries"):
        result = runner.invoke(map_app, [*bag_dataset, "--split", split, "-q"])
        assert result.exit_code == 0, result.output
    dataset = load_generic(folder)
    assert dataset.num_db == dataset.num_queries == 18 and dataset.info["utm_zone"] == "33T"
    assert np.abs(dataset.db_utm[:, 0] - (E0 + SPACING * np.array(EXPECTED_PLACES))).max() < 1.0
    assert dataset.db_images[0] == "database/000000.png" and np.abs(dataset.db_heading - 90).max() < 5.0
    again = runner.invoke(map_app, bag_dataset)
    expected = (
        f"error: '{folder / 'database.csv'}' or '{folder / 'database'}' already exists; pass --overwrite"
    )
    assert again.exit_code == 2 and expected in again.output


def test_bad_drives_get_clear_errors(robot, tmp_path):
    images = [(T0 + i, np.full((48, 64, 3), 10 * i, np.uint8)) for i in range(5)]
    no_fix = write_bag(tmp_path / "nofix.bag", "ros1", images, [(T0 + i, 0.0, 0.0, -1) for i in range(5)])
    expected = (
        f"ROS bag '{no_fix}': GPS topic '{GPS}' has 5 messages but none with a fix (all STATUS_NO_FIX); "
        "record with a GPS lock or choose another --gps-topic"
    )
    with pytest.raises(DatasetError, match=re.escape(expected)):
        build_map_from_bag(robot["model"], no_fix, DriveConfig(CAM, GPS), tmp_path / "m1")
    lat, lon = utm.to_latlon(E0, N0, ZONE, northern=True)
    late = write_bag(tmp_path / "late", "mcap", images, [(T0 + 60 + i, lat, lon, 0) for i in range(5)])
    expected = (
        f"ROS bag '{late}': none of the 5 images on '{CAM}' (1700000000.000 to 1700000004.000 s) lies within "
        "the GPS time span (1700000060.000 to 1700000064.000 s); check that the camera and GPS header stamps "
        "use one clock"
    )
    with pytest.raises(DatasetError, match=re.escape(expected)):
        build_map_from_bag(robot["model"], late, DriveConfig(CAM, GPS), tmp_path / "m2")
    expected = (
        f"topic '{CAM}' of ROS bag '{late}' is sensor_msgs/msg/Image, not sensor_msgs/msg/NavSatFix; "
        f"its GPS topics (sensor_msgs/msg/NavSatFix): {GPS} (sensor_msgs/msg/NavSatFix, 5 messages)"
    )
    with pytest.raises(SourceError, match=re.escape(expected)):
        build_map_from_bag(robot["model"], late, DriveConfig(CAM, CAM), tmp_path / "m3")
    assert not (tmp_path / "m1").exists() and not list(tmp_path.glob(".m*"))  # nothing left behind


def check_result_bag(path, records):
    """The --out-bag bag read back with rosbags: one message per topic per frame, stamped with the frame's
    time, NavSatFix covariance from the uncertainty, the pose in the map's UTM frame."""
    from rosbags.highlevel import AnyReader

    assert sorted(p.name for p in path.iterdir()) == ["metadata.yaml", "results.mcap"]
    assert not list(path.parent.glob(".results.*"))  # the temporary folder is gone
    with AnyReader([path]) as reader:
        types = {name: info.msgtype for name, info in reader.topics.items()}
        assert types == {
            "/netvlad/fix": "sensor_msgs/msg/NavSatFix",
            "/netvlad/pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
            "/netvlad/confidence": "std_msgs/msg/Float32",
            "/netvlad/unknown": "std_msgs/msg/Bool",
        }
        got: dict[str, list] = {topic: [] for topic in types}
        for connection, t_ns, raw in reader.messages():
            got[connection.topic].append((t_ns, reader.deserialize(raw, connection.msgtype)))
    assert all(len(v) == len(records) for v in got.values())
    for r, (t_fix, fix), (t_pose, pose), (_, conf), (_, unknown) in zip(
        records, *(got[f"/netvlad/{name}"] for name in ("fix", "pose", "confidence", "unknown")), strict=True
    ):
        t_ns = round(r["timestamp"] * 1e9)
        assert t_fix == t_pose == t_ns and fix.header.stamp.sec == t_ns // 10**9
        assert (fix.latitude, fix.longitude) == pytest.approx((r["lat"], r["lon"]), abs=1e-7)
        assert fix.position_covariance[0] == pytest.approx(r["uncertainty_m"] ** 2, rel=1e-3)
        assert fix.position_covariance_type == 2 and fix.status.status == (-1 if r["unknown"] else 0)
        assert pose.header.frame_id == "utm_33N"
        assert (pose.pose.pose.position.x, pose.pose.pose.position.y) == pytest.approx(
            (r["easting"], r["northing"]), abs=1e-3
        )
        assert pose.pose.covariance[7] == pytest.approx(r["uncertainty_m"] ** 2, rel=1e-3)
        # heading ~90 (east) is an ENU yaw of ~0: quaternion z ~ 0, w ~ 1
        assert abs(pose.pose.pose.orientation.z) < 0.05 and pose.pose.pose.orientation.w > 0.99
        assert conf.data == pytest.approx(r["confidence"], abs=1e-4) and unknown.data == r["unknown"]


def test_run_without_a_topic_lists_the_bag_image_topics(robot, tmp_path):
    world = robot["root"] / "world"
    map_dir = tmp_path / "metric-map"
    assert (
        runner.invoke(
            map_app,
            ["build", "--model", str(robot["model"]), "--dataset", str(world), "--out", str(map_dir), "-q"],
        ).exit_code
        == 0
    )
    args = ["--model", str(robot["model"]), "--map", str(map_dir), "--rosbag", str(robot["query_bag"]), "-q"]
    result = runner.invoke(run_app, args)
    expected = (
        f"error: ROS bag '{robot['query_bag']}': choose the image topic with --topic; its image topics "
        "(sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage): /camera/image_raw "
        "(sensor_msgs/msg/CompressedImage, 24 messages)"
    )
    assert result.exit_code == 2 and expected in result.output
    # a metric-only map (no UTM zone): the result bag has the pose in frame "map" and no NavSatFix topic
    result = runner.invoke(run_app, [*args, "--topic", CAM, "--out-bag", str(tmp_path / "metric-results")])
    assert result.exit_code == 0, result.output
    from rosbags.highlevel import AnyReader

    with AnyReader([tmp_path / "metric-results"]) as reader:
        assert sorted(reader.topics) == ["/netvlad/confidence", "/netvlad/pose", "/netvlad/unknown"]
        poses = [c for c in reader.connections if c.topic == "/netvlad/pose"]
        (connection, _, raw), *_ = reader.messages(connections=poses)
        assert reader.deserialize(raw, connection.msgtype).header.frame_id == "map"
