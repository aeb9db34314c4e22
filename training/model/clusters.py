"""NetVLAD initialisation from k-means over sampled local descriptors (training/README.md, getClusters.m).

Sample ``per_image`` random locations of the L2-normalised local feature map of each image (at most
``max_descriptors`` in all), run seeded k-means (faiss, ``iterations`` rounds), and set the layer with the
v2 initialisation: ``c = C``, ``w_k = 2αc_k``, ``b_k = −α‖c_k‖²``, ``α = −log(0.01) / mean(d₂² − d₁²)``
where ``d₁, d₂`` are each sampled descriptor's distances to its two nearest centroids.

:func:`refit_centroids` does the same on a target map's own images (AnyLoc's "domain vocabulary" idea),
keeping every other weight.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from runtime.errors import ConfigError
from runtime.optional import require
from training.model.netvlad import l2_normalize
from training.model.place import PlaceModel, normalize_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInit:
    centroids: np.ndarray  # (K, D) float32
    alpha: float
    num_descriptors: int


def sample_local_descriptors(
    local_features: Iterable[torch.Tensor], per_image: int, max_descriptors: int, seed: int
) -> np.ndarray:
    """From batches of local feature maps ``(B, D, h, w)``, ``per_image`` random L2-normalised descriptors each.

    Returns ``(M, D)`` float32 with ``M <= max_descriptors`` (the first images fill it; pass them shuffled).
    """
    rng = np.random.default_rng(seed)
    chunks, total = [], 0
    for batch in local_features:
        x = l2_normalize(batch.float(), dim=1).flatten(2).transpose(1, 2)  # (B, h*w, D)
        for desc in x:
            take = min(per_image, desc.shape[0], max_descriptors - total)
            if take <= 0:
                break
            idx = rng.choice(desc.shape[0], size=take, replace=False)
            chunks.append(desc[torch.from_numpy(idx)].numpy())
            total += take
        if total >= max_descriptors:
            break
    if not chunks:
        raise ConfigError("no local descriptors to cluster: the image set is empty")
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def fit_clusters(
    descriptors: np.ndarray, num_clusters: int, seed: int = 0, iterations: int = 100
) -> ClusterInit:
    """Seeded faiss k-means on ``descriptors`` ``(M, D)``, and the v2 ``α`` from the two nearest centroids."""
    faiss = require("faiss", "k-means initialisation of NetVLAD")
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if x.shape[0] < num_clusters:
        raise ConfigError(
            f"k-means needs at least num_clusters={num_clusters} descriptors, got {x.shape[0]}; use more images"
        )
    kmeans = faiss.Kmeans(
        x.shape[1], num_clusters, niter=iterations, seed=seed, verbose=False, spherical=False
    )
    kmeans.train(x)
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)  # (K, D)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    dist2, _ = index.search(x, 2)  # (M, 2) squared distances, nearest first
    gap = float(np.mean(dist2[:, 1] - dist2[:, 0]))
    alpha = -math.log(0.01) / max(gap, 1e-12)
    log.info("k-means: %d clusters from %d descriptors, alpha=%.2f", num_clusters, x.shape[0], alpha)
    return ClusterInit(centroids, alpha, int(x.shape[0]))


def initialize_netvlad(model: PlaceModel, init: ClusterInit, source: str) -> PlaceModel:
    """Set ``model``'s NetVLAD layer from ``init`` (in place) and record where the centroids came from."""
    model.netvlad.init_from_centroids(torch.from_numpy(init.centroids), init.alpha)
    model.provenance["centroids"] = {
        "source": source,
        "num_descriptors": init.num_descriptors,
        "alpha": round(init.alpha, 4),
    }
    return model


def local_feature_batches(
    model: PlaceModel, images: Sequence[np.ndarray], batch_size: int = 16, progress: Callable | None = None
) -> Iterable[torch.Tensor]:
    """Local feature maps ``(B, local_dim, h, w)`` of uint8 RGB images of any size (resized like the runtime)."""
    from runtime import Preprocessor

    prep = Preprocessor(model.card())
    starts = range(0, len(images), batch_size)
    for start in progress(starts) if progress else starts:
        batch = prep.batch(images[start : start + batch_size], color="RGB")  # (B, H, W, 3) uint8
        with torch.inference_mode():
            yield model.local_features(normalize_images(torch.from_numpy(batch)))


def refit_centroids(
    model: PlaceModel,
    images: Sequence[np.ndarray],
    per_image: int = 100,
    max_descriptors: int = 50_000,
    seed: int = 0,
    iterations: int = 100,
) -> PlaceModel:
    """A copy of ``model`` whose NetVLAD is re-initialised by k-means on ``images`` (uint8 RGB, any size).

    For a target map's own images (a domain vocabulary): the backbone stays, ``w, b, c`` are replaced by
    the v2 initialisation from the new centroids (PCA-whitening, if any, is dropped, since it was fitted to
    the old descriptors). The result has a new fingerprint: rebuild maps made with the old model.
    """
    order = np.random.default_rng(seed).permutation(len(images))
    shuffled = [images[i] for i in order]
    batches = local_feature_batches(model, shuffled)
    return refit_from_local_features(
        model, batches, len(images), per_image, max_descriptors, seed, iterations
    )


def refit_from_local_features(
    model: PlaceModel,
    local_batches: Iterable[torch.Tensor],
    num_images: int,
    per_image: int = 100,
    max_descriptors: int = 50_000,
    seed: int = 0,
    iterations: int = 100,
) -> PlaceModel:
    """:func:`refit_centroids` from batches of local feature maps ``(B, local_dim, h, w)`` (shuffled)."""
    descriptors = sample_local_descriptors(local_batches, per_image, max_descriptors, seed)
    init = fit_clusters(descriptors, model.config.num_clusters, seed=seed, iterations=iterations)
    new = copy.deepcopy(model)
    if new.whitening is not None:
        log.warning("re-fitting the centroids drops the PCA-whitening layer (it was fitted to the old ones)")
        raw = PlaceModel(dataclasses.replace(new.config, whitening_dim=None), pretrained=False)
        raw.load_state_dict({k: v for k, v in new.state_dict().items() if not k.startswith("whitening.")})
        raw.provenance = new.provenance
        new = raw
    initialize_netvlad(new, init, source=f"refit on {num_images} target images")
    return new.eval()
