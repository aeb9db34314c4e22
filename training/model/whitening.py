"""PCA-whitening, learned after training and stored as a layer of the model (PROTOCOL.md, addPCA.m).

``y = L2( diag(λ)^(-1/2) Uᵀ (x − μ) )``: project the NetVLAD descriptor on its first ``d`` principal
directions, scale each by the inverse square root of its variance, and re-normalise. One ``nn.Linear``
(weight ``diag(λ)^(-1/2) Uᵀ``, bias ``−W μ``) followed by L2, so it exports as a single Gemm. A lower
dimension is the first ``d`` rows (the directions are sorted by decreasing variance) re-normalised.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from runtime.errors import ConfigError
from training.model.netvlad import NORM_EPS, l2_normalize

log = logging.getLogger(__name__)

WHITENING_EPS = 1e-9  # added to the eigenvalues, as addPCA.m does


class PCAWhitening(nn.Module):
    """``(B, in_dim)`` -> ``(B, out_dim)`` whitened and L2-normalised descriptors."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        if not 0 < out_dim <= in_dim:
            raise ConfigError(f"whitening_dim must be in 1..{in_dim} (the NetVLAD dimension), got {out_dim}")
        self.in_dim, self.out_dim, self.eps = int(in_dim), int(out_dim), float(eps)
        self.projection = nn.Linear(in_dim, out_dim, bias=True)

    def set_parameters(self, weight: np.ndarray, bias: np.ndarray) -> None:
        with torch.no_grad():
            self.projection.weight.copy_(torch.as_tensor(weight[: self.out_dim], dtype=torch.float32))
            self.projection.bias.copy_(torch.as_tensor(bias[: self.out_dim], dtype=torch.float32))

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.projection(descriptors), dim=1, eps=self.eps)


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
