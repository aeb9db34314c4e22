"""End to end with a real model: training.model -> checkpoint -> export.onnx -> map -> netvlad-run JSONL.

The recall@N computed from netvlad-run's JSONL equals the training evaluation's recall@N for the same
checkpoint on the same dataset (PyTorch descriptors, exact ranking), which is the runtime's contract.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from runtime.cli.map import app as map_app
from runtime.cli.run import app as run_app
from tests.conftest import requires_torch
from tests.runtime.helpers import make_stand_in_world

pytestmark = [requires_torch, pytest.mark.slow]


def test_exported_model_recall_matches_training_evaluation(tmp_path):
    import torch

    from export.config import ExportConfig
    from export.onnx import export_onnx
    from training.checkpoint import save_checkpoint
    from training.evaluate import evaluate_model
    from training.model import build_model
    from training.model.clusters import (
        fit_clusters,
        initialize_netvlad,
        local_feature_batches,
        sample_local_descriptors,
    )

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dataset = make_stand_in_world(
        tmp_path / "data", places=40, spacing_m=15.0, seed=7, noise=40, distract=0.45
    )
    model = build_model(num_clusters=8, input_height=64, input_width=96).eval()
    images = [dataset.read_image("database", i) for i in range(dataset.num_db)]
    descriptors = sample_local_descriptors(local_feature_batches(model, images), 20, 800, seed=0)
    initialize_netvlad(model, fit_clusters(descriptors, 8, seed=0, iterations=10), "test")
    checkpoint = save_checkpoint(tmp_path / "model.pt", model)
    onnx_path = export_onnx(
        checkpoint, tmp_path / "model.onnx", ExportConfig(fixed_images=2, exporter="legacy")
    )
    expected = evaluate_model(model, dataset).recall

    runner = CliRunner()
    out = runner.invoke(
        map_app,
        [
            "build",
            "--model",
            str(onnx_path),
            "--dataset",
            str(dataset.root),
            "--out",
            str(tmp_path / "map"),
            "-q",
        ],
    )
    assert out.exit_code == 0, out.output
    jsonl = tmp_path / "run.jsonl"
    out = runner.invoke(
        run_app,
        [
            "--images",
            str(dataset.root / "queries"),
            "--model",
            str(onnx_path),
            "--map",
            str(tmp_path / "map"),
            "--jsonl",
            str(jsonl),
            "--top-k",
            "10",
            "-q",
        ],
    )
    assert out.exit_code == 0, out.output
    out = runner.invoke(map_app, ["recall", "--jsonl", str(jsonl), "--dataset", str(dataset.root), "--json"])
    got = {int(n): r for n, r in json.loads(out.output)["recall"].items()}
    assert 0.3 < expected[1] < 1.0  # a task that is neither trivial nor hopeless
    assert got == {n: expected[n] for n in (1, 5, 10)}
