"""FP32 ONNX -> INT8 QDQ ONNX: static post-training quantisation of the backbone, calibrated on user images.

What is quantised and why (measured on the synthetic ``small`` world, see export/README.md):

- The **backbone** convolutions, their ReLU6 activations and residual Adds: symmetric per-channel int8
  weights (what TensorRT's explicit quantisation requires) and per-tensor activations from MinMax
  calibration. ReLU6 bounds every activation to [0, 6], so MinMax is tight and needs few images.
- Kept in **float**: the stem convolution and the first MBConv block (``float_stem_groups=2``): measured
  block by block, they are the most sensitive layers (quantising them alone costs more descriptor cosine
  than all other blocks together: median 0.971 -> 0.992 when they stay float, on 62 database and query
  images of the small world), and they hold ~10% of the backbone's multiply-adds;
- the in-graph preprocessing (cast, scale, mean/std, transpose) and the whole NetVLAD head
  from the feature map on: input L2-normalisation, soft assignment (1x1 conv + softmax), aggregation
  (MatMul, ReduceSum, Mul, Sub), intra- and global normalisation and PCA-whitening. The head is cheap (a
  few percent of the time) and sensitive: intra-normalisation rescales each cluster's residual sum to unit
  length, so a quantisation error in a cluster with little assignment mass is blown up to full size. A
  first attempt that left part of the head quantised moved descriptors to a median cosine of 0.37-0.74.

Two targets, because the fastest activation type differs (:data:`TARGETS`):

- ``"tensorrt"`` -> ``model.int8.onnx``: int8 **symmetric** activations (zero point 0), the form TensorRT's
  strongly typed builder consumes. ONNX Runtime's CPU provider also runs it (it is the accuracy reference
  here), but slowly: with signed activations ReLU6 cannot be folded into the quantisation range, so every
  Clip stays a float op between a DequantizeLinear and a QuantizeLinear.
- ``"cpu"`` -> ``model.int8-cpu.onnx``: uint8 **asymmetric** activations (u8s8, what ONNX Runtime's x86
  kernels prefer). The [0, 6] range of ReLU6 maps onto uint8 exactly, the quantiser drops the Clips, and ONNX
  Runtime fuses every Conv into a QLinearConv and every Add into a QLinearAdd: no float op is left between
  two quantised ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from export.images import ImageSet, iter_batches
from runtime.errors import ArtifactError, ConfigError, DatasetError
from runtime.files import atomic_path
from runtime.model.card import ModelCard, attach_to_onnx, read_onnx_card
from runtime.optional import require

log = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = ("Conv", "Add", "Clip", "Relu")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantise. ``target``: ``"tensorrt"`` (symmetric int8 activations) or ``"cpu"`` (uint8)."""

    target: str = "tensorrt"
    calibration_method: str = "minmax"
    batch_size: int = 8
    quantize_head: bool = False  # measurement says no (module docstring); kept for experiments
    float_stem_groups: int = 2  # leading conv groups kept float: the stem conv and the first MBConv block

    TARGETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tensorrt": {"suffix": ".int8.onnx", "activations": "int8 symmetric", "symmetric": True},
        "cpu": {"suffix": ".int8-cpu.onnx", "activations": "uint8 asymmetric", "symmetric": False},
    }

    def __post_init__(self) -> None:
        if self.target not in self.TARGETS:
            raise ConfigError(f"INT8 target must be one of {tuple(self.TARGETS)}, got {self.target!r}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"calibration method must be one of {CALIBRATION_METHODS}, got {self.calibration_method!r}"
            )
        if not isinstance(self.float_stem_groups, int) or self.float_stem_groups < 0:
            raise ConfigError(f"float_stem_groups must be >= 0, got {self.float_stem_groups!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")


