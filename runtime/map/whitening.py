"""PCA-whitening in numpy (fitted on a model's training set by training, or on a map's own descriptors),
and the map's descriptor space (:class:`MapProjection`).

Every map (:mod:`runtime.map.build`) centres its places' descriptors on their mean; a map built with
whitening also fits PCA-whitening without labels on them. The projection is stored beside the index, tied
to the model's fingerprint, and :class:`runtime.map.PlaceMap` applies it to every descriptor the model
returns before searching: a descriptor fitted to the map's domain, with whitening a tenth of the model's
dimension or less, so flat search is at least ten times cheaper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

WHITENING_EPS = 1e-9  # added to the eigenvalues, as addPCA.m does
NORM_EPS = 1e-12
# A map's whitening regularisation (MapConfig.whitening_shrinkage). Measured at 716-D, demo model, queries
# centred on their running mean, R@1 for shrinkage 1 / 3 / 10 / 30: synthetic small world 0.842 / 0.860 /
# 0.865 / 0.864 (unwhitened 7,168-D 0.866); Nordland winter -> summer 0.114 / 0.117 / 0.117 / 0.108
# (unwhitened 0.115). Larger values tend to a plain PCA projection.
MAP_SHRINKAGE = 10.0


def fit_pca_whitening(
    descriptors: np.ndarray, dim: int, shrinkage: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Fit PCA-whitening on ``descriptors`` ``(N, D)``; returns ``weight (dim, D)`` and ``bias (dim,)``.

    ``shrinkage`` regularises the whitening: each direction is scaled by ``1 / sqrt(λ + shrinkage · mean λ)``
    instead of ``1 / sqrt(λ)`` (0 is addPCA.m's plain whitening). Plain whitening to a dimension close to
    the sample count maps the fitting images onto an almost regular simplex: their neighbours are lost, so
    a map that contains its own training images stops recognising them (measured on the synthetic world:
    recall@1 of training-stretch queries fell from 83 % to 3 % at 1,186-D; with shrinkage 1 at a quarter of
    the samples it rose to 85 %, and held-out recall@1 rose from 81 % to 90 %).

    When ``D > N`` (NetVLAD: 7,168 or 32,768 dimensions against a few thousand images) the ``D x D``
    covariance is never formed: the eigenvectors come from the ``N x N`` Gram matrix ("dual trick"),
    ``u = Xᵀ v / sqrt(N λ)``. At most ``N − 1`` directions carry variance after centring.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError(f"descriptors must be (N, D), got shape {x.shape}")
    n, d_in = x.shape
    rank = min(d_in, n - 1)
    if not 0 < dim <= rank:
        raise ConfigError(
            f"cannot learn {dim}-D PCA-whitening from {n} descriptors of dimension {d_in}: at most "
            f"{rank} dimensions carry variance; use more training images or a smaller whitening_dim"
        )
    mean = x.mean(axis=0)
    xc = x - mean  # (N, D)
    if d_in > n:
        gram = xc @ xc.T / n  # (N, N), same non-zero eigenvalues as the covariance
        eigvals, eigvecs = np.linalg.eigh(gram)
        order = np.argsort(eigvals)[::-1][:dim]
        eigvals, eigvecs = np.maximum(eigvals[order], 0.0), eigvecs[:, order]
        directions = xc.T @ eigvecs / np.sqrt(np.maximum(n * eigvals, 1e-30))  # (D, dim), orthonormal
    else:
        cov = xc.T @ xc / n  # (D, D)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1][:dim]
        eigvals, directions = np.maximum(eigvals[order], 0.0), eigvecs[:, order]
    if shrinkage < 0:
        raise ConfigError(f"whitening shrinkage must be >= 0, got {shrinkage}")
    scale = eigvals + shrinkage * float(eigvals.mean()) + WHITENING_EPS
    weight = (directions / np.sqrt(scale)).T  # (dim, D)
    bias = -weight @ mean
    log.info(
        "PCA-whitening %d -> %d from %d descriptors (%s, shrinkage %g)",
        d_in, dim, n, "dual" if d_in > n else "primal", shrinkage,
    )  # fmt: skip
    return weight.astype(np.float32), bias.astype(np.float32)


def map_whitening_dim(places: int, model_dim: int) -> int:
    """The whitening dimension of a map of ``places`` images for a ``model_dim``-D model.

    A tenth of the model's dimension (the goal: a tenth of the search cost), and at most three quarters
    of the places: directions beyond that are fitted on too few images (measured on the synthetic
    ``small`` world, 992 places, demo model 7,168-D, shrinkage 3, queries not centred: R@1 0.753 at 716-D
    against 0.734 unwhitened, 0.705 at 248-D, 0.544 at 64-D); at least 1.
    """
    return max(1, min(model_dim // 10, (3 * places) // 4))


def descriptor_mean(descriptors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The mean of ``descriptors (N, D)`` (float32 or float16, may be a memory map larger than RAM: read a
    chunk at a time) as float32 ``(D,)``."""
    total = np.zeros(descriptors.shape[1], dtype=np.float64)
    for start in range(0, descriptors.shape[0], chunk):
        total += np.asarray(descriptors[start : start + chunk], dtype=np.float64).sum(axis=0)
    return (total / max(1, descriptors.shape[0])).astype(np.float32)


