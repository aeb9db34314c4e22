"""The threads behind :meth:`Localizer.run <runtime.localize.Localizer.run>`: frames in, inferred descriptors out,
in order, with the stages overlapped.

Three threads and two bounded queues::

    source (its own decoding thread)
      -> feeder:     Frame -> preprocess -> prepared   (a file: blocks when full; live: the newest wins)
      -> inference:  prepared -> up to max_batch frames -> backend.infer -> inferred, one frame per item
      -> caller:     inferred -> search, sequence, verdict (the Localizer's per-frame logic)

**File or live.** A file source (a video, a folder, a list) loses nothing: the feeder blocks on a full
``prepared`` queue and the model batches what has queued up. A live source (a camera, a stream) holds one
frame per stage: a frame still waiting for the model gives way to a newer one (:meth:`FramePipeline._put_newest`),
and a model that becomes free may wait briefly for a frame that is about to arrive rather than take a stale
one (:func:`wait_for_newer_s`). Both count as *superseded* (in the source's :class:`SourceStats` too).

**Ending.** The feeder puts an end marker (or the exception that stopped it) after the last frame; it passes
through the inference thread to the caller, which stops iterating (or raises it). :meth:`FramePipeline.close`
stops both threads: every put and get polls the stop event, so nothing needs draining.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from runtime.sources import Frame, SourceStats

log = logging.getLogger(__name__)
END = object()  # after the last frame
POLL_S = 0.1  # how often a blocked put or get looks at the stop event


def is_last(item: Any) -> bool:
    """The end marker or an exception: nothing follows it in a queue."""
    return item is END or isinstance(item, BaseException)


def wait_for_newer_s(age_s: float, period_s: float | None) -> float:
    """Live: how long a model that just became free should wait for the next frame instead of taking the
    waiting one, captured ``age_s`` ago, when frames arrive every ``period_s`` (None: not known yet).

    The next frame is due in ``period_s - age_s``; waiting for it gives a fresher result when that is sooner
    than the waiting frame is old (``age_s > period_s / 2``). A model slower than the camera then starts on a
    frame at most half a period old (a quarter on average) instead of up to a whole period (half on average),
    at the cost of idling up to half a period. 0: take the waiting frame."""
    if not period_s or age_s <= period_s / 2:
        return 0.0
    return max(0.0, period_s - age_s)


class FramePeriod:
    """The running period between frames reaching the model's queue (an exponential mean of the intervals)."""

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight
        self.period_s: float | None = None
        self._last: float | None = None

    def see(self, arrived: float) -> None:
        if self._last is not None and arrived > self._last:
            interval = arrived - self._last
            self.period_s = (
                interval
                if self.period_s is None
                else (1 - self.weight) * self.period_s + self.weight * interval
            )
        self._last = arrived


# One frame through the pipeline: the frame, its descriptor (1, D), preprocess and inference seconds
Inferred = tuple[Frame, np.ndarray, float, float]


