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
GROUND_PALETTE = np.array(
    [[0.30, 0.30, 0.32], [0.62, 0.60, 0.56], [0.28, 0.45, 0.20], [0.75, 0.74, 0.70], [0.85, 0.85, 0.80]],
    dtype=np.float32,
)
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
    return (noise / max(float(noise.max()), 1e-6)).astype(np.float32)


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
        self.seed = cfg.seed
        rng = np.random.default_rng([cfg.seed, 0x7E7])
        self.wall_noise = _smooth_noise(rng, (64, 64), 1)
        self.ground_noise = _smooth_noise(rng, (128, 128), 2)
        f = city.facades
        self.seg_vec = f.p1 - f.p0  # (S, 2)
        self.seg_len = np.linalg.norm(self.seg_vec, axis=1)
        self.seg_mid = (f.p0 + f.p1) / 2
        self.seg_normal = np.stack([self.seg_vec[:, 1], -self.seg_vec[:, 0]], axis=1) / self.seg_len[:, None]
        style = city.facades.style
        self.style_names = sorted(style)
        # one (S, F) float32 matrix: a single gather per frame fetches every style parameter
        self.style = np.concatenate(
            [np.asarray(style[k], dtype=np.float32).reshape(len(self.seg_len), -1) for k in self.style_names],
            axis=1,
        )
        self.style_cols: dict[str, slice] = {}
        col = 0
        for k in self.style_names:
            width = np.asarray(style[k]).reshape(len(self.seg_len), -1).shape[1]
            self.style_cols[k] = slice(col, col + width) if width > 1 else col
            col += width
        self.cache: dict = {}

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
        img = np.empty((self.h, self.w, 3), dtype=np.float32)
        zbuf = np.full((self.h, self.w), np.inf, dtype=np.float32)
        self._sky(img, theta, lighting)
        self._ground(img, zbuf, pos, ray, lighting)
        self._walls(img, zbuf, pos, yaw, ray, lighting)
        self._props(img, zbuf, pos, yaw, lighting)
        for occ in sorted(occluders, key=lambda o: -o.forward):
            self._occluder(img, zbuf, occ, lighting)
        return self._finish(img, zbuf, lighting, rng, noise_scale)

    # -- scene parts -------------------------------------------------------------------------------
    def _sky_panorama(self, light: Lighting) -> np.ndarray:
        """Sky for every azimuth (1 degree columns): float32 ``(H_sky, 360, 3)``, cached per condition."""
        key = ("sky", light.name)
        if key not in self.cache:
            r0 = math.ceil(self.horizon)
            elev = np.clip((self.horizon - self.rows[:r0]) / self.focal, 0, None)  # (Hs,) tan(elevation)
            t = np.clip(elev / 0.8, 0, 1)[:, None, None]
            top, hor = np.array(light.sky_top), np.array(light.sky_horizon)
            sky = hor * (1 - t) + top * t  # (Hs, 1, 3)
            tile = _smooth_noise(np.random.default_rng([light.cloud_seed, 0xC10D]), (48, 360), 4)
            v = np.clip((elev * 60).astype(np.int64), 0, tile.shape[0] - 1)
            cloud = (
                np.clip(tile[v] * 1.6 - 0.7, 0, 1)[..., None] * (elev > 0.02)[:, None, None]
            )  # (Hs, 360, 1)
            cloud_colour = np.array(light.sky_horizon) * 1.1
            self.cache[key] = (sky * (1 - 0.5 * cloud) + cloud_colour * 0.5 * cloud).astype(np.float32)
        return self.cache[key]

    def _sky(self, img: np.ndarray, theta: np.ndarray, light: Lighting) -> None:
        pano = self._sky_panorama(light)
        az = (np.degrees(theta) % 360).astype(np.int64)  # (W,)
        img[: pano.shape[0]] = pano[:, az]

    def _ground(self, img, zbuf, pos, ray, light: Lighting) -> None:
        r0 = math.ceil(self.horizon)
        rows = self.rows[r0:]
        dperp = (self.cam_h * self.focal / (rows - self.horizon)).astype(
            np.float32
        )  # (Hg,) perpendicular depth
        dist = dperp[:, None] / self.col_cos[None, :].astype(np.float32)  # (Hg, W) along each ray
        local = pos - self.city.origin  # small numbers: float32 keeps centimetres
        block = np.float32(self.city.block_m)
        lx = np.mod(np.float32(local[0]) + dist * ray[None, :, 0].astype(np.float32), block)  # (Hg, W)
        ly = np.mod(np.float32(local[1]) + dist * ray[None, :, 1].astype(np.float32), block)
        dv = np.minimum(lx, block - lx)  # distance to the nearest north-south street centreline
        dh = np.minimum(ly, block - ly)  # ... east-west
        dn = np.minimum(dv, dh)
        # ground classes: 0 road, 1 sidewalk, 2 grass, 3 kerb, 4 road marking
        cls = np.where(dn < ROAD_HALF_M, 0, np.where(dn < BUILDING_LINE_M, 1, 2)).astype(np.int8)
        cls[(dn >= ROAD_HALF_M) & (dn < ROAD_HALF_M + 0.25)] = 3
        in_box_v, in_box_h = dv < BUILDING_LINE_M, dh < BUILDING_LINE_M  # inside an intersection box
        dash = ((dh < 0.12) & ~in_box_v & (np.mod(lx, 6.0) < 3.0)) | (
            (dv < 0.12) & ~in_box_h & (np.mod(ly, 6.0) < 3.0)
        )
        zebra_ew = (
            (dh < ROAD_HALF_M)
            & (dv >= BUILDING_LINE_M)
            & (dv < BUILDING_LINE_M + 3)
            & (np.mod(ly, 1.0) < 0.5)
        )
        zebra_ns = (
            (dv < ROAD_HALF_M)
            & (dh >= BUILDING_LINE_M)
            & (dh < BUILDING_LINE_M + 3)
            & (np.mod(lx, 1.0) < 0.5)
        )
        cls[dash | zebra_ew | zebra_ns] = 4
        colour = GROUND_PALETTE[cls]  # (Hg, W, 3)
        gnoise = self.ground_noise[(ly * 4).astype(np.int64) % 128, (lx * 4).astype(np.int64) % 128]
        shade = 0.85 + 0.3 * gnoise
        paving = (cls == 1) & ((np.mod(lx, 1.5) < 0.08) | (np.mod(ly, 1.5) < 0.08))
        shade[paving] *= 0.8
        if light.night:  # headlights
            shade *= 1.0 + 6.0 * np.exp(-dist / 10.0) * np.exp(-((self.col_angle / 0.35) ** 2)).astype(
                np.float32
            )
        img[r0:] = colour * shade[..., None]
        zbuf[r0:] = dperp[:, None]

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
        dpk = (tk * self.col_cos[:, None]).astype(np.float32)  # (W, k) perpendicular depth, inf = no hit
        heights = facades.height[seg_all].astype(np.float32)  # (W, k)
        elev = ((self.horizon - self.rows) / self.focal).astype(np.float32)[:, None]  # (H, 1)
        owner = np.full((self.h, self.w), -1, dtype=np.int8)
        for layer in range(k):  # nearest first: a pixel belongs to the first wall that covers it
            z = self.cam_h + elev * dpk[None, :, layer]  # (H, W) height of the ray at that wall
            covered = (z >= 0) & (z <= heights[None, :, layer]) & (owner < 0)
            owner[covered] = layer
        rr, cc = np.nonzero(owner >= 0)
        if rr.size == 0:
            return
        layer = owner[rr, cc]
        s = seg_all[cc, layer]
        dp = dpk[cc, layer]
        z = (self.cam_h + elev[rr, 0] * dp).astype(np.float32)
        um = (uk[cc, layer] * self.seg_len[s]).astype(np.float32)
        colour = self._facade_colour(s, um, z, light)
        sun = math.radians(90.0 - light.sun_azimuth_deg)
        sun_dir = np.array([math.cos(sun), math.sin(sun)])
        facing = np.sign(
            (self.seg_normal * (pos - self.seg_mid)).sum(axis=1)
        )  # (S,) normal towards the camera
        seg_shade = 1.0 + light.sun_weight * (0.35 * facing * (self.seg_normal @ sun_dir) - 0.1)
        colour *= seg_shade.astype(np.float32)[s][:, None]
        img[rr, cc] = colour
        zbuf[rr, cc] = dp

    def _facade_colour(self, s: np.ndarray, u: np.ndarray, z: np.ndarray, light: Lighting) -> np.ndarray:
        """Facade colour at ``u`` metres along segment ``s`` and height ``z``: float32 ``(P, 3)``."""
        params = self.style[s]  # (P, F)
        c = self.style_cols

        def p(name: str) -> np.ndarray:
            return params[:, c[name]]

        length = self.seg_len[s].astype(np.float32)
        height = self.city.facades.height[s].astype(np.float32)
        colour = p("wall").copy()
        tex = self.wall_noise[(z * 8).astype(np.int64) % 64, (u * 8).astype(np.int64) % 64]
        colour *= (1 + p("texture") * (tex - 0.5) * 2)[:, None]
        course = np.floor(z * 4)
        mortar = (p("brick") > 0) & (((z * 4) % 1 < 0.14) | (((u * 2 + 0.5 * course) % 1) < 0.06))
        colour[mortar] *= 0.78
        floor_h = p("floor_h")
        floor = np.floor(z / floor_h)
        fz = (z / floor_h) % 1
        fu = ((u - p("win_offset")) / p("win_pitch")) % 1
        half_w, half_h = p("win_w") / 2, p("win_h") / 2
        inside = (u > 0.7) & (u < length - 0.7)
        upper = (floor >= 1) & (z < height - 0.9) & inside
        dx, dz = np.abs(fu - 0.5), np.abs(fz - 0.5)
        frame = upper & (dx < half_w + 0.04) & (dz < half_h + 0.04)
        window = frame & (dx < half_w) & (dz < half_h)
        trim = p("trim")
        border = frame & ~window
        colour[border] = trim[border] * 1.1
        glass = p("glass")
        colour[window] = glass[window] * (0.8 + 0.5 * fz[window, None])  # a sky reflection gradient
        balcony = (p("balcony") > 0) & upper & (fz < 0.12)
        colour[balcony] = p("accent")[balcony] * 0.7
        ground = floor < 1
        is_shop = p("shop") > 0
        shop = is_shop & ground & inside
        shop_glass = shop & (z > 0.5) & (z < 2.5) & ((u % 4.0) > 0.35)
        colour[shop_glass] = glass[shop_glass] * 1.3 + 0.05
        sign = shop & (z > 2.65) & (z < 3.3) & (z < floor_h - 0.1)
        sign_colour = p("sign")
        colour[sign] = sign_colour[sign]
        letters = sign & (z > 2.8) & (z < 3.15) & ((u * 2.5) % 1 < 0.7)
        li = np.flatnonzero(letters)
        li = li[_hash(p("sign_seed")[li], np.floor(u[li] * 2.5)) < 0.75]
        colour[li] = 1.0 - sign_colour[li] * 0.9
        door = ~is_shop & ground & (np.abs(u - p("door_u") * length) < 0.7) & (z < 2.3)
        colour[door] = p("accent")[door] * 0.55
        low_window = ~is_shop & ground & inside & ~door & (dx < half_w) & (z > 0.9) & (z < 2.2)
        colour[low_window] = glass[low_window]
        cornice = z > height - 0.6
        colour[cornice] = trim[cornice]
        edge = (u < 0.2) | (u > length - 0.2)
        colour[edge] *= 0.65
        if light.night:
            wi = np.flatnonzero(window)
            column = np.floor((u[wi] - p("win_offset")[wi]) / p("win_pitch")[wi])
            wi = wi[_hash(s[wi].astype(np.float64), floor[wi], column) < 0.45]
            colour[wi] = np.array([1.0, 0.82, 0.5], dtype=np.float32) * 3.2
            colour[shop_glass] = np.array([1.0, 0.9, 0.7], dtype=np.float32) * 3.0
            colour[sign] *= 3.0
            colour[li] *= 3.0
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

    def _noise_bank(self) -> np.ndarray:
        """A few seeded standard-normal fields, sliced at random offsets per image (cheaper than drawing)."""
        if "noise" not in self.cache:
            rng = np.random.default_rng([self.seed, 0x5E5])
            self.cache["noise"] = rng.standard_normal((4, self.h + 64, self.w + 64, 3), dtype=np.float32)
        return self.cache["noise"]

    def _finish(self, img, zbuf, light: Lighting, rng, noise_scale: float) -> np.ndarray:
        import cv2

        img *= (light.exposure * np.array(light.cast)).astype(np.float32)
        if light.saturation != 1.0:
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
            img -= grey
            img *= np.float32(light.saturation)
            img += grey
        keep = np.exp(-zbuf / np.float32(light.haze_m))[..., None]  # sky (inf depth) -> 0
        keep[~np.isfinite(zbuf)] = 1.0  # the sky keeps its own colour
        haze = np.array(light.haze, dtype=np.float32)
        img -= haze
        img *= keep
        img += haze
        img *= 255.0
        if light.blur > 0:
            img = cv2.GaussianBlur(img, (0, 0), light.blur)
        sigma = light.noise_sigma * noise_scale
        if sigma > 0 and rng is not None:
            bank = self._noise_bank()
            k, dy, dx = (
                int(rng.integers(0, bank.shape[0])),
                int(rng.integers(0, 64)),
                int(rng.integers(0, 64)),
            )
            field = bank[k, dy : dy + self.h, dx : dx + self.w]  # (H, W, 3)
            img += field[..., :1] * np.float32(sigma)  # luminance noise
            img += field * np.float32(sigma * 0.3)  # colour noise
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)
