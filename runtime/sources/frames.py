"""Frame sources: camera index, video file, image folder, RTSP URL, behind one iterator of :class:`Frame`.

Decoding runs in a background thread that fills a bounded queue. A *live* source (camera, RTSP) never
blocks on a slow consumer: when the queue is full the oldest frame is dropped (counted in
``stats.dropped``), so the consumer always gets the newest frame. A *file* source (video, folder) blocks
instead and loses nothing. A corrupt frame or image is skipped and counted (``stats.corrupt``), never
fatal. A camera or stream that fails to open or stops delivering is retried with exponential back-off and
then reported with :class:`~runtime.errors.SourceError`, raised in the consumer's thread.

Frames are OpenCV images: ``uint8 (H, W, 3)`` **BGR**; pass ``color="BGR"`` to the preprocessor.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import ConfigError, SourceError
from runtime.protocol import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

_END = object()
MAX_CAMERA_INDEX = 9999


def decode_bgr(path: str | Path) -> np.ndarray | None:
    """An image file as uint8 ``(H, W, 3)`` BGR, or None when it is empty, truncated or not an image.

    The one image decoder of the kit (map building, frame sources): ``cv2.imdecode`` rejects a truncated
    JPEG, where ``cv2.imread`` returns it half grey.
    """
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``image`` is owned by the consumer (a fresh array per frame)."""

    image: np.ndarray  # uint8 (H, W, 3) BGR
    timestamp: float  # seconds: stream position for files, wall clock (time.time()) for live sources
    source: str  # e.g. "0003.png", "queries.mp4#17", "camera 0"
    index: int  # 0-based position among the frames delivered by the decoder (skipped ones not counted)
    decode_s: float  # seconds spent decoding this frame
    decoded_at: float = 0.0  # time.perf_counter() when decoding finished (for end-to-end latency)


