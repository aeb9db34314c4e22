"""The map's build settings (frozen, validated, with presets)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from runtime.errors import ConfigError
from runtime.map.index import INDEX_KINDS, index_kind
from runtime.map.whitening import MAP_SHRINKAGE
from runtime.protocol import EVAL_RADIUS_M

SPLITS = ("database", "all")
GPU_CHOICES = ("auto", "yes", "no")
CALIBRATIONS = ("map", "queries")


@dataclass(frozen=True)
class MapConfig:
    """How a map is built.

    ``split``: which images become places: the dataset's ``database`` split, or ``all`` (database then
    queries). ``index`` (:data:`runtime.map.index.INDEX_KINDS`): ``flat`` (exact inner product, float32, the
    default), ``fp16`` (the same scan over float16 descriptors: half the bytes read), ``sq8`` (8-bit
    scalar quantiser: a quarter of the bytes, re-ranked) or ``ivfpq`` (compressed, approximate; for maps of
    hundreds of thousands of places); the recall of every kind but ``flat`` against exact search is
    measured at build time. ``nlist``/``pq_m``/``pq_bits``: IVF-PQ sizes (None: chosen from the map size
    and dimension). ``rerank``: for the kinds that store codes (``sq8``, ``ivfpq``), how many of the index's
    top candidates are re-ranked exactly against the full descriptors (such a map keeps them on disk as
    float16, memory-mapped; 0: search the codes alone; None: the kind's default, 16 for ``sq8``, 500 for
    ``ivfpq``). Why 500: on the benchmark's 7168-D synthetic route, the 64-byte codes' top 100 / 250 / 500
    hold exact search's top-1 for 95.5 / 100 / 100 % of queries at 30k places and 92.5 / 99.0 / 100 % at
    100k; a candidate costs one 14 kB row read (README, "Search at scale").
    ``faiss_threads``: OpenMP threads for faiss (None: its default, one per core).
    ``unknown_percentile``: the share (%) of unmapped-place frames the "unknown place" verdict flags
    (:mod:`runtime.map.calibrate`). ``calibration``: ``map`` (the map's own images play unmapped places) or
    ``queries`` (up to ``calibration_queries`` of the dataset's queries, evenly spaced, do, in their own
    domain; needs a dataset with queries). ``whitening``: fit PCA-whitening on the map's descriptors and
    search in it (:mod:`runtime.map.whitening`); ``whitening_dim``: its dimension (None: from the map's size,
    :func:`runtime.map.whitening.map_whitening_dim`); ``whitening_shrinkage``: its regularisation.
    ``embed_images``: copy the place images into the map (``images/``), so it works without the dataset.
    """

    split: str = "database"
    index: str = "flat"
    batch_size: int = 16
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    nprobe: int = 16
    rerank: int | None = None
    gpu: str = "auto"
    radius_m: float = EVAL_RADIUS_M
    unknown_percentile: float = 90.0
    calibration_samples: int = 2000
    calibration: str = "map"
    calibration_queries: int = 500
    whitening: bool = False
    whitening_dim: int | None = None
    whitening_shrinkage: float = MAP_SHRINKAGE
    read_workers: int = 2
    faiss_threads: int | None = None
    overwrite: bool = False
    embed_images: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.split not in SPLITS:
            problems.append(f"split must be one of {SPLITS}, got {self.split!r}")
        try:
            kind = index_kind(self.index)
        except ConfigError as exc:
            problems.append(str(exc))
            kind = None
        if self.calibration not in CALIBRATIONS:
            problems.append(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.whitening_dim is not None and self.whitening_dim < 1:
            problems.append(f"whitening_dim must be >= 1 or None, got {self.whitening_dim}")
        if self.whitening_shrinkage < 0:
            problems.append(f"whitening_shrinkage must be >= 0, got {self.whitening_shrinkage}")
        if self.gpu not in GPU_CHOICES:
            problems.append(f"gpu must be one of {GPU_CHOICES}, got {self.gpu!r}")
        for name in ("batch_size", "nprobe", "calibration_samples", "calibration_queries", "read_workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rerank is not None and self.rerank < 0:
            problems.append(f"rerank must be >= 0 (0: no re-ranking) or None, got {self.rerank}")
        if kind is not None and kind.holds_descriptors and self.rerank:
            coded = " or ".join(k.name for k in INDEX_KINDS.values() if not k.holds_descriptors)
            problems.append(
                f"rerank ({self.rerank}) re-scores the candidates of an index that stores codes ({coded}); "
                f"a {self.index!r} index holds the descriptors themselves: drop rerank or choose {coded}"
            )
        for name in ("nlist", "pq_m"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.pq_bits is not None and not 1 <= self.pq_bits <= 16:
            problems.append(f"pq_bits must be in 1..16 or None, got {self.pq_bits}")
        if self.radius_m <= 0:
            problems.append(f"radius_m must be > 0, got {self.radius_m}")
        if not 0 <= self.unknown_percentile <= 100:
            problems.append(f"unknown_percentile must be in [0, 100], got {self.unknown_percentile}")
        if problems:
            raise ConfigError("invalid map config: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str, **changes) -> MapConfig:
        """``exact`` (flat inner product) or ``compressed`` (IVF-PQ)."""
        presets = {"exact": {}, "compressed": {"index": "ivfpq"}}
        if name not in presets:
            raise ConfigError(f"unknown map preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **changes})

    @property
    def rerank_candidates(self) -> int:
        """Candidates re-ranked exactly at search (0: none): ``rerank``, or the index kind's default."""
        kind = index_kind(self.index)
        if kind.holds_descriptors:
            return 0
        return kind.rerank if self.rerank is None else int(self.rerank)

    def replace(self, **changes) -> MapConfig:
        return dataclasses.replace(self, **changes)
