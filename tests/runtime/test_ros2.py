"""netvlad-ros2 and netvlad-ros2-play over real DDS (Fast DDS through rclpy), each in its own process.

Discovery stays on the loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) and every test has a ROS domain
of its own, so nothing leaves the machine and parallel runs do not see each other. The test process is a
third participant: it publishes frames, subscribes to the node's answers and calls its services. Waits end
on what arrives (a count of messages), never on a clock; the timeouts only bound a hung run.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs ROS 2's rclpy (pip install 'netvlad-kit[ros2]')")

from runtime import Localizer  # noqa: E402
from runtime.ros2.node import localizer_config  # noqa: E402
from runtime.sources import ImageFolderSource  # noqa: E402
from tests.runtime.helpers import make_onnx_model, make_stand_in_world  # noqa: E402

BIN = Path(sys.executable).parent
WAIT_S = 90.0  # bounds a hung run; nothing waits for it to pass
_DOMAINS = iter(range(20 + os.getpid() % 40 * 2, 233))


@pytest.fixture(scope="module")
def geo_world(tmp_path_factory):
    """A model and a geographic map (lat/lon, UTM 33T) of the stand-in route, and its query folder."""
    import utm

    from runtime import build_map
    from runtime.datasets import load_generic

    root = tmp_path_factory.mktemp("ros2_world")
    model, _ = make_onnx_model(root / "model.onnx")
    make_stand_in_world(root / "data", places=40)
    for split in ("database", "queries"):
        with open(root / "data" / f"{split}.csv") as fh:
            rows = list(csv.DictReader(fh))
        with open(root / "data" / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "lat", "lon"])
            for row in rows:
                lat, lon = utm.to_latlon(float(row["easting"]), float(row["northing"]), 33, "T")
                writer.writerow([row["image"], f"{lat:.9f}", f"{lon:.9f}"])
    dataset = load_generic(root / "data")
    map_dir = build_map(model, dataset, root / "map")
    return {
        "root": root,
        "model": model,
        "map": map_dir,
        "queries": root / "data" / "queries",
        "dataset": dataset,
    }


@pytest.fixture
def ros_env(monkeypatch):
    """This test's ROS environment: loopback discovery, a domain of its own."""
    domain = next(_DOMAINS)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    return dict(os.environ)


