"""The prepared GPU run on whatever this machine has (the CPU path in CI): real ONNX Runtime sessions, real
FAISS maps, a real training subprocess; parity numbers within the export gate's thresholds, every latency a
finite number, missing capabilities named, failures reported as errors rather than swallowed."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from benchmarks.gpu import h100, localize, probe, train
from benchmarks.gpu.common import collect_errors, guarded, parity

pytestmark = pytest.mark.slow


def _latencies(node, path=""):
    """Every latency entry under ``node``: (path, entry)."""
    if isinstance(node, dict):
        if "p50_ms" in node:
            yield path, node
        for key, value in node.items():
            yield from _latencies(value, f"{path}/{key}")


@pytest.fixture(scope="module")
def gpu_run(bench_world, tmp_path_factory):
    from export.fp16 import convert_fp16, fp16_path
    from runtime import open_dataset
    from training.checkpoint import load_model

    out = tmp_path_factory.mktemp("gpu_run")
    fp32 = shutil.copy(bench_world.models / "model.onnx", out / "model.onnx")
    entry = {
        "model": load_model(bench_world.checkpoint),
        "fp32": fp32,
        "fp16": convert_fp16(fp32, fp16_path(fp32)),
    }
    dataset = open_dataset(str(bench_world.dataset))
    caps = probe.capabilities()
    result = {
        "capabilities": {k: v or "present" for k, v in caps.items()},
        "inference": {"tiny": h100.inference_section(entry, dataset, out, caps, quick=True, repeats=3)},
        "localizer": localize.localizer_end_to_end(fp32, dataset, out, caps),
    }
    result["errors"] = collect_errors(result)
    return result, caps, dataset


def test_every_inference_path_matches_the_cpu_reference_or_says_why_not(gpu_run):
    result, caps, _ = gpu_run
    assert result["errors"] == []
    section = result["inference"]["tiny"]
    backend = section["backend"]
    assert backend["provider"] == ("cpu" if caps["ort_cuda"] else "cuda")
    fp32, fp16 = backend["fp32"]["parity"], backend["fp16"]["parity"]
    assert fp32["passed"] and fp32["cosine_min"] >= 0.9999 and fp32["top1_agreement"] == 1.0
    assert fp16["passed"] and fp16["cosine_median"] >= 0.9999 and fp16["top1_agreement"] >= 0.97
    assert fp32["images"] == sum(section["eval_images"]) and section["eval_images"][1] >= 8
    # PyTorch FP32 beside its FP16 copy: the FP32 module stays FP32 (the in-place .half() bug made it fail)
    torch_section = section["torch"]
    assert torch_section["device"] == ("cpu" if caps["torch_cuda"] else "cuda")
    assert torch_section["fp32_parity"]["passed"] and torch_section["fp32_parity"]["cosine_min"] >= 0.9999
    assert torch_section["fp16_parity"]["cosine_median"] >= 0.999
    graph = section["cuda_graph"]
    if caps["ort_cuda"]:
        assert graph["missing"] == f"CUDA graphs need the CUDA provider: {caps['ort_cuda']}"
        # the batch-1 copy made for CUDA graphs gives the same descriptors as the dynamic-batch model
        assert graph["fixed_batch_on_cpu"]["fp32"]["parity"]["cosine_min"] >= 0.99999
        assert graph["fixed_batch_on_cpu"]["fp32"]["device"] == "CPUExecutionProvider"
    else:
        assert graph["fp32"]["parity"]["passed"] and graph["fp32"]["device"] == "CUDAExecutionProvider"
    for name, capability in (("ort_tensorrt", "ort_tensorrt"), ("tensorrt", "tensorrt")):
        if caps[capability]:
            assert section[name] == {"missing": caps[capability]}
    if caps["ort_tensorrt"]:
        assert section["qdq_int8_flag"] == {"missing": caps["ort_tensorrt"]}
    timings = dict(_latencies(section))
    assert {"/backend/fp32/b1", "/backend/fp16/b8", "/torch/fp32_b1", "/torch/fp16_b1"} <= set(timings)
    for path, entry in timings.items():
        assert entry["n"] == 3 and entry["batch"] == int(path.rsplit("b", 1)[1]), path
        assert math.isfinite(entry["p50_ms"]) and 0 < entry["p50_ms"] <= entry["p99_ms"], path


def test_the_localizer_end_to_end_reports_every_stage(gpu_run):
    result, caps, dataset = gpu_run
    loc = result["localizer"]
    assert loc["map"] == {"places": dataset.num_db, "index": "Flat", "built_on": "cpu"}
    assert loc["queries"] == dataset.num_queries
    for stage in localize.STAGES:
        entry = loc["cpu"][stage]
        assert entry["n"] == dataset.num_queries and math.isfinite(entry["p99_ms"]) and entry["p50_ms"] >= 0
    assert loc["cpu"]["total"]["p50_ms"] >= loc["cpu"]["inference"]["p50_ms"]
    if caps["ort_cuda"]:
        assert loc["gpu"] == {"missing": caps["ort_cuda"]}
    else:
        assert loc["top1_agreement_gpu_vs_cpu"] >= 0.95


def test_the_table_names_what_is_missing_and_the_parity(gpu_run):
    result, caps, _ = gpu_run
    table = h100.summary_table(result).splitlines()
    assert table[0] == "device: no CUDA device" or not caps["torch_cuda"]
    for name, why in caps.items():
        if why:
            assert f"missing {name}: {why}" in table
    assert any(row.startswith("inference tiny backend fp32 parity") and row.endswith(" ok") for row in table)
    assert table[-1] == "errors: 0"


def test_parity_fails_a_candidate_that_drifts():
    rng = np.random.default_rng(0)
    db, q = rng.standard_normal((20, 16)), rng.standard_normal((10, 16))
    same = parity((db, q), (db.copy(), q.copy()), "fp32")
    assert same["passed"] and same["cosine_min"] == pytest.approx(1.0) and same["top1_agreement"] == 1.0
    drifted = parity((db, q), (db + 0.3 * rng.standard_normal(db.shape), q), "fp16")
    assert not drifted["passed"]
    assert drifted["failures"][0].startswith("cosine min 0.9") and drifted["failures"][0].endswith("< 0.999")


def test_a_failing_step_is_an_error_in_the_json_and_the_exit_status(bench_world, tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    args = [
        "--quick",
        "--sections",
        "localizer",
        "--checkpoint",
        str(missing),
        "--dataset",
        str(bench_world.dataset),
    ]
    status = h100.main([*args, "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert status == 1
    assert [e.split(":")[0] for e in result["errors"]] == ["models/missing", "localizer"]
    assert str(missing) in result["errors"][0] and "trace" in result["models"]["missing"]
    assert result["errors"][1] == "localizer: no model or dataset (see models / world)"
    printed = capsys.readouterr().out
    assert "errors: 2" in printed and result["errors"][0][:100] in printed


def test_training_steps_checkpoint_and_resume(bench_world, tmp_path):
    entry = train.training_steps(tmp_path, "cpu", 1, "tiny", str(bench_world.dataset))
    assert entry["resumed"] and (entry["steps_before_resume"], entry["steps_after_resume"]) == (1, 2)
    assert entry["mixed_precision"] is False  # AMP is for CUDA only
    assert entry["refreshes"] >= 1
    for key in ("refresh_images_per_s", "train_images_per_s"):
        assert math.isfinite(entry[key]) and entry[key] > 0
    failed = guarded(lambda: train.training_steps(tmp_path, "cpu", 1, "tiny", str(tmp_path / "nowhere")))
    assert (
        failed["error"].startswith("RuntimeError: training.train --out ") and " exited 2: " in failed["error"]
    )
