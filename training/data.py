"""Training data: splitting a dataset along its route, and the frozen-feature cache.

Frozen backbone layers give the same output every epoch, so their feature maps are computed once per
image (batched, float16) and stored on disk keyed by the frozen weights and the image list; every later
forward pass (descriptor-cache refreshes, training tuples, validation) starts from them. With the default
efficientnet_lite0 (4 of 5 stages frozen) that is 80 x 15 x 20 values per 240x320 image (48 KB in float16).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime import PlaceDataset, Preprocessor
from runtime.datasets.place import neighbours_within
from runtime.errors import ConfigError
from runtime.files import atomic_path
from runtime.model.card import fingerprint_arrays
from runtime.protocol import NEGATIVE_RADIUS_M
from training.model import PlaceModel, normalize_images

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_BLOCK_IMAGES = 20  # database images per stretch, at least


@dataclass(frozen=True)
class Split:
    """One split of a dataset: the sub-dataset and where its images come from in the full dataset.

    ``db_rows`` / ``q_rows`` index the full dataset's images as one list, its database first and then its
    queries (row ``num_db + j`` is query ``j``): a split trained both ways (:func:`both_ways`) holds query
    images in its database and database images in its queries. ``db_traversal`` / ``q_traversal`` say which
    traversal (0: the full dataset's database drive, 1: its query drive) each image is from; training takes
    positives from the other traversal only.
    """

    name: str
    dataset: PlaceDataset
    db_indices: np.ndarray  # (n_db,) int64 into the full dataset's database (one-way splits)
    q_indices: np.ndarray  # (n_q,) int64 into the full dataset's queries (one-way splits)
    db_rows: np.ndarray  # (n_db,) int64 into [full database, full queries]
    q_rows: np.ndarray  # (n_q,) int64 into [full database, full queries]
    db_traversal: np.ndarray  # (n_db,) int8: 0 database drive, 1 query drive
    q_traversal: np.ndarray  # (n_q,) int8


def subset(dataset: PlaceDataset, db_idx: np.ndarray, q_idx: np.ndarray, name: str) -> PlaceDataset:
    """The dataset restricted to database images ``db_idx`` and queries ``q_idx`` (same root)."""
    return dataset.select(db_idx, q_idx, name=name, info={**dict(dataset.info), "split_of": dataset.name})


def one_way(dataset: PlaceDataset, db_idx: np.ndarray, q_idx: np.ndarray, name: str) -> Split:
    """The split of ``dataset`` holding its database images ``db_idx`` and queries ``q_idx``, as they are."""
    return Split(
        name, subset(dataset, db_idx, q_idx, f"{dataset.name}:{name}"), db_idx, q_idx,
        db_rows=db_idx, q_rows=dataset.num_db + q_idx,
        db_traversal=np.zeros(len(db_idx), np.int8), q_traversal=np.ones(len(q_idx), np.int8),
    )  # fmt: skip


def both_ways(dataset: PlaceDataset, split: Split) -> Split:
    """``split`` trained in both directions: its database is the database drive's images and the query
    drive's, its queries the query drive's images and the database drive's, so that every tuple crosses
    from one traversal to the other (winter query, summer positive, and summer query, winter positive).

    Shapes: database ``n_db + n_q`` images (the split's database, then its queries), queries ``n_q + n_db``.
    """
    db_idx, q_idx = split.db_indices, split.q_indices
    fwd = split.dataset
    both = dataclasses.replace(
        fwd,
        name=f"{fwd.name}+reverse",
        db_images=fwd.db_images + fwd.q_images,
        db_utm=np.concatenate([fwd.db_utm, fwd.q_utm]),
        db_heading=_joined(fwd.db_heading, fwd.q_heading),
        db_time=_joined(fwd.db_time, fwd.q_time),
        q_images=fwd.q_images + fwd.db_images,
        q_utm=np.concatenate([fwd.q_utm, fwd.db_utm]),
        q_heading=_joined(fwd.q_heading, fwd.db_heading),
        q_time=_joined(fwd.q_time, fwd.db_time),
        info={**dict(fwd.info), "both_ways": True},
    )
    q_rows = dataset.num_db + q_idx
    return Split(
        split.name, both, db_idx, q_idx,
        db_rows=np.concatenate([db_idx, q_rows]), q_rows=np.concatenate([q_rows, db_idx]),
        db_traversal=np.repeat(np.array([0, 1], np.int8), [len(db_idx), len(q_idx)]),
        q_traversal=np.repeat(np.array([1, 0], np.int8), [len(q_idx), len(db_idx)]),
    )  # fmt: skip


def _joined(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    return None if a is None or b is None else np.concatenate([a, b])


def split_along_route(
    dataset: PlaceDataset,
    fractions: tuple[float, float, float],
    blocks: int = 40,
    guard_m: float = NEGATIVE_RADIUS_M,
) -> dict[str, Split]:
    """Cut the database, in its order along the route, into ``blocks`` contiguous stretches, deal the
    stretches to train/val/test in proportion to ``fractions`` and evenly interleaved along the route, and
    give each query to the split of its nearest database image: every split sees every part of the route
    (the synthetic world changes query conditions along it).

    No place is in two splits, and no val or test place lies within ``guard_m`` (25 m, the negative radius)
    of a place of another split: at each border between stretches the database images of the held-out
    side that are that close to the other side are left out (val gives way to test as well), and so are the
    queries within ``guard_m`` of another split's database image.

    ``fractions``: shares of the database for train, val and test (a zero share gives an empty split).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not 0.999 < sum(fractions) < 1.001:
        raise ConfigError(f"split fractions must be three non-negative shares summing to 1, got {fractions}")
    n = dataset.num_db
    blocks = max(1, min(int(blocks), n // MIN_BLOCK_IMAGES))  # stretches much longer than the 25 m radius
    counts = np.floor(np.asarray(fractions) * blocks).astype(int)
    for s in np.argsort(-(np.asarray(fractions) * blocks - counts))[: blocks - counts.sum()]:
        counts[s] += 1  # largest remainders
    # evenly interleaved labels: the j-th block of split s sits at (j + 0.5) / counts[s] along the route
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c > 0])
    labels = np.concatenate([np.full(c, s) for s, c in enumerate(counts) if c > 0])
    block_split = labels[np.argsort(keys, kind="stable")]
    db_split = block_split[np.minimum((np.arange(n) * blocks) // max(n, 1), blocks - 1)]
    # the guard: a held-out database image near a place of a split it must not touch is left out (-1)
    db_kept = db_split.copy()
    for s, others in ((2, (0,)), (1, (0, 2))):  # test keeps clear of train; val of train and test
        near = _near_any(dataset.db_utm[db_split == s], dataset.db_utm[np.isin(db_split, others)], guard_m)
        db_kept[np.flatnonzero(db_split == s)[near]] = -1
    # each query goes to the split of its nearest database image, unless another split's image is near
    nearest = np.empty(dataset.num_queries, dtype=np.int64)
    for start in range(0, dataset.num_queries, 1024):
        q = dataset.q_utm[start : start + 1024]
        d2 = ((q[:, None, :] - dataset.db_utm[None, :, :]) ** 2).sum(-1)  # (B, N_db)
        nearest[start : start + 1024] = np.argmin(d2, axis=1)
    q_split = db_kept[nearest]
    for s in (1, 2):
        mine = np.flatnonzero(q_split == s)
        near = _near_any(dataset.q_utm[mine], dataset.db_utm[db_split != s], guard_m)
        q_split[mine[near]] = -1
    out = {}
    for s, name in enumerate(SPLITS):
        out[name] = one_way(dataset, np.flatnonzero(db_kept == s), np.flatnonzero(q_split == s), name)
    left_out = int(np.count_nonzero(db_kept < 0)), int(np.count_nonzero(q_split < 0))
    if any(left_out):
        log.info(
            "route split: %d database images and %d queries within %g m of another split left out",
            *left_out,
            guard_m,
        )
    return out


def _near_any(points: np.ndarray, others: np.ndarray, radius_m: float) -> np.ndarray:
    """``(P,)`` bool: which of ``points (P, 2)`` lie within ``radius_m`` of one of ``others (O, 2)``."""
    if len(points) == 0 or len(others) == 0:
        return np.zeros(len(points), dtype=bool)
    return np.array([len(n) > 0 for n in neighbours_within(others, points, radius_m)], dtype=bool)


def dataset_key(dataset: PlaceDataset) -> str:
    """A short hash of a dataset's root and image lists (what the frozen cache is keyed by)."""
    h = hashlib.sha256()
    h.update(str(Path(dataset.root).resolve()).encode())
    for name in (*dataset.db_images, "|", *dataset.q_images):
        h.update(name.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def frozen_key(model: PlaceModel) -> str:
    """Fingerprint of the frozen layers and the input size: equal keys give identical frozen features."""
    arrays = [(k, v.detach().cpu().numpy()) for k, v in model.backbone_frozen.state_dict().items()]
    cfg = model.config
    return fingerprint_arrays([*arrays, ("input", np.array([cfg.input_height, cfg.input_width]))])


def compute_frozen_features(
    model: PlaceModel,
    dataset: PlaceDataset,
    split: str,
    batch_size: int = 32,
    progress: Callable | None = None,
) -> tuple[torch.Tensor, float]:
    """Frozen feature maps of every image of ``split`` ("database"/"queries"): ``(N, C, h, w)`` float16.

    Returns the features and the throughput in images/s. Images are read with ``dataset.read_image`` and
    resized exactly as the runtime does (runtime.model.preprocess.Preprocessor, from the model card).
    """
    prep = Preprocessor(model.card())
    count = dataset.num_db if split == "database" else dataset.num_queries
    chunks = []
    started = time.perf_counter()
    bar = progress(total=count, desc=f"frozen features ({split})", unit="img") if progress else None
    model.eval()
    for start in range(0, count, batch_size):
        images = [dataset.read_image(split, i) for i in range(start, min(count, start + batch_size))]
        batch = torch.from_numpy(prep.batch(images, color="RGB"))  # (B, H, W, 3) uint8
        with torch.inference_mode():
            chunks.append(model.frozen_features(normalize_images(batch)).to(torch.float16))
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - started
    if not chunks:
        return torch.zeros(0), 0.0
    return torch.cat(chunks), count / max(elapsed, 1e-9)


def load_or_compute_frozen(
    model: PlaceModel,
    dataset: PlaceDataset,
    cache_dir: Path | None,
    batch_size: int = 32,
    progress: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """``{"database": (N_db, C, h, w), "queries": (N_q, C, h, w)}`` float16, from ``cache_dir`` when present."""
    key = f"frozen-{dataset_key(dataset)}-{frozen_key(model)}"
    path = Path(cache_dir) / f"{key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            log.info("frozen features from cache %s", path)
            return {"database": cached["database"], "queries": cached["queries"]}
        except Exception as exc:  # a damaged cache file is recomputed, not fatal
            log.warning("ignoring unreadable frozen-feature cache %s (%s)", path, exc)
    out, speeds = {}, {}
    for split in ("database", "queries"):
        out[split], speeds[split] = compute_frozen_features(model, dataset, split, batch_size, progress)
    log.info(
        "frozen features: %d database + %d query images at %.1f img/s; %.1f MB in float16",
        len(out["database"]),
        len(out["queries"]),
        min(speeds.values()) if speeds else 0.0,
        sum(t.numel() * 2 for t in out.values()) / 1e6,
    )
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save(out, tmp)
        (path.with_suffix(".json")).write_text(json.dumps({"dataset": dataset.name, "images_per_s": speeds}))
    return out
