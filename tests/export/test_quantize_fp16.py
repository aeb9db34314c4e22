"""INT8 QDQ (both targets) and FP16 variants of a real tiny export: structure, card, accuracy, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import DatasetError
from runtime.model.card import read_onnx_card
from tests.conftest import requires_torch

pytestmark = requires_torch


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory, tiny_onnx):
    import cv2

    from export.images import fixed_images

    folder = tmp_path_factory.mktemp("calib")
    # written larger than the model input, so the runtime's resize runs as in deployment
    card = read_onnx_card(tiny_onnx).replace(input_height=96, input_width=128)
    for i, image in enumerate(fixed_images(card, 12, seed=7)):
        cv2.imwrite(str(folder / f"img{i:02d}.png"), image[:, :, ::-1])
    return folder


@pytest.fixture(scope="module")
def quantized(tiny_onnx, calib_dir):
    from export.images import open_image_set
    from export.quantize import QuantizeConfig, int8_path, quantize_int8

    images = open_image_set(calib_dir)
    return {
        t: quantize_int8(tiny_onnx, int8_path(tiny_onnx, t), images, QuantizeConfig(target=t, batch_size=4))
        for t in ("tensorrt", "cpu")
    }


def _descriptors(path, images):
    from runtime import open_backend

    with open_backend(path, "onnxruntime-cpu", threads=1) as backend:
        return backend.infer(images)


def test_int8_structure_and_card(quantized, calib_dir):
    import onnx
    from onnx import numpy_helper

    from export.quantize import describe_quantization

    for target, path in quantized.items():
        assert path.name == {"tensorrt": "model.int8.onnx", "cpu": "model.int8-cpu.onnx"}[target]
        card = read_onnx_card(path)
        assert (
            card.precision == "int8"
            and str(calib_dir) in card.calibration
            and "12 images" in card.calibration
        )
        proto = onnx.load(str(path))
        summary = describe_quantization(proto)
        # the backbone's convolutions are quantised but for the stem and first block; NetVLAD's head stays float
        assert summary["quantized"]["Conv"] == 30
        for op in ("Softmax", "MatMul", "ReduceSum", "Sub"):
            assert summary["float"][op] >= 1 and op not in summary["quantized"]
        assert summary["float"]["Conv"] == 4  # stem, first block's depthwise + projection, soft assignment
        assert card.extra["int8"]["target"] == target
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        weight_dq = [
            n
            for n in proto.graph.node
            if n.op_type == "DequantizeLinear"
            and inits.get(n.input[0]) is not None
            and inits[n.input[0]].ndim == 4
        ]
        assert len(weight_dq) >= 30
        for node in weight_dq:  # symmetric per-channel int8 weights: zero point 0, one scale per channel
            w, scale, zero = inits[node.input[0]], inits[node.input[1]], inits[node.input[2]]
            assert w.dtype == np.int8 and scale.shape == (w.shape[0],) and not zero.any()
        act_zero = [
            inits[n.input[2]]
            for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and n.input[2] in inits
        ]
        if target == "tensorrt":
            assert all(z.dtype == np.int8 and not z.any() for z in act_zero)  # symmetric activations
        else:
            assert all(z.dtype == np.uint8 for z in act_zero)


def test_stem_groups(tiny_onnx):
    import onnx

    from export.quantize import leading_conv_groups, split_graph

    proto = onnx.load(str(tiny_onnx))
    parts = split_graph(proto)
    ops = {n.name: n.op_type for n in proto.graph.node}
    assert [ops[n] for n in leading_conv_groups(proto, parts, 1)] == ["Conv", "Clip"]
    assert [ops[n] for n in leading_conv_groups(proto, parts, 2)] == ["Conv", "Clip", "Conv", "Clip", "Conv"]
    assert len(leading_conv_groups(proto, parts, 3)) == 5 + 5  # expand, ReLU6, depthwise, ReLU6, projection
    assert parts.head[0] in {n.name for n in proto.graph.node if n.op_type == "ReduceL2"}


def test_cpu_target_runs_fused_int8_kernels(quantized):
    from export.quantize import ort_kernels

    cpu = ort_kernels(quantized["cpu"])
    trt = ort_kernels(quantized["tensorrt"])
    assert cpu["com.microsoft.QLinearConv"] == 30 and cpu.get("com.microsoft.QLinearAdd", 0) >= 1
    # u8 activations absorb ReLU6: only the float stem's 2 ReLU6 and the head's 3 eps clamps remain as Clip
    assert cpu.get("Clip", 0) <= 5 and cpu.get("QuantizeLinear", 0) <= 2
    assert trt.get("Clip", 0) > 10  # signed activations cannot absorb ReLU6


def test_int8_and_fp16_stay_close_to_fp32(tiny_onnx, quantized, calib_dir):
    from export.fp16 import convert_fp16, fp16_path
    from export.images import fixed_images
    from export.parity import compare_images

    card = read_onnx_card(tiny_onnx)
    images = fixed_images(card, 6, seed=11)  # not the calibration images
    ref = _descriptors(tiny_onnx, images)
    for target, path in quantized.items():
        r = compare_images(path.name, "int8", ref, _descriptors(path, images), "6 images")
        assert r.cosine_median >= 0.98 and r.cosine_min >= 0.95, (target, r)
    half = convert_fp16(tiny_onnx, fp16_path(tiny_onnx))
    import onnx

    proto = onnx.load(str(half))
    assert read_onnx_card(half).precision == "fp16"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert sum(n.op_type == "Cast" for n in proto.graph.node) == 3  # uint8 input + two boundaries
    r = compare_images(half.name, "fp16", ref, _descriptors(half, images), "6 images")
    assert r.cosine_min >= 0.999, r


def test_empty_and_unreadable_calibration_sets(tmp_path, tiny_onnx):
    from export.images import load_images, open_image_set

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError) as info:
        open_image_set(empty)
    assert str(info.value) == (
        f"calibration set '{empty}' holds no images (looked for .png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .ppm, "
        ".pgm files, "
        "recursively); name a folder of map or training images, or a dataset folder with database.csv"
    )
    with pytest.raises(DatasetError, match="calibration set '.*missing' does not exist"):
        open_image_set(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    images = open_image_set(broken)
    with pytest.raises(DatasetError, match=r"image '.*a.png' cannot be decoded"):
        load_images(images.paths, read_onnx_card(tiny_onnx))
