"""netvlad-bench parity: PyTorch reference vs real ONNX Runtime sessions on a tiny synthetic world."""

import json

import pytest

from benchmarks.artifacts import plan_backends
from benchmarks.parity import ParityBenchConfig, run_parity
from runtime.errors import ArtifactError, ConfigError
from tests.benchmarks.conftest import openvino_labels

pytestmark = pytest.mark.slow
OPENVINO_LABELS = openvino_labels()


def test_parity_report_fp32_matches_reference_and_int8_is_measured(bench_world, tmp_path):
    cfg = ParityBenchConfig(max_db=80, max_queries=40, batch_size=16, threads=1)
    result = run_parity(bench_world.checkpoint, [bench_world.models], bench_world.dataset, tmp_path, cfg)
    labels = [b["label"] for b in result["backends"]]
    assert labels == [
        "PyTorch FP32 (reference)",
        "ORT CPU FP32 (model.onnx)",
        "ORT CPU INT8 QDQ (model.int8-cpu.onnx)",
        *OPENVINO_LABELS,
    ]
    ref, fp32, int8 = result["backends"][:3]
    for ov in result["backends"][3:]:  # OpenVINO on the same files: as close to the reference as ORT is
        gate = {"fp32": 0.9999, "bf16": 0.99, "int8": 0.9}[ov["precision"]]
        assert ov["parity"]["cosine_min" if ov["precision"] != "int8" else "cosine_median"] >= gate, ov[
            "label"
        ]
    assert result["num_db"] == 80 and 0 < result["num_queries"] <= 40
    # the reference against itself is exact; ORT FP32 is the same arithmetic in another order
    assert ref["parity"]["cosine_min"] == pytest.approx(1.0, abs=1e-9)
    assert fp32["parity"]["cosine_min"] >= 0.9999
    assert fp32["parity"]["top1_agreement"] >= 0.97
    for n in ("1", "5", "10", "20"):
        assert abs(fp32["parity"]["recall_change"][n]) <= 0.03
        assert fp32["recall_curve"][int(n)] == pytest.approx(fp32["parity"]["recall"][n])
    # INT8 moves descriptors, but stays close (the NetVLAD head is kept in float)
    assert 0.9 <= int8["parity"]["cosine_median"] < 1.0
    curve = [ref["recall_curve"][n] for n in range(1, 21)]
    assert curve == sorted(curve) and 0.0 < curve[-1] <= 1.0
    skipped = {s["label"]: s["reason"] for s in result["skipped"]}
    assert "TensorRT FP16/INT8" in skipped or any(b["kind"] == "tensorrt" for b in result["backends"])

    data = json.loads((tmp_path / "parity.json").read_text())
    assert data["benchmark"] == "parity" and len(data["backends"]) == 3 + len(OPENVINO_LABELS)
    assert {"recall", "recall_change", "cosine_min", "cosine_p1", "cosine_median", "top1_agreement"} <= set(
        data["backends"][1]["parity"]
    )
    md = (tmp_path / "parity.md").read_text()
    assert "| ORT CPU FP32 (model.onnx) |" in md and "R@20" in md and "parity_recall.png" in md
    png = (tmp_path / "parity_recall.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_parity_rejects_an_artifact_of_other_weights(bench_world, tmp_path):
    import torch

    from training.checkpoint import save_checkpoint
    from training.model import ModelConfig, build_model

    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other.pt", build_model(ModelConfig.preset("tiny")))
    cfg = ParityBenchConfig(max_db=16, max_queries=4, plot=False)
    with pytest.raises(
        ArtifactError, match=r"model\.onnx' was exported from weights [0-9a-f]+ but the checkpoint is"
    ):
        run_parity(other, [bench_world.models / "model.onnx"], bench_world.dataset, None, cfg)


def test_missing_artifact_and_bad_config_are_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match=r"exported model '.*nope\.onnx' does not exist"):
        plan_backends(None, [tmp_path / "nope.onnx"])
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        ParityBenchConfig(batch_size=0)
