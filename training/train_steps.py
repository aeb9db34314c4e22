"""Batched forward passes shared by training and evaluation: frozen features -> descriptors."""

from __future__ import annotations

import torch

from training.model import PlaceModel


def descriptors_from_frozen(
    model: PlaceModel,
    frozen: torch.Tensor,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    amp: bool = False,
    progress=None,
) -> torch.Tensor:
    """Descriptors ``(N, D)`` in ``dtype`` (on the CPU) from frozen features ``(N, C, h, w)``, in eval mode."""
    was_training = model.training
    model.eval()
    out = torch.empty((frozen.shape[0], model.descriptor_dim), dtype=dtype)
    with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type, enabled=amp):
        starts = range(0, frozen.shape[0], batch_size)
        for start in progress(starts, desc="descriptor cache", unit="batch") if progress else starts:
            batch = frozen[start : start + batch_size].to(device, torch.float32)
            out[start : start + batch_size] = model.head(batch).to("cpu", dtype)
    model.train(was_training)
    return out
