"""Reading ROS bags without a ROS install: ROS 1 ``.bag`` and ROS 2 bags (sqlite3 ``.db3`` or MCAP), through
the pure-Python ``rosbags`` package (``pip install 'netvlad-kit[ros]'``).

One place for what every bag reader of the kit needs: opening a bag with the kit's errors, checking a topic
and its type (the error lists the bag's matching topics), header stamps in seconds, and decoding
``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` to OpenCV BGR images; and a bag's image topic as a
frame source, :class:`RosbagSource` (``open_source("drive.bag", topic="/camera/image_raw")``): every frame, in
order, nothing dropped, timestamped by the messages' header stamps (seconds, the robot's clock).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from runtime.errors import SourceError
from runtime.optional import require
from runtime.sources.frames import FrameSource

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
NAV_SAT_FIX = "sensor_msgs/msg/NavSatFix"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
BAG_SUFFIXES = (".bag", ".mcap", ".db3")
NO_FIX = -1  # sensor_msgs/NavSatStatus.STATUS_NO_FIX

# raw Image encodings -> (channels, dtype, cv2 conversion to BGR or None)
_ENCODINGS = {
    "bgr8": (3, np.uint8, None),
    "8UC3": (3, np.uint8, None),
    "rgb8": (3, np.uint8, "COLOR_RGB2BGR"),
    "bgra8": (4, np.uint8, "COLOR_BGRA2BGR"),
    "rgba8": (4, np.uint8, "COLOR_RGBA2BGR"),
    "mono8": (1, np.uint8, "COLOR_GRAY2BGR"),
    "8UC1": (1, np.uint8, "COLOR_GRAY2BGR"),
    "mono16": (1, np.uint16, "COLOR_GRAY2BGR"),
    "16UC1": (1, np.uint16, "COLOR_GRAY2BGR"),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def is_bag(path: str | Path) -> bool:
    """A ROS 1 ``.bag``, a ROS 2 ``.mcap``/``.db3`` file, or a ROS 2 bag folder (with ``metadata.yaml``)."""
    path = Path(path)
    return path.suffix.lower() in BAG_SUFFIXES or (path.is_dir() and (path / "metadata.yaml").is_file())


@contextlib.contextmanager
def open_bag(path: str | Path) -> Iterator:
    """An open ``rosbags.highlevel.AnyReader`` on the bag at ``path``; SourceError for what is not a bag."""
    highlevel = require("rosbags.highlevel", "reading ROS bags")
    path = Path(path)
    if not path.exists():
        raise SourceError(f"ROS bag '{path}' does not exist")
    try:
        reader = highlevel.AnyReader([path])
        reader.open()
    except (highlevel.AnyReaderError, FileNotFoundError, OSError) as exc:
        raise _bag_error(path, exc) from None
    try:
        yield reader
    except highlevel.AnyReaderError as exc:
        raise _bag_error(path, exc) from None
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def _bag_error(path: Path, exc: BaseException) -> SourceError:
    reason = " ".join(str(a) for a in exc.args) or type(exc).__name__
    damaged = ("damaged", "end magic", "could not be read", "malformed")  # ROS 1 index, MCAP footer, sqlite
    if any(word in reason for word in damaged):
        return SourceError(
            f"ROS bag '{path}' is truncated or damaged ({reason}); a recording cut off before it was closed "
            "needs re-indexing: 'rosbag reindex' (ROS 1) or 'ros2 bag reindex' (ROS 2)"
        )
    return SourceError(
        f"'{path}' is not a ROS bag ({reason}); expected a ROS 1 .bag file, a ROS 2 bag folder "
        "(metadata.yaml with .db3 or .mcap files) or a single .mcap/.db3 file"
    )


def describe_topics(reader, types: Sequence[str] | None = None) -> str:
    """``"/cam (sensor_msgs/msg/Image, 120 messages), ..."``: the bag's topics, of ``types`` if given."""
    topics = [
        f"{name} ({info.msgtype}, {info.msgcount} messages)"
        for name, info in sorted(reader.topics.items())
        if types is None or info.msgtype in types
    ]
    return ", ".join(topics) or "none"