def int8_path(fp32_path: str | os.PathLike, target: str) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (tensorrt) or ``model.int8-cpu.onnx`` (cpu)."""
    fp32_path = Path(fp32_path)
    stem = fp32_path.name[: -len(".onnx")] if fp32_path.name.endswith(".onnx") else fp32_path.name
    return fp32_path.with_name(stem + QuantizeConfig.TARGETS[target]["suffix"])


@dataclass(frozen=True)
class GraphParts:
    """Node names of the three parts of an exported NetVLAD graph."""

    preprocessing: tuple[str, ...]  # uint8 image -> normalised float NCHW
    backbone: tuple[str, ...]  # -> local feature map
    head: tuple[str, ...]  # NetVLAD, normalisations, whitening
    feature_map: str  # the tensor between backbone and head


def split_graph(model_proto: Any) -> GraphParts:
    """Find the backbone of an exported graph: the ancestors of NetVLAD's input normalisation (ReduceL2).

    Nodes are named by the exporter, so the split is structural: the local feature map is the input of
    the first ``ReduceL2``; the preprocessing is everything upstream of the first ``Conv``.
    """
    nodes = list(model_proto.graph.node)
    for node in nodes:  # the dynamo exporter names every node; give the rare unnamed one a name
        if not node.name:
            node.name = f"{node.op_type}_{node.output[0]}"
    first_norm = next((n for n in nodes if n.op_type == "ReduceL2"), None)
    first_conv = next((n for n in nodes if n.op_type == "Conv"), None)
    if first_norm is None or first_conv is None:
        raise ArtifactError(
            "cannot find the backbone in this graph (expected Conv nodes and a ReduceL2 starting NetVLAD); "
            "quantise a model exported by netvlad-export"
        )
    producer = {out: node for node in nodes for out in node.output}

    def ancestors(tensor: str) -> set[str]:
        seen: set[str] = set()
        stack = [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    feature_map = first_norm.input[0]
    upstream = ancestors(feature_map)
    preprocessing = ancestors(first_conv.input[0])
    order = [n.name for n in nodes]
    return GraphParts(
        preprocessing=tuple(n for n in order if n in preprocessing),
        backbone=tuple(n for n in order if n in upstream and n not in preprocessing),
        head=tuple(n for n in order if n not in upstream),
        feature_map=feature_map,
    )


def leading_conv_groups(model_proto: Any, parts: GraphParts, count: int) -> list[str]:
    """Node names of the first ``count`` conv groups of the backbone, with their activations.

    Group 0 is the stem convolution; each later group ends at a linear projection (a Conv whose output
    feeds no Clip/Relu), so for EfficientNet-Lite a group is one MBConv block without its residual Add.
    """
    nodes = {n.name: n for n in model_proto.graph.node}
    consumers: dict[str, list[str]] = {}
    for node in model_proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)

    def activations(conv: str) -> list[str]:
        return [c for c in consumers.get(nodes[conv].output[0], []) if nodes[c].op_type in ("Clip", "Relu")]

    groups: list[list[str]] = []
    current: list[str] = []
    for name in parts.backbone:
        if nodes[name].op_type != "Conv":
            continue
        acts = activations(name)
        current += [name, *acts]
        if not groups or not acts:  # the stem, or a projection: the group ends here
            groups.append(current)
            current = []
    return [name for group in groups[:count] for name in group]


class _QuantizerNoise(logging.Filter):
    """ONNX Runtime's quantiser logs per-channel notes and a pre-processing hint on the *root* logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname.replace("\\", "/").split("site-packages/")[-1][:12]


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    noise = _QuantizerNoise()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(noise)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(noise)


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over an image set, one uint8 batch at a time."""

    def __init__(self, images: ImageSet, card: ModelCard, batch_size: int, progress: Callable | None) -> None:
        self._batches: Iterator[np.ndarray] = iter_batches(images.paths, card, batch_size)
        self._input = card.input_name
        self._progress = progress

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        if self._progress is not None:
            self._progress(len(batch))
        return {self._input: batch}

    def rewind(self) -> None:  # part of the CalibrationDataReader protocol; one pass is enough for us
        pass


def quantize_int8(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    images: ImageSet,
    cfg: QuantizeConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Quantise ``fp32_onnx`` to the QDQ model ``out`` (written atomically), calibrated on ``images``.

    ``progress`` is called with the number of images of each calibration batch. The INT8 card names the
    calibration set and records the target and what was quantised (``extra["int8"]``).
    """
    quantization = require("onnxruntime.quantization", "INT8 quantisation")
    onnx = require("onnx", "INT8 quantisation")
    cfg = cfg or QuantizeConfig()
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    if len(images) == 0:
        raise DatasetError(f"calibration set {images.description} holds no images")
    card = read_onnx_card(fp32_onnx)
    if card.precision != "fp32":
        raise ArtifactError(f"'{fp32_onnx}' is a {card.precision} model; quantise the FP32 export")
    fp32_proto = onnx.load(str(fp32_onnx))
    parts = split_graph(fp32_proto)
    stem = leading_conv_groups(fp32_proto, parts, cfg.float_stem_groups)
    exclude = list(parts.preprocessing) + stem + ([] if cfg.quantize_head else list(parts.head))
    target = QuantizeConfig.TARGETS[cfg.target]
    act = quantization.QuantType.QInt8 if target["symmetric"] else quantization.QuantType.QUInt8
    method = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "percentile": quantization.CalibrationMethod.Percentile,
        "entropy": quantization.CalibrationMethod.Entropy,
    }[cfg.calibration_method]
    log.info(
        "quantising %s for %s: %d of %d backbone nodes (stem kept float), %s activations, %s calibration on %s",
        fp32_onnx.name,
        cfg.target,
        len(parts.backbone) - len(stem),
        len(parts.backbone),
        target["activations"],
        cfg.calibration_method,
        images.description,
    )
    with atomic_path(out) as tmp, _quiet_quantizer():
        quantization.quantize_static(
            str(fp32_onnx),
            str(tmp),
            _CalibrationReader(images, card, cfg.batch_size, progress),
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=act,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=exclude,
            calibrate_method=method,
            extra_options={"ActivationSymmetric": target["symmetric"], "WeightSymmetric": True},
        )
        proto = onnx.load(str(tmp))
        summary = describe_quantization(proto)
        int8_card = card.replace(
            precision="int8",
            calibration=images.description,
            extra={
                **card.extra,
                "int8": {
                    "target": cfg.target,
                    "activations": target["activations"],
                    "weights": "int8 symmetric per-channel",
                    "calibration_method": cfg.calibration_method,
                    "float_stem_groups": cfg.float_stem_groups,
                    "quantized_nodes": summary["quantized"],
                    "float_nodes": summary["float"],
                },
            },
        )
        attach_to_onnx(proto, int8_card)
        onnx.save(proto, str(tmp))
    log.info("wrote %s: quantised %s; float %s", out, summary["quantized"], summary["float"])
    return out


def describe_quantization(model_proto: Any) -> dict[str, dict[str, int]]:
    """Which op types of a QDQ model are quantised (an input comes from a DequantizeLinear) and which float."""
    nodes = list(model_proto.graph.node)
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    for node in nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        (quantized if dequantized.intersection(node.input) else floating)[node.op_type] += 1
    return {"quantized": dict(sorted(quantized.items())), "float": dict(sorted(floating.items()))}


def ort_kernels(onnx_path: str | os.PathLike, threads: int = 2) -> dict[str, int]:
    """The kernels ONNX Runtime's CPU provider actually runs: op types (with domain) of its optimised graph."""
    from runtime.model.backends.onnxruntime import create_session

    onnx = require("onnx", "inspecting ONNX Runtime kernels")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        create_session(onnx_path, threads=threads, optimized_model_path=optimized)
        proto = onnx.load(str(optimized), load_external_data=False)
    counts = Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)
    return dict(sorted(counts.items()))
