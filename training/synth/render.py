"""Perspective rendering of the 2D city plan by ray casting: one ray per image column (numpy, no loops
over pixels). Walls come from the nearest few facade hits per column (so taller buildings show behind
lower ones), the ground from floor casting, trees/poles/vehicles/people as depth-tested sprites, and the
condition (lighting, haze, noise) is applied last with the per-pixel depth."""

from __future__ import annotations

import math

import numpy as np

from training.synth.appearance import Lighting, Occluder
from training.synth.city import BUILDING_LINE_M, ROAD_HALF_M, CityPlan
from training.synth.config import SynthConfig

VIEW_DISTANCE_M = 260.0
WALL_LAYERS = 3


def _hash(*parts: np.ndarray) -> np.ndarray:
    """A cheap deterministic per-element hash in [0, 1) (shader-style)."""
    acc = np.zeros(np.broadcast(*parts).shape, dtype=np.float64)
    for k, p in zip((12.9898, 78.233, 37.719, 4.581), parts, strict=False):
        acc = acc + np.asarray(p, dtype=np.float64) * k
    v = np.sin(acc) * 43758.5453
    return v - np.floor(v)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], blur: int) -> np.ndarray:
    import cv2

    noise = rng.random(shape).astype(np.float32)
    if blur:  # blur a 3x3 tiling and keep the centre: seamless when tiled (OpenCV has no wrap border here)
        h, w = shape
        noise = cv2.GaussianBlur(np.tile(noise, (3, 3)), (0, 0), blur)[h : 2 * h, w : 2 * w]
    noise -= noise.min()
    return (noise / max(float(noise.max()), 1e-6)).astype(np.float64)


