"""The OpenVINO backend (real OpenVINO runtime on the CPU) against ONNX Runtime on the same .onnx files."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("openvino", reason="needs openvino (pip install 'netvlad-kit[openvino]')")

from runtime import Localizer, LocalizerConfig, open_backend
from runtime.errors import ArtifactError, ConfigError
from runtime.model.backends.openvino import OpenVINOBackend, cpu_capabilities
from tests.runtime.helpers import make_onnx_model, make_stand_in_world

requires_bf16 = pytest.mark.skipif(
    "BF16" not in cpu_capabilities(), reason="this CPU has no BF16 (OpenVINO OPTIMIZATION_CAPABILITIES)"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("openvino")
    return {p: make_onnx_model(root / f"model.{p}.onnx", precision=p)[0] for p in ("fp32", "fp16", "int8")}


def _images(n: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize(("precision", "at_least"), [("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.99)])
def test_openvino_matches_onnxruntime_on_the_same_file(models, precision, at_least):
    images = _images()
    with (
        open_backend(models[precision], "onnxruntime-cpu") as ort,
        open_backend(models[precision], "openvino", threads=1) as ov,
    ):
        assert isinstance(ov, OpenVINOBackend) and ov.card == ort.card
        assert ov.describe().startswith("openvino on CPU (fp32 inference): model.")
        a, b = ort.infer(images), ov.infer(images)
        assert b.shape == (6, 64) and b.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
        assert np.sum(a * b, axis=1).min() >= at_least
        # batches give the descriptors single images give; any N, 0 included
        singles = np.concatenate([ov.infer(images[i : i + 1]) for i in range(6)])
        np.testing.assert_allclose(singles, b, atol=1e-5)
        assert ov.infer(images[:0]).shape == (0, 64)


@requires_bf16
def test_bf16_inference_of_the_fp32_model_is_near_lossless(models):
    images = _images(8)
    with (
        open_backend(models["fp32"], "onnxruntime-cpu") as ort,
        open_backend(models["fp32"], "openvino-bf16") as bf16,
    ):
        assert bf16.precision == "bf16" and "bf16 inference" in bf16.describe()
        assert np.sum(ort.infer(images) * bf16.infer(images), axis=1).min() >= 0.999


def test_the_localizer_answers_alike_on_openvino(tmp_path, models):
    from runtime import build_map

    dataset = make_stand_in_world(tmp_path / "data", places=30)
    map_dir = build_map(models["fp32"], dataset, tmp_path / "map")
    answers = {}
    for backend in ("onnxruntime-cpu", "openvino"):
        with Localizer.open(models["fp32"], map_dir, backend, LocalizerConfig()) as localizer:
            frames = [dataset.read_image("queries", i)[:, :, ::-1] for i in range(30)]
            answers[backend] = [localizer.localize(f, float(i)).best.place_id for i, f in enumerate(frames)]
    assert answers["openvino"] == answers["onnxruntime-cpu"]


def test_openvino_errors_name_the_problem(models, tmp_path):
    with open_backend(models["fp32"], "openvino") as ov:
        expected = "openvino backend expects uint8 images (N, 48, 64, 3) NHWC RGB, got float32 (6, 48, 64, 3)"
        with pytest.raises(ConfigError, match=re.escape(expected)):
            ov.infer(_images().astype(np.float32))
    with pytest.raises(
        ConfigError, match=re.escape("OpenVINO precision must be one of ['bf16', 'fp32'], got 'int4'")
    ):
        OpenVINOBackend(models["fp32"], precision="int4")
    with pytest.raises(
        ArtifactError, match=re.escape(f"ONNX model '{tmp_path / 'missing.onnx'}' does not exist")
    ):
        open_backend(tmp_path / "missing.onnx", "openvino")
    with pytest.raises(ConfigError, match=re.escape("backend 'openvino' opens ['.onnx'] files")):
        open_backend(tmp_path / "model.engine", "openvino")
