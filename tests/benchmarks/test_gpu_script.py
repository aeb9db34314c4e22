"""The prepared GPU run works on the CPU path: real ORT sessions, parity numbers, GPU parts skipped with reasons."""

import numpy as np
import pytest

from benchmarks.gpu.h100 import cuda_reason, ort_cuda_reason, ort_paths, summary_table

pytestmark = pytest.mark.slow


def test_gpu_script_cpu_path_measures_parity_and_names_what_it_skipped(bench_world, tmp_path):
    import shutil

    import torch

    from export.fp16 import convert_fp16, fp16_path
    from export.images import fixed_images
    from training.checkpoint import load_model
    from training.model import DeployModel

    fp32 = shutil.copy(bench_world.models / "model.onnx", tmp_path / "model.onnx")
    entry = {"fp32": fp32, "fp16": convert_fp16(fp32, fp16_path(fp32))}
    model = load_model(bench_world.checkpoint)
    images = fixed_images(model.card(), count=4)
    with torch.inference_mode():
        reference = DeployModel(model).eval()(torch.from_numpy(images)).numpy()
    provider = "cpu" if ort_cuda_reason() else "cuda"
    section = ort_paths(entry, images, reference, batches=(1, 2), repeats=3, provider=provider)
    assert section[f"ort_{provider}_fp32_parity"]["cosine_min"] >= 0.9999
    assert section[f"ort_{provider}_fp16_parity"]["cosine_median"] >= 0.999
    for key in (f"ort_{provider}_fp32_b1", f"ort_{provider}_fp16_b2"):
        assert 0 < section[key]["p50_ms"] <= section[key]["p99_ms"] and section[key]["n"] == 3
    result = {
        "skipped": {
            k: v for k, v in {"torch_cuda": cuda_reason(), "ort_cuda": ort_cuda_reason()}.items() if v
        },
        "models": {"tiny": {"ort": section, "torch": {"skipped": "not timed in this test"}}},
        "search": {"skipped": cuda_reason()} if cuda_reason() else None,
    }
    if result["search"] is not None:
        table = summary_table(result)
        assert table.splitlines()[-1] == f"search: skipped ({cuda_reason()})"
        assert f"tiny ort_{provider}_fp32_b1" in table
        if ort_cuda_reason():
            assert "skipped ort_cuda: onnxruntime" in table and "CUDAExecutionProvider" in table
    assert np.isfinite(reference).all()
