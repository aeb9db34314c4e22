"""Sequence localisation: a causal, online SeqSLAM over each frame's top candidates from the map index.

A robot moves along a route, so its last few frames trace a line through the map's places. This module
scores such lines (Milford & Wyeth, SeqSLAM, ICRA 2012), causally (each line ends at the current frame) and
at a cost per frame that does not grow with the map.

**Model.** The map's places are in route order (a drive, a train line): place ``j`` lies between ``j - 1``
and ``j + 1``. Frame ``t`` differs from place ``p`` by ``d(t, p) = 1 - s(t, p)`` (``s``: cosine similarity
of the descriptors), contrast-enhanced over the ``window + 1`` places ``p - window/2 .. p + window/2``: the
z-score of ``d(t, p)`` within that window, as OpenSeqSLAM (a frame that resembles a whole stretch equally
is neutral, one that singles out a place scores strongly negative), except that at the map's ends the
window is shifted rather than clipped, so that an end place is not judged among fewer neighbours (its
z-score would be capped lower: at most ``(n-1)/sqrt(n)`` among ``n``). A trajectory that ends at place ``j`` now and moves at
``v`` places per frame was at ``j - round(v * k)`` ``k`` frames ago; its score is the sum of the enhanced
differences over the last ``frames`` frames (lower is better; a line that leaves the map is invalid), and a
place's score is that of its best line. Speeds: ``min_speed .. max_speed`` in steps of ``1 / frames``
(SeqSLAM's grid: one place of end displacement per sequence; see **Speed** below), and, when ``reverse``, the same set backwards
for the ends carried from the previous frame (a reversal continues a line being tracked; scoring backward
lines everywhere doubles the chances of a wrong line winning).

**Stops.** A line at speed 0 would let any place that resembles every frame a little (a "hub") collect the
same evidence ``frames`` times over: on Nordland such lines win 75 % of the frames (measured, raw pixels;
R@1 0.77 -> 0.28). Instead, when ``stops``, a frame that did not move (its difference to the previous frame,
``1 - cosine``, is below ``stop_fraction`` of the map's median difference between neighbouring places)
replaces the newest frame of the window rather than pushing the oldest out: the window advances with the
motion, not with the clock, so a robot waiting at a crossing keeps the evidence of the road that led there.
Unless the map stood still there too (the best place and the next one look the same, as at Nordland's
stations, where both trains waited): then frames keep pace with the map's places as when moving.
A reversal or a speed change inside the window is a bent line: it scores worse than a straight one until
the window has moved past the bend.

**Speed.** The robot's speed and camera rate need not match the mapping drive's: the matcher is not told the
ratio. It searches 0.25 to 4 map places per frame until the sequence *locks* (its best line has continued
the previous frame's for ``lock_after`` frames in a row, in a window at least half full), then the speeds
within ``speed_band`` of the speed found (the median of the locked line's recent speeds), which makes a
wrong line less likely; losing the lock widens the search again. Until it locks, the Localizer answers with
the frame's own best place, so a sequence is never worse than single frames where no line is consistent
(``SequenceMatch.locked``, ``Localization.locked``). A camera faster than the map's spacing (a 30 FPS camera
passing a place every few metres) sends frames that barely move: they replace the newest frame of the
window instead of advancing it (**Stops** above), so the window advances with the motion, at about a place
per frame or more. Why map order rather than metres: a place index follows the route through its bends,
which a straight line in UTM metres does not.

**Relocalisation.** After a jump (a kidnapped robot, a gap in the stream) the window holds frames of the old
route for at most ``frames - 1`` frames; the new place wins as soon as its evidence outweighs theirs.

**Verdict.** With sequence matching on, the "unknown place" verdict and the confidence judge the best
line against the best line elsewhere (farther than the map's radius), calibrated on the map's own stretches
played as unmapped routes (:mod:`runtime.map.calibrate`, map.json ``calibration.sequence``). Until a
sequence has ``frames`` frames, the verdict is the per-frame one. A :class:`SequenceMatch`'s ``frames``
says which applies.

**Bounded cost.** A frame scores only a set of line ends: its own top ``candidates`` places from the map
index, and the best ``hypotheses`` ends of the previous frame (after non-maximum suppression), moved by
every whole step a speed allows. Similarities are computed lazily per (frame, place), from the frame's
descriptor and the place's stored descriptor, and cached while the frame is in the window. Per frame that is
``O(ends * speeds * frames)`` look-ups and a few hundred dot products, whatever the size of the map.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.errors import ConfigError

log = logging.getLogger(__name__)
# where the map stands still, a frame keeps pace with its places when it moved at least this share of what the
# map moves there (a repeated frame, which did not move at all, never does)
STILL_MAP_SHARE = 0.1
CONTRAST_WINDOW_M = (
    200.0  # metres of route a place is contrasted against (10 Nordland frames, 40 places at 5 m)
)


@dataclass(frozen=True)
class TemporalConfig:
    """``frames``: sequence length (frames per line). ``candidates``: places taken from the map index per
    frame. ``hypotheses``: best line ends carried to the next frame. ``window``: contrast-enhancement window
    (places; None: 200 m of route at the map's place spacing, at least 10). ``continuity``: subtracted from
    the score of the ends that continue the previous frame's best line (within one place of where it
    leads): through a stretch where frames say little (night), the line being followed keeps its place
    unless another wins by this much; a jump costs about this much evidence more to follow.
    ``min_speed`` / ``max_speed``: the forward speeds searched, in map places per frame (wide by default:
    the robot's speed and camera rate need not match the mapping drive's). ``speed_band``: once the
    sequence is locked, only the speeds within this factor of the speed found (the median of the locked
    line's recent speeds) are searched, which makes a wrong line less likely and a frame cheaper; 0: always
    the whole range. ``lock_after``: frames in a row whose best line continues the previous frame's before
    the sequence counts as locked (:attr:`SequenceMatch.locked`; until then the Localizer answers with the
    frame's own best place). ``stops``: a frame that
    did not move replaces the newest frame of the window (see the module doc); ``stop_fraction``: a frame
    whose difference to the previous one (``1 - cosine``) is below this fraction of the map's median
    difference between neighbouring places did not move. ``reverse``: also the forward speeds backwards.
    ``suppress``: a carried end closer than this (places) to a better one is dropped, so the carried
    hypotheses cover distinct stretches of the route."""

    frames: int = 20
    candidates: int = 32
    hypotheses: int = 16
    window: int | None = None
    min_speed: float = 0.25
    max_speed: float = 4.0
    speed_band: float = 1.5
    lock_after: int = 3
    continuity: float = 8.0
    stops: bool = True
    stop_fraction: float = 0.25
    reverse: bool = False
    suppress: int = 3

    def __post_init__(self) -> None:
        if (
            self.frames < 1
            or self.candidates < 1
            or self.hypotheses < 0
            or (self.window is not None and self.window < 2)
            or self.continuity < 0
            or self.suppress < 0
            or not 0 < self.min_speed <= self.max_speed
            or not 0 <= self.stop_fraction < 1
            or not (self.speed_band == 0 or self.speed_band > 1)
            or self.lock_after < 1
        ):
            raise ConfigError(
                f"invalid temporal config {self}: frames, candidates >= 1, hypotheses, suppress >= 0, "
                "window >= 2 or None, continuity >= 0, 0 < min_speed <= max_speed, 0 <= stop_fraction < 1, "
                "speed_band 0 or > 1, lock_after >= 1"
            )

    def speeds(self) -> np.ndarray:
        """The speeds scored, places per frame ``(V,)``: SeqSLAM's grid (OpenSeqSLAM's, as the anchor: one
        place of end displacement per sequence apart, centred on the range, so its ends may lie half a step
        outside it), and reversed when configured."""
        centre, half = (self.min_speed + self.max_speed) / 2, (self.max_speed - self.min_speed) / 2
        steps = round(half * self.frames + 1e-9)
        forward = centre + np.arange(-steps, steps + 1) / self.frames
        return np.unique(np.concatenate([forward, -forward])) if self.reverse else forward


@dataclass(frozen=True)
class SequenceMatch:
    """One frame's places ranked by their best line, best first: ``ids (E,) int64``, ``scores (E,)`` (sum
    of contrast-enhanced differences, lower is better; ``inf``: no valid line), ``speeds (E,)`` (the best
    line's speed, places per frame) and ``similarities (E,) float32`` (this frame's own cosine similarity to
    each place). ``frames``: frames in the sequence so far (at most ``TemporalConfig.frames``).
    ``locked``: the best line has continued the previous frames' for ``TemporalConfig.lock_after`` frames
    in a row (a sequence to trust; else the frame's own best place is the better answer). ``speed``: the
    speed found, places per frame (the median of the locked line's recent speeds; NaN until locked)."""

    ids: np.ndarray
    scores: np.ndarray
    speeds: np.ndarray
    similarities: np.ndarray
    frames: int
    locked: bool = False
    speed: float = float("nan")


class SequenceMatcher:
    """Causal sequence matching over a map in route order; one instance per sequence (see the module doc).

    ``place_descriptors(ids (M,) int64) -> (M, D) float32``: the map's stored, L2-normalised descriptors
    (e.g. :meth:`runtime.map.PlaceMap.descriptors`); ``num_places``: the map's size. Not thread-safe: the
    :class:`~runtime.localize.localizer.Localizer` guards its matcher with a lock.

    Memory: two ``(frames, num_places)`` tables of float32 values and two of int64 stamps, allocated zeroed
    (``calloc``: the operating system maps only the pages the window touches, near its candidates). A map
    of at most :attr:`DENSE_PLACES` places and :attr:`DENSE_VALUES` descriptor values (Nordland's 3,576
    places of 7,168-D: 25.6M) is also held whole in float32, and each frame's similarity to every place is
    one matrix-vector product: a window touches a few hundred places a frame, and gathering their rows cost
    more than the whole product over a map a few times larger (measured at 1,000 x 7,168: 5.4 ms a frame
    gathered, 2.2 ms whole; larger maps gather, whose cost does not grow with the map).
    """

    DENSE_PLACES = 4096  # maps of at most this many places are held whole ...
    DENSE_VALUES = 32_000_000  # ... and of at most this many values (128 MB of float32)

    def __init__(
        self,
        place_descriptors: Callable[[np.ndarray], np.ndarray],
        num_places: int,
        config: TemporalConfig | None = None,
        place_spacing_m: float | None = None,
        *,
        stop_similarity: float | None = None,
    ) -> None:
        if num_places < 1:
            raise ConfigError(f"sequence matching needs a map with places, got {num_places}")
        self.config = config or TemporalConfig()
        self.num_places = int(num_places)
        self._place_descriptors = place_descriptors
        lags = np.arange(self.config.frames)
        offsets, speeds = [], []
        for v in self.config.speeds():  # identical lines (same places at every lag) are scored once
            row = np.round(v * lags).astype(np.int64)
            if not any(np.array_equal(row, o) for o in offsets):
                offsets.append(row)
                speeds.append(v)
        self._offsets = np.stack(offsets)  # (V, frames): places back from the line's end at lag k
        self._speeds = np.asarray(speeds)
        self._steps = np.arange(np.floor(self._speeds.min()), np.ceil(self._speeds.max()) + 1).astype(
            np.int64
        )
        self.window = self.config.window or contrast_window(place_spacing_m)
        self._half = self.window // 2
        if not self.config.stops:
            self._stop_similarity = np.inf
        elif stop_similarity is None:
            self._stop_similarity = still_similarity(
                place_descriptors, self.num_places, self.config.stop_fraction
            )
        else:  # measured once by a caller that builds many matchers over one map (the verdict's calibration)
            self._stop_similarity = float(stop_similarity)
        slots = (self.config.frames, self.num_places)  # one row per frame of the window
        self._similarity = np.zeros(slots, dtype=np.float32)  # cosine similarity of frame to place
        self._similarity_stamp = np.zeros(slots, dtype=np.int64)  # serial + 1 of the frame that filled it
        self._enhanced = np.zeros(slots, dtype=np.float32)  # contrast-enhanced difference
        self._enhanced_stamp = np.zeros(slots, dtype=np.int64)
        self._frame_descriptors: list[np.ndarray | None] = [None] * self.config.frames  # per slot
        self._dense: np.ndarray | None = None  # (num_places, D) float32, small maps only (DENSE_PLACES)
        self._dense_checked = False
        self._serial = 0  # frames seen by this matcher, never reset: stamps stay unambiguous
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next frame starts a new sequence."""
        self._window: list[tuple[int, int]] = []  # (serial, slot) of the window's frames, newest first
        self._carried = np.empty(0, dtype=np.int64)
        self._lead: tuple[int, float] | None = None  # the previous frame's best end and its line's speed
        self._followed = 0  # frames in a row whose best line continued the previous frame's
        self._locked_speeds: list[float] = []  # the best line's speed over the recent locked frames

    @property
    def speed(self) -> float:
        """The speed found (places per frame): the median of the locked line's recent speeds; NaN if none."""
        return float(np.median(self._locked_speeds)) if self._locked_speeds else float("nan")

    @property
    def locked(self) -> bool:
        """The best line has continued the previous frames' for ``lock_after`` frames in a row, in a window
        at least half full (a line of a few frames at any speed is too easily a wrong one)."""
        return self._followed >= self.config.lock_after and len(self._window) >= self.config.frames // 2

    def _speed_rows(self) -> np.ndarray:
        """The rows of the speed table searched this frame: all, or, once locked, those within
        ``speed_band`` of the speed found (at least the one nearest it)."""
        band = self.config.speed_band
        if not band or not self.locked or not self._locked_speeds:
            return np.arange(len(self._speeds))
        found = abs(self.speed)
        magnitude = np.abs(self._speeds)
        rows = np.flatnonzero((magnitude >= found / band) & (magnitude <= found * band))
        return rows if rows.size else np.array([int(np.argmin(np.abs(magnitude - found)))])

    @property
    def frames(self) -> int:
        """Frames in the current window (0 after :meth:`reset`)."""
        return len(self._window)

    def _admit(self, descriptor: np.ndarray) -> bool:
        """Put a frame into the window: a new newest frame, or, when it did not move, in place of the newest.
        Returns whether the window advanced."""
        serial = self._serial
        self._serial += 1
        if self._window:
            newest_slot = self._window[0][1]
            similarity = float(descriptor @ self._frame_descriptors[newest_slot])
            if similarity > self._stop_similarity and not self._map_still_at_best(similarity):
                self._window[0] = (serial, newest_slot)
                self._frame_descriptors[newest_slot] = descriptor
                return False
        if len(self._window) == self.config.frames:
            slot = self._window.pop()[1]
        else:
            slot = min(set(range(self.config.frames)) - {s for _, s in self._window})
        self._window.insert(0, (serial, slot))
        self._frame_descriptors[slot] = descriptor
        return True

    def _map_still_at_best(self, similarity: float) -> bool:
        """Whether the map itself stands still where the best line ended (its place and the next look the
        same: the mapping drive waited there too, as both Nordland trains do at stations) and this frame moved
        at least :data:`STILL_MAP_SHARE` of what the map moves there (its difference to the previous frame
        against the two places'); then a waiting frame keeps pace with the map's places like a moving one. A
        frame repeated (a camera faster than the map's spacing, a duplicated frame) never does."""
        if self._carried.size == 0 or self._carried[0] + 1 >= self.num_places:
            return False
        here, after = self._place_descriptors(np.asarray([self._carried[0], self._carried[0] + 1]))
        map_step = float(here @ after)
        return map_step > self._stop_similarity and (1 - similarity) >= STILL_MAP_SHARE * (1 - map_step)

    def update(
        self, descriptor: np.ndarray, candidates: np.ndarray, similarities: np.ndarray | None = None
    ) -> SequenceMatch:
        """Add one frame: its descriptor ``(D,)`` and its top places from the map index ``(K,)`` (best first,
        -1 = padding). Returns the places ranked by sequence score (:class:`SequenceMatch`).
        ``similarities``: the frame's cosine similarity to every place ``(num_places,)`` when the caller has
        them already (the verdict's calibration: one matrix product per stretch of frames); None: computed
        here, for the few places the lines touch."""
        descriptor = np.ascontiguousarray(descriptor, dtype=np.float32).reshape(-1)
        if similarities is None and self._dense_places(descriptor.size) is not None:
            similarities = self._dense @ descriptor  # (num_places, D) @ (D,) -> (num_places,)
        advanced = self._admit(descriptor)
        n = len(self._window)
        window_stamps = np.asarray([serial + 1 for serial, _ in self._window])  # (n,) newest first
        window_slots = np.asarray([slot for _, slot in self._window])  # (n,)
        if similarities is not None:
            self._similarity[window_slots[0]] = np.asarray(similarities, dtype=np.float32).reshape(-1)
            self._similarity_stamp[window_slots[0]] = window_stamps[0]
        candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
        candidates = candidates[candidates >= 0][: self.config.candidates]
        moved = (self._carried[:, None] + self._steps[None, :]).reshape(-1)  # (H * steps,)
        ends = _distinct(np.concatenate([candidates, moved]))
        ends = ends[(ends >= 0) & (ends < self.num_places)]
        if ends.size == 0:
            raise ConfigError("sequence matching got a frame without candidate places (an empty map search?)")
        rows = self._speed_rows()  # (V',) the speeds searched
        offsets, line_speeds = self._offsets[rows], self._speeds[rows]
        places = ends[:, None, None] - offsets[None, :, :n]  # (E, V', n): where each line was k frames ago
        valid = (places >= 0) & (places < self.num_places)
        places = np.where(valid, places, 0)
        slots = np.broadcast_to(window_slots, places.shape)  # (E, V', n)
        missing = valid & (self._enhanced_stamp[slots, places] != window_stamps)
        if missing.any():
            cells = _distinct(slots[missing] * self.num_places + places[missing])  # (M,) slot-major keys
            stamp_of_slot = np.zeros(self.config.frames, dtype=np.int64)
            stamp_of_slot[window_slots] = window_stamps
            self._fill_enhanced(cells // self.num_places, cells % self.num_places, stamp_of_slot)
        cost = np.where(valid, self._enhanced[slots, places], np.inf)  # (E, V', n)
        lines = cost.sum(axis=2)  # (E, V')
        if self.config.reverse:  # backwards only from a tracked end: reversing continues a known line
            fresh = ~np.isin(ends, moved)
            lines[np.ix_(fresh, line_speeds < 0)] = np.inf
        best = lines.argmin(axis=1)
        scores = lines[np.arange(len(ends)), best]
        follows = np.zeros(len(ends), dtype=bool)
        if self._lead is not None:  # the line followed so far, one step on
            end, speed = self._lead
            follows = np.abs(ends - (end + (round(speed) if advanced else 0))) <= 1
            # in proportion to the window's fill: a line of a few frames has little evidence to outweigh
            scores = scores - self.config.continuity * (n / self.config.frames) * follows
        order = np.argsort(scores, kind="stable")
        ends, scores, speeds = ends[order], scores[order], line_speeds[best[order]]
        self._track(bool(follows[order[0]]) and np.isfinite(scores[0]), float(speeds[0]), advanced)
        self._lead = (int(ends[0]), float(speeds[0])) if np.isfinite(scores[0]) else None
        self._carry(ends, scores)
        similarities = self._similarity[window_slots[0], ends]  # filled: each end is a cell at lag 0
        return SequenceMatch(ends, scores, speeds, similarities.copy(), n, self.locked, self.speed)

    def _dense_places(self, dim: int) -> np.ndarray | None:
        """The whole map's descriptors ``(num_places, D)`` float32 when it has at most DENSE_PLACES places and
        DENSE_VALUES values (read once, on the first frame), else None."""
        if not self._dense_checked:
            self._dense_checked = True
            if self.num_places <= self.DENSE_PLACES and self.num_places * dim <= self.DENSE_VALUES:
                ids = np.arange(self.num_places, dtype=np.int64)
                self._dense = np.ascontiguousarray(self._place_descriptors(ids), dtype=np.float32)
        return self._dense

    def _track(self, followed: bool, speed: float, advanced: bool) -> None:
        """Count the frames whose best line continues the previous frame's, and keep the locked line's speed
        (forgotten when the lock is lost: a speed kept through a wrong lock would keep the matcher on it).
        A frame that did not advance the window (it did not move) changes neither: it adds no evidence."""
        if not advanced:
            return
        self._followed = self._followed + 1 if followed else 0
        if not self.locked:
            self._locked_speeds = []
        else:
            self._locked_speeds = [*self._locked_speeds[-(self.config.frames - 1) :], speed]

    def _fill_enhanced(self, slots: np.ndarray, places: np.ndarray, stamp_of_slot: np.ndarray) -> None:
        """Compute and store the contrast-enhanced differences of cells ``(slots (M,), places (M,))``: the
        z-score of ``1 - s`` within the ``window + 1`` places around the place (shifted at the map's ends so
        that every place has as many neighbours)."""
        size = min(self.window + 1, self.num_places)
        start = np.clip(places - self._half, 0, self.num_places - size)  # (M,)
        window = start[:, None] + np.arange(size)[None, :]  # (M, size)
        window_slots = np.broadcast_to(slots[:, None], window.shape)
        stamps = stamp_of_slot[window_slots]
        missing = self._similarity_stamp[window_slots, window] != stamps
        if missing.any():
            keys = _distinct(window_slots[missing] * self.num_places + window[missing])
            key_slots, key_places = keys // self.num_places, keys % self.num_places
            for slot in _distinct(key_slots).tolist():  # one matrix-vector product per frame of the window
                ids = key_places[key_slots == slot]
                sims = self._place_descriptors(ids) @ self._frame_descriptors[slot]  # (m, D) @ (D,) -> (m,)
                self._similarity[slot, ids] = sims
                self._similarity_stamp[slot, ids] = stamp_of_slot[slot]
        d = 1.0 - self._similarity[window_slots, window].astype(np.float64)  # (M, size)
        mean = d.mean(axis=1)
        std = d.std(axis=1, ddof=1) if size > 1 else np.ones(len(d))
        self._enhanced[slots, places] = (1.0 - self._similarity[slots, places] - mean) / np.maximum(std, 1e-6)
        self._enhanced_stamp[slots, places] = stamp_of_slot[slots]

    def _carry(self, ends: np.ndarray, scores: np.ndarray) -> None:
        """Keep the best ``hypotheses`` finite-scored ends that are more than ``suppress`` places apart."""
        kept: list[int] = []
        near_kept: set[int] = set()  # the places within `suppress` of a kept end
        reach = range(-self.config.suppress, self.config.suppress + 1)
        for end, score in zip(ends.tolist(), scores.tolist(), strict=True):
            if len(kept) >= self.config.hypotheses or not math.isfinite(score):
                break
            if end not in near_kept:
                kept.append(end)
                near_kept.update(end + d for d in reach)
        self._carried = np.asarray(kept, dtype=np.int64)


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array, ascending: by sorting, whose cost depends on the array's
    length only (numpy's hash-based ``unique`` grows with the values' range here: with the map's size)."""
    values = np.sort(values, kind="stable")
    return values[np.r_[True, values[1:] != values[:-1]]] if values.size else values


def still_similarity(
    place_descriptors: Callable[[np.ndarray], np.ndarray],
    num_places: int,
    fraction: float = TemporalConfig.stop_fraction,
    samples: int = 1000,
) -> float:
    """The similarity above which a frame counts as not having moved since the previous one: its difference
    (``1 - cosine``, in the map's space) must be below ``fraction`` of the median difference between
    neighbouring places of the map (``place_descriptors(ids (M,)) -> (M, d)``). ``inf`` for a one-place map."""
    if num_places < 2:
        return np.inf
    ids = np.unique(np.linspace(0, num_places - 2, min(samples, num_places - 1)).astype(np.int64))
    step = np.einsum("nd,nd->n", place_descriptors(ids), place_descriptors(ids + 1))  # (S,)
    return 1.0 - fraction * float(np.median(1.0 - step))


def contrast_window(place_spacing_m: float | None, metres: float = CONTRAST_WINDOW_M) -> int:
    """Places in the contrast-enhancement window: ``metres`` of route, at least 10 places (OpenSeqSLAM's
    window, which is Nordland's 200 m), at most 100."""
    if not place_spacing_m or place_spacing_m <= 0:
        return 10
    return int(min(100, max(10, round(metres / place_spacing_m))))


def place_spacing(utm: np.ndarray, samples: int = 1000) -> float:
    """Median distance (metres) from a place to its nearest other place, over up to ``samples`` places."""
    utm = np.asarray(utm, np.float64)
    if len(utm) < 2:
        return 0.0
    rows = np.linspace(0, len(utm) - 1, min(samples, len(utm))).astype(np.int64)
    nearest = np.empty(len(rows))
    for j, row in enumerate(rows):  # O(samples * N): a few ms for 100k places
        d = np.hypot(*(utm - utm[row]).T)  # (N,)
        d[row] = np.inf
        nearest[j] = d.min()
    return float(np.median(nearest[np.isfinite(nearest)]))


def route_order_gap(utm: np.ndarray, samples: int = 2000) -> float:
    """Median distance between consecutive places over the median nearest-neighbour distance: about 1 for a
    map in route order (a traversal), much larger for places in no particular order."""
    n = len(utm)
    if n < 3:
        return 1.0
    rows = np.linspace(0, n - 1, min(samples, n)).astype(np.int64)
    d = np.linalg.norm(utm[rows][:, None, :] - utm[None, :, :], axis=2)  # (S, N) metres
    d[np.arange(len(rows)), rows] = np.inf
    nearest = max(float(np.median(d.min(axis=1))), 1e-6)
    consecutive = float(np.median(np.linalg.norm(np.diff(utm, axis=0), axis=1)))
    return consecutive / nearest
