"""One localisation run, as ``netvlad-run`` does it: a source, a Localizer, and the outputs.

:func:`run_session` opens everything from a :class:`RunConfig`, localises every frame, writes one JSONL
record per frame (flushed per line), renders the overlay to a video and/or a window, reports a status line
through a callback, and on Ctrl-C (KeyboardInterrupt) or any error stops cleanly: outputs already written
are flushed and closed, the source and backend are released. It returns a :class:`RunSummary` with the
throughput, per-stage p50/p99 latencies and resident memory over the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import ConfigError
from runtime.files import check_not_replacing, check_writable_file, output_lock
from runtime.localize.localizer import Localization, Localizer, LocalizerConfig
from runtime.localize.stats import LatencyStats
from runtime.map.sequence import TemporalConfig
from runtime.sources import (
    MAX_CAMERA_INDEX,
    CameraSource,
    FrameSource,
    ImageFolderSource,
    RtspSource,
    VideoFileSource,
)

log = logging.getLogger(__name__)
STAGES = ("decode", "preprocess", "inference", "search", "total")


@dataclass(frozen=True)
class RunConfig:
    """What to localise, against what, and where the results go. Exactly one source must be given."""

    model: Path
    map: Path
    camera: int | None = None
    video: Path | None = None
    images: Path | None = None
    rtsp: str | None = None
    rosbag: Path | None = None  # a ROS 1 .bag or ROS 2 bag; images of `topic`
    topic: str | None = None
    backend: str = "auto"
    threads: int | None = None
    jsonl: Path | None = None
    out_bag: Path | None = None  # a ROS 2 bag (MCAP) of the results (runtime.outputs.bag)
    save_video: Path | None = None
    show: bool = False
    temporal: bool = False
    adapt: bool = True  # centre the stream on its own running mean (runtime.localize.adapt)
    top_k: int = 5
    unknown_threshold: float | None = None
    override_map_check: bool = False
    max_frames: int | None = None
    loop: int = 1  # replay a file source this many times (soak tests)
    serve: str | None = None  # "[HOST:]PORT" of the live web view (runtime.outputs.web)
    realtime: bool = False  # replay a file source at the pace of its timestamps (to watch it)
    overwrite: bool = False  # replace --jsonl / --save-video / --out-bag files that exist

    def __post_init__(self) -> None:
        given = [n for n in ("camera", "video", "images", "rtsp", "rosbag") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(
                "give exactly one source (--camera, --video, --images, --rtsp or --rosbag), "
                f"got {len(given)}: {given}"
            )
        if self.topic is not None and self.rosbag is None:
            raise ConfigError("--topic selects a ROS bag's image topic; give the bag with --rosbag")
        if self.loop < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise ConfigError(f"loop and max_frames must be >= 1, got {self.loop} and {self.max_frames}")
        if self.threads is not None and self.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0: one per core), got {self.threads}")
        if self.camera is not None and not 0 <= self.camera <= MAX_CAMERA_INDEX:
            raise ConfigError(
                f"--camera must be a camera index from 0 to {MAX_CAMERA_INDEX} (0 is the first camera, "
                f"/dev/video0), got {self.camera}"
            )
        if self.loop > 1 and (self.camera is not None or self.rtsp is not None):
            raise ConfigError("--loop replays files; it cannot be used with a camera or a stream")
        if self.serve is not None:
            from runtime.outputs.web.server import parse_address

            parse_address(self.serve)

    def open_source(self) -> FrameSource:
        # live sources: a one-frame queue, so the localiser always works on the newest frame (low latency)
        if self.camera is not None:
            return CameraSource(self.camera, queue_size=1)
        if self.rtsp is not None:
            return RtspSource(self.rtsp, queue_size=1)
        if self.video is not None:
            return VideoFileSource(self.video)
        if self.rosbag is not None:
            from runtime.sources import RosbagSource

            return RosbagSource(self.rosbag, self.topic)
        return ImageFolderSource(self.images)


@dataclass
class RunSummary:
    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    dropped: int = 0
    corrupt: int = 0
    unknown: int = 0
    interrupted: bool = False
    temporal: bool = False
    latency_ms: dict = field(default_factory=dict)  # stage -> {"p50", "p99", "mean"}
    rss_mb: list = field(default_factory=list)  # resident memory sampled every `rss_every` frames
    backend: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; 0 elsewhere)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return 0.0


def run_session(
    config: RunConfig,
    on_status: Callable[[str], None] | None = None,
    status_every_s: float = 0.5,
    rss_every: int = 500,
) -> RunSummary:
    """Run ``config`` to the end of the source, ``max_frames``, Ctrl-C or an error (re-raised after cleanup)."""
    summary = RunSummary(temporal=config.temporal)
    loc_config = LocalizerConfig(
        top_k=config.top_k,
        unknown_threshold=config.unknown_threshold,
        temporal=TemporalConfig() if config.temporal else None,
        adapt=config.adapt,
        keep_frames=bool(config.save_video or config.show or config.serve),
    )
    options = {} if config.threads is None else {"threads": config.threads}
    check_writable_file(config.jsonl, "--jsonl")  # before minutes of work, not after them
    check_writable_file(config.save_video, "--save-video")
    check_not_replacing(
        {"--jsonl": config.jsonl, "--save-video": config.save_video, "--out-bag": config.out_bag},
        config.overwrite,
    )
    stages = {s: LatencyStats() for s in STAGES}  # constant memory however long the run
    with contextlib.ExitStack() as stack:
        localizer = stack.enter_context(
            Localizer.open(
                config.model, config.map, config.backend, loc_config, config.override_map_check, **options
            )
        )
        summary.backend = localizer.backend.describe()
        jsonl = None
        if config.jsonl:
            Path(config.jsonl).parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(output_lock(config.jsonl, "--jsonl"))  # one run per JSONL
            jsonl = stack.enter_context(open(config.jsonl, "w", encoding="utf-8", buffering=1))
        view = None
        if config.serve is not None:
            from runtime.outputs.web.server import LiveView, parse_address

            view = stack.enter_context(LiveView(localizer.map, *parse_address(config.serve)))
            if on_status is not None:
                on_status(f"live view: {view.url}")
        out_bag = None
        if config.out_bag:
            from runtime.outputs.bag import ResultBag

            out_bag = stack.enter_context(ResultBag(config.out_bag, localizer.map.geo))
        overlay = writer = None
        if config.save_video or config.show:
            from runtime.outputs.overlay import Overlay

            overlay = Overlay(localizer.map)
        if config.save_video:
            writer = stack.enter_context(_VideoWriter(config.save_video, overlay.size))
        replays = _Replays()
        stopping = threading.Event()  # no new replay of the source once the run is ending
        start = time.perf_counter()
        last_status = start
        live = config.camera is not None or config.rtsp is not None
        results = localizer.run(_frames(config, replays, stopping), live=live)
        stack.enter_context(_stop_sources_on_ctrl_c(stopping, replays))
        try:
            for loc in results:
                summary.frames += 1
                summary.unknown += loc.unknown
                for s in STAGES:
                    stages[s].add(getattr(loc.times, s))
                if jsonl is not None:
                    jsonl.write(json.dumps(loc.to_record()) + "\n")
                if out_bag is not None:
                    out_bag.write(loc)
                if view is not None:
                    view.publish(loc)
                now = time.perf_counter()
                fps = summary.frames / max(now - start, 1e-9)
                if overlay is not None:
                    image = overlay.render(loc, loc.frame, fps)
                    if writer is not None:
                        writer.write(image)
                    if config.show and _show(image):
                        break
                if summary.frames % rss_every == 1:
                    summary.rss_mb.append(round(resident_mb(), 1))
                if on_status is not None and now - last_status >= status_every_s:
                    last_status = now
                    on_status(_status(loc, fps, replays))
                if config.max_frames is not None and summary.frames >= config.max_frames:
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
            log.warning("interrupted after %d frames; outputs flushed", summary.frames)
        finally:
            stopping.set()
            replays.close()  # first: a decoder stuck opening a stream is left behind within ~1 s
            results.close()  # then the localizer's pipeline threads, now that their source has ended
            summary.seconds = time.perf_counter() - start
            summary.fps = summary.frames / max(summary.seconds, 1e-9)
            summary.dropped = replays.dropped
            summary.corrupt = replays.corrupt
            summary.rss_mb.append(round(resident_mb(), 1))
            summary.latency_ms = {s: v.summary_ms() for s, v in stages.items()}
    if config.show:
        with contextlib.suppress(Exception):
            import cv2

            cv2.destroyAllWindows()
    return summary


class _Replays:
    """The source being read and the counters of the replays already done (not the sources themselves:
    keeping every replayed source, with its file list and thread, grew a long --loop run's memory)."""

    def __init__(self) -> None:
        self.current: FrameSource | None = None
        self._dropped = self._corrupt = 0

    def finished(self, source: FrameSource) -> None:
        self._dropped += source.stats.dropped + source.stats.superseded
        self._corrupt += source.stats.corrupt
        if self.current is source:
            self.current = None

    @property
    def dropped(self) -> int:
        current = self.current.stats if self.current is not None else None
        return self._dropped + (current.dropped + current.superseded if current is not None else 0)

    @property
    def corrupt(self) -> int:
        return self._corrupt + (self.current.stats.corrupt if self.current is not None else 0)

    def close(self) -> None:
        source = self.current
        if source is not None:
            source.close()

    def request_stop(self) -> None:
        source = self.current
        if source is not None:
            source.request_stop()


@contextlib.contextmanager
def _stop_sources_on_ctrl_c(stopping: threading.Event, replays: _Replays) -> Iterator[None]:
    """While the run lasts, Ctrl-C first tells the source to stop, then raises KeyboardInterrupt as usual.

    The pipeline's threads then see the end of their frames at once, instead of waiting for a source that
    may be stuck (a stream's open) before the run can flush its outputs and exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame) -> None:
        stopping.set()
        replays.request_stop()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _frames(config: RunConfig, replays: _Replays, stopping: threading.Event) -> Iterator:
    """Frames of the source, ``config.loop`` times; runs in the localizer's feeder thread."""
    for _ in range(config.loop):
        if stopping.is_set():
            return
        source = config.open_source()
        replays.current = source
        try:
            yield from (_paced(source) if config.realtime else source)
        finally:
            source.close()
            replays.finished(source)


def _paced(frames: Iterator) -> Iterator:
    """``frames`` at the pace of their timestamps (a recording replayed as it was recorded)."""
    start_wall = start_stamp = None
    for frame in frames:
        if start_wall is None:
            start_wall, start_stamp = time.monotonic(), frame.timestamp
        else:
            ahead = (frame.timestamp - start_stamp) - (time.monotonic() - start_wall)
            if ahead > 0:
                time.sleep(min(ahead, 5.0))  # a gap in the recording waits 5 s at most
        yield frame


def _status(loc: Localization, fps: float, replays: _Replays) -> str:
    where = "unknown place" if loc.unknown else f"E {loc.position[0]:.1f} N {loc.position[1]:.1f}"
    dropped = replays.dropped
    return (
        f"{fps:5.1f} FPS | frame {loc.index} | {where} | conf {loc.confidence:.2f} | "
        f"best {loc.best.image} ({loc.best.similarity:.3f}) | dropped {dropped}"
    )


def _show(image: np.ndarray) -> bool:
    """Show ``image`` in a window; True when the user pressed q or Esc."""
    import cv2

    try:
        cv2.imshow("netvlad-run", image)
        key = cv2.waitKey(1) & 0xFF
    except cv2.error as exc:
        raise ConfigError(
            "--show needs an OpenCV build with GUI support (pip install opencv-python, not the headless "
            f"build) and a display; use --save-video FILE instead ({str(exc).strip()[:120]})"
        ) from exc
    return key in (ord("q"), 27)


class _VideoWriter:
    """cv2.VideoWriter with a context manager; the codec follows the suffix (.mp4 -> mp4v, else MJPG)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float = 10.0) -> None:
        import cv2

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix.lower() == ".mp4" else "MJPG"))
        self._writer = cv2.VideoWriter(str(path), fourcc, fps, size)
        if not self._writer.isOpened():
            raise ConfigError(
                f"cannot write video '{path}'; use a .mp4 or .avi file name in a writable folder"
            )

    def write(self, image: np.ndarray) -> None:
        self._writer.write(image)

    def __enter__(self) -> _VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._writer.release()
