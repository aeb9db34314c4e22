"""Fixtures of the export tests: a tiny real model (EfficientNet-Lite0 crop, K=8, 64x96) and its exports."""

from __future__ import annotations

import pytest

from tests.conftest import requires_torch


@pytest.fixture(scope="session")
def tiny_model():
    torch = pytest.importorskip("torch", reason="needs torch (pip install 'netvlad-kit[train]')")
    from training.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny"))
    # k-means-like centroids would need data; seeded random unit centroids keep assignments spread
    with torch.no_grad():
        c = torch.nn.functional.normalize(torch.randn(model.netvlad.num_clusters, model.netvlad.dim), dim=1)
        model.netvlad.init_from_centroids(c, alpha=10.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    from training.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    from export.config import ExportConfig
    from export.onnx import export_onnx

    return export_onnx(
        tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "model.onnx", ExportConfig.preset("quick")
    )


__all__ = ["requires_torch"]
