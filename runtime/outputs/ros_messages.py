"""A :class:`~runtime.localize.Localization` as the fields of ROS messages, with no ROS library: the one place
that decides what the kit publishes, shared by the results bag (:mod:`runtime.outputs.bag`, ``rosbags``
types) and the ROS 2 node (:mod:`runtime.ros2`, ``rclpy`` types).

- ``sensor_msgs/NavSatFix`` (geographic maps only): lat/lon, altitude NaN (unknown),
  ``position_covariance`` diagonal ``uncertainty_m**2`` east and north (type DIAGONAL_KNOWN); status
  ``STATUS_NO_FIX`` when the frame is an unknown place, ``STATUS_FIX`` otherwise.
- ``geometry_msgs/PoseWithCovarianceStamped`` in the map's UTM frame (``frame_id`` ``utm_33N``, or ``map``
  for a metric-only map): x easting, y northing (metres), yaw from the matched place's heading (ENU, grid
  convergence removed); variance ``uncertainty_m**2`` in x and y, 1e6 for what is not observed (z, roll,
  pitch, and yaw when the heading is unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.localize import Localization

UNOBSERVED_VARIANCE = 1e6
HEADING_VARIANCE_RAD2 = (math.pi / 8) ** 2  # the matched place's heading, not the robot's own
STATUS_NO_FIX, STATUS_FIX, COVARIANCE_DIAGONAL_KNOWN = -1, 0, 2


def frame_id(geo) -> str:
    """The pose's frame: ``utm_33N`` for a map in UTM zone 33N, ``map`` for a metric-only map."""
    return f"utm_{geo.label}" if geo is not None else "map"


def stamp_ns(loc: Localization) -> int:
    """The frame's timestamp in nanoseconds (never negative)."""
    return max(0, round(loc.timestamp * 1e9))


@dataclass(frozen=True)
class FixFields:
    """``sensor_msgs/NavSatFix`` of one localisation (the header aside)."""

    status: int
    latitude: float
    longitude: float
    altitude: float
    position_covariance: np.ndarray  # (9,) row-major east, north, up
    position_covariance_type: int


@dataclass(frozen=True)
class PoseFields:
    """``geometry_msgs/PoseWithCovariance`` of one localisation."""

    position: tuple[float, float, float]  # x easting, y northing, z (m)
    orientation: tuple[float, float, float, float]  # quaternion x, y, z, w (ENU yaw only)
    covariance: np.ndarray  # (36,) row-major (6, 6): x, y, z, roll, pitch, yaw


def fix_fields(loc: Localization, geo) -> FixFields | None:
    """The NavSatFix of ``loc``, or None when the map is not geographic (no UTM zone, no lat/lon)."""
    if geo is None or loc.lat is None:
        return None
    variance = loc.uncertainty_m**2
    return FixFields(
        status=STATUS_NO_FIX if loc.unknown else STATUS_FIX,
        latitude=float(loc.lat),
        longitude=float(loc.lon),
        altitude=math.nan,
        position_covariance=np.array([variance, 0, 0, 0, variance, 0, 0, 0, UNOBSERVED_VARIANCE]),
        position_covariance_type=COVARIANCE_DIAGONAL_KNOWN,
    )


def pose_fields(loc: Localization, geo) -> PoseFields:
    """The pose of ``loc`` in the map's UTM frame, its yaw from the matched place's heading when known."""
    covariance = np.zeros(36)  # (6, 6) row-major: x, y, z, roll, pitch, yaw
    covariance[[0, 7]] = loc.uncertainty_m**2
    covariance[[14, 21, 28, 35]] = UNOBSERVED_VARIANCE
    yaw_q = (0.0, 1.0)  # (z, w): identity when the heading is unknown
    if loc.heading is not None:
        grid = loc.heading
        if geo is not None and loc.lat is not None:
            grid -= float(geo.convergence_deg(loc.lat, loc.lon))
        yaw = math.radians(90.0 - grid)  # ENU yaw (from east, counter-clockwise) from a bearing
        yaw_q = (math.sin(yaw / 2), math.cos(yaw / 2))
        covariance[35] = HEADING_VARIANCE_RAD2
    return PoseFields(
        position=(float(loc.position[0]), float(loc.position[1]), 0.0),
        orientation=(0.0, 0.0, yaw_q[0], yaw_q[1]),
        covariance=covariance,
    )
