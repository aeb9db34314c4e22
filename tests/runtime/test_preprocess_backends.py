"""Preprocessing and the backends, against a real ONNX Runtime session over a real ONNX model."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from runtime import Preprocessor, open_backend
from runtime.errors import ArtifactError, BackendError, ConfigError, ModelCardError
from runtime.model.backends.onnxruntime import OnnxRuntimeBackend, choose_provider
from runtime.model.card import write_sidecar
from tests.conftest import requires_tensorrt
from tests.runtime.helpers import make_onnx_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_onnx_model(tmp_path_factory.mktemp("model") / "model.onnx")


def test_preprocess_resizes_and_converts_colour(model):
    _, card = model
    pre = Preprocessor(card)
    bgr = np.zeros((96, 128, 3), np.uint8)
    bgr[..., 0] = 200  # blue in BGR
    out = pre(bgr, color="BGR")
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[0, 0].tolist() == [0, 0, 200]  # RGB: blue last
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert np.array_equal(pre(rgb, color="RGB"), out)
    same = np.ascontiguousarray(out)
    assert pre(same, color="RGB") is same  # nothing to do: no copy
    grey = np.full((10, 20), 7, np.uint8)
    assert pre(grey).shape == (48, 64, 3) and int(pre(grey).max()) == 7
    assert pre(np.zeros((96, 128, 4), np.uint8)).shape == (48, 64, 3)
    # the resize policy: INTER_AREA when shrinking
    big = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    expected = cv2.cvtColor(cv2.resize(big, (64, 48), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pre(big), expected)
    assert pre.batch([big, big]).shape == (2, 48, 64, 3)


def test_preprocess_rejects_bad_frames(model):
    pre = Preprocessor(model[1])
    with pytest.raises(ConfigError, match=re.escape("a frame must be uint8 (0-255), got float32 (4, 4, 3)")):
        pre(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ConfigError, match=re.escape("got shape (4, 4, 5)")):
        pre(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ConfigError, match="color must be one of"):
        pre(np.zeros((4, 4, 3), np.uint8), color="YUV")


def test_onnxruntime_backend_runs_and_validates(model):
    path, card = model
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    with open_backend(path) as backend:
        assert isinstance(backend, OnnxRuntimeBackend) and backend.card == card
        assert backend.device == "CPUExecutionProvider"
        out = backend.infer(images)
        assert out.shape == (5, 64) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        # batches give the same descriptors as single images
        singles = np.concatenate([backend.infer(images[i : i + 1]) for i in range(5)])
        np.testing.assert_allclose(singles, out, atol=1e-6)
        np.testing.assert_allclose(backend.infer(images, batch_size=2), out, atol=1e-6)
        assert backend.infer(images[:0]).shape == (0, 64)
        with pytest.raises(ConfigError, match=re.escape("batch_size must be >= 1, got 0")):
            backend.infer(images, batch_size=0)
        expected = (
            "onnxruntime backend expects uint8 images (N, 48, 64, 3) NHWC RGB, got float32 (5, 48, 64, 3); "
            "convert frames with runtime.model.preprocess.Preprocessor(card)"
        )
        with pytest.raises(ConfigError, match=re.escape(expected)):
            backend.infer(images.astype(np.float32))
        with pytest.raises(ConfigError, match=re.escape("got uint8 (48, 64, 3)")):
            backend.infer(images[0])
        with pytest.raises(ConfigError, match=re.escape("got uint8 (1, 64, 48, 3)")):
            backend.infer(np.zeros((1, 64, 48, 3), np.uint8))
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="is closed"):
        backend.infer(images)


def test_fixed_batch_model_splits_and_pads(tmp_path):
    """A fixed-batch model takes any N: infer splits into its batch and pads the last chunk."""
    path, _ = make_onnx_model(tmp_path / "fixed.onnx", batch=2)
    dynamic, _ = make_onnx_model(tmp_path / "dynamic.onnx")
    images = np.random.default_rng(3).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    with open_backend(path, threads=1) as backend, open_backend(dynamic, threads=1) as reference:
        assert (backend.min_batch, backend.max_batch) == (2, 2)
        calls = []
        run = backend._infer
        backend._infer = lambda x: calls.append(x.shape[0]) or run(x)
        out = backend.infer(images)
        assert calls == [2, 2]  # 2 images, then 1 image padded to 2
        np.testing.assert_allclose(out, reference.infer(images), atol=1e-6)


def test_broken_models_give_clear_errors(model, tmp_path):
    path, card = model
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        ArtifactError, match="cannot be loaded by onnxruntime .*truncated, corrupt or not ONNX"
    ):
        open_backend(truncated)
    with pytest.raises(
        ArtifactError, match=re.escape(f"ONNX model '{tmp_path / 'missing.onnx'}' does not exist")
    ):
        open_backend(tmp_path / "missing.onnx")
    with pytest.raises(ArtifactError, match="cannot tell the backend of .* from its suffix '.pt'"):
        open_backend(tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=re.escape("backend 'tensorrt' opens ['.engine', '.plan'] files")):
        open_backend(path, backend="tensorrt")
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelCardError, match="has no netvlad-kit model card"):
        open_backend(bare)
    # an engine without its sidecar card fails before TensorRT is even needed
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelCardError, match=re.escape(f"expected its JSON sidecar at '{engine}.json'")):
        open_backend(engine)
    write_sidecar(engine, card)


def test_provider_choice_is_explicit():
    assert choose_provider("auto", ["CPUExecutionProvider"]) == "cpu"
    assert choose_provider("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    with pytest.raises(BackendError, match="provider 'cuda' .* is not available"):
        choose_provider("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="provider must be one of"):
        choose_provider("gpu", [])


@requires_tensorrt
def test_tensorrt_rejects_a_truncated_engine(model, tmp_path):
    engine = tmp_path / "bad.engine"
    engine.write_bytes(b"not an engine")
    write_sidecar(engine, model[1])
    with pytest.raises(ArtifactError, match="cannot deserialise"):
        open_backend(engine)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_qdq_models_match_fp32(model, tmp_path, precision):
    import onnx

    path, _ = make_onnx_model(tmp_path / f"model.{precision}.onnx", precision=precision)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("QuantizeLinear" in ops) if precision == "int8" else ("Cast" in ops)
    images = np.random.default_rng(2).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    with open_backend(model[0]) as fp32, open_backend(path) as reduced:
        assert (
            reduced.card.precision == precision
            and reduced.card.weights_fingerprint == fp32.card.weights_fingerprint
        )
        a, b = fp32.infer(images), reduced.infer(images)
    assert b.dtype == np.float32 and b.shape == (4, 64)
    cosine = np.sum(a * b, axis=1)
    assert cosine.min() > (0.999 if precision == "fp16" else 0.97), cosine
