"""Checkpoint -> ONNX: the deployable FP32 model with its card, checked and parity-tested against PyTorch.

The traced module is :class:`training.model.DeployModel`: ``uint8 (N, H, W, 3)`` RGB in, preprocessing
(cast, scale, ImageNet mean/std, NHWC -> NCHW) and PCA-whitening inside, ``float32 (N, D)`` L2-normalised
descriptors out, dynamic batch. The exporter is ``torch.onnx.export(dynamo=True)`` by default: with torch
2.13 both exporters work, but the dynamo exporter folds the backbone's static "same" padding into the Conv
nodes (the legacy TorchScript exporter leaves 12 Pad nodes plus 60 Shape/Slice/Concat/Constant nodes that
compute their constant pads), which keeps the graph small and lets the INT8 quantiser and TensorRT fuse
every Conv with its activation. ``exporter="legacy"`` stays available, explicitly, never as a fallback.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.config import ExportConfig
from runtime.errors import ArtifactError, BackendError, ParityError
from runtime.files import atomic_write_bytes
from runtime.model.card import ModelCard, attach_to_onnx
from runtime.optional import require

log = logging.getLogger(__name__)

# Ops that must never appear: data-dependent selects broke ONNX importers (opencv/opencv#20428).
FORBIDDEN_OPS = ("Where", "Equal", "If", "Loop")


@dataclass(frozen=True)
class GraphSummary:
    """Op counts and I/O of an exported graph (what :func:`check_graph` judges)."""

    op_counts: dict[str, int]
    input_name: str
    input_type: int
    input_shape: tuple[Any, ...]
    output_shape: tuple[Any, ...]
    opset: int

    @property
    def num_nodes(self) -> int:
        return sum(self.op_counts.values())


def summarize_graph(model_proto: Any) -> GraphSummary:
    """Count the ops (recursing into no subgraph: a NetVLAD export has none) and read I/O shapes."""

    def dims(value_info: Any) -> tuple[Any, ...]:
        return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)

    graph = model_proto.graph
    opset = max((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return GraphSummary(
        op_counts=dict(Counter(node.op_type for node in graph.node)),
        input_name=graph.input[0].name,
        input_type=graph.input[0].type.tensor_type.elem_type,
        input_shape=dims(graph.input[0]),
        output_shape=dims(graph.output[0]),
        opset=opset,
    )


def head_op_counts(model_proto: Any) -> dict[str, int]:
    """Op counts of the nodes downstream of the (first) Softmax: the NetVLAD aggregation and what follows."""
    nodes = list(model_proto.graph.node)
    start = next((i for i, n in enumerate(nodes) if n.op_type == "Softmax"), None)
    if start is None:
        return {}
    reached = set(nodes[start].output)
    counts: Counter[str] = Counter()
    for node in nodes[start + 1 :]:  # ONNX graphs are topologically sorted
        if reached.intersection(node.input):
            reached.update(node.output)
            counts[node.op_type] += 1
    return dict(counts)


def check_graph(model_proto: Any, card: ModelCard, source: str = "<onnx>") -> GraphSummary:
    """Validate an exported FP32 graph; :class:`ArtifactError` listing every problem.

    ``onnx.checker`` clean; opset >= 17; one uint8 ``(batch, H, W, 3)`` input with a symbolic batch; output
    ``(batch, D)``; no :data:`FORBIDDEN_OPS`; one Softmax and one MatMul in NetVLAD (a per-cluster loop
    would unroll into ``num_clusters`` copies).
    """
    onnx = require("onnx", "checking ONNX models")
    problems = []
    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        problems.append(f"onnx.checker: {str(exc).strip()[:300]}")
    summary = summarize_graph(model_proto)
    if summary.opset < 17:
        problems.append(f"opset {summary.opset} < 17")
    if summary.input_type != onnx.TensorProto.UINT8:
        problems.append(f"input type is {onnx.TensorProto.DataType.Name(summary.input_type)}, expected UINT8")
    batch, *rest = summary.input_shape or (None,)
    if tuple(rest) != (card.input_height, card.input_width, 3):
        problems.append(
            f"input shape {summary.input_shape}, expected (batch, {card.input_height}, {card.input_width}, 3)"
        )
    if not isinstance(batch, str) or not batch:
        problems.append(f"input batch dimension {batch!r} is not dynamic")
    out_dims = tuple(summary.output_shape[1:])
    # the legacy exporter leaves D symbolic; the parity run checks the actual width
    if len(out_dims) != 1 or (isinstance(out_dims[0], int) and out_dims[0] != card.descriptor_dim):
        problems.append(f"output shape {summary.output_shape}, expected (batch, {card.descriptor_dim})")
    forbidden = {op: n for op, n in summary.op_counts.items() if op in FORBIDDEN_OPS}
    if forbidden:
        problems.append(f"forbidden data-dependent ops {forbidden}")
    if summary.op_counts.get("Softmax", 0) != 1:
        problems.append(
            f"{summary.op_counts.get('Softmax', 0)} Softmax nodes, expected one (the soft assignment)"
        )
    head = head_op_counts(model_proto)
    repeated = {op: n for op, n in head.items() if n >= card.num_clusters}
    if repeated:
        problems.append(
            f"NetVLAD is unrolled per cluster: ops repeated >= K={card.num_clusters} times after the soft "
            f"assignment {repeated}; export the loop-free form V = A·Xᵀ − (A·1) ⊙ C"
        )
    if problems:
        raise ArtifactError(f"exported graph {source} is not deployable: " + "; ".join(problems))
    return summary


def trace_deploy_model(deploy_model: Any, card: ModelCard, cfg: ExportConfig) -> Any:
    """Trace ``deploy_model`` (a ``DeployModel`` in eval mode) to an ``onnx.ModelProto`` in memory."""
    torch = require("torch", "exporting to ONNX")
    example = torch.zeros((2, card.input_height, card.input_width, 3), dtype=torch.uint8)
    names = {"input_names": [card.input_name], "output_names": [card.output_name]}
    deploy_model.eval()
    with torch.no_grad():
        if cfg.exporter == "dynamo":
            require("onnxscript", "the dynamo ONNX exporter")
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(
                deploy_model,
                (example,),
                dynamo=True,
                opset_version=cfg.opset,
                dynamic_shapes=({0: batch},),
                optimize=True,
                verbose=False,
                **names,
            )
            return program.model_proto
        import io

        buffer = io.BytesIO()
        torch.onnx.export(
            deploy_model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=cfg.opset,
            dynamic_axes={card.input_name: {0: "batch"}, card.output_name: {0: "batch"}},
            do_constant_folding=True,
            **names,
        )
        onnx = require("onnx", "exporting to ONNX")
        return onnx.load_from_string(buffer.getvalue())


def onnx_descriptors(proto: Any, images: np.ndarray, threads: int, source: str) -> np.ndarray:
    """Descriptors of ``images`` from an in-memory model (card attached) through the runtime's ONNX Runtime
    CPU backend, exactly as a robot would run the written file."""
    from runtime.model.backends.onnxruntime import OnnxRuntimeBackend

    with tempfile.TemporaryDirectory(prefix="netvlad-export-") as tmp:
        path = Path(tmp) / Path(source).name
        path.write_bytes(proto.SerializeToString())
        try:
            with OnnxRuntimeBackend(path, provider="cpu", threads=threads) as backend:
                return backend.infer(images, batch_size=8)
        except BackendError as exc:  # the graph's output does not have the card's shape
            raise ArtifactError(f"exported graph {source}: {exc}") from exc


def export_place_model(
    model: Any, out: str | os.PathLike, cfg: ExportConfig, source: str = "<model>"
) -> Path:
    """Export an in-memory ``PlaceModel`` to ``out`` (see :func:`export_onnx`)."""
    from export.images import fixed_images
    from export.parity import compare_images
    from training.backend import TorchBackend
    from training.model import DeployModel

    out = Path(out)
    model.eval()
    base_card = model.card(precision="fp32")
    log.info("tracing %s with the %s exporter (opset %d)", source, cfg.exporter, cfg.opset)
    proto = trace_deploy_model(DeployModel(model).eval(), base_card, cfg)
    summary = check_graph(proto, base_card, source=str(out))
    log.info("graph: %d nodes %s", summary.num_nodes, dict(sorted(summary.op_counts.items())))

    images = fixed_images(base_card, cfg.fixed_images)
    with TorchBackend(model) as torch_model:
        reference = torch_model.infer(images, batch_size=8)
    candidate = onnx_descriptors(attach_to_onnx(proto, base_card), images, cfg.threads, str(out))
    report = compare_images(str(out), "fp32", reference, candidate, f"{len(images)} fixed images")
    log.info(
        "ONNX vs PyTorch on %d fixed images: worst cosine %.7f, median %.7f",
        len(images),
        report.cosine_min,
        report.cosine_median,
    )
    if not report.cosine_min >= cfg.onnx_min_cosine:
        message = (
            f"'{out}': ONNX descriptors differ from PyTorch: worst cosine {report.cosine_min:.6f} < "
            f"{cfg.onnx_min_cosine} on {len(images)} fixed images"
        )
        if not cfg.force:
            raise ParityError(message + "; nothing was written (pass --force to keep it anyway)")
        log.warning("%s (kept because forced)", message)

    card = model.card(
        precision="fp32",
        exporter=cfg.exporter,
        opset=summary.opset,
        onnx_vs_torch_worst_cosine=round(report.cosine_min, 8),
        source_checkpoint=Path(source).name,
        batch=str(cfg.batch),  # the batch range GPU runtimes optimise for (TensorRT profiles)
    )
    attach_to_onnx(proto, card)
    atomic_write_bytes(out, proto.SerializeToString())
    log.info("wrote %s (%.1f MB, %d-D descriptors)", out, out.stat().st_size / 1e6, card.descriptor_dim)
    return out


def export_onnx(
    checkpoint: str | os.PathLike, out: str | os.PathLike, cfg: ExportConfig | None = None
) -> Path:
    """Export the model of ``checkpoint`` to the ONNX file ``out`` (written atomically); returns ``out``.

    The graph is checked (:func:`check_graph`) and its descriptors compared with PyTorch on
    ``cfg.fixed_images`` deterministic images: a worst cosine below ``cfg.onnx_min_cosine`` (0.9999) raises
    :class:`ParityError` and writes nothing, unless ``cfg.force``. The model card, with that worst cosine,
    goes into the file's ``metadata_props``.
    """
    from training.checkpoint import load_model

    cfg = cfg or ExportConfig()
    model = load_model(checkpoint)  # ArtifactError for missing / corrupt / foreign files
    return export_place_model(model, out, cfg, source=str(checkpoint))