def topic_connections(
    reader, path: Path, topic: str | None, types: Sequence[str], what: str, option: str
) -> list:
    """The connections of ``topic``, checked to carry one of ``types``; the error lists the candidates."""
    wanted = " or ".join(types)
    candidates = describe_topics(reader, types)
    hint = f"its {what} topics ({wanted}): {candidates}"
    if candidates == "none":
        hint = f"it has no {what} topics ({wanted}); its topics: {describe_topics(reader)}"
    if topic is None:
        raise SourceError(f"ROS bag '{path}': choose the {what} topic with {option}; {hint}")
    info = reader.topics.get(topic)
    if info is None:
        raise SourceError(f"ROS bag '{path}' has no topic '{topic}'; {hint}")
    if info.msgtype not in types:
        raise SourceError(f"topic '{topic}' of ROS bag '{path}' is {info.msgtype}, not {wanted}; {hint}")
    return [c for c in reader.connections if c.topic == topic]


def stamp_seconds(header, fallback_ns: int) -> float:
    """A message header's stamp in seconds; the bag's record time when the stamp is zero (not filled in)."""
    stamp = header.stamp
    if stamp.sec == 0 and stamp.nanosec == 0:
        return fallback_ns * 1e-9
    return stamp.sec + stamp.nanosec * 1e-9


def decode_image(msg, msgtype: str) -> np.ndarray | None:
    """A ``sensor_msgs/Image`` or ``CompressedImage`` message -> ``uint8 (H, W, 3)`` BGR (a new array).

    None when the payload is corrupt (too short, undecodable); SourceError for an unsupported encoding.
    """
    import cv2

    if msgtype == COMPRESSED_IMAGE:
        data = np.asarray(msg.data, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        return image
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        raise SourceError(
            f"sensor_msgs/Image encoding '{encoding}' is not supported; supported: "
            f"{', '.join(SUPPORTED_ENCODINGS)} (or record sensor_msgs/CompressedImage, jpeg or png)"
        )
    channels, dtype, conversion = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    raw = np.asarray(msg.data, dtype=np.uint8)
    if height == 0 or width == 0 or step < width * channels * itemsize or raw.size < height * step:
        return None
    rows = raw[: height * step].reshape(height, step)[:, : width * channels * itemsize]  # (H, W*C*bytes)
    pixels = rows.copy().view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    image = pixels.reshape(height, width, channels)  # (H, W, C)
    if itemsize == 2:  # 16-bit grey: keep the top 8 bits
        image = (image >> 8).astype(np.uint8)
    if conversion is None:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(image, getattr(cv2, conversion))


class RosbagSource(FrameSource):
    """The images of ``topic`` in the bag at ``path``, in recording order.

    The topic is checked when the source is made: a missing or wrong ``topic`` raises SourceError listing
    the bag's image topics with their types.
    """

    def __init__(self, path: str | Path, topic: str | None = None, **kwargs) -> None:
        path = Path(path)
        super().__init__(f"{path.name}:{topic}", **kwargs)
        self.path, self.topic = path, topic
        with open_bag(path) as reader:  # checks the bag and the topic in the caller's thread
            connections = topic_connections(reader, path, topic, IMAGE_TYPES, "image", "--topic")
            self._count = sum(c.msgcount for c in connections)
        self._context = self._reader = self._messages = None

    def __len__(self) -> int:
        return self._count

    def _open(self) -> None:  # in the decoding thread: sqlite connections belong to the thread that made them
        self._context = open_bag(self.path)
        self._reader = self._context.__enter__()
        connections = [c for c in self._reader.connections if c.topic == self.topic]
        self._messages = self._reader.messages(connections=connections)
        self._position = 0

    def _read(self):
        item = next(self._messages, None)
        if item is None:
            return "end", None, 0.0, self.name
        connection, bag_ns, raw = item
        name = f"{self.path.name}#{self._position}"
        self._position += 1
        try:
            msg = self._reader.deserialize(raw, connection.msgtype)
        except Exception:  # a damaged message: skipped and counted
            return "corrupt", None, 0.0, name
        image = decode_image(msg, connection.msgtype)
        if image is None:
            return "corrupt", None, 0.0, name
        return "ok", image, stamp_seconds(msg.header, bag_ns), name

    def _release(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = self._reader = self._messages = None
