"""One small real world for the benchmark tests: a tiny synthetic dataset, a tiny model, its ONNX exports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.optional import available


@dataclass(frozen=True)
class BenchWorld:
    dataset: Path
    checkpoint: Path
    models: Path  # folder with model.onnx and model.int8-cpu.onnx


@pytest.fixture(scope="session")
def bench_world(tmp_path_factory) -> BenchWorld:
    if not (available("torch") and available("onnx") and available("onnxscript")):
        pytest.skip("needs torch and onnx (pip install 'netvlad-kit[train,export]')")
    import torch

    from export.config import ExportConfig
    from export.images import open_image_set
    from export.onnx import export_onnx
    from export.quantize import QuantizeConfig, int8_path, quantize_int8
    from training.checkpoint import save_checkpoint
    from training.model import ModelConfig, build_model
    from training.synth import SynthConfig, generate

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("bench_world")
    synth = SynthConfig.preset("tiny", seed=0, route_length_m=500.0, height=96, width=128, write_video=False)
    dataset = generate(synth, root / "synth")
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny"))
    checkpoint = save_checkpoint(root / "model.pt", model)
    models = root / "models"
    models.mkdir()
    onnx_path = export_onnx(checkpoint, models / "model.onnx", ExportConfig())
    quantize_int8(
        onnx_path,
        int8_path(onnx_path, "cpu"),
        open_image_set(str(dataset)).subset(24),
        QuantizeConfig(target="cpu"),
    )
    return BenchWorld(dataset=Path(dataset), checkpoint=checkpoint, models=models)


def openvino_labels() -> list[str]:
    """The OpenVINO rows the benchmarks add for the test bench's two models (none without openvino)."""
    from runtime.optional import available

    if not available("openvino"):
        return []
    from runtime.model.backends.openvino import cpu_capabilities

    bf16 = ["OpenVINO BF16 inference (model.onnx)"] if "BF16" in cpu_capabilities() else []
    return ["OpenVINO FP32 (model.onnx)", *bf16, "OpenVINO INT8 QDQ (model.int8-cpu.onnx)"]
