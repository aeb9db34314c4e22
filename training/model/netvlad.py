"""The NetVLAD layer (Arandjelović et al., CVPR 2016), in the loop-free form that exports cleanly.

For a feature map ``X`` (D channels, N = H*W locations), L2-normalised per location:

    a_k(x_i) = softmax_k(w_k · x_i + b_k)                 soft assignment, A: (K, N)
    V(k)     = Σ_i a_k(x_i) (x_i − c_k) = (A Xᵀ)(k) − (A 1)(k) c_k

so ``V = A·Xᵀ − (A·1) ⊙ C`` is one batched matrix product and one broadcast subtraction. Every public
PyTorch port loops over the K clusters instead, which unrolls into K copies of the same subgraph in an
exported ONNX model. Here {w, b, c} are decoupled parameters (the paper's full model, not tied to C).

Every normalisation divides by ``max(‖v‖, eps)`` (``clamp``), never by ``where(‖v‖ == 0, ...)``: no
data-dependent Where/Equal ops appear in the exported graph (they broke ONNX importers, opencv/opencv#20428).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-12


def l2_normalize(x: torch.Tensor, dim: int, eps: float = NORM_EPS) -> torch.Tensor:
    """``x / max(‖x‖₂, eps)`` along ``dim``; exports as ReduceL2/Clip/Div (no Where, no Equal)."""
    norm = torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True)
    return x / torch.clamp(norm, min=eps)


class NetVLAD(nn.Module):
    """NetVLAD pooling: ``(B, D, H, W)`` local features -> ``(B, K*D)`` L2-normalised descriptors.

    Parameters: ``assignment`` (1x1 conv, weight ``w`` (K, D, 1, 1) and bias ``b`` (K,)) and ``centroids``
    ``c`` (K, D). The output is intra-normalised (L2 per cluster) and then globally L2-normalised; its layout
    is cluster-major: element ``k*D + d`` is channel ``d`` of cluster ``k``.
    """

    def __init__(self, num_clusters: int = 64, dim: int = 512, eps: float = NORM_EPS) -> None:
        super().__init__()
        if num_clusters <= 0 or dim <= 0:
            raise ValueError(f"num_clusters and dim must be positive, got {num_clusters} and {dim}")
        self.num_clusters = int(num_clusters)
        self.dim = int(dim)
        self.eps = float(eps)
        self.assignment = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))

    @property
    def output_dim(self) -> int:
        return self.num_clusters * self.dim

    def init_from_centroids(self, centroids: torch.Tensor, alpha: float) -> None:
        """The v2 initialisation (training/README.md, "The protocol"): ``c = C``, ``w_k = 2α c_k``, ``b_k = −α ‖c_k‖²``.

        With it, ``softmax_k(w_k·x + b_k) = softmax_k(−α ‖x − c_k‖²)`` (the ``‖x‖²`` term cancels).
        """
        centroids = torch.as_tensor(centroids, dtype=torch.float32)
        if centroids.shape != (self.num_clusters, self.dim):
            raise ValueError(
                f"centroids must have shape ({self.num_clusters}, {self.dim}), got {tuple(centroids.shape)}"
            )
        with torch.no_grad():
            self.centroids.copy_(centroids)
            self.assignment.weight.copy_((2.0 * alpha * centroids)[:, :, None, None])
            self.assignment.bias.copy_(-alpha * centroids.pow(2).sum(dim=1))

    def soft_assignment(self, x: torch.Tensor) -> torch.Tensor:
        """Soft assignment of L2-normalised local features ``(B, D, H, W)`` -> ``(B, K, H*W)``."""
        logits = self.assignment(x)  # (B, K, H, W)
        return F.softmax(logits.flatten(2), dim=1)  # (B, K, H*W)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = l2_normalize(features, dim=1, eps=self.eps)  # (B, D, H, W), unit norm per location
        soft = self.soft_assignment(x)  # (B, K, N) with N = H*W
        x_flat = x.flatten(2)  # (B, D, N)
        weighted_sum = torch.bmm(soft, x_flat.transpose(1, 2))  # (B, K, D) = A·Xᵀ
        mass = soft.sum(dim=2, keepdim=True)  # (B, K, 1) = A·1
        vlad = weighted_sum - mass * self.centroids.unsqueeze(0)  # (B, K, D)
        vlad = l2_normalize(vlad, dim=2, eps=self.eps)  # intra-normalisation
        vlad = vlad.flatten(1)  # (B, K*D), cluster-major
        return l2_normalize(vlad, dim=1, eps=self.eps)


def netvlad_loop_reference(layer: NetVLAD, features: torch.Tensor) -> torch.Tensor:
    """The per-cluster loop every public port uses, kept as the reference the loop-free layer is tested
    against (and that the benchmarks time). Same parameters, same output ``(B, K*D)``; slow, do not export.
    """
    eps = layer.eps
    x = features / torch.clamp(features.norm(p=2, dim=1, keepdim=True), min=eps)  # (B, D, H, W)
    batch, dim = x.shape[:2]
    soft = F.softmax(layer.assignment(x).view(batch, layer.num_clusters, -1), dim=1)  # (B, K, N)
    x_flat = x.view(batch, dim, -1)  # (B, D, N)
    vlad = torch.zeros(batch, layer.num_clusters, dim, dtype=x.dtype, device=x.device)
    for k in range(layer.num_clusters):
        residual = x_flat - layer.centroids[k].view(1, dim, 1)  # (B, D, N)
        vlad[:, k, :] = (residual * soft[:, k : k + 1, :]).sum(dim=2)
    vlad = vlad / torch.clamp(vlad.norm(p=2, dim=2, keepdim=True), min=eps)
    vlad = vlad.view(batch, -1)
    return vlad / torch.clamp(vlad.norm(p=2, dim=1, keepdim=True), min=eps)
