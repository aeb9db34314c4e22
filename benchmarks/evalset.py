"""The images a benchmark runs: a dataset (``open_dataset`` spec), optionally cut to its first places."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import ModelCard, PlaceDataset, open_dataset
from runtime.errors import ConfigError, DatasetError
from runtime.protocol import EVAL_RADIUS_M

log = logging.getLogger(__name__)


def limit_dataset(
    dataset: PlaceDataset,
    max_db: int | None = None,
    max_queries: int | None = None,
    radius_m: float = EVAL_RADIUS_M,
) -> PlaceDataset:
    """The first ``max_db`` database images, the queries with a positive among them, ``max_queries`` of those
    evenly spaced along the traversal.

    Queries without a database image within ``radius_m`` are always dropped (training/README.md, "The protocol").
    """
    for name, value in (("max_db", max_db), ("max_queries", max_queries)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be a positive number of images, got {value}")
    if max_db is not None and max_db < dataset.num_db:
        dataset = dataset.select(db_indices=np.arange(max_db))
    dataset = dataset.without_unmatched_queries(radius_m)
    if max_queries is not None and max_queries < dataset.num_queries:
        # evenly spaced along the traversal, so every stretch (and every condition) is represented
        idx = np.unique(np.linspace(0, dataset.num_queries - 1, max_queries).round().astype(int))
        dataset = dataset.select(query_indices=idx)
    if dataset.num_queries == 0 or dataset.num_db == 0:
        raise DatasetError(
            f"dataset '{dataset.name}' has {dataset.num_db} database images and {dataset.num_queries} queries "
            f"with a positive within {radius_m} m after limiting; raise --max-db / --max-queries"
        )
    return dataset


@dataclass(frozen=True)
class EvalSet:
    """Decoded, preprocessed images of a dataset: ``uint8 (N, H, W, 3)`` per split, plus positives."""

    dataset: PlaceDataset
    db_images: np.ndarray
    q_images: np.ndarray
    positives: list[np.ndarray]
    radius_m: float

    def describe(self) -> str:
        return (
            f"{self.dataset.name}: {self.dataset.num_db} database images, {self.dataset.num_queries} queries, "
            f"positives within {self.radius_m:g} m, input {self.db_images.shape[1]}x{self.db_images.shape[2]}"
        )


def load_eval_set(
    spec: str | Path,
    card: ModelCard,
    *,
    max_db: int | None = None,
    max_queries: int | None = None,
    radius_m: float = EVAL_RADIUS_M,
) -> EvalSet:
    """Open ``spec``, limit it, and decode + preprocess its images once, exactly as the runtime does."""
    from export.images import load_images

    dataset = limit_dataset(open_dataset(spec), max_db, max_queries, radius_m)
    log.info("decoding %d + %d images of %s", dataset.num_db, dataset.num_queries, dataset.name)
    db_paths = [dataset.image_path("database", i) for i in range(dataset.num_db)]
    q_paths = [dataset.image_path("queries", i) for i in range(dataset.num_queries)]
    return EvalSet(
        dataset=dataset,
        db_images=load_images(db_paths, card),
        q_images=load_images(q_paths, card),
        positives=dataset.positives(radius_m),
        radius_m=radius_m,
    )
