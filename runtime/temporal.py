"""A temporal filter for sequences: a robot moves continuously, so consecutive frames see nearby places.

A discrete Bayes (HMM forward) filter over each frame's top candidate places:

- observation likelihood of candidate c: ``exp((s_c - s_max) / temperature)`` (s: cosine similarity);
- prediction: ``prior_c = floor + sum_p belief_p * exp(-d(p, c)^2 / (2 sigma^2))`` over the previous frame's
  candidates p, with d the distance between the places in metres; ``floor`` lets the filter relocalise
  after a jump (kidnapping, a gap in the stream);
- posterior ∝ prior * likelihood over the current candidates, renormalised.

Cost is O(K^2) per frame for K candidates, independent of the map size. Whether it helps is measured (see
the runtime tests and report), not assumed: it needs the frames to be a sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import ConfigError


@dataclass(frozen=True)
class TemporalConfig:
    """``candidates``: places considered per frame; ``motion_sigma_m``: expected movement between frames
    (None: 2x the median spacing of neighbouring map places); ``temperature``: similarity scale of the
    likelihood; ``floor``: prior mass of a place with no predecessor (relocalisation)."""

    candidates: int = 30
    motion_sigma_m: float | None = None
    temperature: float = 0.02
    floor: float = 0.02

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.temperature <= 0 or not 0 <= self.floor <= 1:
            raise ConfigError(
                f"invalid temporal config {self}: candidates >= 1, temperature > 0, 0 <= floor <= 1"
            )
        if self.motion_sigma_m is not None and self.motion_sigma_m <= 0:
            raise ConfigError(f"motion_sigma_m must be > 0 or None, got {self.motion_sigma_m}")


def place_spacing_m(utm: np.ndarray, samples: int = 2000) -> float:
    """Median distance from a place to its nearest other place (metres), on a sample of the map."""
    n = len(utm)
    if n < 2:
        return 1.0
    rows = np.linspace(0, n - 1, min(samples, n)).astype(np.int64)
    d = np.linalg.norm(utm[rows][:, None, :] - utm[None, :, :], axis=2)  # (S, N)
    d[np.arange(len(rows)), rows] = np.inf
    return float(max(np.median(d.min(axis=1)), 1e-3))


class TemporalFilter:
    """Re-ranks each frame's candidates using the previous frames. One instance per sequence."""

    def __init__(self, utm: np.ndarray, config: TemporalConfig | None = None) -> None:
        self.config = config or TemporalConfig()
        self.utm = np.asarray(utm, dtype=np.float64)
        self.sigma = self.config.motion_sigma_m or 2.0 * place_spacing_m(self.utm)
        self.reset()

    def reset(self) -> None:
        """Forget the past (a new sequence)."""
        self._ids: np.ndarray | None = None
        self._belief: np.ndarray | None = None

    def update(self, similarities: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame's candidates ``(K,)`` similarities and place ids (best first, -1 = padding).

        Returns ``(ids, posterior)`` sorted by posterior, best first (float64, sums to 1).
        """
        valid = ids >= 0
        ids, sims = ids[valid].astype(np.int64), similarities[valid].astype(np.float64)
        if ids.size == 0:
            return ids, np.zeros(0)
        likelihood = np.exp((sims - sims.max()) / self.config.temperature)
        if self._ids is None:
            prior = np.ones_like(likelihood)
        else:
            d = np.linalg.norm(self.utm[self._ids][:, None, :] - self.utm[ids][None, :, :], axis=2)  # (Kp, K)
            transition = np.exp(-0.5 * (d / self.sigma) ** 2)
            prior = self.config.floor + self._belief @ transition  # (K,)
        posterior = prior * likelihood
        posterior /= posterior.sum()
        self._ids, self._belief = ids, posterior
        order = np.argsort(-posterior, kind="stable")
        return ids[order], posterior[order]
