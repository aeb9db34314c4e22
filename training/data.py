"""Training data: splitting a dataset along its route, and the frozen-feature cache.

Frozen backbone layers give the same output every epoch, so their feature maps are computed once per
image (batched, float16) and stored on disk keyed by the frozen weights and the image list; every later
forward pass (descriptor-cache refreshes, training tuples, validation) starts from them. With the default
efficientnet_lite0 (4 of 5 stages frozen) that is 80 x 15 x 20 values per 240x320 image (48 KB in float16).
"""

from __future__ import annotations

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
from runtime.errors import ConfigError
from runtime.files import atomic_path
from runtime.model.card import fingerprint_arrays
from training.model import PlaceModel, normalize_images

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_BLOCK_IMAGES = 20  # database images per stretch, at least


@dataclass(frozen=True)
class Split:
    """One split of a dataset: the sub-dataset and the indices of its images in the full dataset."""

    name: str
    dataset: PlaceDataset
    db_indices: np.ndarray  # (n_db,) int64 into the full dataset's database
    q_indices: np.ndarray  # (n_q,) int64 into the full dataset's queries


def subset(dataset: PlaceDataset, db_idx: np.ndarray, q_idx: np.ndarray, name: str) -> PlaceDataset:
    """The dataset restricted to database images ``db_idx`` and queries ``q_idx`` (same root)."""
    return dataset.select(db_idx, q_idx, name=name, info={**dict(dataset.info), "split_of": dataset.name})


def split_along_route(
    dataset: PlaceDataset, fractions: tuple[float, float, float], blocks: int = 40
) -> dict[str, Split]:
    """Cut the database, in its order along the route, into ``blocks`` contiguous stretches, deal the
    stretches to train/val/test in proportion to ``fractions`` and evenly interleaved along the route, and
    give each query to the split of its nearest database image: no place is in two splits, and every
    split sees every part of the route (the synthetic world changes query conditions along it).

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
    # nearest database image of each query, in blocks of queries
    nearest = np.empty(dataset.num_queries, dtype=np.int64)
    for start in range(0, dataset.num_queries, 1024):
        q = dataset.q_utm[start : start + 1024]
        d2 = ((q[:, None, :] - dataset.db_utm[None, :, :]) ** 2).sum(-1)  # (B, N_db)
        nearest[start : start + 1024] = np.argmin(d2, axis=1)
    q_split = db_split[nearest]
    out = {}
    for s, name in enumerate(SPLITS):
        db_idx = np.flatnonzero(db_split == s)
        q_idx = np.flatnonzero(q_split == s)
        out[name] = Split(name, subset(dataset, db_idx, q_idx, f"{dataset.name}:{name}"), db_idx, q_idx)
    return out


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
