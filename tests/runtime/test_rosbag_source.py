"""ROS bags as a frame source: ROS 1, ROS 2 MCAP and sqlite3 bags written with rosbags' own writers."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from runtime.errors import SourceError
from runtime.sources import RosbagSource, open_source
from tests.runtime.bags import bag_path, write_bag
from tests.runtime.helpers import place_image

pytest.importorskip("rosbags", reason="needs rosbags (pip install 'netvlad-kit[ros]')")


def frames_of(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [(1700000000.25 + 0.5 * i, place_image(rng, 48, 64)) for i in range(n)]


@pytest.mark.parametrize(
    ("kind", "encoding"),
    [("ros1", "rgb8"), ("mcap", "bgr8"), ("sqlite3", "mono8"), ("ros1", "jpeg"), ("mcap", "png")],
)
def test_bag_frames_come_in_order_with_header_stamps(tmp_path, kind, encoding):
    images = frames_of()
    path = write_bag(bag_path(tmp_path, kind), kind, images, encoding=encoding)
    with open_source(path, topic="/camera/image_raw", queue_size=2) as source:
        assert isinstance(source, RosbagSource) and len(source) == 6
        frames = list(source)
    assert [f.index for f in frames] == list(range(6)) and source.stats.corrupt == 0
    assert [f.timestamp for f in frames] == pytest.approx([t for t, _ in images], abs=1e-6)
    assert frames[2].source == f"{path.name}#2" and frames[2].image.shape == (48, 64, 3)
    for frame, (_, bgr) in zip(frames, images, strict=True):
        expected = {"mono8": cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)}.get(
            encoding, bgr
        )
        error = np.abs(frame.image.astype(int) - expected).mean()
        assert error < 3.0 if encoding == "jpeg" else error == 0.0


def test_topic_errors_list_the_image_topics(tmp_path):
    images, fixes = frames_of(2), [(1700000000.0, 67.0, 14.0, 0)]
    path = write_bag(tmp_path / "drive.bag", "ros1", images, fixes)
    topics = "its image topics (sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage): "
    listed = topics + "/camera/image_raw (sensor_msgs/msg/Image, 2 messages)"
    with pytest.raises(
        SourceError, match=re.escape(f"ROS bag '{path}': choose the image topic with --topic; {listed}")
    ):
        open_source(path)
    with pytest.raises(SourceError, match=re.escape(f"ROS bag '{path}' has no topic '/camera'; {listed}")):
        open_source(path, topic="/camera")
    expected = (
        f"topic '/gps/fix' of ROS bag '{path}' is sensor_msgs/msg/NavSatFix, not sensor_msgs/msg/Image or "
    )
    with pytest.raises(SourceError, match=re.escape(expected + f"sensor_msgs/msg/CompressedImage; {listed}")):
        open_source(path, topic="/gps/fix")
    gps_only = write_bag(tmp_path / "gps", "mcap", fixes=fixes)
    expected = (
        f"ROS bag '{gps_only}': choose the image topic with --topic; it has no image topics "
        "(sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage); its topics: "
        "/gps/fix (sensor_msgs/msg/NavSatFix, 1 messages)"
    )
    with pytest.raises(SourceError, match=re.escape(expected)):
        open_source(gps_only)


def test_not_a_bag_and_truncated_bags_are_reported(tmp_path):
    junk = tmp_path / "junk.bag"
    junk.write_bytes(b"this is no rosbag" * 10)
    expected = (
        f"'{junk}' is not a ROS bag (File magic is invalid.); expected a ROS 1 .bag file, a ROS 2 bag folder "
        "(metadata.yaml with .db3 or .mcap files) or a single .mcap/.db3 file"
    )
    with pytest.raises(SourceError, match=re.escape(expected)):
        open_source(junk, topic="/camera/image_raw")
    for kind in ("ros1", "mcap", "sqlite3"):
        path = write_bag(bag_path(tmp_path, kind, name=kind), kind, frames_of(4))
        data_file = {"ros1": path, "mcap": path / "mcap.mcap", "sqlite3": path / "sqlite3.db3"}[kind]
        data = data_file.read_bytes()
        data_file.write_bytes(data[: len(data) // 2])  # a recording cut off before it was closed
        expected = f"ROS bag '{path}' is truncated or damaged ("
        hint = "needs re-indexing: 'rosbag reindex' (ROS 1) or 'ros2 bag reindex' (ROS 2)"
        with pytest.raises(SourceError, match=re.escape(expected) + ".*" + re.escape(hint)):
            open_source(path, topic="/camera/image_raw")
    with pytest.raises(SourceError, match=re.escape(f"ROS bag '{tmp_path / 'none.bag'}' does not exist")):
        open_source(tmp_path / "none.bag", topic="/camera/image_raw")


def test_unsupported_encoding_and_corrupt_images(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from tests.runtime.bags import image_message

    types = get_typestore(Stores.ROS2_HUMBLE)
    path = tmp_path / "odd"
    (t0, good), (t1, _) = frames_of(2)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        c = writer.add_connection("/cam", "sensor_msgs/msg/CompressedImage", typestore=types)
        msg, msgtype = image_message(types, "mcap", t0, good, "jpeg")
        writer.write(c, 1, types.serialize_cdr(msg, msgtype))
        msg.data = np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8)
        writer.write(c, 2, types.serialize_cdr(msg, msgtype))
        d = writer.add_connection("/depth", "sensor_msgs/msg/Image", typestore=types)
        msg, msgtype = image_message(types, "mcap", t1, good, "bgr8")
        msg.encoding = "32FC1"
        writer.write(d, 3, types.serialize_cdr(msg, msgtype))
    with open_source(path, topic="/cam") as source:
        frames = list(source)
    assert len(frames) == 1 and source.stats.corrupt == 1 and frames[0].timestamp == pytest.approx(t0)
    expected = "sensor_msgs/Image encoding '32FC1' is not supported; supported: bgr8, 8UC3, rgb8"
    with pytest.raises(SourceError, match=re.escape(expected)), open_source(path, topic="/depth") as source:
        list(source)
