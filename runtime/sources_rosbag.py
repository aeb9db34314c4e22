"""A ROS bag's image topic as a frame source (``open_source("drive.bag", topic="/camera/image_raw")``).

ROS 1 ``.bag`` and ROS 2 bags (sqlite3 or MCAP) through ``rosbags``; ``sensor_msgs/Image`` (rgb8, bgr8,
mono8 and more) and ``sensor_msgs/CompressedImage`` (jpeg, png). A file source: every frame, in order,
nothing dropped. Frame timestamps are the messages' header stamps (seconds, the robot's clock).
"""

from __future__ import annotations

from pathlib import Path

from runtime.rosbag import IMAGE_TYPES, decode_image, open_bag, stamp_seconds, topic_connections
from runtime.sources import FrameSource


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
