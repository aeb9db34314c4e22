"""The synthetic world's frozen, validated configuration and its presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from runtime.errors import ConfigError

# Query conditions (time of day / weather); the database is always "reference" (clear midday).
CONDITIONS: tuple[str, ...] = ("day", "dusk", "overcast", "fog", "night")
# Default query mix: every condition, in contiguous stretches of the query traversal.
DEFAULT_QUERY_CONDITIONS: tuple[str, ...] = CONDITIONS
IMAGE_FORMATS = ("jpg", "png")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate: the city and route (seeded), the two traversals and how queries differ.

    Lengths are metres, angles degrees. ``conditions``: query conditions, assigned to consecutive
    stretches of the query traversal in this order (one name: every query under that condition).
    ``unmapped_queries``: extra queries taken on streets the database drive never comes within
    ``unmapped_min_distance_m`` of (the "unknown place" verdict is measured on them); written apart from
    the query traversal (``unmapped.csv``, ``unmapped/``), not in the query video.
    """

    name: str = "custom"
    seed: int = 0
    route_length_m: float = 1000.0
    db_spacing_m: float = 5.0
    query_spacing_m: float = 10.0
    height: int = 240
    width: int = 320
    fov_deg: float = 80.0
    camera_height_m: float = 2.0
    block_m: float = 80.0
    conditions: tuple[str, ...] = DEFAULT_QUERY_CONDITIONS
    max_lateral_m: float = 3.0
    max_yaw_deg: float = 15.0
    occluders: float = 1.0
    noise: float = 1.0
    image_format: str = "jpg"
    write_video: bool = True
    video_fps: float = 10.0
    workers: int = 1
    unmapped_queries: int = 0
    unmapped_min_distance_m: float = 50.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        checks = [
            (
                self.route_length_m >= 4 * self.block_m,
                f"route_length_m must be >= 4 blocks ({4 * self.block_m} m)",
            ),
            (0.5 <= self.db_spacing_m <= 50, "db_spacing_m must be within [0.5, 50]"),
            (0.5 <= self.query_spacing_m <= 100, "query_spacing_m must be within [0.5, 100]"),
            (
                16 <= self.height <= 2048 and 16 <= self.width <= 4096,
                "height/width must be within 16..2048/4096",
            ),
            (20.0 <= self.fov_deg <= 150.0, "fov_deg must be within [20, 150]"),
            (0.5 <= self.camera_height_m <= 10.0, "camera_height_m must be within [0.5, 10]"),
            (40.0 <= self.block_m <= 400.0, "block_m must be within [40, 400]"),
            (len(self.conditions) > 0, "conditions must name at least one condition"),
            (
                0.0 <= self.max_lateral_m <= 4.0,
                "max_lateral_m must be within [0, 4] (the road is 5 m wide each side)",
            ),
            (0.0 <= self.max_yaw_deg <= 45.0, "max_yaw_deg must be within [0, 45]"),
            (0.0 <= self.occluders <= 5.0, "occluders must be within [0, 5]"),
            (0.0 <= self.noise <= 5.0, "noise must be within [0, 5]"),
            (self.image_format in IMAGE_FORMATS, f"image_format must be one of {', '.join(IMAGE_FORMATS)}"),
            (0.5 <= self.video_fps <= 120.0, "video_fps must be within [0.5, 120]"),
            (self.workers >= 1, "workers must be >= 1"),
            (0 <= self.unmapped_queries <= 100_000, "unmapped_queries must be within [0, 100000]"),
            (
                25.0 <= self.unmapped_min_distance_m <= 500.0,
                "unmapped_min_distance_m must be within [25, 500] (25 m: the evaluation radius)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"SynthConfig: {message} (got {self!r})")
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ConfigError(
                f"SynthConfig: unknown condition(s) {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}"
            )

    @classmethod
    def preset(cls, name: str, **overrides) -> SynthConfig:
        """A named preset (``tiny``, ``small``, ``medium``) with optional field overrides (e.g. ``seed=3``)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown synth preset {name!r}; choose from {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, SynthConfig] = {
    # tests: a ~1 km loop, ~190 database + ~95 query (+ 48 unmapped) images, seconds to generate
    "tiny": SynthConfig(
        name="tiny", route_length_m=960.0, db_spacing_m=5.0, query_spacing_m=10.0, unmapped_queries=48
    ),
    # ~5 km loop, 1,000 database + 1,000 query images
    "small": SynthConfig(
        name="small", route_length_m=5000.0, db_spacing_m=5.0, query_spacing_m=5.0, unmapped_queries=250
    ),
    # ~20 km loop, 4,000 database + 2,000 query images
    "medium": SynthConfig(
        name="medium", route_length_m=20000.0, db_spacing_m=5.0, query_spacing_m=10.0, unmapped_queries=500
    ),
}
