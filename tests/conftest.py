"""Shared fixtures and capability-keyed skips (never keyed to "is this CI")."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.optional import available

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
NORDLAND = SHARED / "data" / "nordland"


def has_cuda_device() -> bool:
    if available("torch"):
        import torch

        if torch.cuda.is_available():
            return True
    if available("onnxruntime"):
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return False


requires_tensorrt = pytest.mark.skipif(not available("tensorrt"), reason="needs tensorrt")
requires_cuda = pytest.mark.skipif(not has_cuda_device(), reason="needs a CUDA device")
requires_torch = pytest.mark.skipif(
    not available("torch"), reason="needs torch (pip install 'netvlad-kit[train]')"
)
requires_torchvision = pytest.mark.skipif(
    not available("torchvision"), reason="needs torchvision (pip install 'netvlad-kit[torchvision]')"
)


@pytest.fixture(scope="session")
def nordland_dir() -> Path:
    if not (NORDLAND / "summer").is_dir():
        pytest.skip(f"needs the Nordland sample at {NORDLAND}")
    return NORDLAND
