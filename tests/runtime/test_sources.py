"""Frame sources on real files and a real (absent) camera."""

from __future__ import annotations

import re
import time

import cv2
import numpy as np
import pytest

from runtime.errors import SourceError
from runtime.sources import CameraSource, ImageFolderSource, RetryPolicy, VideoFileSource, open_source


def write_video(path, frames=30, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        image = np.full((size[1], size[0], 3), (i * 8) % 256, np.uint8)
        writer.write(image)
    writer.release()
    return path


def test_video_file_loses_nothing(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=30)
    with open_source(video, queue_size=2) as source:
        assert isinstance(source, VideoFileSource)
        frames = []
        for frame in source:
            time.sleep(0.002)  # a slow consumer must not lose frames of a file
            frames.append(frame)
    assert len(frames) == 30 and source.stats.dropped == 0 and source.stats.corrupt == 0
    assert [f.index for f in frames] == list(range(30))
    assert frames[3].source == "clip.avi#3" and frames[3].image.shape == (48, 64, 3)
    assert frames[10].timestamp == pytest.approx(1.0, abs=0.01)
    assert abs(int(frames[5].image.mean()) - 40) <= 3  # the frames come in order


def test_live_source_keeps_the_newest_frame(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=60)
    source = VideoFileSource(video, queue_size=1, live=True)
    with source:
        it = iter(source)
        first = next(it)
        deadline = time.monotonic() + 20
        while source.stats.decoded < 60 and time.monotonic() < deadline:
            time.sleep(0.01)  # the consumer stalls while the decoder runs on; only the newest frame is kept
        rest = list(it)
    # The decoder may run ahead of the first read under load, so the first frame need not be frame 0.
    indices = [first.index] + [f.index for f in rest]
    assert indices == sorted(indices)
    assert source.stats.decoded == 60 and source.stats.dropped >= 50
    assert len(rest) + 1 + source.stats.dropped == 60
    assert rest[-1].index == 59


def test_image_folder_is_sorted_and_skips_corrupt_images(tmp_path):
    for i in (2, 0, 1, 3):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    (tmp_path / "001b.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    with ImageFolderSource(tmp_path, fps=2.0) as source:
        frames = list(source)
    assert [f.source for f in frames] == ["000.png", "001.png", "002.png", "003.png"]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 50, 100, 150]
    assert [f.timestamp for f in frames] == [0.0, 0.5, 1.5, 2.0]
    assert source.stats.corrupt == 1 and source.stats.delivered == 4


def test_bad_sources_are_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        SourceError, match=re.escape(f"image folder '{tmp_path / 'empty'}' contains no images")
    ):
        open_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot open video .*junk.mp4"), open_source(junk) as source:
        list(source)


def test_video_cut_midway_ends_without_losing_earlier_frames(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=40)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with open_source(cut) as source:
        frames = list(source)
    assert 5 <= len(frames) < 40
    assert [f.index for f in frames] == list(range(len(frames)))


def test_missing_camera_is_retried_then_reported():
    source = CameraSource(97, retry=RetryPolicy(attempts=3, delay_s=0.1))
    start = time.monotonic()
    expected = "camera 97: opening failed after 3 attempts over 0.3 s; check that camera 97 exists"
    with pytest.raises(SourceError, match=re.escape(expected)), source:
        list(source)
    assert time.monotonic() - start >= 0.3
