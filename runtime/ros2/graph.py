"""What the kit's ROS 2 programs share: finding rclpy, declaring parameters, ``--help`` without ROS, waiting
for a topic's type on the graph, spinning until Ctrl-C, exit codes."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.cli.console import EXIT_FAILED, EXIT_USAGE
from runtime.cli.options import HELP_WIDTH
from runtime.errors import ConfigError, NetVLADKitError
from runtime.sources.rosbag import COMPRESSED_IMAGE, IMAGE

IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)  # ROS 2 type names: sensor_msgs/msg/Image, .../CompressedImage
RCLPY_HINT = (
    "ROS 2's rclpy is not installed: pip install 'netvlad-kit[ros2]' (ROS 2's wheels from PyPI), or source "
    "your ROS 2 installation (source /opt/ros/<distro>/setup.bash) before running"
)
__all__ = ["EXIT_FAILED", "EXIT_USAGE", "IMAGE_TYPES", "ParamSpec"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamSpec:
    """A ROS parameter: its name, default (which gives its type) and what it means."""

    name: str
    default: Any
    help: str


# the parameters every program of the kit's shares
MODEL = ParamSpec("model", "", "the model file (.onnx, .engine or .plan); required")
IMAGE_TOPIC = ParamSpec("image_topic", "/camera/image_raw", "sensor_msgs/Image or CompressedImage topic")
BACKEND = ParamSpec("backend", "auto", "auto, onnxruntime[-cpu|-cuda|-tensorrt], openvino[-bf16] or tensorrt")
TOPIC_TIMEOUT = ParamSpec(
    "topic_timeout_s", 0.0, "give up when no camera publisher appears this long (0: never)"
)


def require_rclpy() -> Any:
    """``rclpy``, or exit with :data:`EXIT_USAGE` and the line that says how to get it."""
    try:
        import rclpy
    except ImportError:
        print(f"error: {RCLPY_HINT}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return rclpy


def print_help(args: Sequence[str], prog: str, doc: str | None, params: Sequence[ParamSpec]) -> bool:
    """Print ``prog``'s help when ``-h``/``--help`` comes before ``--ros-args``; whether it did."""
    own = list(args[1:])
    if "--ros-args" in own:
        own = own[: own.index("--ros-args")]
    if not {"-h", "--help"} & set(own):
        return False
    import textwrap

    width = max(len(p.name) for p in params) + 4
    lines = [f"Usage: {prog} --ros-args -p NAME:=VALUE ...", ""]
    lines += textwrap.wrap((doc or "").strip().split("\n\n")[0].replace("\n", " ").replace("``", ""), HELP_WIDTH - 2, initial_indent="  ",
                           subsequent_indent="  ")  # fmt: skip
    lines += ["", "Parameters (-p NAME:=VALUE):"]
    for p in params:
        text = f"{p.help} [default: {p.default!r}]"
        wrapped = textwrap.wrap(text, HELP_WIDTH - width) or [""]
        lines.append(f"  {p.name:<{width - 2}}{wrapped[0]}")
        lines += [" " * width + more for more in wrapped[1:]]
    lines += ["", *textwrap.wrap(
        "Set ROS_DOMAIN_ID, and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST to keep discovery on this machine.",
        HELP_WIDTH,
    )]  # fmt: skip
    print("\n".join(lines))
    return True


KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def declare(node: Any, params: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare ``params`` on ``node`` and return their values, each checked against its default's type
    (ConfigError naming the parameter, what it takes and what it got)."""
    values = {}
    for p in params:
        kind = type(p.default)
        wanted = f"parameter '{p.name}' must be {KIND_NAMES[kind]} (e.g. -p {p.name}:={p.default!r})"
        try:
            value = node.declare_parameter(p.name, p.default).value
        except Exception as exc:  # rclpy's InvalidParameterTypeException: -p threads:=two
            raise ConfigError(f"{wanted}; {exc}") from None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{wanted}, got {value!r}")
        values[p.name] = value
    return values


def wait_for_topic_type(node: Any, topic: str, types: Sequence[str], timeout_s: float = 0.0) -> str | None:
    """The type of ``topic`` once a publisher of it is on the graph (logged while waiting); None, with an
    error in the log, when its type is none of ``types`` or no publisher came within ``timeout_s`` (> 0)."""
    import rclpy

    start, next_notice = time.monotonic(), 0.0
    while rclpy.ok():
        published = dict(node.get_topic_names_and_types()).get(topic)
        if published:
            usable = [t for t in published if t in types]
            if len(usable) > 1:
                node.get_logger().warning(
                    f"topic '{topic}' carries both {' and '.join(usable)}; subscribing to {usable[0]}"
                )
            if usable:
                return usable[0]
            node.get_logger().error(
                f"topic '{topic}' carries {', '.join(published)}, not {' or '.join(types)}; set "
                "image_topic to a camera's image topic"
            )
            return None
        waited = time.monotonic() - start
        if timeout_s > 0 and waited >= timeout_s:
            node.get_logger().error(f"no publisher on '{topic}' within {timeout_s:g} s")
            return None
        if waited >= next_notice:
            node.get_logger().info(f"waiting for a publisher on '{topic}'")
            next_notice = waited + 5.0
        rclpy.spin_once(node, timeout_sec=0.1)
    return None


def node_main(
    argv: Sequence[str] | None,
    prog: str,
    doc: str | None,
    params: Sequence[ParamSpec],
    make_node: Callable[[Any], Any],
    serve: Callable[[Any, Any], int],
) -> int:
    """The life of one of the kit's ROS 2 programs: ``--help`` without ROS; rclpy; the node (a kit error while
    making it, such as a missing model or a parameter of the wrong type, is one error line and exit code 2);
    ``serve(rclpy, node)`` -> the exit code; then ``node.close()`` and shutdown, whatever happened."""
    args = list(sys.argv if argv is None else argv)
    if print_help(args, prog, doc, params):
        return 0
    rclpy = require_rclpy()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node(rclpy)()
        except NetVLADKitError as exc:
            rclpy.logging.get_logger(prog).error(str(exc))
            return EXIT_USAGE
        return serve(rclpy, node)
    except Exception as exc:  # a bug: logged with its traceback, a non-zero exit
        log.exception("%s failed: %s", prog, exc)
        return EXIT_FAILED
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def exit_process(code: int) -> None:
    """End a ROS 2 program with ``code`` once everything is written and shut down, without the interpreter's
    teardown: with DDS, ONNX Runtime and FAISS threads in one process that teardown crashed the mapping node
    once in about 25 runs (SIGSEGV after its map was written and ROS shut down), which a launch system would
    report as a failure. Logs and standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spin_until_shutdown(rclpy: Any, node: Any) -> None:
    """Serve callbacks (subscriptions, services, timers) until Ctrl-C, SIGTERM or ``rclpy.shutdown()``."""
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    executor = MultiThreadedExecutor(num_threads=2)  # a slow service never holds up the subscription
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)


def ros_time(clock: Any) -> Any:
    """``builtin_interfaces/Time`` of ``clock`` now."""
    return clock.now().to_msg()