@dataclass(frozen=True, eq=False)
class MapProjection:
    """The map's descriptor space: ``y = L2(W (x - c))`` takes the model's descriptors ``(M, in_dim)`` to the
    index's ``(M, dim)``.

    ``mean (in_dim,)``: the mean of the map's own model descriptors, the default centre ``c``. Centring
    removes what every image of the map's domain shares (a season's light, a camera's colour), so the cosine
    compares what sets places apart; a query stream from another domain is centred on its own running mean
    instead (:mod:`runtime.localize.adapt`), which aligns the two domains without labels. ``weight (dim, in_dim)``:
    PCA-whitening fitted on the map (``--whiten``), or None (centring only, ``dim == in_dim``).
    ``fingerprint``: the weights fingerprint of the model the map was built with.
    """

    mean: np.ndarray  # (in_dim,) float32
    weight: np.ndarray | None  # (dim, in_dim) float32, or None
    fingerprint: str
    shrinkage: float | None = None

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0]) if self.weight is not None else self.in_dim

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def centring(cls, descriptors: np.ndarray, fingerprint: str) -> MapProjection:
        """Centring on the mean of the map's model descriptors ``(N, D)`` (may be a memory map)."""
        return cls(descriptor_mean(descriptors), None, fingerprint)

    @classmethod
    def whitening(
        cls, descriptors: np.ndarray, dim: int, fingerprint: str, shrinkage: float = MAP_SHRINKAGE
    ) -> MapProjection:
        """Centring and PCA-whitening to ``dim`` fitted on the map's model descriptors ``(N, D)`` (in RAM)."""
        weight, _ = fit_pca_whitening(descriptors, dim, shrinkage)
        return cls(descriptor_mean(descriptors), weight, fingerprint, float(shrinkage))

    def apply(self, descriptors: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
        """``(M, in_dim)`` -> ``(M, dim)`` float32, L2-normalised (a new array). ``centre (in_dim,)``: the
        query domain's centre (None: the map's mean)."""
        x = np.asarray(descriptors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ConfigError(
                f"the map's projection takes {self.in_dim}-D descriptors, got shape {x.shape}; "
                "use the model the map was built with"
            )
        y = x - (self.mean if centre is None else np.asarray(centre, dtype=np.float32))  # (M, in_dim)
        if self.weight is not None:
            y = y @ self.weight.T  # (M, dim)
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), NORM_EPS)
        return y

    def apply_to(self, source: np.ndarray, store: np.ndarray, chunk: int = 4096) -> None:
        """Project a map's model descriptors ``source (N, in_dim)`` into ``store (N, dim)`` (float32 array or
        float16 memory map; may be ``source`` itself when ``dim == in_dim``), a chunk at a time."""
        if store.shape != (source.shape[0], self.dim):
            raise ConfigError(f"cannot project {source.shape} descriptors into {store.shape} ({self.dim}-D)")
        for start in range(0, source.shape[0], chunk):
            store[start : start + chunk] = self.apply(source[start : start + chunk])

    def save(self, path: Path) -> None:
        """Write as ``.npz`` to ``path`` (inside a map's temporary directory: the map is renamed atomically)."""
        arrays = {"mean": self.mean, "fingerprint": np.array(self.fingerprint)}
        if self.weight is not None:
            arrays.update(weight=self.weight, shrinkage=np.array(self.shrinkage))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> MapProjection:
        try:
            with np.load(path, allow_pickle=False) as data:
                weight = data["weight"].astype(np.float32) if "weight" in data else None
                shrinkage = float(data["shrinkage"]) if "shrinkage" in data else None
                return cls(data["mean"].astype(np.float32), weight, str(data["fingerprint"]), shrinkage)
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(
                f"'{path}' is not a readable projection file ({exc}); rebuild the map"
            ) from exc

    def describe(self) -> dict:
        """map.json's ``projection``: what the index's space is."""
        return {
            "centre": "mean of the map's descriptors (a query stream uses its own running mean)",
            "input_dim": self.in_dim,
            "dim": self.dim,
            "whitening": None if self.weight is None else {"dim": self.dim, "shrinkage": self.shrinkage},
            "model_fingerprint": self.fingerprint,
        }
