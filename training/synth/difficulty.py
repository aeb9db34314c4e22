"""How hard the synthetic world is: the raw-pixel baseline (:mod:`runtime.datasets.baseline`) per query
condition, computed on images rendered in memory (nothing written)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from runtime.datasets.baseline import THUMBNAIL_SIZE, thumbnail_descriptors
from runtime.datasets.place import neighbours_within
from runtime.recall import DEFAULT_NS, rank_database, recall_at_n
from training.synth.config import SynthConfig
from training.synth.world import SynthWorld


def baseline_recall(
    world: SynthWorld | SynthConfig,
    ns: Sequence[int] = DEFAULT_NS,
    size: tuple[int, int] = THUMBNAIL_SIZE,
    grayscale: bool = False,
    radius_m: float = 25.0,
    progress: Callable[..., Iterable] | None = None,
) -> dict[str, dict[int, float]]:
    """Raw-pixel recall@N of the world's queries against its database: ``{"all"|condition: {n: recall}}``."""
    if isinstance(world, SynthConfig):
        world = SynthWorld(world)
    wrap = progress or (lambda it, **_: it)
    db = thumbnail_descriptors(
        (world.image("database", i) for i in wrap(range(world.num_db), total=world.num_db, desc="database")),
        size,
        grayscale,
    )
    q = thumbnail_descriptors(
        (
            world.image("queries", i)
            for i in wrap(range(world.num_queries), total=world.num_queries, desc="queries")
        ),
        size,
        grayscale,
    )
    positives = neighbours_within(world.database.utm, world.queries.utm, radius_m)
    ranked = rank_database(db, q, max(ns))
    labels = np.asarray(world.queries.conditions)
    result = {"all": recall_at_n(ranked, positives, ns)}
    for label in dict.fromkeys(labels.tolist()):
        idx = np.flatnonzero(labels == label)
        result[label] = recall_at_n(ranked[idx], [positives[i] for i in idx], ns)
    return result
