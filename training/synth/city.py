"""The 2D city plan: a street grid, a closed route around a random block cluster, facades and props.

Streets run along grid lines every ``block_m`` metres; the route is the boundary of a random, simply
connected cluster of blocks, so it has left and right turns and closes into a loop. Every block carries
buildings (facade segments set back from the street) or is a park; trees and lamp poles line the
sidewalks. World coordinates are UTM-like metres (easting, northing) around :data:`ORIGIN`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from training.synth.config import SynthConfig

ORIGIN = np.array([587000.0, 4477000.0])  # an arbitrary UTM position: exercises float64 positions
ROAD_HALF_M = 5.0  # centreline to kerb
BUILDING_LINE_M = 8.0  # centreline to facades (5 m road + 3 m sidewalk)
MARGIN_BLOCKS = 2


@dataclass(frozen=True)
class Facades:
    """Building walls as 2D segments with per-building style parameters (arrays of length S)."""

    p0: np.ndarray  # (S, 2) world metres
    p1: np.ndarray  # (S, 2)
    height: np.ndarray  # (S,) metres
    style: dict[str, np.ndarray]  # name -> (S,) or (S, 3)

    @property
    def count(self) -> int:
        return int(self.p0.shape[0])


@dataclass(frozen=True)
class Props:
    """Static point objects along sidewalks: kind 0 = tree, 1 = lamp pole, 2 = sign pole."""

    xy: np.ndarray  # (P, 2)
    kind: np.ndarray  # (P,) int
    size: np.ndarray  # (P,) scale
    colour: np.ndarray  # (P, 3) float RGB in [0, 1]


@dataclass(frozen=True)
class CityPlan:
    """The city: grid geometry, facades, props and the closed route polyline."""

    block_m: float
    origin: np.ndarray  # world position of grid node (0, 0)
    facades: Facades
    props: Props
    route: np.ndarray  # (R+1, 2) closed polyline (first == last), world metres
    route_cum: np.ndarray  # (R+1,) cumulative length
    length_m: float
    grid_cells: tuple[int, int, int, int] = (0, 0, 0, 0)  # blocks i in [i0, i1], j in [j0, j1] (built)

    def point_at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(N, 2)`` and unit directions ``(N, 2)`` at arc lengths ``s`` (wrapped around the loop)."""
        s = np.mod(np.asarray(s, dtype=np.float64), self.length_m)
        seg = np.clip(np.searchsorted(self.route_cum, s, side="right") - 1, 0, len(self.route) - 2)
        a, b = self.route[seg], self.route[seg + 1]
        d = b - a
        seg_len = np.linalg.norm(d, axis=1, keepdims=True)
        frac = (s - self.route_cum[seg])[:, None] / seg_len
        return a + frac * d, d / seg_len

    def pose_at(self, s: np.ndarray, smooth_m: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(N, 2)`` and headings in radians (math convention, x = east) with corners smoothed."""
        pos, _ = self.point_at(s)
        ahead, _ = self.point_at(np.asarray(s) + smooth_m)
        behind, _ = self.point_at(np.asarray(s) - smooth_m)
        d = ahead - behind
        return pos, np.arctan2(d[:, 1], d[:, 0])

    def side_streets(self, min_distance_m: float, step_m: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Centreline points of streets off the route: ``(positions (P, 2), directions (P, 2))``.

        Every grid street with buildings on both sides (the outermost grid lines have them on one side
        only) is sampled every ``step_m``; points closer than ``min_distance_m`` to the route are dropped.
        """
        i0, i1, j0, j1 = self.grid_cells
        route_points, _ = self.point_at(np.arange(0.0, self.length_m, step_m))  # (R, 2)
        points, directions = [], []
        for along_x, lines, span in (
            (True, range(j0 + 1, j1 + 1), (i0, i1 + 1)),
            (False, range(i0 + 1, i1 + 1), (j0, j1 + 1)),
        ):
            t = np.arange(span[0] * self.block_m, span[1] * self.block_m + 1e-6, step_m)
            for line in lines:
                offset = line * self.block_m
                xy = np.stack(
                    [t, np.full_like(t, offset)] if along_x else [np.full_like(t, offset), t], axis=1
                )
                points.append(self.origin + xy)
                directions.append(np.tile([1.0, 0.0] if along_x else [0.0, 1.0], (t.size, 1)))
        pts, dirs = np.concatenate(points), np.concatenate(directions)
        nearest = np.full(pts.shape[0], np.inf)
        for start in range(0, pts.shape[0], 2048):  # (B, R) distances in blocks: bounded memory
            block = np.linalg.norm(pts[start : start + 2048, None, :] - route_points[None], axis=2)
            nearest[start : start + 2048] = block.min(axis=1)
        keep = nearest >= min_distance_m
        return pts[keep], dirs[keep]


# The shared facade vocabulary: base colours (plaster, brick, stone, paint), sign and door colours.
WALL_COLOURS = np.array(
    [
        [0.78, 0.72, 0.62], [0.66, 0.36, 0.28], [0.55, 0.55, 0.58], [0.85, 0.82, 0.74], [0.45, 0.30, 0.25],
        [0.70, 0.62, 0.45], [0.60, 0.68, 0.72], [0.88, 0.78, 0.60], [0.40, 0.42, 0.48], [0.75, 0.55, 0.45],
        [0.62, 0.70, 0.58], [0.90, 0.88, 0.85],
    ]
)  # fmt: skip
ACCENT_COLOURS = np.array(
    [
        [0.80, 0.10, 0.10], [0.10, 0.35, 0.75], [0.10, 0.55, 0.25], [0.95, 0.75, 0.10], [0.95, 0.95, 0.95],
        [0.10, 0.10, 0.12], [0.85, 0.40, 0.05], [0.50, 0.15, 0.55], [0.05, 0.60, 0.65],
    ]
)  # fmt: skip
GLASS_COLOURS = np.array([[0.18, 0.22, 0.28], [0.30, 0.38, 0.45], [0.12, 0.14, 0.16], [0.40, 0.45, 0.42]])


def _grow_cluster(rng: np.random.Generator, target_edges: int) -> set[tuple[int, int]]:
    """A simply connected, pinch-free set of grid cells whose boundary has about ``target_edges`` edges."""
    cells = {(0, 0)}

    def perimeter(cs: set[tuple[int, int]]) -> int:
        return sum((i + di, j + dj) not in cs for i, j in cs for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)))

    def pinches(cs: set[tuple[int, int]], c: tuple[int, int]) -> bool:
        i, j = c
        for di, dj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            if (i + di, j + dj) in cs and (i + di, j) not in cs and (i, j + dj) not in cs:
                return True
        return False

    def encloses_hole(cs: set[tuple[int, int]]) -> bool:
        xs = [c[0] for c in cs]
        ys = [c[1] for c in cs]
        x0, x1, y0, y1 = min(xs) - 1, max(xs) + 1, min(ys) - 1, max(ys) + 1
        seen = {(x0, y0)}
        stack = [(x0, y0)]
        while stack:
            i, j = stack.pop()
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                n = (i + di, j + dj)
                if x0 <= n[0] <= x1 and y0 <= n[1] <= y1 and n not in cs and n not in seen:
                    seen.add(n)
                    stack.append(n)
        return len(seen) + len(cs) != (x1 - x0 + 1) * (y1 - y0 + 1)

    per = 4
    while per < target_edges:
        frontier = sorted(
            {(i + di, j + dj) for i, j in cells for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))} - cells
        )
        # prefer cells that lengthen the boundary (wiggly loop with many turns)
        rng.shuffle(frontier)
        added = False
        for cand in frontier:
            new = cells | {cand}
            if pinches(cells, cand) or encloses_hole(new):
                continue
            new_per = perimeter(new)
            if new_per < per and rng.random() < 0.8:
                continue
            cells, per, added = new, new_per, True
            break
        if not added:
            break
    return cells


