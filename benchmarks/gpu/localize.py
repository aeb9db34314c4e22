"""The :class:`~runtime.localize.localizer.Localizer` end to end on the GPU (ONNX Runtime CUDA + faiss-gpu map) against
the same Localizer on the CPU: per-stage latency p50/p99 and top-1 agreement of the places it reports."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import summarize_ms

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "search", "total")


def _localizer(model: Path, map_dir: Path, provider: str, gpu_map: str):
    from runtime import Localizer, open_backend, open_map

    backend = open_backend(model, f"onnxruntime-{provider}")
    try:
        place_map = open_map(map_dir, backend.card, model_name=str(model), gpu=gpu_map)
    except BaseException:
        backend.close()
        raise
    return Localizer(backend, place_map, owns_backend=True)


def _run(localizer, paths: list[Path], warmup: int) -> tuple[list[int], dict[str, list[float]]]:
    """Localise every image (after ``warmup`` untimed ones); top-1 place ids and ms per stage."""
    from runtime.datasets import read_rgb

    for path in paths[:warmup]:
        localizer.localize(read_rgb(path), color="RGB")
    ids, ms = [], {stage: [] for stage in STAGES}
    for path in paths:
        t0 = time.perf_counter()
        frame = read_rgb(path)
        decode = time.perf_counter() - t0
        loc = localizer.localize(frame, color="RGB")
        ids.append(loc.matches[0].place_id)
        times = loc.times
        for stage, seconds in (
            ("decode", decode),
            ("preprocess", times.preprocess),
            ("inference", times.inference),
            ("search", times.search),
            ("total", decode + times.total),
        ):
            ms[stage].append(seconds * 1000.0)
    return ids, ms


def localizer_end_to_end(
    model: Path, dataset: Any, out: Path, caps: dict[str, str | None], warmup: int = 5
) -> dict[str, Any]:
    """Build a map of ``dataset`` (on the CPU), then localise its queries on the CPU and on the GPU."""
    from runtime.map import MapConfig, build_map, read_map_meta

    map_dir = build_map(
        model, dataset, out / "map", MapConfig(faiss_threads=4, overwrite=True), backend="onnxruntime"
    )
    meta = read_map_meta(map_dir)
    paths = [dataset.image_path("queries", i) for i in range(dataset.num_queries)]
    result: dict[str, Any] = {
        "map": {
            "places": meta["count"],
            "index": meta["index"]["factory"],
            "built_on": meta["index"]["built_on"],
        },
        "queries": len(paths),
    }
    with _localizer(model, map_dir, "cpu", "no") as cpu:
        cpu_ids, cpu_ms = _run(cpu, paths, warmup)
    result["cpu"] = {stage: summarize_ms(values) for stage, values in cpu_ms.items()}
    if caps["ort_cuda"]:
        result["gpu"] = {"missing": caps["ort_cuda"]}
        return result
    gpu_map = "no" if caps["faiss_gpu"] else "yes"
    result["map_on_gpu"] = True if caps["faiss_gpu"] is None else caps["faiss_gpu"]  # True, or why not
    with _localizer(model, map_dir, "cuda", gpu_map) as gpu:
        gpu_ids, gpu_ms = _run(gpu, paths, warmup)
    result["gpu"] = {stage: summarize_ms(values) for stage, values in gpu_ms.items()}
    result["top1_agreement_gpu_vs_cpu"] = float(np.mean(np.asarray(gpu_ids) == np.asarray(cpu_ids)))
    return result
