"""Where frames come from: a camera, an RTSP stream, a video file, an image folder or a ROS bag's image topic,
each behind one iterator of :class:`Frame` (``uint8 (H, W, 3)`` BGR, a timestamp, a name), opened by
:func:`open_source` from what the user typed. Owns decoding (the kit's one image decoder,
:func:`decode_bgr`), the bounded queue that drops the oldest frame of a live source and loses nothing of a
file, retries with back-off, and reading bags without a ROS install (:mod:`runtime.sources.rosbag`, also
used by the datasets and the map builder). May import only the shared top-level modules (errors, optional,
protocol); nothing here knows about models, maps or positions.
"""

from __future__ import annotations

from pathlib import Path

from runtime.sources.frames import (
    MAX_CAMERA_INDEX,
    CameraSource,
    Frame,
    FrameSource,
    ImageFolderSource,
    RetryPolicy,
    RtspSource,
    SourceStats,
    VideoFileSource,
    decode_bgr,
)
from runtime.sources.rosbag import RosbagSource, is_bag


def open_source(spec: str | int | Path, **kwargs) -> FrameSource:
    """A source from a spec: an integer (camera index), ``rtsp://``/``http(s)://`` URL, ROS bag (pass
    ``topic=``), folder or video file."""
    text = str(spec)
    if isinstance(spec, int) or text.isdigit():
        return CameraSource(int(text), **kwargs)
    if "://" in text:
        return RtspSource(text, **kwargs)
    path = Path(text)
    if is_bag(path):  # a ROS 1 .bag, ROS 2 .mcap/.db3 or bag folder: needs topic="/camera/..."
        return RosbagSource(path, **kwargs)
    if path.is_dir():
        return ImageFolderSource(path, **kwargs)
    return VideoFileSource(path, **kwargs)


__all__ = [
    "MAX_CAMERA_INDEX",
    "CameraSource",
    "Frame",
    "FrameSource",
    "ImageFolderSource",
    "RetryPolicy",
    "RosbagSource",
    "RtspSource",
    "SourceStats",
    "VideoFileSource",
    "decode_bgr",
    "is_bag",
    "open_source",
]
