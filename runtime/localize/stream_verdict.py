"""The per-frame verdict calibrated on the query stream's own impostors, as it runs.

The map's calibration (:mod:`runtime.map.calibrate`) learns what an unmapped place looks like from the map's
own images: each plays an unmapped place against the rest of the map. A query stream from another domain
(season, camera, another traversal) stands differently against the map than the map's images stand
against each other, so its correct frames can look like the map's impostors and be flagged. The stream
itself holds impostors of its own domain, without labels: a frame whose answer is right, with that answer's
neighbourhood (``radius_m``) taken out of its candidates, is exactly an unmapped place of the query domain
(the map calibration's construction, with the query instead of a map image). :class:`StreamVerdict` collects
one such sample from every frame judged a known place and mixes their distribution into the map's:

    confidence(e) = (PRIOR_WEIGHT * F_map(e) + sum_i [s_i < e]) / (PRIOR_WEIGHT + n)

``F_map``: the map's impostor CDF (:meth:`runtime.map.calibrate.Verdict.confidence`), counted as
``PRIOR_WEIGHT`` samples, so a stream starts on the map's calibration and moves to its own within a few
hundred frames; ``s_i``: the last ``MEMORY`` samples. Only frames whose answer is probably right give
samples: a frame of an unmapped place (or a wrong answer), its best place taken out, would give the evidence
of its second-best impostor, systematically lower than an impostor's own, and pull the threshold down. So a
sample needs the answer judged known and corroborated: by the sequence verdict (a locked line), or, frame
by frame, by the previous frame's answer lying within ``CORROBORATE_RADII`` radii of it (a robot's motion
between frames; wrong answers scatter over the map). Measured where single frames are weak (``netvlad-bench
verdict --nordland``, the synthetic world's model, R@1 0.15, a fifth of the route removed): unmapped frames
flagged 89 % with the map's calibration alone, 78 % with every known frame's sample, 83 % with corroborated
ones; on the synthetic world corroboration changes nothing. The sequence verdict keeps the map's
calibration: its line evidence is normalised within each place's neighbourhood and holds across domains as
calibrated (measured on cached Nordland descriptors: stretches of the winter drive played as unmapped routes
give the same threshold as the map's own stretches), while samples taken beside a tracked line miss the
optimised impostor lines of a truly unmapped route. Every set's rates: ``netvlad-bench verdict`` and the
README (*The verdict on every set*).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from runtime.map.calibrate import SPREAD_RANK, evidence

PRIOR_WEIGHT = 50.0  # the map's calibration counts as this many stream samples
MEMORY = 2000  # stream samples kept (the most recent)
CORROBORATE_RADII = 4.0  # frame by frame, an answer is corroborated within this many radii of the last one


def impostor_sample(
    place: int, sims: np.ndarray, ids: np.ndarray, utm: np.ndarray, radius_m: float, kind: str = "gap"
) -> float:
    """The evidence of a frame's candidates (``sims``, ``ids``: best first) with the neighbourhood of
    ``place`` (within ``radius_m``) taken out: an unmapped place of the query domain when ``place`` is
    right. NaN when fewer than ``SPREAD_RANK + 1`` candidates remain (a dense map: search more candidates)."""
    far = np.linalg.norm(utm[ids] - utm[place], axis=1) > radius_m  # (C,)
    if np.count_nonzero(far) < SPREAD_RANK + 1:
        return float("nan")
    return evidence(sims[far], ids[far], utm, radius_m, kind)


class StreamVerdict:
    """One stream's impostor samples and the confidence they give (see the module doc); not thread-safe
    (the Localizer holds its lock). ``prior``: the map's evidence -> confidence."""

    def __init__(
        self, prior: Callable[[float], float], prior_weight: float = PRIOR_WEIGHT, memory: int = MEMORY
    ) -> None:
        self.prior = prior
        self.prior_weight = float(prior_weight)
        self._samples = np.empty(int(memory), dtype=np.float64)  # ring buffer
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the map's calibration again."""
        self._count = 0  # samples ever added since reset
        self._last: np.ndarray | None = None  # the previous frame's answer, UTM (2,)

    @property
    def samples(self) -> int:
        """Samples held now."""
        return min(self._count, self._samples.size)

    def confidence(self, value: float) -> float:
        """The share of impostors (the map's, weighted as ``prior_weight`` samples, and the stream's) with
        less evidence than ``value``, in [0, 1]."""
        n = self.samples
        below = float(np.count_nonzero(self._samples[:n] < value)) if n else 0.0
        return (self.prior_weight * self.prior(value) + below) / (self.prior_weight + n)

    def add(self, sample: float) -> None:
        """Count one impostor sample (NaN: ignored)."""
        if np.isfinite(sample):
            self._samples[self._count % self._samples.size] = sample
            self._count += 1

    def observe(
        self,
        place: int,
        sims: np.ndarray,
        ids: np.ndarray,
        utm: np.ndarray,
        radius_m: float,
        kind: str,
        unknown: bool,
        by_sequence: bool,
    ) -> bool:
        """After a frame's verdict: count its impostor sample (:func:`impostor_sample` of the reported
        ``place`` and the frame's candidates ``sims``, ``ids``) when its answer was judged known and is
        corroborated (``by_sequence``, or the previous answer within ``CORROBORATE_RADII * radius_m``).
        Returns whether a sample was taken."""
        here = utm[place]
        near_last = (
            self._last is not None
            and float(np.linalg.norm(here - self._last)) <= CORROBORATE_RADII * radius_m
        )
        self._last = here
        if unknown or not (by_sequence or near_last):
            return False
        sample = impostor_sample(place, sims, ids, utm, radius_m, kind)
        self.add(sample)
        return bool(np.isfinite(sample))
