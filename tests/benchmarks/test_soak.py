"""netvlad-bench soak on a tiny real model and map: the run session's RSS sampled over N frames."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.soak import SoakConfig, growth
from runtime import build_map
from runtime.errors import ConfigError
from tests.runtime.helpers import make_onnx_model, make_stand_in_world


def test_soak_samples_memory_over_the_frames(tmp_path):
    model, _ = make_onnx_model(tmp_path / "model.onnx")
    dataset = make_stand_in_world(tmp_path / "data", places=10, seed=3)
    build_map(model, dataset, tmp_path / "map")
    args = ["soak", "--model", str(model), "--map", str(tmp_path / "map"), "--images"]
    args += [str(dataset.root / "queries"), "--out", str(tmp_path / "out"), "--frames", "230"]
    result = CliRunner().invoke(app, [*args, "--sample-every", "50", "--warmup", "50", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "soak.json").read_text())
    assert report["frames"] == 230 and report["sample_every"] == 50
    assert len(report["rss_mb"]) == 6  # frames 1, 51, 101, 151, 201 and the end
    assert (
        isinstance(report["kb_per_frame"], float) and report["baseline_mb"] == report["rss_mb"][1]
    )  # frame 51: the first after warm-up
    assert "| 230 |" in (tmp_path / "out" / "soak.md").read_text()


def test_growth_is_the_least_squares_slope_after_warmup():
    # 1 MiB per 1000 frames after warm-up = 1.024 KB per frame; the warm-up jump is ignored
    samples = [100.0, 150.0, 151.0, 152.0, 153.0]  # at frames 1, 1001, 2001, 3001, 4001
    assert growth(samples, 1000, 1000) == {"kb_per_frame": 1.024, "growth_mb": 3.0, "baseline_mb": 150.0}
    assert growth(samples[:2], 1000, 1000)["kb_per_frame"] is None
    with pytest.raises(ConfigError, match="soak needs frames >= 1"):
        SoakConfig(frames=10, warmup=10)
