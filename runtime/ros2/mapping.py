"""``netvlad-ros2-map``: map a route while a robot drives it: a camera and a GPS topic in, a map out.

    netvlad-ros2-map --ros-args -p model:=model.onnx -p map:=maps/route \\
        -p image_topic:=/camera/image_raw -p gps_topic:=/gps/fix [-p every_m:=5.0]

The node records both topics as they arrive (the messages' own bytes, reliable QoS, nothing decoded on the
way) into a ROS 2 bag in a hidden folder beside the map, and when asked (``/netvlad/save_map``,
``std_srvs/Trigger``) or on shutdown (Ctrl-C, SIGTERM) builds the map from it exactly as ``netvlad-map
build --rosbag`` does (:func:`runtime.map.from_bag.build_map_from_bag`: keyframes every ``every_m`` metres
at GPS positions interpolated at the images' header stamps, fixes without a fix and GPS gaps skipped), and
writes it atomically. The recording is removed once the map is written; if the build fails it is kept, and
the log names it, so that no drive is lost (``netvlad-map build --rosbag`` reruns it). Saving ends the
drive: later messages are not recorded.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.datasets.rosbag import DriveConfig
from runtime.errors import ConfigError
from runtime.map.config import MapConfig
from runtime.ros2 import graph as ros
from runtime.sources.rosbag import NAV_SAT_FIX

log = logging.getLogger(__name__)

PARAMETERS = (
    ros.MODEL,
    ros.ParamSpec("map", "", "where to write the map (a directory); required"),
    ros.IMAGE_TOPIC,
    ros.ParamSpec("gps_topic", "/gps/fix", "sensor_msgs/NavSatFix topic"),
    ros.ParamSpec("every_m", 5.0, "metres travelled between keyframes (as netvlad-map build --every)"),
    ros.ParamSpec("overwrite", False, "replace a map that exists at 'map'"),
    ros.BACKEND,
    ros.TOPIC_TIMEOUT,
)
SAVE_SERVICE = "/netvlad/save_map"
RECORD_DEPTH = 1000  # messages a slow disk may queue before DDS drops any


class DriveRecorder:
    """Raw ROS 2 messages into a bag (MCAP) in a hidden folder beside ``out``; thread-safe."""

    def __init__(self, out: Path) -> None:
        from runtime.optional import require

        rosbag2 = require("rosbags.rosbag2", "recording a drive (netvlad-ros2-map)")
        typesys = require("rosbags.typesys", "recording a drive (netvlad-ros2-map)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.recording-", dir=out.parent))
        self.bag = self.folder / "drive"
        self._store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
        self._writer = rosbag2.Writer(self.bag, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.closed = False

    def add_topic(self, topic: str, msgtype: str) -> None:
        with self._lock:
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self._store)
            self.counts[topic] = 0

    def write(self, topic: str, t_ns: int, raw: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            self._writer.write(self._connections[topic], t_ns, raw)
            self.counts[topic] += 1

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._writer.close()


def make_mapping_node(rclpy: Any, node_name: str = "netvlad_mapper") -> Any:
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image, NavSatFix
    from std_srvs.srv import Trigger

    message_types = {ros.IMAGE_TYPES[0]: Image, ros.IMAGE_TYPES[1]: CompressedImage, NAV_SAT_FIX: NavSatFix}

    class MappingNode(Node):
        def __init__(self) -> None:
            super().__init__(node_name)
            self.params = p = ros.declare(self, PARAMETERS)
            for name in ("model", "map"):
                if not p[name]:
                    raise ConfigError(f"parameter '{name}' is required: -p {name}:=PATH")
            self.out, self.model = Path(p["map"]), Path(p["model"])
            if not self.model.is_file():
                raise ConfigError(
                    f"model '{self.model}' does not exist; set -p model:=PATH to an exported model"
                )
            if self.out.exists() and not p["overwrite"]:
                raise ConfigError(
                    f"map '{self.out}' already exists; choose another -p map:=DIR or -p overwrite:=true"
                )
            self.drive = DriveConfig(p["image_topic"], p["gps_topic"], every_m=p["every_m"])
            self.recorder = DriveRecorder(self.out)
            self.saved: str | None = None  # the outcome, once saved
            self._save_lock = threading.Lock()
            self.create_service(
                Trigger, SAVE_SERVICE, self._on_save, callback_group=MutuallyExclusiveCallbackGroup()
            )
            self.get_logger().info(
                f"recording '{p['image_topic']}' and '{p['gps_topic']}' for map '{self.out}' "
                f"(keyframes every {p['every_m']:g} m); call {SAVE_SERVICE} or stop the node to write it"
            )

        def record(self, topic: str, msgtype: str) -> None:
            self.recorder.add_topic(topic, msgtype)
            qos = QoSProfile(depth=RECORD_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
            clock = self.get_clock()

            def on_message(raw: bytes) -> None:
                self.recorder.write(topic, clock.now().nanoseconds, raw)

            self.create_subscription(message_types[msgtype], topic, on_message, qos, raw=True)
            self.get_logger().info(f"recording '{topic}' ({msgtype})")

        def save(self) -> tuple[bool, str]:
            """Build and write the map from what was recorded (once; later calls say what happened)."""
            with self._save_lock:
                if self.saved is not None:
                    return True, self.saved
                self.recorder.close()
                counts = ", ".join(f"{n} on {t}" for t, n in self.recorder.counts.items()) or "nothing"
                try:
                    from runtime.map.from_bag import build_map_from_bag

                    config = MapConfig(overwrite=self.params["overwrite"])
                    build_map_from_bag(
                        self.model,
                        self.recorder.bag,
                        self.drive,
                        self.out,
                        config,
                        backend=self.params["backend"],
                    )
                except Exception as exc:  # the drive is kept: netvlad-map build --rosbag reruns it
                    message = (
                        f"the map was not written ({exc}); the recording ({counts}) is kept at "
                        f"'{self.recorder.bag}': rerun netvlad-map build --rosbag {self.recorder.bag} "
                        f"--image-topic {self.drive.image_topic} --gps-topic {self.drive.gps_topic}"
                    )
                    self.get_logger().error(message)
                    return False, message
                shutil.rmtree(self.recorder.folder, ignore_errors=True)
                from runtime.map import read_map_meta

                meta = read_map_meta(self.out)
                self.saved = f"wrote map '{self.out}': {meta['count']} keyframes from {counts}"
                self.get_logger().info(self.saved)
                return True, self.saved

        def _on_save(self, request: Any, response: Any) -> Any:
            response.success, response.message = self.save()
            return response

        def close(self) -> None:
            self.recorder.close()
            if self.saved is None and not any(self.recorder.counts.values()):
                shutil.rmtree(self.recorder.folder, ignore_errors=True)  # nothing was recorded

    return MappingNode


def _serve(rclpy: Any, node: Any) -> int:
    p = node.params
    image_type = ros.wait_for_topic_type(node, p["image_topic"], ros.IMAGE_TYPES, p["topic_timeout_s"])
    if image_type is None:
        return ros.EXIT_USAGE  # the reason is in the log
    node.record(p["image_topic"], image_type)
    node.record(p["gps_topic"], NAV_SAT_FIX)  # before its publisher appears: its type is fixed
    ros.spin_until_shutdown(rclpy, node)
    ok, _ = node.save()
    return 0 if ok else ros.EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``netvlad-ros2-map --ros-args -p model:=M -p map:=OUT [-p image_topic:=T -p gps_topic:=G ...]``."""
    return ros.node_main(argv, "netvlad-ros2-map", __doc__, PARAMETERS, make_mapping_node, _serve)


def run() -> None:
    """The console script: :func:`main`, then the process ends with its exit code."""
    ros.exit_process(main())


if __name__ == "__main__":
    run()
