"""Localisations into a ROS 2 bag (``netvlad-run --out-bag``), so ``ros2 bag play`` feeds them to a robot.

Written with the pure-Python ``rosbags`` package as MCAP (ROS 2's default storage since Iron); no ROS install
or ROS 2 node is involved. Every message is stamped with the source frame's time (header and record time):

- ``/netvlad/fix`` ``sensor_msgs/msg/NavSatFix`` (geographic maps only): lat/lon, altitude NaN (unknown),
  ``position_covariance`` diagonal ``uncertainty_m**2`` east and north (type DIAGONAL_KNOWN); status
  ``STATUS_NO_FIX`` when the frame is an unknown place, ``STATUS_FIX`` otherwise.
- ``/netvlad/pose`` ``geometry_msgs/msg/PoseWithCovarianceStamped`` in the map's UTM frame (``frame_id``
  ``utm_33N``, or ``map`` for a metric-only map): x easting, y northing (metres), yaw from the matched
  place's heading (ENU, grid convergence removed); variance ``uncertainty_m**2`` in x and y, 1e6 for what
  is not observed (z, roll, pitch, and yaw when the heading is unknown).
- ``/netvlad/confidence`` ``std_msgs/msg/Float32`` and ``/netvlad/unknown`` ``std_msgs/msg/Bool``.

The bag is written to a temporary sibling folder and renamed when closed, so a reader never sees half a bag.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from runtime.errors import ConfigError
from runtime.localize.localizer import Localization
from runtime.optional import require

log = logging.getLogger(__name__)

TOPICS = {
    "fix": ("/netvlad/fix", "sensor_msgs/msg/NavSatFix"),
    "pose": ("/netvlad/pose", "geometry_msgs/msg/PoseWithCovarianceStamped"),
    "confidence": ("/netvlad/confidence", "std_msgs/msg/Float32"),
    "unknown": ("/netvlad/unknown", "std_msgs/msg/Bool"),
}
UNOBSERVED_VARIANCE = 1e6
HEADING_VARIANCE_RAD2 = (math.pi / 8) ** 2  # the matched place's heading, not the robot's own
STATUS_NO_FIX, STATUS_FIX, COVARIANCE_DIAGONAL_KNOWN = -1, 0, 2


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
        self.frame_id = f"utm_{geo.label}" if geo is not None else "map"
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
        t_ns = max(0, round(loc.timestamp * 1e9))
        variance = loc.uncertainty_m**2
        if self.geo is not None and loc.lat is not None:
            fix = t["sensor_msgs/msg/NavSatFix"](
                header=self._header(t_ns),
                status=t["sensor_msgs/msg/NavSatStatus"](
                    status=STATUS_NO_FIX if loc.unknown else STATUS_FIX, service=0
                ),
                latitude=loc.lat,
                longitude=loc.lon,
                altitude=math.nan,
                position_covariance=np.array([variance, 0, 0, 0, variance, 0, 0, 0, UNOBSERVED_VARIANCE]),
                position_covariance_type=COVARIANCE_DIAGONAL_KNOWN,
            )
            self._write("fix", t_ns, fix)
        covariance = np.zeros(36)  # (6, 6) row-major: x, y, z, roll, pitch, yaw
        covariance[[0, 7]] = variance
        covariance[[14, 21, 28, 35]] = UNOBSERVED_VARIANCE
        yaw_q = (0.0, 1.0)  # (z, w): identity when the heading is unknown
        if loc.heading is not None:
            grid = loc.heading
            if self.geo is not None and loc.lat is not None:
                grid -= float(self.geo.convergence_deg(loc.lat, loc.lon))
            yaw = math.radians(90.0 - grid)  # ENU yaw (from east, counter-clockwise) from a bearing
            yaw_q = (math.sin(yaw / 2), math.cos(yaw / 2))
            covariance[35] = HEADING_VARIANCE_RAD2
        pose = t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=loc.position[0], y=loc.position[1], z=0.0),
            orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=yaw_q[0], w=yaw_q[1]),
        )
        stamped = t["geometry_msgs/msg/PoseWithCovarianceStamped"](
            header=self._header(t_ns),
            pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=covariance),
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
