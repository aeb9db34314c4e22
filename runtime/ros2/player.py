"""``netvlad-ros2-play``: a ROS bag, a video or an image folder onto ROS 2 topics, for tests and for users
without the ROS command line (PyPI has no ``ros2 bag play``).

    netvlad-ros2-play drive.bag --topic /camera/image_raw --gps-topic /gps/fix     # a bag, as recorded
    netvlad-ros2-play queries.mp4 --image-topic /camera/image_raw --fps 10          # a video as a camera

A bag's image topic (``sensor_msgs/Image`` or ``CompressedImage``, published as recorded, encoding and
header included) and its GPS topic (``sensor_msgs/NavSatFix``) go out merged in recording order, at their
recorded pace (``--rate`` scales it). A video or folder goes out as ``sensor_msgs/Image`` (``bgr8`` or
``--encoding rgb8``), stamped with the frame's timestamp, at its own frame rate or ``--fps``.
``--lockstep TOPIC`` waits, after each image, for a message on TOPIC (e.g. ``/netvlad/pose``) before the
next: a node then sees every frame however fast it runs (tests, benchmarks of the answers, not the pace).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runtime.cli.options import HELP_WIDTH
from runtime.errors import NetVLADKitError
from runtime.ros2.graph import EXIT_USAGE, IMAGE_TYPES, exit_process, require_rclpy
from runtime.sources import is_bag, open_source
from runtime.sources.rosbag import COMPRESSED_IMAGE, IMAGE, NAV_SAT_FIX, open_bag, topic_connections

log = logging.getLogger(__name__)
LOCKSTEP_TIMEOUT_S = 30.0
PUBLISH_DEPTH = 1000  # messages a publisher keeps until every reliable subscriber has them


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The player's own options and what follows ``--ros-args`` (for rclpy)."""
    import shutil

    width = min(HELP_WIDTH, shutil.get_terminal_size().columns)
    parser = argparse.ArgumentParser(
        prog="netvlad-ros2-play",
        description=(__doc__ or "").strip().split("\n\n")[0].replace("``", ""),
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=width),
        epilog="Set ROS_DOMAIN_ID, and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST to stay on this machine.",
    )
    parser.add_argument("source", type=Path, help="a ROS 1/2 bag, a video file or an image folder")
    parser.add_argument("--topic", help="the bag's image topic (a bag only)")
    parser.add_argument("--gps-topic", help="the bag's sensor_msgs/NavSatFix topic, played too (a bag only)")
    parser.add_argument(
        "--image-topic", help="publish the images here (default: the bag's topic, or /camera/image_raw)"
    )
    parser.add_argument("--rate", type=float, default=1.0, help="pace factor: 2 plays twice as fast")
    parser.add_argument("--fps", type=float, help="a video or folder: frames per second (default: its own)")
    parser.add_argument("--encoding", choices=("bgr8", "rgb8"), default="bgr8", help="a video or folder")
    parser.add_argument(
        "--lockstep",
        metavar="TOPIC",
        help="after each image wait for a pose on TOPIC (the node's /netvlad/pose) before the next",
    )
    parser.add_argument(
        "--wait-s",
        type=float,
        default=10.0,
        help="wait this long for a subscriber of the images before playing",
    )
    parser.add_argument("--max-frames", type=int, help="stop after this many images")
    args = list(argv)
    ros_args = args[args.index("--ros-args") :] if "--ros-args" in args else []
    own = args[: len(args) - len(ros_args)]
    parsed = parser.parse_args(own)
    if parsed.rate <= 0 or (parsed.fps is not None and parsed.fps <= 0):
        parser.error(f"--rate and --fps must be > 0, got {parsed.rate} and {parsed.fps}")
    return parsed, ros_args


