"""The weakly supervised triplet ranking loss (training/README.md, "The protocol").

Per tuple (query q, best potential positive p, negatives n_j):
``L = Σ_j max(0, m + d²(q, p) − d²(q, n_j))`` with **squared** Euclidean distances between L2-normalised
descriptors and margin ``m = 0.1``, as in the paper and its MATLAB code. (Nanne's PyTorch port uses
non-squared distances with margin √0.1 instead; we do not.) The loss of a batch is the mean over its tuples.
"""

from __future__ import annotations

import torch

DEFAULT_MARGIN = 0.1


def triplet_ranking_loss(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, margin: float = DEFAULT_MARGIN
) -> torch.Tensor:
    """``query (B, D)``, ``positive (B, D)``, ``negatives (B, M, D)`` -> scalar loss (mean over B tuples)."""
    d2_pos = (query - positive).pow(2).sum(dim=1)  # (B,)
    d2_neg = (query.unsqueeze(1) - negatives).pow(2).sum(dim=2)  # (B, M)
    per_tuple = torch.relu(margin + d2_pos.unsqueeze(1) - d2_neg).sum(dim=1)  # (B,)
    return per_tuple.mean()
