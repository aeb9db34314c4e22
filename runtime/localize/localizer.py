"""The embedding API: frames in, :class:`Localization` s out, against a map of geotagged images.

    from runtime import Localizer, open_source

    with Localizer.open("model.onnx", "maps/city") as localizer, open_source("walk.mp4") as source:
        for loc in localizer.run(source):
            print(loc.position, loc.confidence, loc.unknown)

Units: positions are UTM easting/northing in metres (the map's zone), plus WGS84 lat/lon when the map is
geographic (:mod:`runtime.datasets.geo`); headings are degrees clockwise from north; similarities are cosine
similarities of L2-normalised descriptors in [-1, 1]; times are seconds. Frames are ``uint8`` arrays
``(H, W, 3)`` (BGR from OpenCV by default; ``color="RGB"`` otherwise), any size: they are resized to the
model card's input (:mod:`runtime.model.preprocess`).

:meth:`Localizer.run` overlaps the stages: the source decodes in its own thread, a feeder thread
preprocesses, an inference thread runs the model, and the caller's thread searches the map, so the
end-to-end rate approaches the inference-only rate.

A robot that owns its camera loop feeds frames one at a time instead, and gets the same answers as a
:meth:`~Localizer.run` over the same frames, sequence matching included (``LocalizerConfig.temporal``,
:mod:`runtime.map.sequence`)::

    localizer = Localizer.open("model.onnx", "maps/line", config=LocalizerConfig(temporal=TemporalConfig()))
    for image, stamp in camera:             # uint8 (H, W, 3) BGR, seconds
        loc = localizer.localize(image, stamp)
    localizer.reset()                       # the robot was carried elsewhere: start a new sequence

**Threads.** A Localizer may be shared between threads. The model runs one batch at a time (a lock: a
TensorRT execution context is not re-entrant), and each frame's search, sequence update and verdict happen
under a second lock, so concurrent :meth:`~Localizer.localize` calls never corrupt the sequence state.
With sequence matching on, frames from several threads join *one* sequence in the order they reach that
lock: give each camera its own Localizer. :meth:`~Localizer.run` keeps a sequence of its own, separate
from the one :meth:`~Localizer.localize` builds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ConfigError
from runtime.localize.adapt import QueryCentre
from runtime.localize.pipeline import FramePipeline
from runtime.localize.stream_verdict import StreamVerdict
from runtime.map import PlaceMap, open_map
from runtime.map.calibrate import Verdict, search_candidates
from runtime.map.sequence import (
    SequenceMatcher,
    TemporalConfig,
    place_spacing,
    route_order_gap,
    still_similarity,
)
from runtime.model.backends import Backend, open_backend
from runtime.model.preprocess import Preprocessor
from runtime.protocol import EVAL_RADIUS_M
from runtime.sources import Frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalizerConfig:
    """``top_k``: places reported per frame. ``unknown_threshold``: confidence below which a frame is an
    unknown place; None = the map's calibrated operating point (:mod:`runtime.map.calibrate`).
    ``position_radius_m``: places within this distance of the best match are averaged (weighted by
    similarity) into the position. ``temporal``: a :class:`TemporalConfig` to filter sequences, or None.
    ``queue_size``: frames in flight between pipeline stages. ``keep_frames``: attach each frame to its
    Localization (for overlays; costs memory while held). ``max_batch``: when frames queue up before the
    model (files read faster than inference), up to this many run as one batch (more throughput on CPU);
    a live source's single newest frame always runs alone. Per-frame inference time is the batch time / B.
    ``adapt``: centre each stream's descriptors on the stream's own running mean (:mod:`runtime.localize.adapt`),
    which aligns the query domain (season, light, camera) with the map's, and calibrate the per-frame
    verdict on the stream's own impostors as well as the map's (:mod:`runtime.localize.stream_verdict`);
    off: the map's mean and the map's calibration alone (frames judged independently)."""

    top_k: int = 5
    unknown_threshold: float | None = None
    position_radius_m: float = EVAL_RADIUS_M
    temporal: TemporalConfig | None = None
    queue_size: int = 4
    keep_frames: bool = False
    max_batch: int = 4
    adapt: bool = True

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.queue_size < 1 or self.max_batch < 1 or not self.position_radius_m > 0:
            raise ConfigError(
                f"invalid localizer config {self}: top_k, queue_size, max_batch >= 1, position_radius_m > 0"
            )
        if self.unknown_threshold is not None and not 0.0 <= self.unknown_threshold <= 1.0:
            raise ConfigError(
                f"--min-confidence must be a confidence from 0 to 1, got {self.unknown_threshold} (omit it to "
                "use the map's calibrated operating point, shown by netvlad-map info)"
            )


@dataclass(frozen=True)
class PlaceMatch:
    """One candidate place: its map id, cosine similarity, image (relative to the map's dataset root)
    and UTM position (metres)."""

    place_id: int
    similarity: float
    image: str
    easting: float
    northing: float


@dataclass(frozen=True)
class StageTimes:
    """Seconds per stage for one frame; ``total`` is the latency from the start of decoding to the result."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    search: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Localization:
    """Where one frame was taken, according to the map.

    ``matches``: top-k places, best first (after sequence matching when it is on). ``position``: UTM
    (easting, northing) in metres. ``evidence``: how far the reported place's similarity stands above
    the places elsewhere in the map, in units of their spread (0: none; :mod:`runtime.map.calibrate`);
    with sequence matching, once its window is full, how far its line's score stands above the best line
    elsewhere (contrast-enhanced units). ``confidence``: the share of unmapped places (or, with sequence
    matching, of unmapped routes) that show less evidence (calibrated on the map).
    ``unknown``: confidence below the map's operating point (the position is still the best guess).
    ``frame``: the BGR frame when ``keep_frames`` was set, else None.
    ``uncertainty_m``: position uncertainty (metres, one sigma): the similarity-weighted RMS distance of the
    candidates that formed the position from it, at least half the map's typical place spacing.
    ``lat``/``lon``: WGS84 degrees of ``position`` when the map keeps its UTM zone, else None.
    ``heading``: the best-matching place's heading (degrees clockwise from north) when known, else None.
    ``locked``: with sequence matching, whether the sequence is locked (its best line has continued the
    previous frames'; :attr:`runtime.map.sequence.SequenceMatch.locked`): the matches are then the line's,
    else the frame's own (the sequence is not trusted yet); None without sequence matching. ``speed``: the
    speed the sequence found, map places per frame (None until locked). ``verdict``: what the confidence
    judged: ``"sequence"`` (the best line against lines elsewhere) or ``"frame"`` (this frame's similarity).
    ``stream_samples``: with ``verdict == "frame"`` and adaptation on, how many of the query stream's own
    impostors the confidence mixed with the map's calibration (which counts as 50:
    :mod:`runtime.localize.stream_verdict`); None otherwise.
    """

    index: int
    source: str
    timestamp: float
    matches: tuple[PlaceMatch, ...]
    position: tuple[float, float]
    confidence: float
    unknown: bool
    times: StageTimes
    filtered: bool = False
    evidence: float = 0.0
    frame: np.ndarray | None = field(default=None, repr=False, compare=False)
    uncertainty_m: float = 0.0
    lat: float | None = None
    lon: float | None = None
    heading: float | None = None
    locked: bool | None = None
    speed: float | None = None
    verdict: str = "frame"
    stream_samples: int | None = None

    @property
    def best(self) -> PlaceMatch:
        return self.matches[0]

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict (one JSONL line of ``netvlad-run --jsonl``)."""
        return {
            "index": self.index,
            "source": self.source,
            "timestamp": round(self.timestamp, 6),
            "easting": round(self.position[0], 3),
            "northing": round(self.position[1], 3),
            "confidence": round(self.confidence, 4),
            "unknown": self.unknown,
            "filtered": self.filtered,
            "locked": self.locked,
            "speed": None if self.speed is None else round(self.speed, 4),
            "verdict": self.verdict,
            "stream_samples": self.stream_samples,
            "evidence": round(self.evidence, 4),
            "uncertainty_m": round(self.uncertainty_m, 3),
            **({} if self.lat is None else {"lat": round(self.lat, 8), "lon": round(self.lon, 8)}),
            **({} if self.heading is None else {"heading": round(self.heading, 2)}),
            "matches": [
                {
                    "id": m.place_id,
                    "similarity": round(m.similarity, 5),
                    "image": m.image,
                    "easting": round(m.easting, 3),
                    "northing": round(m.northing, 3),
                }
                for m in self.matches
            ],
            "times_ms": {k: round(v * 1000, 3) for k, v in vars(self.times).items()},
        }


@dataclass
class _Stream:
    """What a stream of frames carries from frame to frame on one map: the query domain's running centre,
    the sequence matcher and the per-frame verdict's impostors of the query domain (each None when off)."""

    map: PlaceMap
    centre: QueryCentre | None
    sequence: SequenceMatcher | None
    verdict: StreamVerdict | None = None

    def reset(self) -> None:
        for part in (self.centre, self.sequence, self.verdict):
            if part is not None:
                part.reset()


class Localizer:
    """A model backend + a map. Owns both when made by :meth:`open`; use it in a ``with`` block."""

    def __init__(
        self,
        backend: Backend,
        place_map: PlaceMap,
        config: LocalizerConfig | None = None,
        owns_backend: bool = False,
    ) -> None:
        self.backend = backend
        self.config = config or LocalizerConfig()
        self.preprocess = Preprocessor(backend.card)
        self._owns_backend = owns_backend
        # held while a frame is searched and scored, and while reload() swaps the map: a frame sees one map
        self._map_lock = threading.Lock()
        self._infer_lock = threading.Lock()  # one model call at a time
        self._frames = 0  # frames given to localize() since the last reset(); guarded by _map_lock
        self._use_map(place_map)

    def _use_map(self, place_map: PlaceMap) -> None:
        """Make ``place_map`` current with the state derived from it (call with ``_map_lock`` held, or
        before any frame runs)."""
        self.map = place_map
        self.verdict = Verdict(self.map.meta["calibration"], self.config.unknown_threshold)
        self.threshold = self.verdict.unknown_below  # confidence below which a frame is an unknown place
        self._spacing = place_spacing(self.map.places.utm)
        self._geo = self.map.geo
        self._still = still_similarity(self.map.descriptors, len(self.map))  # a frame that did not move
        # candidates per frame: enough beyond the best place's neighbourhood for the verdict (dense maps)
        self._candidates = search_candidates(self.map.places.utm, self.verdict.radius_m)
        self._stream = self._new_stream(self.config.temporal)  # localize()'s; a new map: a new stream

    def reload(self, override_map_check: bool = False) -> bool:
        """Re-open the map from its directory (after ``netvlad-map add/remove`` or a rebuild) and switch to
        it without stopping: frames being localised finish on the old map, later ones use the new one
        (a stream's sequence filter restarts, as place ids changed). The new map is checked against the
        model like :meth:`open` does; if it cannot be opened, the error is raised and the old map stays.
        Returns whether the map changed (its map.json ``created``/``revision`` differ). Thread-safe.
        """
        current = self.map
        fresh = open_map(
            current.path, self.backend.card, model_name=str(self.backend.path), override=override_map_check
        )
        changed = (fresh.meta.get("created"), fresh.revision, len(fresh)) != (
            current.meta.get("created"),
            current.revision,
            len(current),
        )
        with self._map_lock:
            self._use_map(fresh)
        log.info(
            "reloaded map '%s': %d places, revision %d%s",
            fresh.path,
            len(fresh),
            fresh.revision,
            "" if changed else " (unchanged)",
        )
        return changed

    @classmethod
    def open(
        cls,
        model: str | Path,
        map_path: str | Path,
        backend: str = "auto",
        config: LocalizerConfig | None = None,
        override_map_check: bool = False,
        **backend_options: Any,
    ) -> Localizer:
        """Open ``model`` (.onnx/.engine/.plan) and the map at ``map_path``, checking they belong together."""
        engine = open_backend(model, backend, **backend_options)
        try:
            place_map = open_map(map_path, engine.card, model_name=str(model), override=override_map_check)
        except BaseException:
            engine.close()
            raise
        return cls(engine, place_map, config, owns_backend=True)

    # -- one frame ---------------------------------------------------------------------------------
    def localize(
        self,
        frame: np.ndarray | Frame,
        timestamp: float | None = None,
        *,
        color: str = "BGR",
        source: str = "frame",
        index: int | None = None,
    ) -> Localization:
        """Localise one frame, synchronously: ``uint8 (H, W, 3)`` (``color`` order), or a
        :class:`~runtime.sources.frames.Frame` (BGR; its timestamp, source and index are used).

        ``timestamp``: the frame's capture time in seconds (None: now, ``time.time()``). ``index``: the
        frame's number (None: frames localised since the last :meth:`reset`). With sequence matching on
        (``LocalizerConfig.temporal``) the frame extends the current sequence; :meth:`reset` starts a new one.
        """
        t0 = time.perf_counter()
        if isinstance(frame, Frame):
            timestamp, source, index, color = frame.timestamp, frame.source, frame.index, "BGR"
            frame = frame.image
        image = self.preprocess(frame, color)
        t1 = time.perf_counter()
        descriptor = self._infer(image[None])  # (1, D)
        t2 = time.perf_counter()
        times = {"decode": 0.0, "preprocess": t1 - t0, "inference": t2 - t1}
        keep = frame if self.config.keep_frames else None
        return self._locate(descriptor, times, timestamp, source, index, t0, keep)

    def locate(
        self,
        descriptor: np.ndarray,
        timestamp: float | None = None,
        *,
        source: str = "descriptor",
        index: int | None = None,
    ) -> Localization:
        """Localise a descriptor computed elsewhere (``float32 (D,)`` or ``(1, D)``, L2-normalised, from the
        map's model): :meth:`localize` without the model. It extends the same sequence as :meth:`localize`."""
        descriptor = np.asarray(descriptor, dtype=np.float32).reshape(1, -1)  # (1, D)
        if descriptor.shape[1] != self.map.descriptor_dim:
            raise ConfigError(
                f"descriptor has {descriptor.shape[1]} dimensions but map '{self.map.path}' holds "
                f"{self.map.descriptor_dim}-D descriptors; compute it with the map's model"
            )
        return self._locate(descriptor, {}, timestamp, source, index, time.perf_counter(), None)

    def _locate(self, descriptor, times, timestamp, source, index, started, keep) -> Localization:
        with self._map_lock:
            number = self._frames if index is None else index
            self._frames += 1
            stamp = time.time() if timestamp is None else float(timestamp)
            meta = Frame(keep, stamp, source, number, 0.0, started)
            return self._finish(meta, descriptor, times, self._stream, keep)

    def reset(self) -> None:
        """Start a new sequence: :meth:`localize` forgets the frames before (a robot carried elsewhere, a new
        run). Frame numbers restart at 0."""
        with self._map_lock:
            self._stream.reset()
            self._frames = 0

    def _new_stream(self, temporal: TemporalConfig | None) -> _Stream:
        """A new stream over the current map: sequence matching with ``temporal`` (None: off)."""
        adapt = self.config.adapt
        centre = QueryCentre(self.map.projection.mean, self._still) if adapt else None
        verdict = StreamVerdict(self.verdict.confidence) if adapt else None
        return _Stream(self.map, centre, self._sequence_matcher(temporal), verdict)

    def _sequence_matcher(self, config: TemporalConfig | None) -> SequenceMatcher | None:
        """A new sequence over the current map, or None when ``config`` is None."""
        if config is None:
            return None
        gap = route_order_gap(self.map.places.utm)
        if gap > 3.0:
            log.warning(
                "map '%s': consecutive places are %.1fx farther apart than nearest ones; sequence matching "
                "assumes places in route order (a map built from one traversal)",
                self.map.path,
                gap,
            )
        return SequenceMatcher(self.map.descriptors, len(self.map), config, place_spacing_m=self._spacing)

    def _finish(
        self,
        frame: Frame,
        descriptor: np.ndarray,
        times: dict,
        stream: _Stream,
        keep: np.ndarray | None,
    ) -> Localization:
        t0 = time.perf_counter()
        sequence = stream.sequence
        k = max(self.config.top_k, self._candidates, sequence.config.candidates if sequence else 0)
        if stream.centre is None:
            query = self.map.prepare(descriptor)  # (1, d): the index's space, centred on the map's mean
        else:
            # centred on the stream's mean. Counting this frame moves the mean towards it, c' = (1 - a) c + a x,
            # so x - c' = (1 - a)(x - c): the projection is linear and normalised, one query serves before
            # and after, and the frame is projected once (QueryCentre.update needs it to tell if it moved)
            query = self.map.prepare(descriptor, stream.centre.centre)  # (1, d)
            stream.centre.update(descriptor[0], query[0])
        sims, ids = self.map.search_prepared(query, k)
        valid = ids[0] >= 0
        sims, ids = sims[0][valid], ids[0][valid]  # (k,), best first
        ranked = None
        if sequence is not None:  # the places ranked by their best line through the recent frames
            ranked = sequence.update(query[0], ids)
        if ranked is not None and ranked.locked:
            top_ids, top_sims = ranked.ids[: self.config.top_k], ranked.similarities[: self.config.top_k]
        else:  # no sequence, or one not locked yet: the frame's own best places (never worse than a frame)
            top_ids, top_sims = ids[: self.config.top_k], sims[: self.config.top_k]
        places = self.map.places
        matches = tuple(
            PlaceMatch(int(i), float(s), places.images[i], float(places.utm[i, 0]), float(places.utm[i, 1]))
            for i, s in zip(top_ids.tolist(), top_sims.tolist(), strict=True)
        )
        # the verdict on the reported place: its line against the lines elsewhere (sequence matching, once
        # the window is full), else its similarity against the candidates elsewhere
        evidence, confidence, unknown, by_sequence = self.verdict.judge_place(
            int(top_ids[0]),
            sims,
            ids,
            places.utm,
            ranked if ranked is not None and ranked.locked else None,
            sequence.config if sequence is not None else None,
            stream.verdict,
        )
        samples = (
            None if stream.verdict is None or by_sequence else stream.verdict.samples
        )  # behind the confidence
        if stream.verdict is not None:  # a corroborated known place: the rest is an impostor of the domain
            stream.verdict.observe(
                int(top_ids[0]),
                sims,
                ids,
                places.utm,
                self.verdict.radius_m,
                self.verdict.kind,
                unknown,
                by_sequence,
            )
        position, uncertainty = self._position(top_ids, top_sims)
        latlon = self._geo.to_latlon(*position) if self._geo is not None else (None, None)
        heading = float(places.heading[top_ids[0]])
        now = time.perf_counter()
        times["search"] = now - t0
        times["total"] = frame.decode_s + (now - frame.decoded_at)
        return Localization(
            frame.index,
            frame.source,
            frame.timestamp,
            matches,
            position,
            confidence,
            unknown,
            StageTimes(**times),
            sequence is not None,
            evidence,
            keep,
            uncertainty_m=uncertainty,
            lat=latlon[0],
            lon=latlon[1],
            heading=None if np.isnan(heading) else heading,
            locked=None if ranked is None else bool(ranked.locked),
            speed=None if ranked is None or not np.isfinite(ranked.speed) else float(ranked.speed),
            verdict="sequence" if by_sequence else "frame",
            stream_samples=samples,
        )

    def _position(self, ids: np.ndarray, sims: np.ndarray) -> tuple[tuple[float, float], float]:
        """Similarity-weighted mean of the matches within position_radius_m of the best one (metres), and
        its uncertainty: their weighted RMS distance from it, floored at half the map's place spacing."""
        utm = self.map.places.utm[ids]  # (k, 2)
        near = np.linalg.norm(utm - utm[0], axis=1) <= self.config.position_radius_m
        weights = np.clip(sims[near].astype(np.float64), 1e-6, None)
        mean = (utm[near] * weights[:, None]).sum(axis=0) / weights.sum()  # (2,)
        spread = float(np.sqrt((weights * np.sum((utm[near] - mean) ** 2, axis=1)).sum() / weights.sum()))
        return (float(mean[0]), float(mean[1])), max(spread, self._spacing / 2)

    # -- a stream ----------------------------------------------------------------------------------
    def run(
        self,
        frames: Iterable[Frame | np.ndarray],
        temporal: bool | TemporalConfig | None = None,
        live: bool | None = None,
    ) -> Iterator[Localization]:
        """Localise a stream of :class:`~runtime.sources.frames.Frame` (e.g. a FrameSource) or of BGR ``uint8 (H, W,
        3)`` arrays (numbered from 0, stamped on arrival), pipelined, in order.

        ``temporal``: True (default TemporalConfig), a TemporalConfig, False (off) or None (the config's).
        The run is one sequence of its own: it neither reads nor changes :meth:`localize`'s.
        ``live``: frames come from a camera or stream (None: ``frames.live`` if it has one): the pipeline then
        holds one frame per stage, so every result is about a recent frame (the source drops the rest),
        instead of queueing ``queue_size`` frames for throughput. Closing the generator (or breaking out of
        the loop) stops the pipeline threads; the source is not closed.
        """
        live = bool(getattr(frames, "live", False)) if live is None else live
        temporal_config = (
            self.config.temporal
            if temporal is None
            else (TemporalConfig() if temporal is True else (temporal or None))
        )
        if self.backend.min_batch > 1:  # a fixed-batch model: one frame at a time is not possible
            raise ConfigError(
                f"'{self.backend.path}' only accepts batches of {self.backend.min_batch}; export it with a "
                "dynamic batch to localise frame by frame"
            )
        stream = self._new_stream(temporal_config)
        pipeline = FramePipeline(
            frames,
            self.preprocess,
            self._infer,
            live=live,
            depth=self.config.queue_size,
            max_batch=min(self.config.max_batch, self.backend.max_batch or self.config.max_batch),
        )
        with pipeline:
            for frame, descriptor, pre_s, infer_s in pipeline:
                times = {"decode": frame.decode_s, "preprocess": pre_s, "inference": infer_s}
                with self._map_lock:
                    if stream.map is not self.map:  # reloaded: new place ids, a new mean
                        stream = self._new_stream(temporal_config)
                    result = self._finish(
                        frame, descriptor, times, stream, frame.image if self.config.keep_frames else None
                    )
                yield result

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """The model on ``batch`` (B, H, W, 3) -> (B, D), one call at a time across threads."""
        with self._infer_lock:
            return self.backend.infer(batch)

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend if this localizer opened it; idempotent."""
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> Localizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
