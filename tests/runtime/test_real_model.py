"""End to end with a real model: training.model -> checkpoint -> export.onnx -> map -> netvlad-run JSONL.

The recall@N computed from netvlad-run's JSONL with frames judged on their own (``--no-adapt``) equals the
training evaluation's recall@N for the same checkpoint on the same dataset (PyTorch descriptors, exact
ranking) in the map's space (centred on the map's mean), which is the runtime's contract; the default run
centres the query stream on its own running mean and must do better.
"""

from __future__ import annotations

import json

import numpy as np
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
    from training.evaluate import recall_from_descriptors, split_descriptors
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
    db = split_descriptors(model, dataset, "database", 32, None)  # (N, D), as training.evaluate computes them
    q = split_descriptors(model, dataset, "queries", 32, None)  # (Q, D)
    expected = recall_from_descriptors(db, q, dataset)[0]  # training's evaluation

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    mean = db.mean(axis=0)  # the map's space: centred on the map's mean
    expected_centred = recall_from_descriptors(unit(db - mean), unit(q - mean), dataset)[0]

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

    def run_recall(*options: str) -> dict[int, float]:
        jsonl = tmp_path / "run.jsonl"
        args = ["--images", str(dataset.root / "queries"), "--model", str(onnx_path), "--map"]
        args += [str(tmp_path / "map"), "--jsonl", str(jsonl), "--top-k", "10", "--overwrite", "-q", *options]
        out = runner.invoke(run_app, args)
        assert out.exit_code == 0, out.output
        out = runner.invoke(
            map_app, ["recall", "--jsonl", str(jsonl), "--dataset", str(dataset.root), "--json"]
        )
        return {int(n): r for n, r in json.loads(out.output)["recall"].items()}

    assert 0.3 < expected[1] < 1.0  # a task that is neither trivial nor hopeless
    # frames judged on their own: exactly training's evaluation of the same descriptors in the map's space
    assert run_recall("--no-adapt") == {n: expected_centred[n] for n in (1, 5, 10)}
    assert (expected[1], expected_centred[1]) == (0.525, 0.525)
    # the default: the query stream centred on its own running mean
    assert run_recall() == {1: 0.65, 5: 0.925, 10: 0.975}
