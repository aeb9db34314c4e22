"""netvlad-bench latency: real backends through the runtime's stages; structure and equality, no timing limits."""

import json

import pytest

from benchmarks.latency import STAGES, LatencyConfig, run_latency
from runtime.errors import ConfigError

pytestmark = pytest.mark.slow


def test_latency_per_stage_per_backend_and_netvlad_forms(bench_world, tmp_path):
    cfg = LatencyConfig(
        batch_sizes=(1, 4), frames=8, warmup_batches=1, map_size=500, netvlad_repeats=3, threads=1
    )
    result = run_latency(bench_world.checkpoint, [bench_world.models], bench_world.dataset, tmp_path, cfg)
    labels = [b["label"] for b in result["backends"]]
    assert labels == [
        "PyTorch FP32 (reference)",
        "ORT CPU FP32 (model.onnx)",
        "ORT CPU INT8 QDQ (model.int8-cpu.onnx)",
    ]
    assert result["map"] == {"places": 500, "dim": 8 * 112, "index": "IndexFlatIP (exact)"}
    assert result["frame_size"] == "96x128"
    for backend in result["backends"]:
        assert set(backend["by_batch"]) == {"1", "4"}
        for batch, stages in backend["by_batch"].items():
            assert set(stages) == set(STAGES)
            for s in stages.values():
                assert s["batch"] == int(batch) and s["n"] >= 3
                assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
            parts = sum(stages[s]["mean_ms"] for s in STAGES[:-1])
            assert stages["end_to_end"]["mean_ms"] == pytest.approx(parts, rel=1e-6)
    forms = result["netvlad_forms"]
    assert forms["num_clusters"] == 8 and forms["local_dim"] == 112
    for e in forms["by_batch"].values():
        assert e["max_abs_diff"] < 1e-5  # the loop-free layer equals the per-cluster loop
        assert e["layer_speedup"] > 0 and e["model_speedup"] > 0
    data = json.loads((tmp_path / "latency.json").read_text())
    assert data["machine"]["cores"] >= 1 and "onnxruntime" in data["machine"]["libraries"]
    md = (tmp_path / "latency.md").read_text()
    assert "inference p50" in md and "loop-free vs per-cluster loop" in md


def test_latency_config_and_empty_plan_errors(bench_world):
    with pytest.raises(ConfigError, match=r"batch_sizes must be positive integers, got \(0,\)"):
        LatencyConfig(batch_sizes=(0,))
    with pytest.raises(ConfigError, match="nothing to time: give --checkpoint and/or --models"):
        run_latency(None, [], bench_world.dataset, None, LatencyConfig())
