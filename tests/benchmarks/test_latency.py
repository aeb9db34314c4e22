"""netvlad-bench latency: real backends through the runtime's stages; structure and equality, no timing limits."""

import json

import pytest

from benchmarks.latency import STAGES, LatencyConfig, run_latency
from runtime.errors import ConfigError
from tests.benchmarks.conftest import openvino_labels

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
        *openvino_labels(),
    ]
    assert result["map"] == {"places": 500, "dim": 8 * 112, "index": "IndexFlatIP (exact)"}
    assert result["frame_size"] == "96x128"
    for backend in result["backends"]:
        assert set(backend["by_batch"]) == {"1", "4"}
        for batch, stages in backend["by_batch"].items():
            assert set(stages) == set(STAGES)
            for s in (
                stages.values()
            ):  # 8 frames: 8 timed batches of 1, max(3, 8 // 4) = 3 of 4 (warm-up excluded)
                assert (s["batch"], s["n"]) == (int(batch), {"1": 8, "4": 3}[batch])
                assert s["per_item_p50_ms"] == pytest.approx(s["p50_ms"] / int(batch))
    forms = result["netvlad_forms"]
    assert forms["num_clusters"] == 8 and forms["local_dim"] == 112
    for e in forms["by_batch"].values():
        assert e["max_abs_diff"] < 1e-5  # the loop-free layer equals the per-cluster loop
        # the speed-up is loop over loop-free (a value >1 means the loop-free form is faster), not the inverse
        assert e["layer_speedup"] == pytest.approx(e["layer_loop"]["p50_ms"] / e["layer_loop_free"]["p50_ms"])
    data = json.loads((tmp_path / "latency.json").read_text())
    assert data["machine"]["cores"] >= 1 and "onnxruntime" in data["machine"]["libraries"]
    md = (tmp_path / "latency.md").read_text()
    assert "inference p50" in md and "loop-free vs per-cluster loop" in md


def test_latency_config_and_empty_plan_errors(bench_world):
    with pytest.raises(ConfigError, match=r"batch_sizes must be positive integers, got \(0,\)"):
        LatencyConfig(batch_sizes=(0,))
    with pytest.raises(ConfigError, match="nothing to time: give --checkpoint and/or --models"):
        run_latency(None, [], bench_world.dataset, None, LatencyConfig())


def test_time_pipeline_runs_every_stage_on_the_whole_batch(bench_world):
    """Each timed batch decodes, preprocesses, infers and searches exactly ``batch`` frames (warm-up untimed)."""
    import cv2
    import numpy as np

    from benchmarks.latency import time_pipeline
    from runtime import open_backend
    from runtime.map.index import build_index

    frames = [cv2.imencode(".png", np.full((60, 80, 3), 10 * i, np.uint8))[1].tobytes() for i in range(10)]
    with open_backend(bench_world.models / "model.onnx", "onnxruntime-cpu", threads=1) as backend:
        seen, searched = [], []
        infer = backend.infer
        backend.infer = lambda images: seen.append(images.shape) or infer(images)
        index, _ = build_index(np.eye(backend.card.descriptor_dim, dtype=np.float32)[:20], "flat")

        class CountingIndex:  # the real faiss index, recording what it is asked
            def search(self, x, k):
                searched.append(x.shape)
                return index.search(x, k)

        h, w = backend.card.input_height, backend.card.input_width
        stats = time_pipeline(backend, frames, CountingIndex(), batch=4, k=3, warmup_batches=2)
    dim = backend.card.descriptor_dim
    assert seen == [(4, h, w, 3)] * 5  # 2 warm-up + max(3, 10 // 4) timed batches, each of 4 frames
    assert searched == [(4, dim)] * 5
    assert {stage: stats[stage]["n"] for stage in STAGES} == dict.fromkeys(STAGES, 3)
