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
    check_gpu_supports("fp16", (5, 3))  # Nano
    with pytest.raises(BackendError) as info:
        check_gpu_supports("int8", (5, 3))
    assert str(info.value) == (
        "this GPU (compute capability 5.3) cannot run int8 engines (needs 6.1 or newer); build a wider "
        "precision, e.g. --onnx / --fp16, or use another GPU"
    )


@requires_torch
def test_the_onnx_must_hold_the_precision_its_card_names(tiny_onnx, tmp_path):
    import onnx

    from export.fp16 import convert_fp16, fp16_path
    from export.tensorrt import check_precision, onnx_precision
    from runtime.card import attach_to_onnx, read_onnx_card

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
    from runtime.card import read_sidecar

    onnx_path = Path(shutil.copy(tiny_onnx, tmp_path / "model.onnx"))
    for source in (onnx_path, convert_fp16(onnx_path, tmp_path / "model.fp16.onnx")):
        engine = build_engine(source, batch=BatchRange(1, 2, 4))
        card = read_sidecar(engine)
        assert card.extra["tensorrt"]["batch"] == "1:2:4"
        assert engine.stat().st_size > 0
    assert (tmp_path / "timing.cache").stat().st_size > 0
