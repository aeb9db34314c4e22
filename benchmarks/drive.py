"""``netvlad-bench drive``: a robot's drive end to end through ROS bags, against the folder-based baseline.

From a geotagged dataset (database = the mapping drive, queries = a later drive of the route), in one run:

1. write the mapping drive as a ROS 2 MCAP bag (CompressedImage + NavSatFix at 5 Hz with GPS noise, fixes
   without a fix and one outage) and the query drive as another bag, positions converted to lat/lon in a
   real UTM zone;
2. build a map from the bag (``netvlad-map build --rosbag``: keyframes every ``every_m`` metres) and the
   baseline map from the dataset folder (every database image, true positions);
3. localise the query bag against both: recall@1 at 25 m, position error, and how often the truth lies
   within the reported uncertainty (1 and 2 sigma), so ``uncertainty_m`` is checked, not assumed;
4. time reading frames from the bag against reading the same images from a folder (a ratio, same run).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.datasets.geo import UtmZone
from runtime.files import atomic_write_text
from runtime.protocol import EVAL_RADIUS_M

log = logging.getLogger(__name__)

IMAGE_TOPIC, GPS_TOPIC = "/camera/image_raw/compressed", "/gps/fix"


def _write_bag(
    path: Path, images: list[tuple[float, Path]], fixes: list[tuple[float, float, float, int]]
) -> Path:
    """A ROS 2 MCAP bag: CompressedImage of each image file (its bytes as recorded) and NavSatFix fixes."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types

    def header(t: float, frame_id: str):
        t_ns = round(t * 1e9)
        stamp = types["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    events = sorted(
        [(t, "image", p) for t, p in images] + [(f[0], "fix", f) for f in fixes], key=lambda e: e[0]
    )
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=store)
        gps = writer.add_connection(GPS_TOPIC, "sensor_msgs/msg/NavSatFix", typestore=store)
        for t, what, item in events:
            if what == "image":
                data = np.fromfile(str(item), np.uint8)
                if item.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                    data = cv2.imencode(".jpg", cv2.imread(str(item)))[1].reshape(-1)
                fmt = "png" if item.suffix.lower() == ".png" else "jpeg"
                msg = types["sensor_msgs/msg/CompressedImage"](
                    header=header(t, "camera"), format=fmt, data=data
                )
                writer.write(cam, int(t * 1e9), store.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
            else:
                _, lat, lon, status = item
                msg = types["sensor_msgs/msg/NavSatFix"](
                    header=header(t, "gps"),
                    status=types["sensor_msgs/msg/NavSatStatus"](status=status, service=1),
                    latitude=lat,
                    longitude=lon,
                    altitude=0.0,
                    position_covariance=np.zeros(9),
                    position_covariance_type=0,
                )
                writer.write(gps, int(t * 1e9), store.serialize_cdr(msg, "sensor_msgs/msg/NavSatFix"))
    return path


def simulate_gps(
    times: np.ndarray,
    utm: np.ndarray,
    zone: UtmZone,
    rng: np.random.Generator,
    noise_m: float,
    no_fix_share: float,
    outage: tuple[float, float] | None,
    rate_hz: float = 5.0,
) -> list[tuple[float, float, float, int]]:
    """Fixes at ``rate_hz`` along the true track ``utm (N, 2)`` at ``times (N,)``: Gaussian noise (metres),
    a share without a fix (status -1, lat/lon 0), none inside ``outage`` (start, end) seconds."""
    fixes = []
    for t in np.arange(times[0], times[-1], 1.0 / rate_hz):
        if outage is not None and outage[0] < t < outage[1]:
            continue
        e = np.interp(t, times, utm[:, 0]) + rng.normal(0, noise_m)
        n = np.interp(t, times, utm[:, 1]) + rng.normal(0, noise_m)
        if rng.random() < no_fix_share:
            fixes.append((float(t), 0.0, 0.0, -1))
        else:
            lat, lon = zone.to_latlon(e, n)
            fixes.append((float(t), lat, lon, 0))
    return fixes


def _localise(model: Path, map_dir: Path, source, truth: np.ndarray) -> dict:
    from runtime import Localizer

    with Localizer.open(model, map_dir) as localizer, source:
        t0 = time.perf_counter()
        locs = list(localizer.run(source))
        seconds = time.perf_counter() - t0
    best = np.array([[loc.best.easting, loc.best.northing] for loc in locs])  # (Q, 2)
    position = np.array([loc.position for loc in locs])  # (Q, 2)
    sigma = np.array([loc.uncertainty_m for loc in locs])
    error = np.hypot(*(position - truth).T)
    return {
        "queries": len(locs),
        "recall_at_1": round(float(np.mean(np.hypot(*(best - truth).T) <= EVAL_RADIUS_M)), 4),
        "position_error_m": {
            "median": round(float(np.median(error)), 2),
            "p90": round(float(np.percentile(error, 90)), 2),
        },
        "uncertainty_m": {"median": round(float(np.median(sigma)), 2)},
        "within_1_sigma": round(float(np.mean(error <= sigma)), 4),
        "within_2_sigma": round(float(np.mean(error <= 2 * sigma)), 4),
        "unknown": int(sum(loc.unknown for loc in locs)),
        "fps": round(len(locs) / max(seconds, 1e-9), 2),
    }


def _served_fps(model: Path, map_dir: Path, source) -> dict:
    """Frames per second with the live web view publishing every result to one connected browser-like
    client (it reads the event stream, so every sent update is JPEG-encoded)."""
    import http.client
    import threading

    from runtime import Localizer, LocalizerConfig
    from runtime.outputs.web import LiveView

    received = []
    with (
        Localizer.open(model, map_dir, config=LocalizerConfig(keep_frames=True)) as localizer,
        LiveView(localizer.map, port=0) as view,
        source,
    ):
        connection = http.client.HTTPConnection(view.host, view.port, timeout=30)
        connection.request("GET", "/events")
        stream = connection.getresponse()

        def client() -> None:
            try:
                for line in stream.fp:
                    if line.startswith(b"data: "):
                        received.append((json.loads(line[6:])["seq"], len(line)))
            except (OSError, ValueError):
                pass

        reader = threading.Thread(target=client, daemon=True)
        reader.start()
        t0 = time.perf_counter()
        count = 0
        for loc in localizer.run(source):
            view.publish(loc)
            count += 1
        seconds = time.perf_counter() - t0
        deadline = time.monotonic() + 30
        while (not received or received[-1][0] < count) and time.monotonic() < deadline:
            time.sleep(0.05)  # the client ends on the newest update
        connection.close()
    return {
        "fps": round(count / max(seconds, 1e-9), 2),
        "updates_sent": view.stats["sent"],
        "updates_dropped": view.stats["dropped"],
        "last_update_received": received[-1][0] if received else 0,
        "event_kb_median": round(float(np.median([n for _, n in received])) / 1024, 1) if received else 0.0,
    }


def _read_all(source) -> float:
    t0 = time.perf_counter()
    with source:
        count = sum(1 for _ in source)
    return count / max(time.perf_counter() - t0, 1e-9)


def drive_benchmark(
    model: str | Path,
    dataset: str | Path,
    out: str | Path,
    zone: str = "18T",
    every_m: float = 5.0,
    noise_m: float = 1.5,
    no_fix_share: float = 0.05,
    outage_s: float = 10.0,
    limit: int | None = None,
    seed: int = 0,
    progress: Callable | None = None,
) -> dict:
    """Run the drive benchmark (module doc); writes ``out/drive.json`` and ``out/drive.md``, returns the result."""
    from runtime import MapConfig, build_map, open_dataset
    from runtime.datasets.rosbag import DriveConfig
    from runtime.map.from_bag import build_map_from_bag
    from runtime.optional import require
    from runtime.sources import ImageFolderSource, RosbagSource

    require("rosbags", "the drive benchmark")
    model, out = Path(model), Path(out)
    data = open_dataset(str(dataset))
    if limit is not None:
        data = data.select(np.arange(min(limit, data.num_db)), np.arange(min(limit, data.num_queries)))
    utm_zone = UtmZone.from_label(zone)
    rng = np.random.default_rng(seed)
    scratch = out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    def times_of(stamps, n: int, start: float) -> np.ndarray:
        return (
            np.asarray(stamps, np.float64) if stamps is not None else start + np.arange(n, dtype=np.float64)
        )

    db_t = times_of(data.db_time, data.num_db, 1.7e9)
    q_t = times_of(data.q_time, data.num_queries, 1.7e9 + 86400)
    order = np.argsort(db_t, kind="stable")
    middle = float(db_t[order][len(order) // 2])
    outage = (middle, middle + outage_s) if outage_s > 0 else None
    fixes = simulate_gps(db_t[order], data.db_utm[order], utm_zone, rng, noise_m, no_fix_share, outage)
    map_bag = _write_bag(
        scratch / "mapping", [(float(db_t[i]), data.image_path("database", i)) for i in order], fixes
    )
    query_bag = _write_bag(
        scratch / "patrol",
        [(float(q_t[i]), data.image_path("queries", i)) for i in range(data.num_queries)],
        [],
    )
    t0 = time.perf_counter()
    bag_map = build_map_from_bag(
        model,
        map_bag,
        DriveConfig(IMAGE_TOPIC, GPS_TOPIC, every_m=every_m),
        scratch / "bag-map",
        progress=progress,
    )
    bag_build_s = time.perf_counter() - t0
    folder_map = build_map(model, data, scratch / "folder-map", MapConfig(), progress=progress)
    from runtime.map import read_map_meta

    keyframes = int(read_map_meta(bag_map)["count"])
    query_order = np.argsort(q_t, kind="stable")  # bag order: by time
    truth = data.q_utm[query_order]
    result = {
        "dataset": data.name,
        "database_images": data.num_db,
        "queries": data.num_queries,
        "zone": zone,
        "gps": {
            "noise_m": noise_m,
            "fixes": len(fixes),
            "no_fix": sum(f[3] == -1 for f in fixes),
            "outage_s": outage_s,
        },
        "every_m": every_m,
        "bag_map": {"places": keyframes, "build_s": round(bag_build_s, 2)}
        | _localise(model, bag_map, RosbagSource(query_bag, IMAGE_TOPIC), truth),
        "folder_map": {"places": data.num_db}
        | _localise(model, folder_map, RosbagSource(query_bag, IMAGE_TOPIC), truth),
    }
    served = _served_fps(model, folder_map, RosbagSource(query_bag, IMAGE_TOPIC))
    result["live_view"] = served | {"fps_ratio": round(served["fps"] / result["folder_map"]["fps"], 3)}
    query_folder = scratch / "query-images"
    query_folder.mkdir()
    for rank, i in enumerate(query_order):  # the same images as a folder, in the same order
        src = data.image_path("queries", int(i))
        shutil.copyfile(src, query_folder / f"{rank:06d}{src.suffix}")
    bag_fps = _read_all(RosbagSource(query_bag, IMAGE_TOPIC))
    folder_fps = _read_all(ImageFolderSource(query_folder))
    result["read_fps"] = {
        "bag": round(bag_fps, 1),
        "folder": round(folder_fps, 1),
        "bag_over_folder": round(bag_fps / folder_fps, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "drive.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "drive.md", _markdown(result))
    shutil.rmtree(scratch, ignore_errors=True)
    result["files"] = {"json": str(out / "drive.json"), "markdown": str(out / "drive.md")}
    return result


def _markdown(r: dict) -> str:
    rows = []
    for name, key in (
        ("map from the bag (keyframes, noisy GPS)", "bag_map"),
        ("map from the folder (truth)", "folder_map"),
    ):
        m = r[key]
        rows.append(
            f"| {name} | {m['places']} | {m['recall_at_1']:.3f} | {m['position_error_m']['median']:.1f} | "
            f"{m['position_error_m']['p90']:.1f} | {m['uncertainty_m']['median']:.1f} | {m['within_1_sigma']:.2f} | "
            f"{m['within_2_sigma']:.2f} | {m['unknown']} |"
        )
    g = r["gps"]
    return (
        f"# Drive benchmark: {r['dataset']}\n\n"
        f"{r['database_images']} mapping images, {r['queries']} query images; GPS 5 Hz, noise {g['noise_m']} m, "
        f"{g['no_fix']} of {g['fixes']} fixes without a fix, one {g['outage_s']:g} s outage; keyframes every "
        f"{r['every_m']:g} m; UTM zone {r['zone']}.\n\n"
        "| map | places | recall@1 (25 m) | error median (m) | error p90 (m) | uncertainty median (m) | "
        "truth within 1 sigma | within 2 sigma | unknown |\n|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nReading frames: bag {r['read_fps']['bag']} fps, folder {r['read_fps']['folder']} fps "
        f"(ratio {r['read_fps']['bag_over_folder']}, same run).\n"
        f"\nLive view (--serve) with one connected client: {r['live_view']['fps']} fps against "
        f"{r['folder_map']['fps']} fps without (ratio {r['live_view']['fps_ratio']}); "
        f"{r['live_view']['updates_sent']} updates sent, {r['live_view']['updates_dropped']} dropped for the "
        f"client, {r['live_view']['event_kb_median']} KiB per update.\n"
    )
