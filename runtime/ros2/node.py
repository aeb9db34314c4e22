"""``netvlad-ros2``: the Localizer as a ROS 2 node: camera topics in; position, confidence and the
unknown-place verdict out, over DDS.

    netvlad-ros2 --ros-args -p model:=model.onnx -p map:=maps/route -p image_topic:=/camera/image_raw

**In.** ``image_topic`` carries ``sensor_msgs/Image`` (the encodings :mod:`runtime.sources.rosbag` knows)
or ``sensor_msgs/CompressedImage`` (jpeg, png); the node reads the type from the graph when a publisher
appears, and subscribes with sensor-data QoS (best effort, the newest few). A node slower than the camera
works on the newest frame: a frame that arrives while one waits replaces it (counted as dropped), so the
answer is never about a backlog. A frame that cannot be decoded is counted and skipped; the node keeps
serving.

**Out**, stamped with the image's own header stamp (:mod:`runtime.outputs.ros_messages` makes the fields,
as the results bag of ``netvlad-run --out-bag``): ``/netvlad/fix`` ``sensor_msgs/NavSatFix`` (geographic
maps; status NO_FIX for an unknown place, covariance from the uncertainty), ``/netvlad/pose``
``geometry_msgs/PoseWithCovarianceStamped``, ``/netvlad/confidence`` ``std_msgs/Float32``,
``/netvlad/unknown`` ``std_msgs/Bool``, ``/netvlad/places`` ``visualization_msgs/MarkerArray`` (the best
places, for RViz) and ``/diagnostics`` ``diagnostic_msgs/DiagnosticArray`` once a second (frame rate,
frames dropped and undecodable, latency from receipt to publication, the map's revision).

**Services** (``std_srvs/Trigger``): ``/netvlad/reset`` starts a new sequence (the robot was carried
elsewhere); ``/netvlad/reload_map`` re-reads the map after ``netvlad-map add/remove`` (a map that fails to
load leaves the old one serving, and the response says why).

The answers are :meth:`Localizer.localize <runtime.localize.Localizer.localize>`'s, frame by frame, so a
node that receives the frames of a file gets the answers ``netvlad-run`` gives for them, sequence matching
included.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError, NetVLADKitError
from runtime.localize import Localization, Localizer, LocalizerConfig
from runtime.localize.stats import LatencyStats
from runtime.map.sequence import TemporalConfig
from runtime.outputs.ros_messages import fix_fields, frame_id, pose_fields
from runtime.ros2.graph import (
    BACKEND,
    EXIT_USAGE,
    IMAGE_TOPIC,
    IMAGE_TYPES,
    MODEL,
    TOPIC_TIMEOUT,
    ParamSpec,
    declare,
    exit_process,
    node_main,
    ros_time,
    spin_until_shutdown,
    wait_for_topic_type,
)
from runtime.sources.rosbag import decode_image

log = logging.getLogger(__name__)

PARAMETERS = (
    MODEL,
    ParamSpec("map", "", "the map directory built by netvlad-map build; required"),
    IMAGE_TOPIC,
    ParamSpec("temporal", False, "sequence matching over the last frames (as netvlad-run --temporal)"),
    ParamSpec("adapt", True, "centre the stream on its own running mean (as netvlad-run --adapt)"),
    ParamSpec("threads", 2, "CPU threads for inference (0: one per core)"),
    ParamSpec("frame_id", "", "frame of the pose (empty: utm_<zone> of the map, or map)"),
    BACKEND,
    ParamSpec("top_k", 5, "places reported per frame (the markers)"),
    TOPIC_TIMEOUT,
)
TOPICS = {
    "fix": "/netvlad/fix",
    "pose": "/netvlad/pose",
    "confidence": "/netvlad/confidence",
    "unknown": "/netvlad/unknown",
    "places": "/netvlad/places",
    "diagnostics": "/diagnostics",
}
SERVICES = {"reset": "/netvlad/reset", "reload_map": "/netvlad/reload_map"}
DIAGNOSTICS_PERIOD_S = 1.0


@dataclass
class NodeCounts:
    """What happened to the frames the node received (those dropped for a newer one: ``NewestFrame.replaced``)."""

    received: int = 0
    localized: int = 0
    undecodable: int = 0  # a payload that cannot be decoded, an unknown encoding, a size that does not fit


class NewestFrame:
    """A one-frame slot between the subscription callback and the localisation thread: a frame that arrives
    while another waits replaces it, so the model always starts on the newest one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: tuple[Any, float] | None = None
        self.replaced = 0
        self.closed = False

    def put(self, msg: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = (msg, time.perf_counter())
            self._cond.notify()

    def take(self) -> tuple[Any, float] | None:
        """The waiting frame and when it arrived; None once closed."""
        with self._cond:
            while self._item is None and not self.closed:
                self._cond.wait(timeout=0.5)
            item, self._item = self._item, None
            return None if self.closed else item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def localizer_config(temporal: bool, adapt: bool, top_k: int) -> LocalizerConfig:
    """The Localizer's configuration, as ``netvlad-run`` makes it from the same options."""
    return LocalizerConfig(top_k=top_k, temporal=TemporalConfig() if temporal else None, adapt=adapt)


def make_localizer_node(rclpy: Any, node_name: str = "netvlad_localizer") -> Any:
    """The node class, built on ``rclpy`` (imported only when a node runs)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, NavSatFix, NavSatStatus
    from std_msgs.msg import Bool, Float32, Header
    from std_srvs.srv import Trigger
    from visualization_msgs.msg import Marker, MarkerArray

    message_types = {IMAGE_TYPES[0]: Image, IMAGE_TYPES[1]: CompressedImage}

    class LocalizerNode(Node):
        def __init__(self) -> None:
            super().__init__(node_name)
            self.params = declare(self, PARAMETERS)
            p = self.params
            for name in ("model", "map"):
                if not p[name]:
                    raise ConfigError(f"parameter '{name}' is required: -p {name}:=PATH")
            if p["threads"] < 0:
                raise ConfigError(f"parameter 'threads' must be >= 0 (0: one per core), got {p['threads']}")
            self.localizer = Localizer.open(
                Path(p["model"]),
                Path(p["map"]),
                p["backend"],
                localizer_config(p["temporal"], p["adapt"], p["top_k"]),
                threads=p["threads"],
            )
            self.frame_id = p["frame_id"] or frame_id(self.localizer.map.geo)
            self.counts = NodeCounts()
            self.latency = LatencyStats()  # receipt -> publication, seconds
            self.slot = NewestFrame()
            self.image_type: str | None = None
            self._rate_mark = (time.perf_counter(), 0)  # (when, frames localised) at the last report
            self.pub = {
                "fix": self.create_publisher(NavSatFix, TOPICS["fix"], 10),
                "pose": self.create_publisher(PoseWithCovarianceStamped, TOPICS["pose"], 10),
                "confidence": self.create_publisher(Float32, TOPICS["confidence"], 10),
                "unknown": self.create_publisher(Bool, TOPICS["unknown"], 10),
                "places": self.create_publisher(MarkerArray, TOPICS["places"], 10),
                "diagnostics": self.create_publisher(DiagnosticArray, TOPICS["diagnostics"], 10),
            }
            services = MutuallyExclusiveCallbackGroup()  # a map reload does not hold up the camera
            self.create_service(Trigger, SERVICES["reset"], self._reset, callback_group=services)
            self.create_service(Trigger, SERVICES["reload_map"], self._reload, callback_group=services)
            self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
            self.worker = threading.Thread(target=self._localize_loop, name="netvlad localize", daemon=True)
            self.worker.start()
            self.get_logger().info(
                f"localising '{p['image_topic']}' against '{p['map']}' ({len(self.localizer.map)} places, "
                f"{self.localizer.backend.describe()}, temporal {p['temporal']}, adapt {p['adapt']})"
            )

        # -- in ------------------------------------------------------------------------------------
        def subscribe(self, msgtype: str) -> None:
            self.image_type = msgtype
            self.create_subscription(
                message_types[msgtype], self.params["image_topic"], self._on_image, qos_profile_sensor_data
            )
            self.get_logger().info(f"subscribed to '{self.params['image_topic']}' ({msgtype})")

        def _on_image(self, msg: Any) -> None:
            self.counts.received += 1
            self.slot.put(msg)

        def _localize_loop(self) -> None:
            while (item := self.slot.take()) is not None:
                msg, arrived = item
                try:
                    image = decode_image(msg, self.image_type)
                except NetVLADKitError as exc:  # an encoding the kit does not know: say so, keep serving
                    self.counts.undecodable += 1
                    self.get_logger().error(str(exc), throttle_duration_sec=5.0)
                    continue
                if image is None:
                    self.counts.undecodable += 1
                    self.get_logger().warning(
                        f"a frame on '{self.params['image_topic']}' could not be decoded (a payload shorter "
                        "than its size says, or not an image); skipped",
                        throttle_duration_sec=5.0,
                    )
                    continue
                stamp = msg.header.stamp
                seconds = stamp.sec + stamp.nanosec * 1e-9
                try:
                    loc = self.localizer.localize(image, seconds, source=self.params["image_topic"])
                except Exception as exc:  # a backend failure on one frame: logged, the node keeps serving
                    self.get_logger().error(f"frame at {seconds:.3f} s: {exc}", throttle_duration_sec=5.0)
                    continue
                self._publish(loc, stamp)
                self.counts.localized += 1
                self.latency.add(time.perf_counter() - arrived)

        # -- out -----------------------------------------------------------------------------------
        def _publish(self, loc: Localization, stamp: Any) -> None:
            header = Header(stamp=stamp, frame_id=self.frame_id)
            geo = self.localizer.map.geo
            fix = fix_fields(loc, geo)
            if fix is not None:
                msg = NavSatFix(header=header)
                msg.status = NavSatStatus(status=fix.status, service=NavSatStatus.SERVICE_GPS)
                msg.latitude, msg.longitude, msg.altitude = fix.latitude, fix.longitude, fix.altitude
                msg.position_covariance = fix.position_covariance.tolist()
                msg.position_covariance_type = fix.position_covariance_type
                self.pub["fix"].publish(msg)
            pose = pose_fields(loc, geo)
            stamped = PoseWithCovarianceStamped(header=header)
            position, orientation = stamped.pose.pose.position, stamped.pose.pose.orientation
            position.x, position.y, position.z = pose.position
            orientation.x, orientation.y, orientation.z, orientation.w = pose.orientation
            stamped.pose.covariance = pose.covariance.tolist()
            self.pub["pose"].publish(stamped)
            self.pub["confidence"].publish(Float32(data=float(loc.confidence)))
            self.pub["unknown"].publish(Bool(data=bool(loc.unknown)))
            self.pub["places"].publish(self._markers(loc, header))

        def _markers(self, loc: Localization, header: Any) -> Any:
            """A sphere per reported place, best first and biggest; red when the frame is an unknown place."""
            markers = MarkerArray()
            for rank, match in enumerate(loc.matches):
                m = Marker(header=header, ns="netvlad_places", id=rank, type=Marker.SPHERE, action=Marker.ADD)
                m.pose.position.x, m.pose.position.y = float(match.easting), float(match.northing)
                m.pose.orientation.w = 1.0
                size = 6.0 if rank == 0 else 3.0
                m.scale.x = m.scale.y = m.scale.z = size
                m.color.r, m.color.g, m.color.b = (1.0, 0.2, 0.2) if loc.unknown else (0.2, 0.8, 0.2)
                m.color.a = float(min(1.0, max(0.2, match.similarity)))
                m.text = f"place {match.place_id}"
                markers.markers.append(m)
            return markers

        def _publish_diagnostics(self) -> None:
            now = time.perf_counter()
            # from the count the localisation thread keeps (no list shared between the two threads)
            (then, before), localized = self._rate_mark, self.counts.localized
            rate = (localized - before) / max(now - then, 1e-9)
            self._rate_mark = (now, localized)
            c = self.counts
            meta = self.localizer.map.meta
            values = {
                "frame rate (Hz, since the last report)": f"{rate:.2f}",
                "frames received": c.received,
                "frames localised": c.localized,
                "frames dropped (newer frame arrived)": self.slot.replaced,
                "frames undecodable": c.undecodable,
                "latency p50 (ms, receipt to publication)": f"{1000 * self.latency.percentile(50):.2f}",
                "latency p99 (ms)": f"{1000 * self.latency.percentile(99):.2f}",
                "map revision": meta.get("revision", 0),
                "map places": len(self.localizer.map),
                "image topic": f"{self.params['image_topic']} ({self.image_type or 'no publisher yet'})",
            }
            level = DiagnosticStatus.OK if self.image_type and c.localized else DiagnosticStatus.WARN
            status = DiagnosticStatus(
                level=level,
                name="netvlad: localizer",
                message="localising" if level == DiagnosticStatus.OK else "waiting for frames",
                hardware_id=self.get_name(),
                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
            )
            array = DiagnosticArray(status=[status])
            array.header.stamp = ros_time(self.get_clock())
            self.pub["diagnostics"].publish(array)

        # -- services ------------------------------------------------------------------------------
        def _reset(self, request: Any, response: Any) -> Any:
            self.localizer.reset()
            response.success, response.message = True, "a new sequence starts with the next frame"
            self.get_logger().info("reset: a new sequence")
            return response

        def _reload(self, request: Any, response: Any) -> Any:
            try:
                changed = self.localizer.reload()
            except Exception as exc:  # the old map keeps serving
                response.success = False
                response.message = f"the map did not load, the old one keeps serving: {exc}"
                self.get_logger().error(response.message)
                return response
            meta = self.localizer.map.meta
            response.success = True
            response.message = (
                f"{'reloaded' if changed else 'unchanged'}: {len(self.localizer.map)} places, "
                f"revision {meta.get('revision', 0)}"
            )
            self.get_logger().info(f"reload_map: {response.message}")
            return response

        def close(self) -> None:
            self.slot.close()
            self.worker.join(timeout=10.0)
            self.localizer.close()

    return LocalizerNode


def _serve(rclpy: Any, node: Any) -> int:
    msgtype = wait_for_topic_type(
        node, node.params["image_topic"], IMAGE_TYPES, node.params["topic_timeout_s"]
    )
    if msgtype is None:
        return EXIT_USAGE  # the reason is in the log
    node.subscribe(msgtype)
    spin_until_shutdown(rclpy, node)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``netvlad-ros2 --ros-args -p model:=M -p map:=MAP [-p image_topic:=T ...]``; see the module doc."""
    return node_main(argv, "netvlad-ros2", __doc__, PARAMETERS, make_localizer_node, _serve)


def run() -> None:
    """The console script: :func:`main`, then the process ends with its exit code."""
    exit_process(main())


if __name__ == "__main__":
    run()
