"""ONNX -> TensorRT engine, strongly typed: the precision is whatever the ONNX file holds.

UNVERIFIED: TensorRT cannot be installed on any machine of this project (shared/GPU.md); this module is
written against the documented Python API of TensorRT 10.x and 11.x and its 10.x -> 11.x migration guide,
and its tests skip with "needs tensorrt". Everything it consumes is verified on the CPU: the FP16 ONNX
(export.fp16), the INT8 QDQ ONNX (export.quantize, target "tensorrt") and the checks below.

One code path for TensorRT 10.x (JetPack) and 11.x: TensorRT 11 removed the weak-typing flags
(``BuilderFlag.FP16``/``INT8``, INT8 calibrators, ``platform_has_fast_fp16``), so the network is created
strongly typed (10.x: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; 11.x: always, the flag is ignored
where it remains) and FP16 / INT8 come from the float16 weights or the Q/DQ nodes of the ONNX model. A
precision the GPU cannot run is refused before building (no silent fallback): TensorRT 10 supports compute
capability 7.0 (Volta) and newer only, and every GPU it runs on has FP16 and INT8 kernels, so one floor,
SM 7.0, serves every precision (see :data:`MIN_COMPUTE_CAPABILITY`; Jetson Orin is 8.7). Later 10.x releases
for x86 start at 7.5; on 7.0 those fail in the build with TensorRT's own message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from export.config import BatchRange
from runtime.errors import ArtifactError, BackendError
from runtime.files import atomic_write_bytes
from runtime.model.card import ModelCard, read_onnx_card, write_sidecar
from runtime.optional import require

log = logging.getLogger(__name__)

# TensorRT 10's support matrix starts at SM 7.0; older GPUs (Pascal, the Jetson Nano's 5.3) need TensorRT 8.x,
# which this strongly typed build path does not target.
MIN_COMPUTE_CAPABILITY = {"fp32": (7, 0), "fp16": (7, 0), "int8": (7, 0)}


def engine_path(onnx_path: str | os.PathLike) -> Path:
    """``model.fp16.onnx`` -> ``model.fp16.engine`` (``model.onnx`` -> ``model.fp32.engine``)."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.name[: -len(".onnx")] if onnx_path.name.endswith(".onnx") else onnx_path.name
    if "." not in stem:
        stem += ".fp32"
    return onnx_path.with_name(stem + ".engine")


def onnx_precision(model_proto: Any) -> str:
    """The precision an ONNX file *holds*: int8 with Q/DQ nodes, fp16 with float16 weights, else fp32."""
    onnx = require("onnx", "checking ONNX precision")
    ops = {n.op_type for n in model_proto.graph.node}
    if "QuantizeLinear" in ops and "DequantizeLinear" in ops:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model_proto.graph.initializer):
        return "fp16"
    return "fp32"


def check_precision(onnx_path: str | os.PathLike, card: ModelCard) -> str:
    """The card's precision, after checking that the ONNX graph really carries it (:class:`BackendError`)."""
    onnx = require("onnx", "checking ONNX precision")
    held = onnx_precision(onnx.load(str(onnx_path), load_external_data=False))
    if held != card.precision:
        raise BackendError(
            f"'{onnx_path}' is labelled {card.precision} but its graph holds {held} "
            "(strongly typed TensorRT builds exactly what the ONNX holds); re-export it with netvlad-export"
        )
    return held


def compute_capability(device: int = 0) -> tuple[int, int]:
    """(major, minor) of CUDA device ``device`` via cuda-python; :class:`BackendError` without a GPU."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        cudart = require("cuda.cudart", "building TensorRT engines")
    attrs = cudart.cudaDeviceAttr
    values = []
    for attr in (attrs.cudaDevAttrComputeCapabilityMajor, attrs.cudaDevAttrComputeCapabilityMinor):
        err, value = cudart.cudaDeviceGetAttribute(attr, device)
        if int(err) != 0:
            raise BackendError(
                f"cannot query CUDA device {device} ({err}); a TensorRT build needs a CUDA GPU"
            )
        values.append(int(value))
    return values[0], values[1]


def check_gpu_supports(precision: str, capability: tuple[int, int]) -> None:
    """Refuse a GPU that TensorRT 10 cannot build ``precision`` engines for (no fallback to a wider type)."""
    need = MIN_COMPUTE_CAPABILITY[precision]
    if tuple(capability) < need:
        raise BackendError(
            f"this GPU (compute capability {capability[0]}.{capability[1]}) cannot run TensorRT 10 {precision} "
            f"engines (TensorRT 10 needs compute capability {need[0]}.{need[1]} or newer); run the ONNX model "
            "with ONNX Runtime instead (netvlad-run --model model.onnx), or use a newer GPU"
        )


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10.x; in 11.x strongly typed is the only mode
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = ""
        if hasattr(error, "node_name"):
            where = f" at node {error.node()} '{error.node_name()}' ({error.node_operator()})"
        errors.append(f"[{error.code()}] {error.desc()}{where}")
    if not ok or errors:
        raise ArtifactError(
            f"TensorRT's ONNX parser rejected '{onnx_path}' with {len(errors)} error(s): "
            + "; ".join(errors or ["no error detail"])
        )
    return network, parser


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    batch: BatchRange | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_mib: int = 2048,
) -> Path:
    """Build a strongly typed engine from ``onnx_path`` into ``out`` (default :func:`engine_path`).

    ``batch``: the optimisation profile's batch range (height and width come from the card). The card goes
    to the JSON sidecar ``out + ".json"``; the timing cache (default ``timing.cache`` beside ``out``) is read
    when present and updated. Written atomically. Raises :class:`BackendError` for a precision the GPU
    cannot honour and :class:`ArtifactError` with every parser error.
    """
    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else engine_path(onnx_path)
    batch = batch or BatchRange()
    card = read_onnx_card(onnx_path)
    precision = check_precision(onnx_path, card)  # needs only onnx: fails early on any machine
    trt = require("tensorrt", "building TensorRT engines")
    check_gpu_supports(precision, compute_capability())

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)  # the parser must outlive the build
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    hw = (card.input_height, card.input_width, 3)
    profile.set_shape(card.input_name, (batch.min, *hw), (batch.opt, *hw), (batch.max, *hw))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else out.with_name("timing.cache")
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    log.info(
        "building %s engine from %s, batch %s (minutes on first build)", precision, onnx_path.name, batch
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(
            f"TensorRT failed to build an engine from '{onnx_path}'; see the TensorRT log above"
        )
    atomic_write_bytes(out, bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    engine_card = card.replace(
        extra={
            **card.extra,
            "tensorrt": {"version": trt.__version__, "batch": str(batch), "source_onnx": onnx_path.name},
        }
    )
    write_sidecar(out, engine_card)
    log.info("wrote %s and its card %s.json", out, out.name)
    return out