class FramePipeline:
    """Feeds ``frames`` through ``preprocess`` and ``infer`` in two threads; iterate it for
    :data:`Inferred` items in frame order. Use it in a ``with`` block (closing stops the threads).

    ``frames``: :class:`Frame` s or BGR ``uint8 (H, W, 3)`` arrays (numbered from 0, stamped on arrival).
    ``preprocess(image, "BGR")`` -> the model's input for one frame; ``infer(batch)`` -> ``(B, D)``
    descriptors, called with at most ``max_batch`` stacked inputs, one call at a time. ``live``: hold one
    frame per stage and prefer the newest (see the module's docstring); else queue ``depth`` frames.
    """

    def __init__(
        self,
        frames: Iterable[Frame | np.ndarray],
        preprocess: Callable[[np.ndarray, str], np.ndarray],
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        live: bool,
        depth: int,
        max_batch: int,
    ) -> None:
        self.frames, self.preprocess, self.infer = frames, preprocess, infer
        self.live, self.max_batch = live, max_batch
        self.depth = 1 if live else depth
        self.prepared: queue.Queue = queue.Queue(maxsize=self.depth)  # (frame, input, preprocess s)
        self.inferred: queue.Queue = queue.Queue(maxsize=self.depth)  # Inferred items
        self.superseded = 0  # live frames that gave way to newer ones before the model
        self._stats = getattr(frames, "stats", None)  # a FrameSource's counters
        self._pace = FramePeriod()  # live: how often frames reach the model's queue
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, name="localizer feeder", daemon=True)
        self._inference = threading.Thread(target=self._run_model, name="localizer inference", daemon=True)

    # -- the caller's side -------------------------------------------------------------------------
    def __enter__(self) -> FramePipeline:
        self._feeder.start()
        self._inference.start()
        return self

    def __iter__(self) -> Iterator[Inferred]:
        while True:
            item = self.inferred.get()
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        # Producers poll the stop event (their puts and gets time out), so nothing needs draining here.
        # Draining from this thread could deadlock: a Ctrl-C that lands inside inferred.get() can leave that
        # queue's mutex held.
        self._stop.set()
        if self.superseded:
            log.info("live: %d frames gave way to newer ones before the model", self.superseded)
        if self._feeder.is_alive():
            self._feeder.join(timeout=2.0)  # may wait on a stalled live source; it runs no model code
        # Always wait for the inference thread (it polls the stop event and finishes its batch): leaving a
        # model call running in a daemon thread can deadlock ONNX Runtime's thread pool at interpreter exit.
        if self._inference.is_alive():
            self._inference.join()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queues ------------------------------------------------------------------------------------
    def _put(self, q: queue.Queue, item: Any) -> bool:
        """Put, waiting while ``q`` is full; False when the pipeline stopped first."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _count_superseded(self) -> None:
        self.superseded += 1
        if isinstance(self._stats, SourceStats):
            self._stats.superseded += 1

    def _put_newest(self, item: Any) -> bool:
        """Live: a frame still waiting for the model gives way to this newer one, so each frame goes straight
        to the model when it is free instead of queueing behind a stale one."""
        while not self._stop.is_set():
            try:
                self.prepared.put_nowait(item)
                return True
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.prepared.get_nowait()
                    self._count_superseded()
        return False

    # -- the feeder thread -------------------------------------------------------------------------
    def _feed(self) -> None:
        try:
            for number, frame in enumerate(self.frames):
                t0 = time.perf_counter()
                if not isinstance(frame, Frame):
                    frame = Frame(np.asarray(frame), time.time(), f"frame#{number}", number, 0.0, t0)
                item = (frame, self.preprocess(frame.image, "BGR"), time.perf_counter() - t0)
                self._pace.see(frame.decoded_at)
                if not (self._put_newest(item) if self.live else self._put(self.prepared, item)):
                    return
            self._put(self.prepared, END)
        except BaseException as exc:
            self._put(self.prepared, exc)

    # -- the inference thread ----------------------------------------------------------------------
    def _fresher(self, item: Any) -> list:
        """Live: the waiting frame, or the next one when it is due sooner than the waiting one is old
        (:func:`wait_for_newer_s`); ``[frame]``, or ``[frame, end]`` when the source ended meanwhile."""
        delay = wait_for_newer_s(time.perf_counter() - item[0].decoded_at, self._pace.period_s)
        if delay <= 0:
            return [item]
        try:
            newer = self.prepared.get(timeout=delay + min(0.005, delay))
        except queue.Empty:
            return [item]
        if is_last(newer):
            return [item, newer]
        self._count_superseded()
        return [newer]

    def _next_batch(self) -> list | None:
        """What is waiting for the model: one frame, or up to max_batch when frames queued up (live: the
        freshest frame), possibly ending with the end marker; None when the pipeline stopped."""
        while True:
            try:
                batch = [self.prepared.get(timeout=POLL_S)]
                break
            except queue.Empty:
                if self._stop.is_set():
                    return None
        if self.live and not is_last(batch[0]):
            batch = self._fresher(batch[0])
        while len(batch) < self.max_batch and not is_last(batch[-1]):
            try:
                batch.append(self.prepared.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run_model(self) -> None:
        while (batch := self._next_batch()) is not None:
            last = batch.pop() if is_last(batch[-1]) else None
            if batch:
                try:
                    t0 = time.perf_counter()
                    descriptors = self.infer(np.stack([image for _, image, _ in batch]))  # (B, D)
                    infer_s = (time.perf_counter() - t0) / len(batch)  # per frame
                except BaseException as exc:
                    self._put(self.inferred, exc)
                    return
                for (frame, _, pre_s), descriptor in zip(batch, descriptors, strict=True):
                    if not self._put(self.inferred, (frame, descriptor[None], pre_s, infer_s)):
                        return
            if last is not None:
                self._put(self.inferred, last)
                return