class Probe:
    """The test's own ROS participant: publishes images, collects the node's answers, calls its services."""

    def __init__(self, domain: int) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image, NavSatFix
        from std_msgs.msg import Bool, Float32
        from visualization_msgs.msg import MarkerArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("probe", context=self.context)
        self.lock = threading.Condition()
        self.got: dict[str, list] = {
            k: [] for k in ("pose", "fix", "confidence", "unknown", "places", "diag")
        }
        topics = {
            "pose": (PoseWithCovarianceStamped, "/netvlad/pose"),
            "fix": (NavSatFix, "/netvlad/fix"),
            "confidence": (Float32, "/netvlad/confidence"),
            "unknown": (Bool, "/netvlad/unknown"),
            "places": (MarkerArray, "/netvlad/places"),
            "diag": (DiagnosticArray, "/diagnostics"),
        }
        self.subscriptions = {
            key: self.node.create_subscription(kind, topic, lambda m, k=key: self._seen(k, m), 50)
            for key, (kind, topic) in topics.items()
        }
        self.images = self.node.create_publisher(Image, "/cam", 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _seen(self, key: str, msg) -> None:
        with self.lock:
            self.got[key].append(msg)
            self.lock.notify_all()

    def wait(self, key: str, count: int, timeout_s: float = WAIT_S) -> list:
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.got[key]) >= count, timeout=timeout_s), (
                f"{len(self.got[key])} of {count} messages on {key}"
            )
            return list(self.got[key])

    def wait_diagnostics(self, condition, timeout_s: float = WAIT_S) -> dict[str, str]:
        """The values of the first diagnostics message (from now on) that meets ``condition``."""
        start = len(self.got["diag"])

        def met() -> bool:
            return any(condition(_values(m)) for m in self.got["diag"][start:])

        with self.lock:
            assert self.lock.wait_for(met, timeout=timeout_s), _values(self.got["diag"][-1])
            return next(_values(m) for m in self.got["diag"][start:] if condition(_values(m)))

    def wait_matched(self, timeout_s: float = WAIT_S) -> None:
        """Until each of the node's answer topics is matched to this probe's subscription (a message sent
        before that would not reach it)."""
        end = time.monotonic() + timeout_s
        while any(s.get_publisher_count() == 0 for s in self.subscriptions.values()):
            assert time.monotonic() < end, "the node's publishers never matched the probe"
            time.sleep(0.05)

    def wait_for_node(self, timeout_s: float = WAIT_S) -> None:
        """Until the node subscribes to the images (it does once it sees this publisher)."""
        end = time.monotonic() + timeout_s
        while self.images.get_subscription_count() == 0:
            assert time.monotonic() < end, "the node never subscribed to /cam"
            time.sleep(0.05)

    def publish_image(
        self, bgr: np.ndarray, stamp_s: float, encoding: str = "bgr8", data: bytes | None = None
    ):
        from sensor_msgs.msg import Image

        msg = Image()
        ns = round(stamp_s * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = ns // 10**9, ns % 10**9
        msg.height, msg.width, msg.encoding, msg.step = bgr.shape[0], bgr.shape[1], encoding, bgr.shape[1] * 3
        msg.data = bgr.tobytes() if data is None else data
        self.images.publish(msg)

    def call(self, service: str, timeout_s: float = WAIT_S):
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=timeout_s), f"no service {service}"
        future = client.call_async(Trigger.Request())
        end = time.monotonic() + timeout_s
        while not future.done():
            assert time.monotonic() < end, f"{service} did not answer"
            time.sleep(0.02)
        return future.result()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.thread.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _values(diagnostics) -> dict[str, str]:
    return {kv.key: kv.value for kv in diagnostics.status[0].values}


@pytest.fixture
def probe(ros_env):
    p = Probe(int(ros_env["ROS_DOMAIN_ID"]))
    yield p
    p.close()


