"""Per-stage latency across backends (``netvlad-bench latency``).

For each backend (PyTorch eager FP32, ONNX Runtime FP32 / INT8 QDQ / FP16 where it runs, TensorRT where
installed) and each batch size, query frames go through the runtime's own stages one batch at a time:

- ``decode``: ``cv2.imdecode`` of the encoded image files (read into memory first: no disk time),
- ``preprocess``: :class:`runtime.model.preprocess.Preprocessor` to the card's input (what the map builder does),
- ``inference``: the backend, ``uint8 (B, H, W, 3) -> float32 (B, D)``,
- ``search``: exact inner-product FAISS search (``IndexFlatIP``, the runtime's default) over a map of
  ``map_size`` places (seeded synthetic descriptors of the model's dimension: search time does not depend
  on the values),
- ``end_to_end``: the four in sequence, timed as a whole.

p50/p90/p99 per batch and per image and throughput (images/s) are recorded with the machine and library
versions. Backends are timed one after the other in one run, so ratios between them are meaningful;
absolute times are only as good as the (shared) machine. With a checkpoint it also times the NetVLAD
layer in the loop-free form against the per-cluster loop form of public ports
(``training.model.netvlad_loop_reference``), same weights, alone and inside the full model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.artifacts import open_extractor, plan_backends
from benchmarks.environment import machine_info, machine_line
from benchmarks.report import markdown_table, write_report
from benchmarks.timing import summarize_ms, time_calls
from runtime.errors import ConfigError, DatasetError
from runtime.optional import require

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "search", "end_to_end")


@dataclass(frozen=True)
class LatencyConfig:
    """Options of the latency benchmark (validated)."""

    batch_sizes: tuple[int, ...] = (1, 8)
    frames: int = 40  # timed frames per backend and batch size (at least 3 batches)
    warmup_batches: int = 2
    map_size: int | None = None  # places in the search map; None: the dataset's database size
    k: int = 10
    threads: int = 2
    netvlad_repeats: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            problems.append(f"batch_sizes must be positive integers, got {self.batch_sizes}")
        if self.frames < 1 or self.warmup_batches < 0 or self.k < 1 or self.threads < 0:
            problems.append(
                f"frames and k must be >= 1, warmup_batches and threads >= 0, got {self.frames}, {self.k}, "
                f"{self.warmup_batches}, {self.threads}"
            )
        if self.map_size is not None and self.map_size < 1:
            problems.append(f"map_size must be a positive number of places, got {self.map_size}")
        if problems:
            raise ConfigError("invalid latency config: " + "; ".join(problems))
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))


def read_encoded_frames(paths: Sequence[Path], limit: int) -> list[bytes]:
    """The encoded bytes of up to ``limit`` image files (cycled if fewer), so decode time excludes disk I/O."""
    if not paths:
        raise DatasetError("the latency benchmark needs at least one query image; the dataset has none")
    data = [Path(p).read_bytes() for p in paths[: min(limit, len(paths))]]
    return [data[i % len(data)] for i in range(limit)]


def time_pipeline(
    extractor, frames: Sequence[bytes], index, batch: int, k: int, warmup_batches: int = 2
) -> dict[str, Any]:
    """Run decode -> preprocess -> inference -> search over ``frames`` in batches of ``batch``.

    Returns per stage ``summarize_ms`` of the per-batch times (plus per-image p50 and throughput).
    """
    import cv2

    from runtime import Preprocessor

    prep = Preprocessor(extractor.card)
    n_batches = max(3, len(frames) // batch)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    for i in range(warmup_batches + n_batches):
        chunk = [frames[(i * batch + j) % len(frames)] for j in range(batch)]
        t0 = time.perf_counter()
        decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in chunk]
        t1 = time.perf_counter()
        images = prep.batch(decoded, color="BGR")  # (B, H, W, 3) uint8 in card order
        t2 = time.perf_counter()
        descriptors = np.ascontiguousarray(extractor.infer(images), dtype=np.float32)  # (B, D)
        t3 = time.perf_counter()
        index.search(descriptors, k)
        t4 = time.perf_counter()
        if i < warmup_batches:
            continue
        for stage, (a, b) in zip(STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4)), strict=True):
            samples[stage].append((b - a) * 1000.0)
    return {stage: summarize_ms(ms, items_per_sample=batch) for stage, ms in samples.items()}


def netvlad_forms(
    checkpoint: str | Path, batch_sizes: Sequence[int], repeats: int, threads: int
) -> dict[str, Any]:
    """Loop-free NetVLAD against the per-cluster loop reference, same weights: layer alone and full model.

    Local features come from the model's own backbone on seeded random images. Also records the largest
    absolute difference of the two outputs (they must agree to float32 rounding).
    """
    torch = require("torch", "the NetVLAD layer comparison")
    from training.checkpoint import load_model
    from training.model import netvlad_loop_reference, normalize_images

    if threads:
        torch.set_num_threads(threads)
    model = load_model(checkpoint)
    cfg = model.config
    layer = model.netvlad
    out: dict[str, Any] = {"num_clusters": cfg.num_clusters, "local_dim": cfg.local_dim, "by_batch": {}}
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        images = rng.integers(0, 256, size=(batch, cfg.input_height, cfg.input_width, 3), dtype=np.uint8)
        with torch.inference_mode():
            x = normalize_images(torch.from_numpy(images))  # (B, 3, H, W)
            features = model.local_features(x)  # (B, C, h, w)

            def loop_full(x=x):
                v = netvlad_loop_reference(layer, model.local_features(x))
                return model.whitening(v) if model.whitening is not None else v

            vectorised = layer(features)
            looped = netvlad_loop_reference(layer, features)
            entry = {
                "feature_map": list(features.shape),
                "max_abs_diff": float((vectorised - looped).abs().max()),
                "layer_loop_free": summarize_ms(time_calls(lambda f=features: layer(f), repeats), batch),
                "layer_loop": summarize_ms(
                    time_calls(lambda f=features: netvlad_loop_reference(layer, f), repeats), batch
                ),
                "model_loop_free": summarize_ms(
                    time_calls(lambda x=x: model(x), max(3, repeats // 4)), batch
                ),
                "model_loop": summarize_ms(time_calls(loop_full, max(3, repeats // 4)), batch),
            }
        entry["layer_speedup"] = entry["layer_loop"]["p50_ms"] / max(entry["layer_loop_free"]["p50_ms"], 1e-9)
        entry["model_speedup"] = entry["model_loop"]["p50_ms"] / max(entry["model_loop_free"]["p50_ms"], 1e-9)
        out["by_batch"][str(batch)] = entry
    return out


def run_latency(
    checkpoint: str | Path | None,
    models: Sequence[str | Path],
    dataset: str | Path,
    out_dir: str | Path | None,
    cfg: LatencyConfig | None = None,
    *,
    progress: Callable | None = None,
) -> dict[str, Any]:
    """Time every backend's pipeline on ``dataset``'s query images; returns (and writes) the results."""
    from benchmarks.search import build_flat, synthetic_map
    from runtime import open_dataset

    cfg = cfg or LatencyConfig()
    faiss = require("faiss", "map search")
    faiss.omp_set_num_threads(max(1, cfg.threads))
    plans, skipped = plan_backends(checkpoint, models)
    if not plans:
        raise ConfigError("nothing to time: give --checkpoint and/or --models with exported artifacts")
    data = open_dataset(dataset)
    frames = read_encoded_frames(
        [data.image_path("queries", i) for i in range(data.num_queries)],
        max(cfg.frames, max(cfg.batch_sizes)),
    )
    result: dict[str, Any] = {
        "benchmark": "latency",
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(),
        "dataset": data.name,
        "frame_size": None,
        "backends": [],
        "skipped": list(skipped),
    }
    index = None
    total = len(plans) * len(cfg.batch_sizes)
    bar = progress(total=total, desc="latency", unit="run") if progress else None
    for plan in plans:
        try:
            extractor = open_extractor(plan, cfg.threads)
        except Exception as exc:
            reason = f"cannot run here: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:240]}"
            log.warning("latency: %s skipped (%s)", plan.label, reason)
            result["skipped"].append({"label": plan.label, "reason": reason})
            if bar is not None:
                bar.update(len(cfg.batch_sizes))
            continue
        try:
            if index is None:
                dim = extractor.card.descriptor_dim
                size = cfg.map_size or data.num_db
                db, _, _ = synthetic_map(size, dim, 1, seed=cfg.seed)
                index = build_flat(db)
                result["map"] = {"places": size, "dim": dim, "index": "IndexFlatIP (exact)"}
                card = extractor.card
                result["model"] = {
                    "backbone": card.backbone,
                    "input": f"{card.input_height}x{card.input_width}",
                    "descriptor_dim": card.descriptor_dim,
                    "fingerprint": card.weights_fingerprint,
                }
            entry = {"label": plan.label, "kind": plan.kind, "precision": plan.precision, "by_batch": {}}
            for batch in cfg.batch_sizes:
                log.info("latency: %s, batch %d", plan.label, batch)
                entry["by_batch"][str(batch)] = time_pipeline(
                    extractor, frames, index, batch, cfg.k, cfg.warmup_batches
                )
                if bar is not None:
                    bar.update(1)
            result["backends"].append(entry)
        finally:
            extractor.close()
    if bar is not None:
        bar.close()
    import cv2

    first = cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_COLOR)
    result["frame_size"] = f"{first.shape[0]}x{first.shape[1]}"
    if checkpoint is not None:
        log.info("latency: NetVLAD loop-free vs per-cluster loop")
        result["netvlad_forms"] = netvlad_forms(checkpoint, cfg.batch_sizes, cfg.netvlad_repeats, cfg.threads)
    if out_dir is not None:
        json_path, md_path = write_report(out_dir, "latency", result, latency_markdown(result))
        result["files"] = {"json": str(json_path), "markdown": str(md_path)}
    return result


def latency_rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """One row per backend and batch: p50/p99 per stage (ms per batch), throughput, inference ratio."""
    headers = ["backend", "batch"]
    for stage in STAGES:
        headers += (
            [f"{stage} p50", f"{stage} p99"] if stage in ("inference", "end_to_end") else [f"{stage} p50"]
        )
    headers += ["img/s", "inference speed-up vs first"]
    rows = []
    baseline: dict[str, float] = {}
    for b in result["backends"]:
        for batch, stages in b["by_batch"].items():
            inf = stages["inference"]["p50_ms"]
            baseline.setdefault(batch, inf)
            row: list[Any] = [b["label"], int(batch)]
            for stage in STAGES:
                row.append(stages[stage]["p50_ms"])
                if stage in ("inference", "end_to_end"):
                    row.append(stages[stage]["p99_ms"])
            row += [stages["end_to_end"]["throughput_per_s"], f"{baseline[batch] / max(inf, 1e-9):.2f}x"]
            rows.append(row)
    return headers, rows


def latency_markdown(result: dict[str, Any]) -> str:
    """The latency report as Markdown (times in ms per batch)."""
    headers, rows = latency_rows(result)
    model = result.get("model", {})
    lines = [
        f"# Per-stage latency: {result['dataset']}",
        "",
        f"Model {model.get('backbone')} {model.get('descriptor_dim')}-D at {model.get('input')}; frames "
        f"{result['frame_size']} decoded from memory; search: {result.get('map', {}).get('index')} over "
        f"{result.get('map', {}).get('places')} places. Times in ms per batch (p50 / p99); img/s end to end. "
        "Backends ran one after another in one run: compare ratios; absolute times are from a shared machine.",
        "",
        markdown_table(headers, rows),
    ]
    forms = result.get("netvlad_forms")
    if forms:
        lines += [
            "",
            f"## NetVLAD layer: loop-free vs per-cluster loop (K = {forms['num_clusters']}, "
            f"{forms['local_dim']} channels, same weights)",
            "",
        ]
        frows = []
        for batch, e in forms["by_batch"].items():
            frows.append(
                [
                    int(batch),
                    "x".join(str(v) for v in e["feature_map"][1:]),
                    e["layer_loop_free"]["p50_ms"],
                    e["layer_loop"]["p50_ms"],
                    f"{e['layer_speedup']:.1f}x",
                    e["model_loop_free"]["p50_ms"],
                    e["model_loop"]["p50_ms"],
                    f"{e['model_speedup']:.2f}x",
                    f"{e['max_abs_diff']:.1e}",
                ]
            )
        lines.append(
            markdown_table(
                [
                    "batch",
                    "features",
                    "layer loop-free ms",
                    "layer loop ms",
                    "layer speed-up",
                    "model loop-free ms",
                    "model loop ms",
                    "model speed-up",
                    "max |diff|",
                ],
                frows,
                digits=3,
            )
        )
    lines += [
        "",
        *[f"- skipped {s['label']}: {s['reason']}" for s in result["skipped"]],
        "",
        machine_line(result["machine"]),
    ]
    return "\n".join(lines)
