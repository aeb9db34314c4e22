"""TensorRT engine building: the checks that run anywhere, and the build itself where tensorrt imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import BackendError
from tests.conftest import requires_cuda, requires_tensorrt, requires_torch


def test_engine_names():
    from export.tensorrt import engine_path

    assert engine_path(Path("out/model.onnx")) == Path("out/model.fp32.engine")
    assert engine_path(Path("out/model.fp16.onnx")) == Path("out/model.fp16.engine")
    assert engine_path(Path("out/model.int8.onnx")) == Path("out/model.int8.engine")


def test_precision_the_gpu_cannot_run_is_refused():
    from export.tensorrt import check_gpu_supports

    check_gpu_supports("int8", (8, 7))  # Orin
    check_gpu_supports("fp16", (7, 2))  # Xavier
    check_gpu_supports("fp32", (7, 0))  # V100: TensorRT 10's floor
    for precision in ("fp32", "fp16", "int8"):  # the Jetson Nano (5.3) and Pascal (6.1) need TensorRT 8
        for capability in ((5, 3), (6, 1)):
            with pytest.raises(BackendError, match=r"TensorRT 10 needs compute capability 7\.0 or newer"):
                check_gpu_supports(precision, capability)
    with pytest.raises(BackendError) as info:
        check_gpu_supports("int8", (6, 1))
    assert str(info.value) == (
        "this GPU (compute capability 6.1) cannot run TensorRT 10 int8 engines (TensorRT 10 needs compute "
        "capability 7.0 or newer); run the ONNX model with ONNX Runtime instead (netvlad-run --model "
        "model.onnx), or use a newer GPU"
    )


@requires_torch
def test_the_onnx_must_hold_the_precision_its_card_names(tiny_onnx, tmp_path):
    import onnx

    from export.fp16 import convert_fp16, fp16_path
    from export.tensorrt import check_precision, onnx_precision
    from runtime.model.card import attach_to_onnx, read_onnx_card

    assert check_precision(tiny_onnx, read_onnx_card(tiny_onnx)) == "fp32"
    half = convert_fp16(tiny_onnx, tmp_path / fp16_path(tiny_onnx).name)
    assert onnx_precision(onnx.load(str(half))) == "fp16"
    # an FP32 graph labelled fp16 would build an FP32 engine under an fp16 name: refused
    proto = onnx.load(str(tiny_onnx))
    attach_to_onnx(proto, read_onnx_card(tiny_onnx).replace(precision="fp16"))
    mislabelled = tmp_path / "mislabelled.onnx"
    onnx.save(proto, str(mislabelled))
    with pytest.raises(BackendError, match=r"is labelled fp16 but its graph holds fp32"):
        check_precision(mislabelled, read_onnx_card(mislabelled))


@requires_torch
@requires_cuda
@requires_tensorrt
def test_build_fp32_and_fp16_engines(tiny_onnx, tmp_path):
    import shutil

    from export.config import BatchRange
    from export.fp16 import convert_fp16
    from export.tensorrt import build_engine
    from runtime.model.card import read_sidecar

    onnx_path = Path(shutil.copy(tiny_onnx, tmp_path / "model.onnx"))
    for source in (onnx_path, convert_fp16(onnx_path, tmp_path / "model.fp16.onnx")):
        engine = build_engine(source, batch=BatchRange(1, 2, 4))
        card = read_sidecar(engine)
        assert card.extra["tensorrt"]["batch"] == "1:2:4"
        assert engine.stat().st_size > 0
    assert (tmp_path / "timing.cache").stat().st_size > 0


@requires_torch
def test_the_onnx_card_records_the_batch_range_gpu_runtimes_optimise_for(tiny_onnx):
    from runtime.model.backends.onnxruntime import batch_range
    from runtime.model.card import read_onnx_card

    card = read_onnx_card(tiny_onnx)
    assert card.extra["batch"] == "1:8:32" and batch_range(card) == (1, 8, 32)