def start_node(env: dict, model: Path, map_dir: Path, *params: str, topic: str = "/cam") -> subprocess.Popen:
    args = [str(BIN / "netvlad-ros2"), "--ros-args", "-p", f"model:={model}", "-p", f"map:={map_dir}"]
    args += ["-p", f"image_topic:={topic}", *[a for p in params for a in ("-p", p)]]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def play(env: dict, source: Path, *args: str) -> subprocess.CompletedProcess:
    """netvlad-ros2-play SOURCE ARGS to the end; it must succeed."""
    played = subprocess.run(
        [str(BIN / "netvlad-ros2-play"), str(source), *args, "--wait-s", str(WAIT_S)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert played.returncode == 0, played.stderr
    return played


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(2)  # SIGINT, as Ctrl-C
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.stdout.read()


def test_node_gives_netvlad_runs_answers_over_dds(geo_world, ros_env, probe):
    """The player publishes the query folder in lockstep; the node's poses and fixes are the Localizer's
    answers over the same frames, with sequence matching (as netvlad-run --temporal)."""
    node = start_node(ros_env, geo_world["model"], geo_world["map"], "temporal:=true")
    try:
        probe.wait_matched()
        player = play(ros_env, geo_world["queries"], "--image-topic", "/cam", "--lockstep", "/netvlad/pose")
        assert "published 40 images" in player.stderr
        poses = probe.wait("pose", 40)
        fixes = probe.wait("fix", 40)
        probe.wait("diag", 1)
    finally:
        log = stop(node)
    config = localizer_config(temporal=True, adapt=True, top_k=5)
    with Localizer.open(geo_world["model"], geo_world["map"], config=config) as localizer:
        expected = list(localizer.run(ImageFolderSource(geo_world["queries"])))
    stamps = [p.header.stamp.sec + p.header.stamp.nanosec * 1e-9 for p in poses]
    assert stamps == pytest.approx([loc.timestamp for loc in expected], abs=1e-6)  # the images' own stamps
    got = np.array([[p.pose.pose.position.x, p.pose.pose.position.y] for p in poses])
    want = np.array([loc.position for loc in expected])
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert [f.status.status == -1 for f in fixes] == [loc.unknown for loc in expected]
    assert [f.latitude for f in fixes] == pytest.approx([loc.lat for loc in expected], abs=1e-9)
    assert fixes[0].position_covariance[0] == pytest.approx(expected[0].uncertainty_m ** 2, rel=1e-6)
    assert poses[0].header.frame_id == "utm_33N"
    # within 25 m of the truth at the rate netvlad-run has on the same frames
    truth = geo_world["dataset"].q_utm
    rate = np.mean(np.linalg.norm(got - truth, axis=1) <= 25.0)
    assert rate == np.mean(np.linalg.norm(want - truth, axis=1) <= 25.0) and rate >= 0.9
    markers = probe.wait("places", 40)[-1].markers
    assert len(markers) == 5 and markers[0].ns == "netvlad_places" and markers[0].scale.x > markers[1].scale.x
    values = _values(probe.got["diag"][-1])
    assert values["map places"] == "40" and values["map revision"] == "0"
    assert "subscribed to '/cam' (sensor_msgs/msg/Image)" in log, log


def test_node_localises_a_bags_compressed_images_played_by_the_player(geo_world, ros_env, probe, tmp_path):
    """A ROS 2 bag (sqlite3) of jpeg CompressedImages, played as recorded (header stamps and all): the node
    subscribes to CompressedImage from the graph's type and answers as netvlad-run --rosbag does."""
    pytest.importorskip("rosbags")
    import cv2

    from runtime.sources import RosbagSource
    from tests.runtime.bags import write_bag

    frames = [(100.0 + i, cv2.imread(str(geo_world["dataset"].image_path("queries", i)))) for i in range(12)]
    bag = write_bag(tmp_path / "patrol", "sqlite3", frames, encoding="jpeg", image_topic="/patrol/image")
    node = start_node(ros_env, geo_world["model"], geo_world["map"], topic="/patrol/image")
    try:
        probe.wait_matched()
        play(ros_env, bag, "--topic", "/patrol/image", "--lockstep", "/netvlad/pose")
        poses = probe.wait("pose", 12)
    finally:
        log = stop(node)
    assert "subscribed to '/patrol/image' (sensor_msgs/msg/CompressedImage)" in log, log
    with Localizer.open(geo_world["model"], geo_world["map"], config=localizer_config(False, True, 5)) as loc:
        expected = list(loc.run(RosbagSource(bag, "/patrol/image")))
    assert [p.header.stamp.sec for p in poses] == [100 + i for i in range(12)]
    got = np.array([[p.pose.pose.position.x, p.pose.pose.position.y] for p in poses])
    np.testing.assert_allclose(got, np.array([e.position for e in expected]), atol=1e-3)


def test_node_keeps_serving_bad_frames_a_dead_publisher_and_a_broken_map(geo_world, ros_env, probe, tmp_path):
    map_dir = tmp_path / "map"
    shutil.copytree(geo_world["map"], map_dir)
    node = start_node(ros_env, geo_world["model"], map_dir)
    try:
        probe.wait_for_node()
        probe.wait_matched()
        image = geo_world["dataset"].read_image("queries", 3)[:, :, ::-1].copy()  # BGR
        # an encoding the kit does not know, then a payload shorter than its size says: skipped, counted.
        # Each waits for the node's count before the next goes out (a newer frame would replace it).
        probe.publish_image(image, 1.0, encoding="yuv422_yuy2")
        probe.wait_diagnostics(lambda v: v["frames undecodable"] == "1")
        probe.publish_image(image, 1.1, data=image.tobytes()[:100])
        probe.wait_diagnostics(lambda v: v["frames undecodable"] == "2")
        probe.publish_image(image, 1.2)
        poses = probe.wait("pose", 1)
        assert poses[0].header.stamp.nanosec == 200_000_000  # only the good frame has an answer
        values = probe.wait_diagnostics(lambda v: v["frames localised"] == "1")
        assert values["frames received"] == "3" and values["frames dropped (newer frame arrived)"] == "0"

        # a publisher that dies mid-stream: the node keeps serving the next one
        player = subprocess.Popen(
            [
                str(BIN / "netvlad-ros2-play"),
                str(geo_world["queries"]),
                "--image-topic",
                "/cam",
                "--fps",
                "20",
            ],
            env=ros_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe.wait("pose", 4)
        player.kill()
        player.wait(timeout=30)
        before = len(probe.got["pose"])
        probe.publish_image(image, 50.0)
        assert probe.wait("pose", before + 1)[-1].header.stamp.sec == 50

        # services: a reset; a reload of a map that does not load keeps the old one; a good reload works
        reset = probe.call("/netvlad/reset")
        assert reset.success and reset.message == "a new sequence starts with the next frame"
        meta = (map_dir / "map.json").read_text()
        (map_dir / "map.json").write_text("{ not json")
        failed = probe.call("/netvlad/reload_map")
        assert not failed.success and failed.message.startswith(
            "the map did not load, the old one keeps serving"
        )
        before = len(probe.got["pose"])
        probe.publish_image(image, 60.0)
        assert probe.wait("pose", before + 1)[-1].header.stamp.sec == 60
        (map_dir / "map.json").write_text(meta)
        reloaded = probe.call("/netvlad/reload_map")
        assert reloaded.success and reloaded.message == "unchanged: 40 places, revision 0", reloaded.message
    finally:
        log = stop(node)
    assert "sensor_msgs/Image encoding 'yuv422_yuy2' is not supported" in log, log
    assert node.returncode == 0, log


def test_node_refuses_a_topic_of_another_type(geo_world, ros_env, probe):
    from std_msgs.msg import String

    probe.node.create_publisher(String, "/chatter", 10)
    node = start_node(ros_env, geo_world["model"], geo_world["map"], topic="/chatter")
    log = node.communicate(timeout=120)[0]
    assert node.returncode == 2, log
    assert (
        "topic '/chatter' carries std_msgs/msg/String, not sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage"
        in log
    )


def test_node_without_a_model_or_with_a_broken_one_exits_with_the_reason(geo_world, ros_env, tmp_path):
    missing = subprocess.run(
        [str(BIN / "netvlad-ros2"), "--ros-args", "-p", f"map:={geo_world['map']}"],
        env=ros_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert "parameter 'model' is required: -p model:=PATH" in missing.stderr + missing.stdout
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    wrong = start_node(ros_env, broken, geo_world["map"])
    log = wrong.communicate(timeout=120)[0]
    assert wrong.returncode == 2 and "broken.onnx" in log, log
    typed = start_node(ros_env, geo_world["model"], geo_world["map"], "threads:=two")
    log = typed.communicate(timeout=120)[0]
    assert typed.returncode == 2 and "parameter 'threads' must be an integer (e.g. -p threads:=2)" in log, log


def test_help_works_without_a_ros_graph():
    out = subprocess.run([str(BIN / "netvlad-ros2"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "image_topic" in out.stdout and "-p NAME:=VALUE" in out.stdout
    out = subprocess.run(
        [str(BIN / "netvlad-ros2-play"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--lockstep TOPIC" in out.stdout
    for program in ("netvlad-ros2", "netvlad-ros2-map", "netvlad-ros2-play"):
        page = subprocess.run(
            [str(BIN / program), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        ).stdout
        assert [line for line in page.splitlines() if len(line) > 80] == [], program  # an 80-column terminal


def test_mapping_node_writes_the_map_netvlad_map_build_rosbag_writes(ros_env, probe, tmp_path):
    """A drive's bag played onto topics (camera + gappy GPS), recorded by netvlad-ros2-map, saved by its
    service: the same keyframes as netvlad-map build --rosbag from the bag, and a map that localises."""
    pytest.importorskip("rosbags")
    import cv2

    from runtime.datasets.rosbag import DriveConfig
    from runtime.map import read_map_meta
    from runtime.map.from_bag import build_map_from_bag
    from tests.runtime.bags import write_bag
    from tests.runtime.test_robot import CAM, GPS, PLACES, SPACING, drive_timeline, gps_fixes

    model, _ = make_onnx_model(tmp_path / "model.onnx")
    world = make_stand_in_world(tmp_path / "world", places=PLACES, spacing_m=SPACING, seed=5)
    images, knots = drive_timeline()
    db = [cv2.imread(str(world.image_path("database", i))) for i in range(PLACES)]
    bag = write_bag(tmp_path / "drive.bag", "ros1", [(t, db[i]) for t, i in images], gps_fixes(knots))
    out = tmp_path / "maps" / "route"
    mapper = subprocess.Popen(
        [
            str(BIN / "netvlad-ros2-map"),
            "--ros-args",
            "-p",
            f"model:={model}",
            "-p",
            f"map:={out}",
            "-p",
            f"image_topic:={CAM}",
            "-p",
            f"gps_topic:={GPS}",
        ],
        env=ros_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        played = play(ros_env, bag, "--topic", CAM, "--gps-topic", GPS, "--rate", "20")
        assert f"published {len(images)} images" in played.stderr, played.stderr
        saved = probe.call("/netvlad/save_map")
        again = probe.call("/netvlad/save_map")
    finally:
        log = stop(mapper)
    assert saved.success, saved.message + log
    assert again.success and again.message == saved.message  # saving ends the drive, once
    assert mapper.returncode == 0, log
    reference = build_map_from_bag(model, bag, DriveConfig(CAM, GPS), tmp_path / "reference")
    got, want = read_map_meta(out), read_map_meta(reference)
    assert (
        got["count"] == want["count"] and got["geo"] == want["geo"] and got["count"] >= 15
    )  # GPS starts late, ends early, has a gap

    def positions(folder):
        with open(folder / "places.csv") as fh:
            rows = list(csv.DictReader(fh))
        return np.array([[float(r["easting"]), float(r["northing"])] for r in rows])

    np.testing.assert_allclose(positions(out), positions(reference), atol=1e-3)
    assert saved.message.startswith(f"wrote map '{out}': {got['count']} keyframes from ")
    assert not list(out.parent.glob(".route.recording-*"))  # the recording went with the save
    with Localizer.open(model, out) as localizer:
        queries = [cv2.imread(str(world.image_path("queries", i))) for i in range(PLACES)]
        found = np.array([localizer.localize(q, float(i)).position for i, q in enumerate(queries)])
    truth = world.q_utm  # (PLACES, 2)
    mapped = np.linalg.norm(truth[:, None] - positions(out)[None], axis=2).min(axis=1) <= SPACING / 2
    near = np.linalg.norm(found - truth, axis=1) <= 25.0
    assert mapped.sum() >= 15 and near[mapped].mean() >= 0.9  # queries of places the drive mapped


def test_mapping_node_refuses_to_replace_a_map(geo_world, ros_env):
    refused = subprocess.run(
        [
            str(BIN / "netvlad-ros2-map"),
            "--ros-args",
            "-p",
            f"model:={geo_world['model']}",
            "-p",
            f"map:={geo_world['map']}",
        ],
        env=ros_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert f"map '{geo_world['map']}' already exists; choose another -p map:=DIR or -p overwrite:=true" in (
        refused.stderr + refused.stdout
    )
