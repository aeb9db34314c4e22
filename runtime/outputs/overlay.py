"""The ``--show`` / ``--save-video`` overlay: the frame, the matched map image, and the position on a small map."""

from __future__ import annotations

import collections
import functools

import cv2
import numpy as np

from runtime.localize.localizer import Localization
from runtime.map import PlaceMap

PANEL_H, PANEL_W, MAP_W = 240, 320, 240


class Overlay:
    """Renders one BGR image ``(240, 880, 3)`` per Localization. Keeps a short trail of positions."""

    def __init__(self, place_map: PlaceMap, trail: int = 200) -> None:
        self.map = place_map
        utm = place_map.places.utm
        lo, hi = utm.min(axis=0), utm.max(axis=0)
        span = float(max(hi - lo)) or 1.0
        self._origin, self._scale = lo, (MAP_W - 20) / span
        self._background = np.full((PANEL_H, MAP_W, 3), 32, np.uint8)
        for x, y in self._to_pixels(utm):
            self._background[y, x] = (160, 160, 160)
        self._trail: collections.deque = collections.deque(maxlen=trail)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the rendered image."""
        return (2 * PANEL_W + MAP_W, PANEL_H)

    def _to_pixels(self, utm: np.ndarray) -> np.ndarray:
        p = (np.atleast_2d(utm) - self._origin) * self._scale + 10
        x = np.clip(p[:, 0], 0, MAP_W - 1).astype(int)
        y = np.clip(PANEL_H - 1 - p[:, 1], 0, PANEL_H - 1).astype(int)  # north up
        return np.stack([x, y], axis=1)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Overlay per run; bounded
    def _map_image(self, place_id: int) -> np.ndarray:
        image = cv2.imread(str(self.map.image_path(place_id)), cv2.IMREAD_COLOR)
        if image is None:
            image = np.zeros((PANEL_H, PANEL_W, 3), np.uint8)
            cv2.putText(image, "map image missing", (10, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 1)
        return cv2.resize(image, (PANEL_W, PANEL_H))

    def render(self, loc: Localization, frame: np.ndarray, fps: float | None = None) -> np.ndarray:
        """The overlay for ``loc`` over ``frame`` (BGR, any size)."""
        left = cv2.resize(frame, (PANEL_W, PANEL_H))
        middle = self._map_image(loc.best.place_id).copy()
        right = self._background.copy()
        self._trail.append(loc.position)
        for x, y in self._to_pixels(np.asarray(self._trail)):
            right[y, x] = (0, 200, 255)
        x, y = self._to_pixels(np.asarray(loc.position))[0]
        cv2.circle(right, (int(x), int(y)), 4, (0, 0, 255) if not loc.unknown else (128, 128, 128), -1)
        colour = (0, 255, 0) if not loc.unknown else (0, 0, 255)
        status = "UNKNOWN PLACE" if loc.unknown else f"conf {loc.confidence:.2f}"
        cv2.putText(
            left,
            f"#{loc.index} {status}" + (f" {fps:.1f} FPS" if fps else ""),
            (6, 18),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            colour,
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            middle,
            f"map {loc.best.place_id} sim {loc.best.similarity:.3f}",
            (6, 18),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            right,
            f"E {loc.position[0]:.0f} N {loc.position[1]:.0f}",
            (6, PANEL_H - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        return np.concatenate([left, middle, right], axis=1)
