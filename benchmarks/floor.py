"""Each per-frame stage against its floor on this machine (``netvlad-bench floor``).

A stage's floor is what the hardware allows, measured here by small microbenchmarks in the same run:

- **compute**: the model's multiply-accumulates (counted from the ONNX graph: Conv, MatMul, Gemm and their
  integer forms, with ONNX shape inference at batch 1) over the machine's peak, measured as a float32 GEMM
  (numpy's BLAS, 1,024 x 1,024 x 1,024) for float models and an INT8 GEMM (ONNX Runtime's
  MatMulInteger, uint8 x int8, the VNNI path on CPUs that have it) for INT8 models;
- **memory**: the bytes a stage must read over the memory bandwidth, measured as a STREAM-style copy of
  256 MiB (bytes read + written per second): exact search reads the whole map (``places x dim x 4``), the
  sequence matcher's dense update one matrix-vector product over it.

Each stage is timed at batch 1 with ``threads`` threads (p50 of ``repeats`` calls after warm-up), beside
its floor and the share of the floor reached (floor / measured: 1.0 is at the hardware's limit). Seeds are
fixed; the load average is reported before and after (these machines are shared: read ratios within one
run). Inference is timed on every installed backend (ONNX Runtime; OpenVINO FP32, and BF16 where the CPU
has it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import load_average, machine_info, machine_line
from benchmarks.report import write_report
from benchmarks.timing import summarize_ms, time_calls
from runtime.errors import ConfigError
from runtime.optional import available, require

log = logging.getLogger(__name__)

GEMM_SIZE = 1024  # the peak microbenchmarks' square GEMM
COPY_BYTES = 256 * 2**20  # the bandwidth microbenchmark's array (beyond every cache)
_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # which input holds the conv weights
_MATMUL_INPUTS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}


@dataclasses.dataclass(frozen=True)
class FloorConfig:
    """``places`` x the model's descriptor dimension: the map searched and sequence-matched (float32).
    ``repeats``: timed inference calls after ``warmup``; search and sequence update time ``repeats +
    warmup`` frames of a drive (:func:`benchmarks.sequence.matcher_cost`). ``threads``: inference and faiss
    threads (numpy's BLAS keeps its own)."""

    places: int = 1000
    repeats: int = 100
    warmup: int = 10
    threads: int = 2
    seed: int = 0


def model_macs(path: str | Path) -> int:
    """Multiply-accumulates of one image through the ONNX model at ``path`` (batch 1): Conv / ConvInteger
    / QLinearConv (``out_channels x out_h x out_w x in_channels / group x kernel``) and MatMul / Gemm /
    MatMulInteger / QLinearMatMul (``M x N x K`` per batch matrix), from ONNX shape inference; symbolic
    dimensions (the batch) count as 1."""
    onnx = require("onnx", "the model's multiply-accumulate count")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    shapes: dict[str, list[int]] = {}
    for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in model.graph.node:
        if node.op_type in _WEIGHT_INPUT:
            weight = shapes.get(node.input[_WEIGHT_INPUT[node.op_type]])
            out = shapes.get(node.output[0])
            if weight is None or out is None or len(out) < 3:
                continue
            # weight (C_out, C_in / group, k...): each output value takes prod(weight[1:]) MACs
            total += int(np.prod(out[1:])) * int(np.prod(weight[1:]))
        elif node.op_type in _MATMUL_INPUTS:
            a_index, b_index = _MATMUL_INPUTS[node.op_type]
            a, b = shapes.get(node.input[a_index]), shapes.get(node.input[b_index])
            if a is None or b is None or len(b) < 2:
                continue
            trans_b = next((a_.i for a_ in node.attribute if a_.name == "transB"), 0)
            k = a[-1]
            n = b[-2] if trans_b else b[-1]
            total += int(np.prod(a[:-1])) * int(k) * int(n)  # (..., M, K) x (K, N)
    return total


def gemm_peak_gflops(repeats: int = 5) -> float:
    """Float32 GEMM throughput, GFLOP/s (2 FLOPs per multiply-accumulate), numpy's BLAS (its own threads:
    all cores unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say otherwise)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    b = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    ms = min(time_calls(lambda: a @ b, repeats, warmup=2))
    return 2.0 * GEMM_SIZE**3 / (ms / 1000.0) / 1e9


def int8_peak_gops(threads: int, repeats: int = 5) -> float | None:
    """INT8 GEMM throughput, GOP/s (2 ops per multiply-accumulate): ONNX Runtime's MatMulInteger (uint8 x
    int8), or None without onnx/onnxruntime."""
    if not (available("onnx") and available("onnxruntime")):
        return None
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = GEMM_SIZE
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
        [
            helper.make_tensor(
                "b", TensorProto.INT8, [n, n], np.random.default_rng(1).integers(-64, 64, n * n)
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(2).integers(0, 255, (n, n), dtype=np.uint8)
    ms = min(time_calls(lambda: session.run(None, {"a": a}), repeats, warmup=2))
    return 2.0 * n**3 / (ms / 1000.0) / 1e9


def copy_bandwidth_gbs(repeats: int = 5) -> float:
    """Memory bandwidth, GB/s: bytes read + written per second by a copy of :data:`COPY_BYTES`."""
    src = np.ones(COPY_BYTES // 4, dtype=np.float32)
    dst = np.empty_like(src)
    ms = min(time_calls(lambda: np.copyto(dst, src), repeats, warmup=1))
    return 2.0 * COPY_BYTES / (ms / 1000.0) / 1e9


def _stage(name: str, p50_ms: float, p99_ms: float, floor_ms: float, bound: str) -> dict[str, Any]:
    return {
        "stage": name,
        "p50_ms": round(p50_ms, 4),
        "p99_ms": round(p99_ms, 4),
        "floor_ms": round(floor_ms, 4),
        "bound": bound,
        "share_of_floor": round(floor_ms / p50_ms, 3) if p50_ms > 0 else None,
    }


def _backends(path: Path) -> list[str]:
    names = ["onnxruntime-cpu"]
    if available("openvino"):
        from runtime.model.backends.openvino import cpu_capabilities

        names.append("openvino")
        if ".int8" not in path.name and "BF16" in cpu_capabilities():
            names.append("openvino-bf16")
    return names


def run_floor(
    models: Sequence[str | Path], out_dir: str | Path | None, cfg: FloorConfig | None = None
) -> dict:
    """Every stage of :data:`__doc__` for ``models``; returns (and writes ``floor.json/.md``) the result."""
    from benchmarks.sequence import matcher_cost
    from runtime.map.sequence import TemporalConfig
    from runtime.model.backends import open_backend
    from runtime.model.preprocess import Preprocessor

    cfg = cfg or FloorConfig()
    if not models:
        raise ConfigError("name at least one model: --model model.onnx (repeatable)")
    require("faiss", "map search").omp_set_num_threads(max(1, cfg.threads))
    result: dict[str, Any] = {
        "benchmark": "floor",
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(),
    }
    result["load_before"] = load_average()
    t0 = time.perf_counter()
    peaks = {
        "fp32_gflops": round(gemm_peak_gflops(), 1),
        "int8_gops": _round(int8_peak_gops(cfg.threads), 1),
        "copy_gbs": round(copy_bandwidth_gbs(), 2),
    }
    result["peaks"] = peaks
    rng = np.random.default_rng(cfg.seed)  # the frames timed through the model
    stages: list[dict[str, Any]] = []
    dim = None
    for model in models:
        model = Path(model)
        macs = model_macs(model)
        int8 = ".int8" in model.name
        peak = (peaks["int8_gops"] if int8 and peaks["int8_gops"] else peaks["fp32_gflops"]) * 1e9
        floor_ms = 2.0 * macs / peak * 1000.0
        for backend_name in _backends(model):
            with open_backend(model, backend_name, threads=cfg.threads) as backend:
                card = backend.card
                dim = card.descriptor_dim
                frame = rng.integers(0, 255, (card.input_height, card.input_width, 3), dtype=np.uint8)
                batch = Preprocessor(card)(frame)[None]
                samples = time_calls(lambda b=backend, x=batch: b.infer(x), cfg.repeats, cfg.warmup)
            timing = summarize_ms(samples)
            stage = _stage(
                f"inference {model.name} ({backend_name})", timing["p50_ms"], timing["p99_ms"], floor_ms,
                f"compute: {macs / 1e9:.3f} GMAC at the {'INT8' if int8 else 'FP32'} GEMM peak",
            )  # fmt: skip
            stage["gmacs"] = round(macs / 1e9, 4)
            stages.append(stage)
    # search and sequence update as netvlad-bench sequence --cost-sizes times them: a seeded route map, a drive
    # along it, the flat index's top candidates, then the matcher's update, frame by frame
    cost = matcher_cost([cfg.places], dim, cfg.repeats + cfg.warmup, TemporalConfig(), cfg.seed)[0]
    map_bytes = cfg.places * dim * 4
    memory_floor = map_bytes / (peaks["copy_gbs"] * 1e9) * 1000.0
    bound = f"memory: {map_bytes / 2**20:.1f} MiB read ({cfg.places} x {dim} float32)"
    stages.append(
        _stage(f"exact search, {cfg.places} places", cost["flat_search_ms_p50"], cost["flat_search_ms_p99"],
               memory_floor, bound)
    )  # fmt: skip
    stages.append(
        _stage(f"sequence update, {cfg.places} places", cost["update_ms_p50"], cost["update_ms_p99"],
               memory_floor, bound)
    )  # fmt: skip
    result["stages"] = stages
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["load_after"] = load_average()
    if out_dir is not None:
        json_path, md_path = write_report(out_dir, "floor", result, floor_markdown(result))
        result["files"] = {"json": str(json_path), "markdown": str(md_path)}
    return result


def _round(value, digits):
    return None if value is None else round(float(value), digits)


def floor_markdown(result: dict) -> str:
    peaks = result["peaks"]
    lines = [
        "# Each stage against its floor",
        "",
        machine_line(result["machine"]),
        f"Load average before / after: {result['load_before']} / {result['load_after']}. Measured here: FP32 GEMM "
        f"{peaks['fp32_gflops']} GFLOP/s, INT8 GEMM {peaks['int8_gops']} GOP/s, copy {peaks['copy_gbs']} GB/s "
        f"({result['config']['threads']} threads).",
        "",
        "| stage | p50 ms | p99 ms | floor ms | share of floor | bound by |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["stages"]:
        lines.append(
            f"| {s['stage']} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['floor_ms']:.3f} | "
            f"{s['share_of_floor']:.2f} | {s['bound']} |"
        )
    return "\n".join(lines)
