"""Test bags written with rosbags' own writers: ROS 1 .bag, ROS 2 MCAP and sqlite3, images and NavSatFix."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

ZONE = 33  # northern Norway, where Nordland was filmed: a real UTM zone, grid convergence included

KINDS = ("ros1", "mcap", "sqlite3")


def bag_path(folder: Path, kind: str, name: str = "drive") -> Path:
    return folder / (f"{name}.bag" if kind == "ros1" else name)


def _typestore(kind: str):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if kind == "ros1" else Stores.ROS2_HUMBLE)


def _header(types, kind: str, t: float, frame_id: str, seq: int):
    t_ns = round(t * 1e9)
    stamp = types.types["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
    if kind == "ros1":
        return types.types["std_msgs/msg/Header"](seq=seq, stamp=stamp, frame_id=frame_id)
    return types.types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def image_message(types, kind: str, t: float, bgr: np.ndarray, encoding: str, seq: int = 0):
    """An Image (rgb8, bgr8, mono8) or CompressedImage (jpeg, png) message of ``bgr``."""
    header = _header(types, kind, t, "camera", seq)
    if encoding in ("jpeg", "png"):
        ok, data = cv2.imencode("." + ("jpg" if encoding == "jpeg" else "png"), bgr)
        assert ok
        msg = types.types["sensor_msgs/msg/CompressedImage"](
            header=header, format=encoding, data=data.reshape(-1)
        )
        return msg, "sensor_msgs/msg/CompressedImage"
    pixels = {
        "bgr8": bgr,
        "rgb8": bgr[:, :, ::-1],
        "mono8": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[:, :, None],
    }[encoding]
    h, w, c = pixels.shape
    msg = types.types["sensor_msgs/msg/Image"](
        header=header,
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=w * c,
        data=np.ascontiguousarray(pixels).reshape(-1),
    )
    return msg, "sensor_msgs/msg/Image"


def fix_message(types, kind: str, t: float, lat: float, lon: float, status: int = 0, seq: int = 0):
    nav_status = types.types["sensor_msgs/msg/NavSatStatus"](status=status, service=1)
    return types.types["sensor_msgs/msg/NavSatFix"](
        header=_header(types, kind, t, "gps", seq),
        status=nav_status,
        latitude=lat,
        longitude=lon,
        altitude=10.0,
        position_covariance=np.array([4.0, 0, 0, 0, 4.0, 0, 0, 0, 9.0]),
        position_covariance_type=2,
    )


def write_bag(
    path: Path,
    kind: str,
    images: list[tuple[float, np.ndarray]] = (),
    fixes: list[tuple[float, float, float, int]] = (),
    encoding: str = "rgb8",
    image_topic: str = "/camera/image_raw",
    gps_topic: str = "/gps/fix",
) -> Path:
    """A bag at ``path`` with ``images`` ``(t, bgr)`` and ``fixes`` ``(t, lat, lon, status)``, time-ordered."""
    types = _typestore(kind)
    events = [(t, "image", i, item) for i, (t, *item) in enumerate(images)]
    events += [(t, "fix", i, item) for i, (t, *item) in enumerate(fixes)]
    events.sort(key=lambda e: e[0])
    if kind == "ros1":
        from rosbags.rosbag1 import Writer

        writer, serialize = Writer(path), types.serialize_ros1
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3
        writer, serialize = Writer(path, version=9, storage_plugin=plugin), types.serialize_cdr
    compressed = encoding in ("jpeg", "png")
    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    with writer:
        connections = {}
        if images:
            connections["image"] = writer.add_connection(image_topic, image_type, typestore=types)
        if fixes:
            connections["fix"] = writer.add_connection(
                gps_topic, "sensor_msgs/msg/NavSatFix", typestore=types
            )
        for t, what, seq, item in events:
            if what == "image":
                msg, msgtype = image_message(types, kind, t, item[0], encoding, seq)
            else:
                msg, msgtype = fix_message(types, kind, t, *item, seq=seq), "sensor_msgs/msg/NavSatFix"
            # the bag's record time lags the header stamp a little, as on a real robot
            writer.write(connections[what], round((t + 0.01) * 1e9), serialize(msg, msgtype))
    return path