@dataclass
class SourceStats:
    """Counters, updated by the decoding thread; read them at any time."""

    decoded: int = 0
    delivered: int = 0
    dropped: int = 0  # live sources: frames discarded because the consumer was slower
    corrupt: int = 0  # frames or images that could not be decoded and were skipped
    reopened: int = 0  # live sources: successful reconnections after a drop-out
    superseded: int = (
        0  # live runs: frames a newer one replaced while they waited for the model (Localizer.run)
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off for opening and reconnecting live sources: ``delay_s * 2**k`` for k < ``attempts``."""

    attempts: int = 4
    delay_s: float = 0.5
    open_timeout_s: float = 5.0  # one open (or read) of a network stream gives up after this long

    def __post_init__(self) -> None:
        if self.attempts < 1 or not self.delay_s >= 0 or not self.open_timeout_s > 0:
            raise ConfigError(f"retry needs attempts >= 1, delay_s >= 0 and open_timeout_s > 0, got {self}")

    def delays(self) -> list[float]:
        return [self.delay_s * 2**k for k in range(self.attempts - 1)]


class FrameSource:
    """Base class: a background decoder feeding a bounded queue; iterate it to get :class:`Frame` s.

    Use it in a ``with`` block (or call :meth:`close`) so the decoding thread stops when you stop reading.
    """

    live = False

    def __init__(self, name: str, queue_size: int = 4, live: bool | None = None) -> None:
        if queue_size < 1:
            raise ConfigError(f"queue_size must be >= 1, got {queue_size}")
        self.name = name
        if live is not None:
            self.live = live
        self.stats = SourceStats()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ended = False  # the consumer has seen the end: iterating again yields nothing, at once
        self._closed_once = False

    # -- to implement --------------------------------------------------------------------------------
    def _open(self) -> None:
        """Open the underlying device or file; raise SourceError if impossible."""

    def _read(self) -> tuple[str, np.ndarray | None, float, str]:
        """Decode the next frame: ``(status, image, timestamp, name)``; status "ok", "corrupt", "end", "lost"."""
        raise NotImplementedError

    def _release(self) -> None:
        """Close the underlying device or file."""

    def _pace(self) -> None:
        """Wait until the next frame is due (a file played in real time); called before each decode."""

    # -- the decoding thread -------------------------------------------------------------------------
    def _put(self, item) -> None:
        if self.live and item is not _END:
            while True:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()
                        self.stats.dropped += 1
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _decode_loop(self) -> None:
        try:
            self._open()
            while not self._stop.is_set():
                self._pace()
                t0 = time.perf_counter()
                status, image, timestamp, name = self._read()
                decode_s = time.perf_counter() - t0
                if status == "end":
                    break
                if status == "corrupt":
                    self.stats.corrupt += 1
                    log.warning("%s: skipped a corrupt frame (%s)", self.name, name)
                    continue
                if status == "lost":
                    self._reconnect()
                    continue
                frame = Frame(image, timestamp, name, self.stats.decoded, decode_s, time.perf_counter())
                self.stats.decoded += 1
                self._put(frame)
        except BaseException as exc:  # delivered to the consumer, raised there
            self._put(exc)
        finally:
            with contextlib.suppress(Exception):
                self._release()
            self._put(_END)

    def _reconnect(self) -> None:
        raise SourceError(f"{self.name} stopped delivering frames")

    # -- the consumer side ---------------------------------------------------------------------------
    def start(self) -> FrameSource:
        """Start decoding (iteration does it for you)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._decode_loop, name=f"decode {self.name}", daemon=True
                )
                self._thread.start()
        return self

    def __iter__(self) -> Iterator[Frame]:
        if self._ended or self._stop.is_set():
            log.warning("%s: this source is exhausted or closed; open a new one to read it again", self.name)
            return
        self.start()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                thread = self._thread
                if self._stop.is_set() or (
                    thread is not None and not thread.is_alive() and self._queue.empty()
                ):
                    self._ended = True  # closed from another thread, or a decoder that ended without a word
                    return
                continue
            if item is _END:
                self._ended = True
                return
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            self.stats.delivered += 1
            yield item

    def request_stop(self) -> None:
        """Ask the decoder to stop, without waiting (safe from a signal handler); :meth:`close` still releases."""
        self._stop.set()

    def close(self, timeout_s: float = 0.5) -> None:
        """Stop decoding and release the device or file; idempotent.

        Waits at most ``timeout_s`` for the decoding thread: one stuck inside a native call (FFmpeg opening a
        silent stream) is left to finish on its own (it is a daemon thread and releases the capture itself),
        so Ctrl-C is honoured within about a second.
        """
        if self._stop.is_set() and self._closed_once:
            return  # closed already: a decoder left in a blocking call is not waited for a second time
        self._stop.set()
        self._closed_once = True
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            deadline = time.monotonic() + timeout_s
            while thread.is_alive():  # unblock a decoder waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                thread.join(timeout=0.05)
                if time.monotonic() > deadline:
                    log.warning(
                        "%s: the decoder is still busy in a blocking call; not waiting for it", self.name
                    )
                    break

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _CaptureSource(FrameSource):
    """A cv2.VideoCapture-backed source: a camera, an RTSP URL or a video file."""

    def __init__(self, target, name: str, retry: RetryPolicy | None = None, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.target = target
        self.retry = retry or RetryPolicy()
        self._cap = None

    def _try_open(self):
        cap = cv2.VideoCapture(self.target)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _open_with_retry(self, what: str) -> None:
        delays = self.retry.delays()
        started = time.monotonic()
        for attempt in range(self.retry.attempts):
            self._cap = self._try_open()
            if self._cap is not None:
                return
            if self._stop.is_set():
                return
            if attempt < len(delays):
                log.warning(
                    "%s: %s failed (attempt %d of %d), retrying in %.1f s",
                    self.name,
                    what,
                    attempt + 1,
                    self.retry.attempts,
                    delays[attempt],
                )
                if self._stop.wait(delays[attempt]):
                    return
        raise SourceError(
            f"{self.name}: {what} failed after {self.retry.attempts} attempts over "
            f"{time.monotonic() - started:.1f} s; {self._hint()}"
        )

    def _hint(self) -> str:
        return "check that the device exists and is not used by another program"

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class CameraSource(_CaptureSource):
    """A local camera by index (``/dev/videoN`` on Linux). Live: keeps the newest frame."""

    live = True

    def __init__(self, index: int, retry: RetryPolicy | None = None, **kwargs) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_CAMERA_INDEX:
            # OpenCV crashes (SIGSEGV) on a negative index and overflows on a huge one: check it here
            raise ConfigError(
                f"camera index must be an integer from 0 to {MAX_CAMERA_INDEX} (0 is the first camera, "
                f"/dev/video0), got {index!r}"
            )
        super().__init__(index, f"camera {index}", retry, **kwargs)

    def _hint(self) -> str:
        return (
            f"check that camera {self.target} exists (ls /dev/video*), is connected and not used by "
            "another program, or pass another --camera index"
        )

    def _open(self) -> None:
        self._open_with_retry("opening")

    def _read(self):
        ok, image = self._cap.read()
        if not ok or image is None:
            return "lost", None, 0.0, self.name
        return "ok", image, time.time(), self.name

    def _reconnect(self) -> None:
        log.warning("%s: stopped delivering frames after %d; reconnecting", self.name, self.stats.decoded)
        self._release()
        try:
            self._open_with_retry("reconnecting")
        except SourceError as exc:
            raise SourceError(f"{exc} (it had delivered {self.stats.decoded} frames)") from None
        self.stats.reopened += 1


class RtspSource(CameraSource):
    """An RTSP (or HTTP) network stream through FFmpeg. Live, reconnects like a camera."""

    def __init__(self, url: str, retry: RetryPolicy | None = None, **kwargs) -> None:
        _CaptureSource.__init__(self, url, f"stream {url}", retry, **kwargs)

    def _try_open(self):
        timeout_ms = int(self.retry.open_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _hint(self) -> str:
        return (
            f"each attempt waits up to {self.retry.open_timeout_s:g} s; check the URL, the network and the "
            "camera's credentials"
        )


class VideoFileSource(_CaptureSource):
    """A video file, every frame in order (nothing dropped unless ``live=True`` is forced).

    A frame that fails to decode before the end announced by the container is skipped and counted; after
    ``max_bad_frames`` consecutive failures the video is treated as ended early (logged).

    ``realtime=True`` plays the file at its own frame rate, as a camera delivers frames: frame ``i`` is
    decoded at ``i / fps`` seconds after the first, and the source is live (a slow consumer gets the newest
    frame; the others are dropped and counted). For measuring the latency a robot sees.
    """

    def __init__(self, path: str | Path, max_bad_frames: int = 25, realtime: bool = False, **kwargs) -> None:
        path = Path(path)
        if realtime:
            kwargs.setdefault("live", True)
        super().__init__(str(path), path.name, **kwargs)
        self.path = path
        self.max_bad_frames = max_bad_frames
        self.realtime = realtime
        self._period_s = 0.0
        self._due = 0.0
        self._frame_count = 0
        self._position = 0
        if path.is_dir():
            raise SourceError(
                f"'{path}' is a folder, not a video file; pass a folder of images with --images"
            )
        if not path.is_file():
            raise SourceError(f"video file '{path}' does not exist")

    def _open(self) -> None:
        self._cap = self._try_open()
        if self._cap is None:
            raise SourceError(
                f"cannot open video '{self.path}': not a video OpenCV can decode (truncated or an unsupported "
                "codec?); re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4"
            )
        self._frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if self.realtime:
            fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if not fps > 0:
                raise SourceError(
                    f"video '{self.path}' does not state its frame rate; it cannot play in real time"
                )
            self._period_s, self._due = 1.0 / fps, time.perf_counter()

    def _pace(self) -> None:
        if self.realtime:
            delay = self._due - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            self._due += self._period_s

    def _read(self):
        bad = 0
        while True:
            ok, image = self._cap.read()
            position = self._position
            self._position += 1
            if ok and image is not None:
                timestamp = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                return "ok", image, timestamp, f"{self.path.name}#{position}"
            if position >= self._frame_count - 1 or bad >= self.max_bad_frames:
                if position < self._frame_count - 1:
                    log.warning(
                        "%s: ended early at frame %d of %d (%d undecodable frames in a row)",
                        self.name,
                        position,
                        self._frame_count,
                        bad,
                    )
                return "end", None, 0.0, self.name
            bad += 1
            self.stats.corrupt += 1
            log.warning("%s: frame %d cannot be decoded, skipped", self.name, position)


class ImageFolderSource(FrameSource):
    """Every image of a folder, sorted by file name; timestamps are ``index / fps`` seconds."""

    def __init__(self, folder: str | Path, fps: float = 10.0, **kwargs) -> None:
        folder = Path(folder)
        super().__init__(folder.name or str(folder), **kwargs)
        if folder.is_file():
            raise SourceError(f"'{folder}' is a file, not a folder of images; pass a video file with --video")
        if not folder.is_dir():
            raise SourceError(f"image folder '{folder}' does not exist or is not a folder")
        self.folder = folder
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise SourceError(
                f"image folder '{folder}' contains no images (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        if fps <= 0:
            raise ConfigError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self._next = 0

    def __len__(self) -> int:
        return len(self.files)

    def _read(self):
        if self._next >= len(self.files):
            if self.stats.decoded == 0:  # every file was corrupt: nothing was localised, say so
                raise SourceError(
                    f"image folder '{self.folder}': none of its {len(self.files)} images can be decoded (all "
                    "are truncated, empty or not images); replace them"
                )
            return "end", None, 0.0, self.name
        index, path = self._next, self.files[self._next]
        self._next += 1
        image = decode_bgr(path)  # as the map builder reads: a truncated JPEG is corrupt, not half grey
        if image is None:
            return "corrupt", None, 0.0, str(path)
        return "ok", image, index / self.fps, path.name
