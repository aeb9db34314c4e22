"""Localisations into a ROS 2 bag (``netvlad-run --out-bag``), so ``ros2 bag play`` feeds them to a robot.

Written with the pure-Python ``rosbags`` package as MCAP (ROS 2's default storage since Iron); no ROS install
or ROS 2 node is involved. Every message is stamped with the source frame's time (header and record time):

- ``/netvlad/fix`` ``sensor_msgs/msg/NavSatFix`` (geographic maps only) and ``/netvlad/pose``
  ``geometry_msgs/msg/PoseWithCovarianceStamped`` in the map's UTM frame, as
  :mod:`runtime.outputs.ros_messages` makes them (the ROS 2 node publishes the same).
- ``/netvlad/confidence`` ``std_msgs/msg/Float32`` and ``/netvlad/unknown`` ``std_msgs/msg/Bool``.

The bag is written to a temporary sibling folder and renamed when closed, so a reader never sees half a bag.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from runtime.errors import ConfigError
from runtime.localize.localizer import Localization
from runtime.optional import require
from runtime.outputs.ros_messages import fix_fields, frame_id, pose_fields, stamp_ns

log = logging.getLogger(__name__)

TOPICS = {
    "fix": ("/netvlad/fix", "sensor_msgs/msg/NavSatFix"),
    "pose": ("/netvlad/pose", "geometry_msgs/msg/PoseWithCovarianceStamped"),
    "confidence": ("/netvlad/confidence", "std_msgs/msg/Float32"),
    "unknown": ("/netvlad/unknown", "std_msgs/msg/Bool"),
}


class ResultBag:
    """Writes one set of messages per :class:`Localization`; use it in a ``with`` block.

    ``geo``: the map's :class:`~runtime.datasets.geo.UtmZone` (None: a metric-only map, no NavSatFix topic).
    """

    def __init__(self, path: str | Path, geo=None) -> None:
        rosbag2 = require("rosbags.rosbag2", "writing ROS 2 bags (--out-bag)")
        typesys = require("rosbags.typesys", "writing ROS 2 bags (--out-bag)")
        self.path = Path(path)
        if self.path.exists():
            raise ConfigError(f"'{self.path}' already exists; choose another --out-bag or remove it")
        self.geo = geo
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_parent = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
        self._types = self._store.types
        self._writer = rosbag2.Writer(
            self._tmp_parent / self.path.name, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP
        )
        self._writer.open()
        self._connections = {
            key: self._writer.add_connection(topic, msgtype, typestore=self._store)
            for key, (topic, msgtype) in TOPICS.items()
            if key != "fix" or geo is not None
        }
        if geo is None:
            log.warning("the map is not geographic (no UTM zone): %s gets no NavSatFix topic", self.path)
        self.frame_id = frame_id(geo)
        self.count = 0
        self._closed = False

    def _header(self, t_ns: int):
        stamp = self._types["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
        return self._types["std_msgs/msg/Header"](stamp=stamp, frame_id=self.frame_id)

    def _write(self, key: str, t_ns: int, msg) -> None:
        connection = self._connections[key]
        self._writer.write(connection, t_ns, self._store.serialize_cdr(msg, connection.msgtype))

    def write(self, loc: Localization) -> None:
        """The messages of one localisation, stamped with its frame's timestamp."""
        t = self._types
        t_ns = stamp_ns(loc)
        fix = fix_fields(loc, self.geo)
        if fix is not None:
            msg = t["sensor_msgs/msg/NavSatFix"](
                header=self._header(t_ns),
                status=t["sensor_msgs/msg/NavSatStatus"](status=fix.status, service=0),
                latitude=fix.latitude,
                longitude=fix.longitude,
                altitude=fix.altitude,
                position_covariance=fix.position_covariance,
                position_covariance_type=fix.position_covariance_type,
            )
            self._write("fix", t_ns, msg)
        pose = pose_fields(loc, self.geo)
        stamped = t["geometry_msgs/msg/PoseWithCovarianceStamped"](
            header=self._header(t_ns),
            pose=t["geometry_msgs/msg/PoseWithCovariance"](
                pose=t["geometry_msgs/msg/Pose"](
                    position=t["geometry_msgs/msg/Point"](*pose.position),
                    orientation=t["geometry_msgs/msg/Quaternion"](*pose.orientation),
                ),
                covariance=pose.covariance,
            ),
        )
        self._write("pose", t_ns, stamped)
        self._write("confidence", t_ns, t["std_msgs/msg/Float32"](data=float(loc.confidence)))
        self._write("unknown", t_ns, t["std_msgs/msg/Bool"](data=bool(loc.unknown)))
        self.count += 1

    def close(self) -> None:
        """Finish the bag and move it into place (also after Ctrl-C: what was written is kept); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
            os.replace(self._tmp_parent / self.path.name, self.path)
            log.info("wrote %d localisations to ROS 2 bag '%s' (MCAP)", self.count, self.path)
        finally:
            shutil.rmtree(self._tmp_parent, ignore_errors=True)

    def __enter__(self) -> ResultBag:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
