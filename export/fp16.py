"""FP32 ONNX -> FP16 ONNX for the GPU providers and TensorRT's strongly typed builder.

The backbone runs in float16; the in-graph preprocessing and the NetVLAD head (normalisations, soft
assignment, aggregation, whitening) stay float32, with exactly two Cast nodes at the boundaries (normalised
image -> float16, feature map -> float32). Why the head stays float32: NetVLAD divides by
``max(‖v‖, 1e-12)``, and 1e-12 underflows to 0 in float16, so a cluster whose soft-assignment mass underflows
would give 0/0 = NaN; the head is also a few percent of the work. Inputs (uint8 images) and outputs (float32
descriptors) keep their types, so every backend feeds it the same way. In a strongly typed TensorRT network
these types *are* the precision: nothing else selects FP16.

Why not ``onnxruntime.transformers.float16.convert_float_to_float16`` with a node block list: it converts
every shared constant and wraps each blocked node in a float32->float16->float32 Cast pair (53 Casts on the
default model), which rounds the head's intermediate values to float16 after all and turns the 1e-12 clamp
into 0. The conversion here is structural and small: the backbone is a plain chain of Conv/Clip/Add.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from export.quantize import split_graph
from runtime.errors import ArtifactError
from runtime.files import atomic_write_bytes
from runtime.model.card import attach_to_onnx, read_onnx_card
from runtime.optional import require

log = logging.getLogger(__name__)

FP16_MAX = 65504.0


def fp16_path(fp32_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx``."""
    fp32_path = Path(fp32_path)
    stem = fp32_path.name[: -len(".onnx")] if fp32_path.name.endswith(".onnx") else fp32_path.name
    return fp32_path.with_name(stem + ".fp16.onnx")


def float16_summary(model_proto: Any) -> dict[str, int]:
    """How many initializers are float16 / float32 and how many Cast nodes the graph holds."""
    onnx = require("onnx", "FP16 conversion")
    types = Counter(init.data_type for init in model_proto.graph.initializer)
    return {
        "fp16_initializers": types.get(onnx.TensorProto.FLOAT16, 0),
        "fp32_initializers": types.get(onnx.TensorProto.FLOAT, 0),
        "casts": sum(1 for n in model_proto.graph.node if n.op_type == "Cast"),
    }


def to_float16(model_proto: Any) -> Any:
    """A copy of ``model_proto`` whose backbone (see :func:`export.quantize.split_graph`) runs in float16."""
    onnx = require("onnx", "FP16 conversion")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(model_proto)
    graph = model.graph
    parts = split_graph(model)
    backbone = set(parts.backbone)
    nodes = list(graph.node)
    first = next(n for n in nodes if n.name in backbone)
    image_tensor = next(i for i in first.input if i)  # normalised float32 NCHW image
    inits = {init.name: init for init in graph.initializer}
    users: dict[str, set[str]] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, set()).add(node.name)

    renamed: dict[str, str] = {}
    for name, init in inits.items():
        if init.data_type != TensorProto.FLOAT or not users.get(name, set()) & backbone:
            continue
        values = numpy_helper.to_array(init)
        if np.abs(values).max(initial=0.0) > FP16_MAX:
            raise ArtifactError(f"weight '{name}' exceeds the float16 range ({np.abs(values).max():g})")
        half = numpy_helper.from_array(values.astype(np.float16), name + "_fp16")
        graph.initializer.append(half)
        renamed[name] = half.name
    for node in nodes:
        if node.name not in backbone:
            continue
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
            elif name == image_tensor:
                node.input[i] = image_tensor + "_fp16"
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
        if node.op_type == "Cast":
            raise ArtifactError(f"unexpected Cast '{node.name}' inside the backbone; cannot convert to FP16")
    feature = parts.feature_map
    for node in nodes:  # the head reads the float32 copy of the feature map
        if node.name not in backbone:
            for i, name in enumerate(node.input):
                if name == feature:
                    node.input[i] = feature + "_fp32"
    unused = [init for init in graph.initializer if init.name in renamed and not users[init.name] - backbone]
    for init in unused:
        graph.initializer.remove(init)
    to_half = helper.make_node(
        "Cast", [image_tensor], [image_tensor + "_fp16"], to=TensorProto.FLOAT16, name="cast_image_to_fp16"
    )
    to_float = helper.make_node(
        "Cast", [feature], [feature + "_fp32"], to=TensorProto.FLOAT, name="cast_features_to_fp32"
    )
    ordered = []
    for node in nodes:
        if node is first:
            ordered.append(to_half)
        ordered.append(node)
        if feature in node.output:
            ordered.append(to_float)
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.value_info[:]  # stale float32 types; re-inferred below
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def convert_fp16(fp32_onnx: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the FP16 variant of ``fp32_onnx`` to ``out`` (atomically, card precision ``fp16``)."""
    onnx = require("onnx", "FP16 conversion")
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    card = read_onnx_card(fp32_onnx)
    if card.precision != "fp32":
        raise ArtifactError(f"'{fp32_onnx}' is a {card.precision} model; convert the FP32 export to FP16")
    converted = to_float16(onnx.load(str(fp32_onnx)))
    summary = float16_summary(converted)
    attach_to_onnx(converted, card.replace(precision="fp16", extra={**card.extra, "fp16": summary}))
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        raise ArtifactError(f"FP16 conversion of '{fp32_onnx}' is not valid ONNX: {exc}") from exc
    atomic_write_bytes(out, converted.SerializeToString())
    log.info("wrote %s (%s; preprocessing and NetVLAD head kept float32)", out, summary)
    return out
