"""The synthetic world: a seeded city, a database traversal and a query traversal, rendered on demand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.synth.appearance import QUERY_LIGHTING, REFERENCE, Lighting, sample_occluders
from training.synth.city import ROAD_HALF_M, build_city
from training.synth.config import SynthConfig
from training.synth.render import Renderer

DRIVE_LANE_M = -2.5  # the database camera drives 2.5 m right of the centreline (right-hand traffic)
SPEED_M_S = 10.0
DB_EPOCH_S = 1_780_315_200.0  # 2026-06-01 12:00 UTC: the database drive
QUERY_EPOCH_S = 1_795_000_000.0  # ~2026-11-18: the revisit
SPLIT_CODES = {"database": 1, "queries": 2, "unmapped": 3}


@dataclass(frozen=True)
class Traversal:
    """Camera poses of one traversal: positions ``(N, 2)`` UTM metres, compass heading degrees, seconds."""

    utm: np.ndarray
    yaw: np.ndarray  # (N,) radians, counter-clockwise from east (renderer convention)
    heading_deg: np.ndarray  # (N,) degrees clockwise from north
    time_s: np.ndarray
    arc_m: np.ndarray  # (N,) position along the route
    conditions: tuple[str, ...]


def _truncated_normal(rng: np.random.Generator, limit: float, n: int) -> np.ndarray:
    """``n`` draws of N(0, (limit / 3.5)^2) clipped to +-``limit``."""
    return np.clip(rng.normal(0.0, limit / 3.5, n), -limit, limit) if limit > 0 else np.zeros(n)


def compass_heading(yaw: np.ndarray) -> np.ndarray:
    """Renderer yaw (radians, counter-clockwise from east) -> compass heading (degrees clockwise from north)."""
    return np.mod(90.0 - np.degrees(yaw), 360.0)


class SynthWorld:
    """A deterministic street world for ``cfg`` that renders database and query images on the fly.

    ``world.image("database", i)`` / ``world.image("queries", i)`` / ``world.image("unmapped", i)``: uint8
    ``(H, W, 3)`` RGB, identical to what :func:`training.synth.generate` writes. Poses: ``world.database``,
    ``world.queries`` and ``world.unmapped`` (:class:`Traversal`; the last: places on streets the database
    drive never comes near, ``cfg.unmapped_queries`` of them, none when 0).
    """

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        self.city = build_city(cfg)
        self.renderer = Renderer(self.city, cfg)
        self.database = self._traversal("database")
        self.queries = self._traversal("queries")
        self.unmapped = self._unmapped()

    @property
    def num_db(self) -> int:
        return int(self.database.utm.shape[0])

    @property
    def num_queries(self) -> int:
        return int(self.queries.utm.shape[0])

    @property
    def num_unmapped(self) -> int:
        return int(self.unmapped.utm.shape[0])

    def _unmapped(self) -> Traversal:
        """Poses on streets off the route: seeded apart from the traversals, so turning them on or off
        leaves the database and query images unchanged. Conditions: in stretches, like the queries."""
        cfg = self.cfg
        n = cfg.unmapped_queries
        rng = np.random.default_rng([cfg.seed, SPLIT_CODES["unmapped"], 0x7A5])
        points, directions = (
            self.city.side_streets(cfg.unmapped_min_distance_m) if n else (np.zeros((0, 2)),) * 2
        )
        if n and points.shape[0] == 0:
            raise ValueError(
                f"no street lies {cfg.unmapped_min_distance_m} m from the route in this city; "
                "lower unmapped_min_distance_m or set unmapped_queries=0"
            )
        pick = (
            np.sort(rng.choice(points.shape[0], size=n, replace=points.shape[0] < n))
            if n
            else np.zeros(0, int)
        )
        direction = directions[pick] * rng.choice([-1.0, 1.0], size=(n, 1))  # either way along the street
        yaw = np.arctan2(direction[:, 1], direction[:, 0])
        left = np.stack([-np.sin(yaw), np.cos(yaw)], axis=1)
        lateral = DRIVE_LANE_M + _truncated_normal(rng, cfg.max_lateral_m, n)
        utm = points[pick] + left * np.clip(lateral, -ROAD_HALF_M + 0.5, ROAD_HALF_M - 0.5)[:, None]  # (n, 2)
        yaw = yaw + np.radians(_truncated_normal(rng, cfg.max_yaw_deg, n))
        n_cond = len(cfg.conditions)
        return Traversal(
            utm=utm,
            yaw=yaw,
            heading_deg=compass_heading(yaw),
            time_s=QUERY_EPOCH_S + self.city.length_m / SPEED_M_S + 60.0 * np.arange(n),
            arc_m=np.full(n, np.nan),  # not on the route
            conditions=tuple(cfg.conditions[k * n_cond // n] for k in range(n)),
        )

    def _traversal(self, split: str) -> Traversal:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], 0x7A5])
        length = self.city.length_m
        if split == "database":
            arc = np.arange(0.0, length - 1e-6, cfg.db_spacing_m)
            lateral = np.full(arc.shape, DRIVE_LANE_M)
            yaw_offset = np.zeros(arc.shape)
            conditions = ("reference",) * arc.size
            epoch = DB_EPOCH_S
        else:
            phase = rng.uniform(0.25, 0.75) * cfg.db_spacing_m  # queries fall between database images
            arc = phase + np.arange(0.0, length - 1e-6, cfg.query_spacing_m)
            # viewpoint change: truncated normals, most revisits close to the lane, a few at the limits
            lateral = DRIVE_LANE_M + _truncated_normal(rng, cfg.max_lateral_m, arc.size)
            lateral = np.clip(lateral, -ROAD_HALF_M + 0.5, ROAD_HALF_M - 0.5)
            yaw_offset = np.radians(_truncated_normal(rng, cfg.max_yaw_deg, arc.size))
            n_cond = len(cfg.conditions)
            conditions = tuple(cfg.conditions[k * n_cond // arc.size] for k in range(arc.size))
            epoch = QUERY_EPOCH_S
        pos, yaw = self.city.pose_at(arc)
        left = np.stack([-np.sin(yaw), np.cos(yaw)], axis=1)
        utm = pos + left * lateral[:, None]  # (N, 2)
        yaw = yaw + yaw_offset
        return Traversal(
            utm=utm,
            yaw=yaw,
            heading_deg=compass_heading(yaw),
            time_s=epoch + arc / SPEED_M_S,
            arc_m=arc,
            conditions=conditions,
        )

    def lighting(self, condition: str) -> Lighting:
        """The :class:`Lighting` of a condition name ("reference" for the database)."""
        return REFERENCE if condition == "reference" else QUERY_LIGHTING[condition]

    def image(self, split: str, index: int) -> np.ndarray:
        """Render image ``index`` of ``split`` ("database", "queries" or "unmapped"): uint8 ``(H, W, 3)`` RGB."""
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be 'database', 'queries' or 'unmapped', got {split!r}")
        trav = {"database": self.database, "queries": self.queries, "unmapped": self.unmapped}[split]
        if not 0 <= index < trav.utm.shape[0]:
            raise IndexError(f"{split} index {index} out of range 0..{trav.utm.shape[0] - 1}")
        rng = np.random.default_rng([self.cfg.seed, SPLIT_CODES[split], int(index)])
        occluders = sample_occluders(rng, self.cfg.occluders) if split != "database" else []
        return self.renderer.render(
            trav.utm[index],
            float(trav.yaw[index]),
            self.lighting(trav.conditions[index]),
            occluders,
            rng,
            self.cfg.noise,
        )

    def render_view(
        self, easting: float, northing: float, heading_deg: float, condition: str = "reference"
    ) -> np.ndarray:
        """Render any pose (UTM metres, compass heading) under a condition, without occluders or noise."""
        yaw = math.radians(90.0 - heading_deg)
        return self.renderer.render(np.array([easting, northing]), yaw, self.lighting(condition))
