"""GPU settings decided without a GPU: faiss-gpu eligibility of a map index, the ONNX Runtime TensorRT
provider's options from the model card, and the CUDA-graph option's checks (real FAISS indexes, real ONNX
Runtime sessions)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from runtime.errors import ArtifactError, ConfigError
from runtime.map import build_map, read_map_meta
from runtime.map.index import build_index, gpu_unsupported, set_threads, to_gpu
from runtime.model.backends.onnxruntime import (
    DEFAULT_BATCH_RANGE,
    OnnxRuntimeBackend,
    batch_range,
    tensorrt_provider_options,
)
from tests.runtime.helpers import make_onnx_model, make_stand_in_world


@pytest.fixture(scope="module")
def descriptors() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1200, 64)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_small_ivfpq_maps_stay_on_the_cpu_with_the_reason(descriptors, caplog):
    set_threads(1)
    small, info = build_index(descriptors[:400], "ivfpq")
    assert info["pq_bits"] == 6  # ivfpq_sizes: 2**bits centroids need points, so maps under 1,024 get < 8
    reason = gpu_unsupported(small)
    assert reason == (
        "faiss-gpu searches IVF-PQ codes of 8 bits only, this map's are 6 bits (chosen for maps under 1,024 "
        "places); rebuild it with --pq-bits 8 to search it on the GPU"
    )
    with caplog.at_level(logging.WARNING, logger="runtime.map.index"):
        assert to_gpu(small) is small  # no GPU call is made for an index faiss-gpu cannot hold
    assert caplog.messages == [f"map index stays on the CPU: {reason}"]
    big, info = build_index(descriptors, "ivfpq", pq_bits=8)
    flat, _ = build_index(descriptors, "flat")
    assert info["pq_bits"] == 8 and gpu_unsupported(big) is None and gpu_unsupported(flat) is None


@pytest.mark.parametrize(("kind", "factory"), [("fp16", "SQfp16"), ("sq8", "SQ8")])
def test_scalar_quantised_maps_stay_on_the_cpu_with_the_reason(descriptors, caplog, kind, factory):
    index, _ = build_index(descriptors, kind)
    reason = gpu_unsupported(index)
    assert reason == (
        f"faiss-gpu has no flat scalar-quantised index (this map's is {factory}); rebuild it with --index "
        "flat to search it on the GPU"
    )
    with caplog.at_level(logging.WARNING, logger="runtime.map.index"):
        assert to_gpu(index) is index  # searched on the CPU, and the log says why
    assert caplog.messages == [f"map index stays on the CPU: {reason}"]


def test_map_json_says_the_index_was_built_on_the_cpu(tmp_path):
    model, _ = make_onnx_model(tmp_path / "model.onnx")
    dataset = make_stand_in_world(tmp_path / "data", places=12)
    meta = read_map_meta(build_map(model, dataset, tmp_path / "map"))
    assert meta["index"]["built_on"] == "cpu"
    assert meta["index"]["gpu_search"] == "supported"


def _card(tmp_path, precision: str = "fp32", batch: str | None = None, seed: int = 0):
    _, card = make_onnx_model(tmp_path / f"m{seed}.onnx", height=48, width=64, seed=seed)
    card = card.replace(precision=precision, calibration="test" if precision == "int8" else None)
    return card.replace(extra={**card.extra, "batch": batch}) if batch else card


def test_tensorrt_provider_precision_follows_the_card(tmp_path):
    flags = {
        p: {k: v for k, v in tensorrt_provider_options(_card(tmp_path, p), tmp_path).items() if "able" in k}
        for p in ("fp32", "fp16", "int8")
    }
    on = {"trt_engine_cache_enable": "True", "trt_timing_cache_enable": "True"}
    assert flags["fp32"] == {"trt_fp16_enable": "False", "trt_int8_enable": "False", **on}
    assert flags["fp16"] == {"trt_fp16_enable": "True", "trt_int8_enable": "False", **on}
    assert flags["int8"] == {"trt_fp16_enable": "False", "trt_int8_enable": "True", **on}


def test_tensorrt_engine_cache_is_keyed_by_weights_and_profile_spans_the_batch_range(tmp_path):
    card = _card(tmp_path, "fp16", batch="2:4:16")
    options = tensorrt_provider_options(card, tmp_path / "cache")
    fp = card.weights_fingerprint
    assert options["trt_engine_cache_prefix"] == f"netvlad-{fp}-fp16-b2-4-16"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert options["trt_profile_min_shapes"] == "image:2x48x64x3"
    assert options["trt_profile_opt_shapes"] == "image:4x48x64x3"
    assert options["trt_profile_max_shapes"] == "image:16x48x64x3"
    # re-exported weights (another fingerprint) never meet the old engine
    other = tensorrt_provider_options(_card(tmp_path, "fp16", batch="2:4:16", seed=1), tmp_path / "cache")
    assert other["trt_engine_cache_prefix"] != options["trt_engine_cache_prefix"]
    # a card without a batch range (exported before it was recorded) gets the export default
    assert DEFAULT_BATCH_RANGE == "1:8:32" and batch_range(_card(tmp_path)) == (1, 8, 32)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1:8", "the model card's batch range '1:8' is not MIN:OPT:MAX"),
        ("8:4:32", "the model card's batch range '8:4:32' must satisfy 1 <= MIN <= OPT <= MAX"),
        ("0:1:1", "the model card's batch range '0:1:1' must satisfy 1 <= MIN <= OPT <= MAX"),
    ],
)
def test_a_bad_batch_range_in_the_card_is_named(tmp_path, text, message):
    with pytest.raises(ArtifactError, match=re.escape(message)):
        batch_range(_card(tmp_path, batch=text))


def test_cuda_graph_is_refused_without_the_cuda_provider(tmp_path):
    model, _ = make_onnx_model(tmp_path / "model.onnx", batch=4)
    with pytest.raises(ConfigError) as info:
        OnnxRuntimeBackend(model, provider="cpu", cuda_graph=True)
    assert str(info.value) == (
        "cuda_graph needs provider 'cuda', got 'cpu'; drop cuda_graph or choose provider 'cuda'"
    )
    with OnnxRuntimeBackend(model, provider="cpu") as backend:  # the same fixed-batch model runs without
        assert backend.max_batch == backend.min_batch == 4 and not backend.cuda_graph
        images = np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
        out = backend.infer(images)
        assert out.shape == (4, 64) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
