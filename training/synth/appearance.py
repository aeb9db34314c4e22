"""How a traversal looks: time of day and weather (lighting, colour cast, haze/fog, night), and per-image
changes between revisits (moving occluders, sensor noise)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lighting:
    """One condition. Colours are float RGB in [0, 1]; distances in metres; angles in degrees."""

    name: str
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    exposure: float
    cast: tuple[float, float, float]
    haze: tuple[float, float, float]
    haze_m: float  # visibility: e^-1 of the colour remains at this distance
    sun_azimuth_deg: float
    sun_weight: float  # 0 = flat overcast light, 1 = strong directional shading
    saturation: float
    night: bool
    noise_sigma: float  # sensor noise, in 8-bit levels
    blur: float  # gaussian sigma in pixels (rain, defocus)
    cloud_seed: int


REFERENCE = Lighting(
    "reference", (0.35, 0.55, 0.85), (0.75, 0.85, 0.95), 1.0, (1.0, 1.0, 1.0), (0.80, 0.85, 0.92), 600.0,
    135.0, 0.6, 1.0, False, 1.0, 0.0, 1,
)  # fmt: skip

QUERY_LIGHTING: dict[str, Lighting] = {
    "day": Lighting(
        "day", (0.40, 0.58, 0.88), (0.82, 0.88, 0.95), 1.1, (1.03, 1.0, 0.95), (0.85, 0.87, 0.90), 450.0,
        200.0, 0.6, 0.9, False, 3.0, 0.0, 2,
    ),
    "dusk": Lighting(
        "dusk", (0.25, 0.22, 0.45), (0.95, 0.55, 0.30), 0.6, (1.15, 0.85, 0.65), (0.75, 0.50, 0.40), 350.0,
        280.0, 0.8, 0.9, False, 5.0, 0.0, 3,
    ),
    "overcast": Lighting(
        "overcast", (0.55, 0.57, 0.60), (0.72, 0.73, 0.75), 0.8, (0.95, 0.98, 1.02), (0.70, 0.72, 0.74), 160.0,
        0.0, 0.0, 0.55, False, 4.0, 0.8, 4,
    ),
    "fog": Lighting(
        "fog", (0.78, 0.79, 0.80), (0.82, 0.83, 0.84), 0.95, (1.0, 1.0, 1.0), (0.80, 0.81, 0.82), 38.0,
        0.0, 0.1, 0.7, False, 4.0, 0.6, 5,
    ),
    "night": Lighting(
        "night", (0.01, 0.01, 0.03), (0.04, 0.05, 0.10), 0.28, (0.75, 0.85, 1.25), (0.05, 0.05, 0.09), 120.0,
        0.0, 0.0, 0.7, True, 7.0, 0.5, 6,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Occluder:
    """A moving object in camera coordinates: ``forward`` and ``lateral`` metres (lateral > 0 = left)."""

    forward: float
    lateral: float
    width: float
    height: float
    colour: tuple[float, float, float]
    kind: str  # "vehicle" | "person"


VEHICLE_COLOURS = np.array(
    [[0.8, 0.1, 0.1], [0.1, 0.1, 0.12], [0.9, 0.9, 0.9], [0.2, 0.3, 0.6], [0.6, 0.6, 0.62], [0.9, 0.75, 0.1]]
)


def sample_occluders(rng: np.random.Generator, amount: float) -> list[Occluder]:
    """Vehicles on the road and people on the sidewalks ahead of the camera (``amount`` scales their number)."""
    if amount <= 0:
        return []
    out: list[Occluder] = []
    for _ in range(int(rng.poisson(1.3 * amount))):
        truck = rng.random() < 0.2
        out.append(
            Occluder(
                forward=float(rng.uniform(5, 35)),
                lateral=float(rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 3.5)),
                width=float(rng.uniform(2.3, 2.6) if truck else rng.uniform(1.7, 2.0)),
                height=float(rng.uniform(2.8, 3.5) if truck else rng.uniform(1.4, 1.8)),
                colour=tuple(VEHICLE_COLOURS[rng.integers(0, len(VEHICLE_COLOURS))]),
                kind="vehicle",
            )
        )
    for _ in range(int(rng.poisson(1.0 * amount))):
        out.append(
            Occluder(
                forward=float(rng.uniform(3, 25)),
                lateral=float(rng.choice([-1.0, 1.0]) * rng.uniform(5.5, 7.5)),
                width=float(rng.uniform(0.45, 0.65)),
                height=float(rng.uniform(1.55, 1.9)),
                colour=tuple(rng.uniform(0.05, 0.9, 3)),
                kind="person",
            )
        )
    return out