class Renderer:
    """Renders views of one :class:`CityPlan` at ``cfg.height x cfg.width``; stateless between calls."""

    def __init__(self, city: CityPlan, cfg: SynthConfig) -> None:
        self.city = city
        self.h, self.w = cfg.height, cfg.width
        self.cam_h = cfg.camera_height_m
        self.focal = (self.w / 2) / math.tan(math.radians(cfg.fov_deg) / 2)
        self.horizon = self.h / 2
        x = np.arange(self.w) + 0.5 - self.w / 2
        self.col_angle = -np.arctan(x / self.focal)  # (W,) left columns look left (counter-clockwise)
        self.col_cos = np.cos(self.col_angle)
        self.rows = np.arange(self.h, dtype=np.float64) + 0.5  # (H,)
        rng = np.random.default_rng([cfg.seed, 0x7E7])
        self.wall_noise = _smooth_noise(rng, (64, 64), 1)
        self.ground_noise = _smooth_noise(rng, (128, 128), 2)
        f = city.facades
        self.seg_vec = f.p1 - f.p0  # (S, 2)
        self.seg_len = np.linalg.norm(self.seg_vec, axis=1)
        self.seg_mid = (f.p0 + f.p1) / 2
        self.seg_normal = np.stack([self.seg_vec[:, 1], -self.seg_vec[:, 0]], axis=1) / self.seg_len[:, None]
        self.clouds = {}

    def _cloud_tile(self, seed: int) -> np.ndarray:
        if seed not in self.clouds:
            self.clouds[seed] = _smooth_noise(np.random.default_rng([seed, 0xC10D]), (48, 360), 4)
        return self.clouds[seed]

    # -- the public call ---------------------------------------------------------------------------
    def render(
        self,
        position: np.ndarray,
        yaw: float,
        lighting: Lighting,
        occluders: list[Occluder] | tuple = (),
        rng: np.random.Generator | None = None,
        noise_scale: float = 1.0,
    ) -> np.ndarray:
        """One view: uint8 ``(H, W, 3)`` RGB from ``position`` (world metres) looking along ``yaw``
        (radians, counter-clockwise from east)."""
        pos = np.asarray(position, dtype=np.float64)
        theta = yaw + self.col_angle  # (W,)
        ray = np.stack([np.cos(theta), np.sin(theta)], axis=1)  # (W, 2)
        img = np.empty((self.h, self.w, 3), dtype=np.float64)
        zbuf = np.full((self.h, self.w), np.inf)
        self._sky(img, theta, lighting)
        self._ground(img, zbuf, pos, ray, lighting)
        self._walls(img, zbuf, pos, yaw, ray, lighting)
        self._props(img, zbuf, pos, yaw, lighting)
        for occ in sorted(occluders, key=lambda o: -o.forward):
            self._occluder(img, zbuf, occ, lighting)
        return self._finish(img, zbuf, lighting, rng, noise_scale)

    # -- scene parts -------------------------------------------------------------------------------
    def _sky(self, img: np.ndarray, theta: np.ndarray, light: Lighting) -> None:
        elev = np.clip((self.horizon - self.rows) / self.focal, 0, None)  # (H,) tan(elevation)
        t = np.clip(elev / 0.8, 0, 1)[:, None, None]
        top, hor = np.array(light.sky_top), np.array(light.sky_horizon)
        img[:] = hor * (1 - t) + top * t
        tile = self._cloud_tile(light.cloud_seed)
        az = (np.degrees(theta) % 360).astype(np.int64)  # (W,)
        v = np.clip((elev * 60).astype(np.int64), 0, tile.shape[0] - 1)  # (H,)
        cloud = np.clip(tile[v[:, None], az[None, :]] * 1.6 - 0.7, 0, 1)[..., None]  # (H, W, 1)
        cloud *= (elev > 0.02)[:, None, None]
        cloud_colour = np.array(light.sky_horizon) * 1.1
        img[:] = img * (1 - 0.6 * cloud) + cloud_colour * 0.6 * cloud

    def _ground(self, img, zbuf, pos, ray, light: Lighting) -> None:
        r0 = math.ceil(self.horizon)
        rows = self.rows[r0:]
        dperp = self.cam_h * self.focal / (rows - self.horizon)  # (Hg,) perpendicular depth
        dist = dperp[:, None] / self.col_cos[None, :]  # (Hg, W) along each ray
        gx = pos[0] + dist * ray[None, :, 0]
        gy = pos[1] + dist * ray[None, :, 1]
        block = self.city.block_m
        lx = np.mod(gx - self.city.origin[0], block)
        ly = np.mod(gy - self.city.origin[1], block)
        dv = np.minimum(lx, block - lx)  # distance to the nearest north-south street centreline
        dh = np.minimum(ly, block - ly)  # ... east-west
        dn = np.minimum(dv, dh)
        gnoise = self.ground_noise[(gy * 4).astype(np.int64) % 128, (gx * 4).astype(np.int64) % 128]
        colour = np.empty((*dist.shape, 3))
        road = dn < ROAD_HALF_M
        walk = (dn >= ROAD_HALF_M) & (dn < BUILDING_LINE_M)
        grass = dn >= BUILDING_LINE_M
        colour[road] = np.array([0.30, 0.30, 0.32])
        colour[walk] = np.array([0.62, 0.60, 0.56])
        colour[grass] = np.array([0.28, 0.45, 0.20])
        colour *= (0.85 + 0.3 * gnoise)[..., None]
        kerb = (dn >= ROAD_HALF_M) & (dn < ROAD_HALF_M + 0.25)
        colour[kerb] = np.array([0.75, 0.74, 0.70])
        paving = walk & ((np.mod(gx, 1.5) < 0.08) | (np.mod(gy, 1.5) < 0.08))
        colour[paving] *= 0.8
        inter_h = dv < BUILDING_LINE_M  # on an east-west street but inside an intersection
        inter_v = dh < BUILDING_LINE_M
        dash_h = (dh < 0.12) & ~inter_h & (np.mod(gx, 6.0) < 3.0)
        dash_v = (dv < 0.12) & ~inter_v & (np.mod(gy, 6.0) < 3.0)
        zebra_h = (
            inter_v & ~inter_h & (dv < BUILDING_LINE_M + 3) & (dh < ROAD_HALF_M) & (np.mod(gy, 1.0) < 0.5)
        )
        zebra_v = (
            inter_h & ~inter_v & (dh < BUILDING_LINE_M + 3) & (dv < ROAD_HALF_M) & (np.mod(gx, 1.0) < 0.5)
        )
        zebra_h &= (dv > ROAD_HALF_M) & (dv < ROAD_HALF_M + 3)
        zebra_v &= (dh > ROAD_HALF_M) & (dh < ROAD_HALF_M + 3)
        colour[dash_h | dash_v | zebra_h | zebra_v] = np.array([0.85, 0.85, 0.80])
        if light.night:
            colour *= (1.0 + 6.0 * np.exp(-dist / 10.0) * (np.abs(self.col_angle) < 0.5))[..., None]
        img[r0:] = colour
        zbuf[r0:] = np.broadcast_to(dperp[:, None], dist.shape)

    def _visible_segments(self, pos: np.ndarray, yaw: float) -> np.ndarray:
        rel = self.seg_mid - pos
        fwd = np.array([math.cos(yaw), math.sin(yaw)])
        dist = np.linalg.norm(rel, axis=1)
        return np.flatnonzero(
            (dist < VIEW_DISTANCE_M + self.seg_len / 2) & (rel @ fwd > -self.seg_len / 2 - 2.0)
        )

    def _walls(self, img, zbuf, pos, yaw, ray, light: Lighting) -> None:
        vis = self._visible_segments(pos, yaw)
        if vis.size == 0:
            return
        facades = self.city.facades
        e = self.seg_vec[vis]  # (S, 2)
        wv = facades.p0[vis] - pos  # (S, 2)
        denom = ray[:, 0:1] * e[None, :, 1] - ray[:, 1:2] * e[None, :, 0]  # (W, S)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (wv[None, :, 0] * e[None, :, 1] - wv[None, :, 1] * e[None, :, 0]) / denom  # (W, S)
            u = (wv[None, :, 0] * ray[:, 1:2] - wv[None, :, 1] * ray[:, 0:1]) / denom  # (W, S) in [0, 1]
        ok = (np.abs(denom) > 1e-9) & (t > 0.3) & (u >= 0) & (u <= 1)
        t = np.where(ok, t, np.inf)
        k = min(WALL_LAYERS, vis.size)
        near = (
            np.argpartition(t, k - 1, axis=1)[:, :k]
            if vis.size > k
            else np.tile(np.arange(vis.size), (self.w, 1))
        )
        tk = np.take_along_axis(t, near, axis=1)  # (W, k)
        order = np.argsort(tk, axis=1)
        near = np.take_along_axis(near, order, axis=1)
        tk = np.take_along_axis(tk, order, axis=1)
        uk = np.take_along_axis(u, near, axis=1)
        seg_all = vis[near]  # (W, k) global segment ids
        sun = math.radians(90.0 - light.sun_azimuth_deg)
        sun_dir = np.array([math.cos(sun), math.sin(sun)])
        for layer in range(k - 1, -1, -1):
            hit = np.isfinite(tk[:, layer])
            if not hit.any():
                continue
            seg = seg_all[:, layer]
            dp = np.where(hit, tk[:, layer] * self.col_cos, np.inf)  # (W,) perpendicular depth
            z = self.cam_h + (self.horizon - self.rows[:, None]) * dp[None, :] / self.focal  # (H, W) height
            mask = hit[None, :] & (z >= 0) & (z <= facades.height[seg][None, :])
            rr, cc = np.nonzero(mask)
            if rr.size == 0:
                continue
            s = seg[cc]
            um = uk[cc, layer] * self.seg_len[s]
            colour = self._facade_colour(s, um, z[rr, cc], light)
            normal = (
                self.seg_normal[s]
                * np.sign(np.sum(self.seg_normal[s] * (pos - self.seg_mid[s]), axis=1))[:, None]
            )
            shade = 1.0 + light.sun_weight * 0.35 * (normal @ sun_dir) - 0.1 * light.sun_weight
            img[rr, cc] = colour * shade[:, None]
            zbuf[rr, cc] = dp[cc]

    def _facade_colour(self, s: np.ndarray, u: np.ndarray, z: np.ndarray, light: Lighting) -> np.ndarray:
        st = self.city.facades.style
        length = self.seg_len[s]
        height = self.city.facades.height[s]
        colour = st["wall"][s].copy()
        tex = self.wall_noise[(z * 8).astype(np.int64) % 64, (u * 8).astype(np.int64) % 64]
        colour *= (1 + st["texture"][s] * (tex - 0.5) * 2)[:, None]
        course = np.floor(z * 4)
        mortar = (st["brick"][s] > 0) & (((z * 4) % 1 < 0.14) | (((u * 2 + 0.5 * course) % 1) < 0.06))
        colour[mortar] *= 0.78
        floor_h = st["floor_h"][s]
        floor = np.floor(z / floor_h)
        fz = (z / floor_h) % 1
        fu = ((u - st["win_offset"][s]) / st["win_pitch"][s]) % 1
        inside = (u > 0.7) & (u < length - 0.7)
        upper = (floor >= 1) & (z < height - 0.9)
        window = (
            upper & inside & (np.abs(fu - 0.5) < st["win_w"][s] / 2) & (np.abs(fz - 0.5) < st["win_h"][s] / 2)
        )
        frame = (
            upper
            & inside
            & (np.abs(fu - 0.5) < st["win_w"][s] / 2 + 0.04)
            & (np.abs(fz - 0.5) < st["win_h"][s] / 2 + 0.04)
        )
        colour[frame & ~window] = st["trim"][s][frame & ~window] * 1.1
        glass = st["glass"][s] * (0.8 + 0.5 * fz[:, None])  # a sky reflection gradient
        colour[window] = glass[window]
        balcony = (st["balcony"][s] > 0) & upper & inside & (fz < 0.12)
        colour[balcony] = st["accent"][s][balcony] * 0.7
        ground = floor < 1
        shop = (st["shop"][s] > 0) & ground & inside
        shop_glass = shop & (z > 0.5) & (z < 2.5) & ((u % 4.0) > 0.35)
        colour[shop_glass] = st["glass"][s][shop_glass] * 1.3 + 0.05
        sign = shop & (z > 2.65) & (z < 3.3) & (z < floor_h - 0.1)
        colour[sign] = st["sign"][s][sign]
        letter_cell = np.floor(u * 2.5)
        letters = (
            sign
            & (z > 2.8)
            & (z < 3.15)
            & ((u * 2.5) % 1 < 0.7)
            & (_hash(st["sign_seed"][s], letter_cell) < 0.75)
        )
        colour[letters] = 1.0 - st["sign"][s][letters] * 0.9
        door = (st["shop"][s] == 0) & ground & (np.abs(u - st["door_u"][s] * length) < 0.7) & (z < 2.3)
        colour[door] = st["accent"][s][door] * 0.55
        low_window = (
            (st["shop"][s] == 0)
            & ground
            & inside
            & ~door
            & (np.abs(fu - 0.5) < st["win_w"][s] / 2)
            & (z > 0.9)
            & (z < 2.2)
        )
        colour[low_window] = st["glass"][s][low_window]
        cornice = z > height - 0.6
        colour[cornice] = st["trim"][s][cornice]
        edge = (u < 0.2) | (u > length - 0.2)
        colour[edge] *= 0.65
        if light.night:
            lit = window & (
                _hash(s.astype(np.float64), floor, np.floor((u - st["win_offset"][s]) / st["win_pitch"][s]))
                < 0.45
            )
            colour[lit] = np.array([1.0, 0.82, 0.5]) * 3.2
            colour[shop_glass] = np.array([1.0, 0.9, 0.7]) * 3.0
            colour[sign | letters] *= 3.0
        return colour

    def _box(self, img, zbuf, depth, lat0, lat1, z0, z1, colour, shape=None) -> None:
        """Draw the camera-facing rectangle [lat0, lat1] x [z0, z1] at forward ``depth`` with a depth test.

        ``shape(ys, xs)``: optional mask over the box in unit coordinates (0..1, y = 0 at the top)."""
        if depth < 0.5:
            return
        c0 = self.w / 2 - self.focal * lat1 / depth
        c1 = self.w / 2 - self.focal * lat0 / depth
        r0 = self.horizon - self.focal * (z1 - self.cam_h) / depth
        r1 = self.horizon - self.focal * (z0 - self.cam_h) / depth
        ci0, ci1 = max(0, round(c0)), min(self.w, round(c1))
        ri0, ri1 = max(0, round(r0)), min(self.h, round(r1))
        if ci1 <= ci0 or ri1 <= ri0:
            return
        mask = zbuf[ri0:ri1, ci0:ci1] > depth
        if shape is not None:
            ys = ((np.arange(ri0, ri1) + 0.5 - r0) / max(r1 - r0, 1e-6))[:, None]
            xs = ((np.arange(ci0, ci1) + 0.5 - c0) / max(c1 - c0, 1e-6))[None, :]
            mask &= shape(ys, xs)
        img[ri0:ri1, ci0:ci1][mask] = colour
        zbuf[ri0:ri1, ci0:ci1][mask] = depth

    def _props(self, img, zbuf, pos, yaw, light: Lighting) -> None:
        props = self.city.props
        if props.kind.size == 0:
            return
        rel = props.xy - pos
        fwd = np.array([math.cos(yaw), math.sin(yaw)])
        left = np.array([-math.sin(yaw), math.cos(yaw)])
        depth = rel @ fwd
        lat = rel @ left
        keep = np.flatnonzero((depth > 0.8) & (depth < 120) & (np.abs(lat) < depth * 1.6 + 3))
        ellipse = lambda ys, xs: (ys - 0.5) ** 2 + (xs - 0.5) ** 2 < 0.25  # noqa: E731
        for i in keep[np.argsort(-depth[keep])]:
            d, lt, sz, col, kind = depth[i], lat[i], props.size[i], props.colour[i], props.kind[i]
            if kind == 0:  # tree: trunk and crown
                self._box(
                    img, zbuf, d, lt - 0.15 * sz, lt + 0.15 * sz, 0, 3.0 * sz, np.array([0.35, 0.25, 0.18])
                )
                crown = col * (0.9 + 0.2 * _hash(np.float64(i)))
                self._box(img, zbuf, d, lt - 1.8 * sz, lt + 1.8 * sz, 2.2 * sz, 6.2 * sz, crown, ellipse)
            elif kind == 1:  # lamp pole
                self._box(img, zbuf, d, lt - 0.09, lt + 0.09, 0, 6.5 * sz, np.array([0.22, 0.23, 0.25]))
                lamp = np.array([1.0, 0.95, 0.75]) * (4.0 if light.night else 0.9)
                self._box(img, zbuf, d, lt - 0.35, lt + 0.35, 6.3 * sz, 6.6 * sz, lamp)
            else:  # sign pole
                self._box(img, zbuf, d, lt - 0.05, lt + 0.05, 0, 2.6, np.array([0.5, 0.5, 0.52]))
                self._box(img, zbuf, d, lt - 0.4 * sz, lt + 0.4 * sz, 2.0, 2.0 + 0.7 * sz, col)

    def _occluder(self, img, zbuf, occ: Occluder, light: Lighting) -> None:
        d, lt, w, h = occ.forward, occ.lateral, occ.width, occ.height
        colour = np.array(occ.colour)
        if occ.kind == "vehicle":
            self._box(img, zbuf, d, lt - w / 2, lt + w / 2, 0.25, h * 0.6, colour)
            self._box(img, zbuf, d, lt - w * 0.42, lt + w * 0.42, h * 0.6, h, colour * 0.8)
            self._box(
                img,
                zbuf,
                d - 0.01,
                lt - w * 0.36,
                lt + w * 0.36,
                h * 0.65,
                h * 0.95,
                np.array([0.1, 0.12, 0.15]),
            )
            for side in (-1, 1):
                self._box(
                    img,
                    zbuf,
                    d - 0.02,
                    lt + side * w * 0.3 - 0.3,
                    lt + side * w * 0.3 + 0.3,
                    0,
                    0.5,
                    np.array([0.05, 0.05, 0.05]),
                )
            if light.night:
                for side in (-1, 1):
                    self._box(
                        img,
                        zbuf,
                        d - 0.03,
                        lt + side * w * 0.4 - 0.15,
                        lt + side * w * 0.4 + 0.15,
                        0.6,
                        0.8,
                        np.array([3.0, 0.3, 0.2]),
                    )
        else:
            self._box(img, zbuf, d, lt - w / 2, lt + w / 2, 0, h * 0.82, colour)
            self._box(img, zbuf, d, lt - w * 0.25, lt + w * 0.25, h * 0.82, h, np.array([0.85, 0.65, 0.5]))

    def _finish(self, img, zbuf, light: Lighting, rng, noise_scale: float) -> np.ndarray:
        import cv2

        img = img * (light.exposure * np.array(light.cast))
        grey = img.mean(axis=2, keepdims=True)
        img = grey + (img - grey) * light.saturation
        finite = np.isfinite(zbuf)
        keep = np.where(finite, np.exp(-np.where(finite, zbuf, 0) / light.haze_m), 1.0)[..., None]
        img = img * keep + np.array(light.haze) * (1 - keep)
        img = np.clip(img * 255.0, 0, 255).astype(np.float32)
        if light.blur > 0:
            img = cv2.GaussianBlur(img, (0, 0), light.blur)
        sigma = light.noise_sigma * noise_scale
        if sigma > 0 and rng is not None:
            img += rng.normal(0.0, sigma, (*img.shape[:2], 1)).astype(np.float32)
            img += rng.normal(0.0, sigma * 0.3, img.shape).astype(np.float32)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)
