"""Query-domain adaptation: a stream's descriptors centred on the stream's own running mean.

A map is built in one domain (a summer drive, daylight) and queried in another (winter, night, another
camera). Every descriptor of a domain shares a component (the season's light, the camera's colour) that
is not about the place; the map's projection removes its own by centring on the map's mean
(:class:`runtime.map.whitening.MapProjection`), and :class:`QueryCentre` removes the query stream's by
centring each frame on the running mean of the views seen so far. No labels, no training: the two domains
are aligned by their first moments, causally, frame by frame.

Measured with the demo model (7,168-D), map centred on its mean, queries on their running mean (rate 0.01),
recall@1 against the uncentred descriptors:

| data | single frame | sequence of 10 / 20 frames |
|---|---|---|
| synthetic small query video (992) | 0.734 -> 0.866 | 0.939 / 0.978 -> 1.000 / 1.000 |
| Nordland winter -> summer (3,405 scored) | 0.064 -> 0.115 | 0.732 / 0.824 -> 0.794 / see README |

Centring the queries on the *map's* mean instead (no adaptation) lowers Nordland to 0.039: it is the
stream's own mean that carries the gain.

**The running mean.** ``c_t = (1 - a_t) c_{t-1} + a_t x_t`` from ``c_0`` = the map's mean, with
``a_t = max(rate, 1 / (prior_views + t))``: the map's mean counts as ``prior_views`` views at the start
(a cold start is map-centred and moves to the stream's own mean within tens of frames), and then about the
last ``1 / rate`` distinct views count. **Only distinct views count**: a frame that did not move since the
last counted one (its similarity to it, in the map's space centred on the stream's mean, as the sequence
matcher compares frames, above ``still_similarity``: see
:func:`runtime.map.sequence.still_similarity`) leaves the mean unchanged, so that a robot standing still does
not pull the mean onto its current view (which would centre that view to noise).
"""

from __future__ import annotations

import numpy as np

from runtime.errors import ConfigError

ADAPT_RATE = 0.01  # weight of a new distinct view: the mean follows about the last 100 views
PRIOR_VIEWS = 20  # the map's mean counts as this many views at the start of a stream


class QueryCentre:
    """The running centre of one query stream (see the module doc); not thread-safe (the Localizer holds
    its lock). ``map_mean (D,)``: the map's mean (the model's space), the centre before any frame."""

    def __init__(
        self,
        map_mean: np.ndarray,
        still_similarity: float = np.inf,
        rate: float = ADAPT_RATE,
        prior_views: int = PRIOR_VIEWS,
    ) -> None:
        if not 0 < rate <= 1 or prior_views < 0:
            raise ConfigError(
                f"query adaptation needs 0 < rate <= 1 and prior_views >= 0, got {rate}, {prior_views}"
            )
        self.map_mean = np.asarray(map_mean, dtype=np.float64).reshape(-1)  # (D,)
        self.still_similarity = float(still_similarity)
        self.rate = float(rate)
        self.prior_views = int(prior_views)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the centre is the map's mean again."""
        self._mean = self.map_mean.copy()
        self._views = 0
        self._last: np.ndarray | None = None  # the last counted view, in the map's space

    @property
    def centre(self) -> np.ndarray:
        """The centre now ``(D,) float32`` (before the next frame counts)."""
        return self._mean.astype(np.float32)

    @property
    def views(self) -> int:
        """Distinct views counted since the last :meth:`reset`."""
        return self._views

    def update(self, descriptor: np.ndarray, view: np.ndarray) -> np.ndarray:
        """Count one frame and return the centre to use for it ``(D,) float32``. ``descriptor (D,)``: the
        model's; ``view (d,)``: the same frame in the map's space centred on :attr:`centre`
        (:meth:`runtime.map.PlaceMap.prepare`: the space the sequence matcher compares frames in), to tell
        whether it moved."""
        x = np.asarray(descriptor, dtype=np.float64).reshape(-1)
        view = np.asarray(view, dtype=np.float32).reshape(-1)
        if self._last is None or float(view @ self._last) <= self.still_similarity:
            self._views += 1
            rate = max(self.rate, 1.0 / (self.prior_views + self._views))
            self._mean = (1.0 - rate) * self._mean + rate * x
            self._last = view
        return self._mean.astype(np.float32)
