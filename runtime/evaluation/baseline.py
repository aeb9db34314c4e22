"""The raw-pixel baseline: tiny mean-centred thumbnails compared by cosine (normalised cross-correlation).

It states how hard a dataset is: a learned descriptor must beat it by a wide margin. Used by the synthetic
world's difficulty test and reported beside recall figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from runtime.datasets.place import PlaceDataset
from runtime.evaluation.recall import DEFAULT_NS, rank_database, recall_at_n
from runtime.protocol import EVAL_RADIUS_M

THUMBNAIL_SIZE = (16, 12)  # (width, height)


def thumbnail_descriptors(
    images: Iterable[np.ndarray], size: tuple[int, int] = THUMBNAIL_SIZE, grayscale: bool = False
) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB images -> ``(N, w*h[*3])`` float32 descriptors, mean-centred and L2-normalised."""
    import cv2

    rows = []
    for image in images:
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        if grayscale:
            small = small.mean(axis=2)
        v = small.reshape(-1)
        v = v - v.mean()
        rows.append(v / max(float(np.linalg.norm(v)), 1e-6))
    return np.stack(rows).astype(np.float32)


def raw_pixel_recall(
    dataset: PlaceDataset,
    ns: Sequence[int] = DEFAULT_NS,
    size: tuple[int, int] = THUMBNAIL_SIZE,
    grayscale: bool = False,
    radius_m: float = EVAL_RADIUS_M,
    query_groups: Sequence[str] | None = None,
) -> dict[str, dict[int, float]]:
    """Recall@N of the raw-pixel baseline on ``dataset`` (queries without a positive are dropped).

    Returns ``{"all": {n: recall}}`` plus one entry per distinct value of ``query_groups`` (one label per
    query, e.g. the synthetic world's ``condition`` column) when given.
    """
    db = thumbnail_descriptors(
        (dataset.read_image("database", i) for i in range(dataset.num_db)), size, grayscale
    )
    q = thumbnail_descriptors(
        (dataset.read_image("queries", i) for i in range(dataset.num_queries)), size, grayscale
    )
    positives = dataset.positives(radius_m)
    matched = np.array([len(p) > 0 for p in positives])
    ranked = rank_database(db, q, max(ns))
    keep = np.flatnonzero(matched)
    result = {"all": recall_at_n(ranked[keep], [positives[i] for i in keep], ns)}
    if query_groups is not None:
        labels = np.asarray(query_groups)
        for label in dict.fromkeys(labels.tolist()):
            idx = np.flatnonzero((labels == label) & matched)
            result[str(label)] = recall_at_n(ranked[idx], [positives[i] for i in idx], ns)
    return result
