"""Training on real drives: a seeded slice of Nordland (summer and winter), trained both ways for a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import requires_torch

pytestmark = requires_torch

FRAMES = slice(1200, 1800)  # 600 frames of both seasons: open line, few tunnels


@pytest.fixture(scope="module")
def nordland_slice(nordland_dir, tmp_path_factory) -> str:
    """The slice as two aligned folders of links to the real images (an ``aligned:`` dataset spec)."""
    root = tmp_path_factory.mktemp("nordland-slice")
    names = sorted(p.name for p in (nordland_dir / "summer").iterdir())[FRAMES]
    for season in ("summer", "winter"):
        (root / season).mkdir()
        for name in names:
            (root / season / name).symlink_to(nordland_dir / season / name)
    return f"aligned:{root / 'summer'},{root / 'winter'}"


def _val_recall(out: Path) -> list[tuple[str, int, dict[str, float]]]:
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(e.get("which", e["event"]), e.get("step", 0), e["val"]["recall"]) for e in events if "val" in e]


@pytest.mark.slow
def test_training_on_real_drives_beats_the_untrained_model(nordland_slice, tmp_path):
    from training.config import TrainConfig
    from training.evaluate import evaluate_checkpoint
    from training.train import train

    cfg = TrainConfig.preset(
        "tiny",
        dataset=nordland_slice,
        model_overrides={"input_height": 64, "input_width": 128, "num_clusters": 16},
        max_steps=60,
        batch_tuples=4,
        num_neg_samples=200,
        cache_refresh_queries=80,
        eval_every_steps=20,
        checkpoint_every_steps=20,
        optimizer="adam",  # the default preset's optimiser
        lr=1e-4,
    )
    out = tmp_path / "run"
    train(cfg, out)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["both_ways"] is None  # auto: an aligned dataset trains both ways
    recall = _val_recall(out)
    init = next(r for which, _, r in recall if which == "kmeans")
    trained = [r for which, step, r in recall if which in ("validation", "epoch") and step > 0]
    assert trained, recall
    best = max(trained, key=lambda r: (r["5"], r["1"]))
    # measured (90 validation queries; seeds 0, 1, 2): R@1 0.167 -> 0.333, 0.189 -> 0.333, 0.189 -> 0.433
    assert best["1"] >= init["1"] + 0.08 and best["5"] >= init["5"], (init, best)
    # the deployed model is a trained one, not the k-means initialisation, and wins on the test stretch too
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_step"] > 0
    test_trained = evaluate_checkpoint(out / "model.pt", nordland_slice, "test").recall
    test_init = evaluate_checkpoint(out / "init.pt", nordland_slice, "test").recall
    # measured (126 test queries; seeds 0, 1, 2): R@1 0.183 -> 0.286, 0.167 -> 0.325, 0.222 -> 0.365
    assert test_trained[1] >= test_init[1] + 0.05, (test_init, test_trained)
    assert np.isclose(summary["raw"]["test"]["recall"]["1"], test_trained[1], atol=0.01)