def _trace_boundary(cells: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Counter-clockwise boundary vertices of a pinch-free, hole-free cell cluster (closed: first == last)."""
    nxt: dict[tuple[int, int], tuple[int, int]] = {}
    for i, j in cells:
        if (i, j - 1) not in cells:
            nxt[(i, j)] = (i + 1, j)
        if (i + 1, j) not in cells:
            nxt[(i + 1, j)] = (i + 1, j + 1)
        if (i, j + 1) not in cells:
            nxt[(i + 1, j + 1)] = (i, j + 1)
        if (i - 1, j) not in cells:
            nxt[(i, j + 1)] = (i, j)
    start = min(nxt)
    loop = [start]
    v = nxt[start]
    while v != start:
        loop.append(v)
        v = nxt[v]
    loop.append(start)
    # keep only the corners (drop collinear vertices)
    corners = [loop[0]]
    for a, b, c in zip(loop[:-2], loop[1:-1], loop[2:], strict=True):
        if (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1]):
            corners.append(b)
    corners.append(loop[-1])
    return corners


def _split_length(rng: np.random.Generator, length: float, lo: float, hi: float) -> list[float]:
    parts: list[float] = []
    left = length
    while left > hi:
        part = float(rng.uniform(lo, hi))
        if left - part < lo:
            part = left / 2
        parts.append(part)
        left -= part
    parts.append(left)
    return parts


def _facade_style(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    wall_idx = rng.integers(0, len(WALL_COLOURS), n)
    wall = np.clip(WALL_COLOURS[wall_idx] + rng.normal(0, 0.04, (n, 3)), 0.05, 0.98)
    return {
        "wall": wall,
        "trim": np.clip(wall * rng.uniform(0.55, 1.25, (n, 1)), 0.02, 1.0),
        "glass": GLASS_COLOURS[rng.integers(0, len(GLASS_COLOURS), n)],
        "accent": ACCENT_COLOURS[rng.integers(0, len(ACCENT_COLOURS), n)],
        "sign": ACCENT_COLOURS[rng.integers(0, len(ACCENT_COLOURS), n)],
        "floor_h": rng.uniform(2.9, 3.8, n),
        "win_pitch": rng.uniform(1.8, 4.2, n),
        "win_w": rng.uniform(0.3, 0.75, n),
        "win_h": rng.uniform(0.35, 0.7, n),
        "win_offset": rng.uniform(0, 4, n),
        "shop": (rng.random(n) < 0.45).astype(np.float64),
        "door_u": rng.uniform(0.2, 0.8, n),
        "brick": (rng.random(n) < 0.35).astype(np.float64),
        "texture": rng.uniform(0.03, 0.12, n),
        "sign_seed": rng.integers(0, 1 << 30, n).astype(np.float64),
        "balcony": (rng.random(n) < 0.25).astype(np.float64),
    }


def build_city(cfg: SynthConfig) -> CityPlan:
    """Build the city plan for ``cfg`` deterministically from ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, 0xC17])
    block = cfg.block_m
    target_edges = max(4, round(cfg.route_length_m / block))
    cells = _grow_cluster(rng, target_edges)
    corners = np.array(_trace_boundary(cells), dtype=np.float64)
    xs = [c[0] for c in cells]
    ys = [c[1] for c in cells]
    gx0, gx1 = min(xs) - MARGIN_BLOCKS, max(xs) + MARGIN_BLOCKS
    gy0, gy1 = min(ys) - MARGIN_BLOCKS, max(ys) + MARGIN_BLOCKS
    origin = ORIGIN
    route = origin + corners * block
    # start the loop in the middle of its longest straight, not at a corner
    seg_len = np.linalg.norm(np.diff(route, axis=0), axis=1)
    k = int(np.argmax(seg_len))
    mid = (route[k] + route[k + 1]) / 2
    route = np.vstack([mid, route[k + 1 : -1], route[: k + 1], mid])
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route, axis=0), axis=1))])

    p0s, p1s, heights = [], [], []
    prop_xy, prop_kind = [], []
    inset = BUILDING_LINE_M
    for i in range(gx0, gx1 + 1):
        for j in range(gy0, gy1 + 1):
            x0, y0 = origin + np.array([i, j]) * block + inset
            x1, y1 = origin + np.array([i + 1, j + 1]) * block - inset
            park = rng.random() < 0.08
            corners_b = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            for (ax, ay), (bx, by) in itertools.pairwise(corners_b):
                a, b = np.array([ax, ay]), np.array([bx, by])
                side = np.linalg.norm(b - a)
                direction = (b - a) / side
                outward = np.array([direction[1], -direction[0]])  # blocks are counter-clockwise
                if park:
                    for t in np.arange(4.0, side - 2.0, rng.uniform(7, 11)):
                        prop_xy.append(a + direction * t + outward * 1.0)
                        prop_kind.append(0)
                    continue
                pos = 0.0
                for part in _split_length(rng, side, 7.0, 22.0):
                    p0s.append(a + direction * pos)
                    p1s.append(a + direction * (pos + part))
                    heights.append(
                        rng.choice(
                            [rng.uniform(6, 11), rng.uniform(10, 18), rng.uniform(16, 30)],
                            p=[0.45, 0.4, 0.15],
                        )
                    )
                    pos += part
                # sidewalk furniture, 1.5 m in front of the facades
                t = float(rng.uniform(2, 12))
                while t < side - 2:
                    kind = int(rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15]))
                    prop_xy.append(a + direction * t + outward * float(rng.uniform(1.2, 2.4)))
                    prop_kind.append(kind)
                    t += float(rng.uniform(9, 26))
    n = len(p0s)
    facades = Facades(
        p0=np.array(p0s),
        p1=np.array(p1s),
        height=np.array(heights, dtype=np.float64),
        style=_facade_style(rng, n),
    )
    m = len(prop_xy)
    tree_green = np.array([[0.18, 0.42, 0.15], [0.25, 0.50, 0.20], [0.35, 0.45, 0.12], [0.15, 0.32, 0.18]])
    colour = np.where(
        (np.array(prop_kind) == 0)[:, None],
        tree_green[rng.integers(0, 4, m)],
        ACCENT_COLOURS[rng.integers(0, len(ACCENT_COLOURS), m)] * 0.6 + 0.15,
    )
    props = Props(
        xy=np.array(prop_xy).reshape(-1, 2),
        kind=np.array(prop_kind, dtype=np.int64),
        size=rng.uniform(0.7, 1.4, m),
        colour=colour,
    )
    return CityPlan(
        block_m=block,
        origin=origin,
        facades=facades,
        props=props,
        route=route,
        route_cum=cum,
        length_m=float(cum[-1]),
        grid_cells=(gx0, gx1, gy0, gy1),
    )