def open_items(
    args: argparse.Namespace, image_topic: str, stack: contextlib.ExitStack
) -> tuple[dict[str, str], Iterator[tuple[str, str, float, Any]]]:
    """What to play: ``{topic in the source: message type}`` and ``(topic, msgtype, time s, message)`` in
    order. A bag (opened once, into ``stack``): its image topic and GPS topic, checked, as recorded (rosbags
    messages at their record times); a video or folder: its frames (:class:`Frame`) as ``image_topic``."""
    if is_bag(args.source):
        if not args.topic:
            raise SystemExit("error: a bag needs --topic (its image topic)")
        reader = stack.enter_context(open_bag(args.source))
        connections = topic_connections(reader, args.source, args.topic, IMAGE_TYPES, "image", "--topic")
        if args.gps_topic:
            connections += topic_connections(
                reader, args.source, args.gps_topic, (NAV_SAT_FIX,), "GPS", "--gps-topic"
            )
        types = {c.topic: c.msgtype for c in connections}
        items = (
            (c.topic, c.msgtype, bag_ns * 1e-9, reader.deserialize(raw, c.msgtype))
            for c, bag_ns, raw in reader.messages(connections=connections)
        )
        return types, items
    source = stack.enter_context(open_source(args.source))
    fps = args.fps
    return {image_topic: IMAGE}, (
        (image_topic, IMAGE, f.index / fps if fps else f.timestamp, f) for f in source
    )


def _header(msg_types: dict, stamp_s: float | None = None, source: Any = None) -> Any:
    header = msg_types["Header"]()
    if source is not None:
        header.stamp.sec, header.stamp.nanosec = int(source.stamp.sec), int(source.stamp.nanosec)
        header.frame_id = str(source.frame_id)
    else:
        ns = max(0, round(stamp_s * 1e9))
        header.stamp.sec, header.stamp.nanosec = ns // 10**9, ns % 10**9
        header.frame_id = "camera"
    return header


def to_rclpy(msg_types: dict, msgtype: str, msg: Any) -> Any:
    """A ``rosbags`` Image, CompressedImage or NavSatFix as the rclpy message of the same fields."""
    if msgtype == IMAGE:
        out = msg_types["Image"](header=_header(msg_types, source=msg.header))
        out.height, out.width, out.encoding = int(msg.height), int(msg.width), str(msg.encoding)
        out.is_bigendian, out.step, out.data = int(msg.is_bigendian), int(msg.step), bytes(msg.data)
        return out
    if msgtype == COMPRESSED_IMAGE:
        out = msg_types["CompressedImage"](header=_header(msg_types, source=msg.header))
        out.format, out.data = str(msg.format), bytes(msg.data)
        return out
    out = msg_types["NavSatFix"](header=_header(msg_types, source=msg.header))
    out.status.status, out.status.service = int(msg.status.status), int(msg.status.service)
    out.latitude, out.longitude, out.altitude = float(msg.latitude), float(msg.longitude), float(msg.altitude)
    out.position_covariance = [float(v) for v in msg.position_covariance]
    out.position_covariance_type = int(msg.position_covariance_type)
    return out


def image_message(msg_types: dict, bgr: Any, stamp_s: float, encoding: str) -> Any:
    """A BGR frame ``uint8 (H, W, 3)`` as ``sensor_msgs/Image`` (``bgr8`` or ``rgb8``)."""
    pixels = bgr if encoding == "bgr8" else bgr[:, :, ::-1]
    out = msg_types["Image"](header=_header(msg_types, stamp_s))
    out.height, out.width = int(pixels.shape[0]), int(pixels.shape[1])
    out.encoding, out.is_bigendian, out.step = encoding, 0, int(pixels.shape[1] * 3)
    out.data = pixels.tobytes()
    return out


