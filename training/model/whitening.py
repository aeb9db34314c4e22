"""PCA-whitening, learned after training and stored as a layer of the model (training/README.md, addPCA.m).

``y = L2( diag(λ)^(-1/2) Uᵀ (x − μ) )``: project the NetVLAD descriptor on its first ``d`` principal
directions, scale each by the inverse square root of its variance, and re-normalise. One ``nn.Linear``
(weight ``diag(λ)^(-1/2) Uᵀ``, bias ``−W μ``) followed by L2, so it exports as a single Gemm. A lower
dimension is the first ``d`` rows (the directions are sorted by decreasing variance) re-normalised.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtime.errors import ConfigError
from runtime.map.whitening import WHITENING_EPS, fit_pca_whitening  # numpy only: the map build fits it too
from training.model.netvlad import NORM_EPS, l2_normalize

__all__ = ["WHITENING_EPS", "PCAWhitening", "fit_pca_whitening"]


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