class Lockstep:
    """Counts the messages on a pose topic (``geometry_msgs/PoseWithCovarianceStamped``, the node's
    ``/netvlad/pose``: one per localised frame), so that the player can wait for the answer to each image."""

    def __init__(self, node: Any, topic: str) -> None:
        self._cond = threading.Condition()
        self.count = 0
        from geometry_msgs.msg import PoseWithCovarianceStamped

        self.topic = topic
        self._subscription = node.create_subscription(PoseWithCovarianceStamped, topic, self._seen, 10)

    def wait_matched(self, timeout_s: float) -> None:
        """Until the answering node's publisher is matched (an answer sent before would be missed)."""
        end = time.monotonic() + timeout_s
        while self._subscription.get_publisher_count() == 0 and time.monotonic() < end:
            time.sleep(0.05)
        if self._subscription.get_publisher_count() == 0:
            log.warning("nothing publishes %s after %g s; playing anyway", self.topic, timeout_s)

    def _seen(self, _msg: Any) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= count, timeout=timeout_s)


def play(args: argparse.Namespace, rclpy: Any) -> int:
    """Publish the source; returns how many images went out. Every publisher exists, and has its
    subscribers matched (up to ``--wait-s``), before the first message: none is lost to discovery."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image, NavSatFix
    from std_msgs.msg import Header

    msg_types = {"Image": Image, "CompressedImage": CompressedImage, "NavSatFix": NavSatFix, "Header": Header}
    kinds = {IMAGE: Image, COMPRESSED_IMAGE: CompressedImage, NAV_SAT_FIX: NavSatFix}
    bag = is_bag(args.source)
    image_topic = args.image_topic or (args.topic if bag else "/camera/image_raw")
    stack = contextlib.ExitStack()
    types, items = open_items(args, image_topic, stack)
    node = Node("netvlad_player")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    outgoing = {topic: image_topic if topic == args.topic else topic for topic in types}  # bag -> published
    # reliable and deep: a burst at a high --rate waits in the writer's history instead of overwriting it
    qos = QoSProfile(depth=PUBLISH_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    publishers = {
        topic: node.create_publisher(kinds[kind], outgoing[topic], qos) for topic, kind in types.items()
    }
    lockstep = Lockstep(node, args.lockstep) if args.lockstep else None
    spinner.start()
    sent, start, first_t = 0, None, None
    try:
        for pub in publishers.values():
            _wait_for_subscriber(pub, args.wait_s)
        if lockstep is not None:
            lockstep.wait_matched(args.wait_s)
        for topic, msgtype, t, msg in items:
            is_image = msgtype in IMAGE_TYPES
            if is_image and args.max_frames is not None and sent >= args.max_frames:
                break
            if bag:
                out = to_rclpy(msg_types, msgtype, msg)
            else:
                out = image_message(msg_types, msg.image, t, args.encoding)
            if start is None:
                start, first_t = time.monotonic(), t
            if lockstep is None:  # the recorded pace
                delay = (t - first_t) / args.rate - (time.monotonic() - start)
                if delay > 0:
                    time.sleep(delay)
            publishers[topic].publish(out)
            if is_image:
                sent += 1
                if lockstep is not None and not lockstep.wait_for(sent, LOCKSTEP_TIMEOUT_S):
                    log.warning(
                        "no answer on %s to image %d within %g s", args.lockstep, sent, LOCKSTEP_TIMEOUT_S
                    )
                    lockstep.count = sent
    finally:
        stack.close()  # the bag or the frame source
        time.sleep(0.2)  # let the last messages leave before the node goes
        executor.shutdown(timeout_sec=1.0)
        spinner.join(timeout=2.0)
        node.destroy_node()
    return sent


def _wait_for_subscriber(pub: Any, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    if pub.get_subscription_count() == 0:
        log.warning("no subscriber on %s after %g s; playing anyway", pub.topic_name, timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    args, ros_args = parse_args(list(sys.argv[1:] if argv is None else argv))
    rclpy = require_rclpy()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rclpy.init(args=["netvlad-ros2-play", *ros_args])
    try:
        sent = play(args, rclpy)
        log.info("published %d images", sent)
        return 0
    except NetVLADKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    finally:
        if rclpy.ok():
            rclpy.shutdown()


def run() -> None:
    """The console script: :func:`main`, then the process ends with its exit code (see exit_process)."""
    exit_process(main())


if __name__ == "__main__":
    run()
