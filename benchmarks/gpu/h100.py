"""The prepared GPU run (``bash benchmarks/gpu/run.sh``): one command, JSON under ``--out``, a table last.

Sections, each recorded as results, ``{"missing": reason}`` (a capability this machine lacks) or
``{"error": reason, "trace": ...}`` (a failure: counted, listed, and the exit status is 1):

1. ``capabilities``: torch CUDA, ONNX Runtime CUDA / TensorRT providers, tensorrt, cuda-python, faiss-gpu.
2. ``inference`` per model (the default EfficientNet-Lite0 at 240x320 and the paper's VGG16 at 480x640,
   random weights like GPU.md's reference rows; ``--quick``: the tiny model; ``--checkpoint``: a trained
   one), exported to ONNX FP32 + FP16 by the export step's own functions:
   ``torch`` (eager FP32 with TF32 off / FP16 channels-last), ``backend`` (the runtime's ONNX Runtime
   backend on CUDA with IO binding, else on the CPU), ``cuda_graph`` (a batch-1 copy with CUDA graphs),
   ``ort_tensorrt`` (the TensorRT provider with the card's options), ``qdq_int8_flag`` (does a QDQ model
   need ``trt_int8_enable``?), ``tensorrt`` (engines from export.tensorrt run by the TensorRT backend).
   Every path: parity with the runtime's CPU backend (cosine, top-1 agreement) and latency p50/p99.
3. ``localizer``: the Localizer end to end, GPU (ONNX Runtime CUDA + faiss-gpu map) against CPU, per stage.
4. ``search``: exact search over N x 4096 (torch FP16, faiss-gpu flat FP16) and an IVF-PQ map on the GPU.
5. ``training``: ``python -m training.train --device cuda`` for a few steps, a checkpoint and a resume.

Without a GPU it runs the CPU side of every section that has one, and names what it could not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu import inference
from benchmarks.gpu.common import collect_errors, error_entry, guarded
from runtime.cli.console import configure_logging
from runtime.files import atomic_write_text

log = logging.getLogger("benchmarks.gpu")

SECTIONS = ("inference", "localizer", "search", "training")


def _world(out: Path, quick: bool, dataset: str | None):
    """The dataset the run uses: ``dataset``, else a synthetic world generated under ``out``."""
    from runtime import open_dataset

    if dataset:
        return open_dataset(dataset)
    from training.synth import SynthConfig, generate

    overrides = {"route_length_m": 500.0, "height": 96, "width": 128} if quick else {}
    cfg = SynthConfig.preset("tiny", seed=0, write_video=False, **overrides)
    root = out / "world"
    if not (root / "database.csv").is_file():
        generate(cfg, root)
    return open_dataset(str(root))


def _evalset(dataset, card, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` database and ``limit // 2`` query images at the model's input."""
    from export.images import load_images

    db = [dataset.image_path("database", i) for i in range(min(limit, dataset.num_db))]
    q = [dataset.image_path("queries", i) for i in range(min(limit // 2, dataset.num_queries))]
    return load_images(db, card), load_images(q, card)


def inference_section(
    entry: dict[str, Any], dataset, out: Path, caps: dict, quick: bool, repeats: int, qdq: bool = True
) -> dict[str, Any]:
    """Every inference path of one exported model (see the module docstring); ``qdq``: also quantise it to
    INT8 QDQ for the TensorRT paths (one model answers the ``trt_int8_enable`` question)."""
    card = entry["model"].card()
    # the CPU reference costs the most: fewer images for the large inputs (VGG16 480x640: 188 GFLOP each)
    evalset = _evalset(dataset, card, 32 if quick or card.input_height * card.input_width > 240 * 320 else 64)
    models = {"fp32": entry["fp32"], "fp16": entry["fp16"]}
    batches = (1, 8) if quick else (1, 32)
    result: dict[str, Any] = {
        "input": f"{card.input_height}x{card.input_width}",
        "dim": card.descriptor_dim,
        "eval_images": [len(evalset[0]), len(evalset[1])],
    }
    reference = inference.cpu_reference({"fp32": entry["fp32"]}, evalset)["fp32"]
    # without CUDA the same code runs on the CPU (batch 1 only: FP16 convolutions are slow there)
    torch_device, torch_batches = ("cpu", (1,)) if caps["torch_cuda"] else ("cuda", batches)
    result["torch"] = guarded(
        lambda: inference.torch_paths(
            entry["model"], evalset, reference, torch_batches, repeats, torch_device
        )
    )
    provider = "cpu" if caps["ort_cuda"] else "cuda"
    result["backend"] = {
        "provider": provider,
        **inference.backend_paths(models, evalset, reference, provider, batches, repeats),
    }
    result["cuda_graph"] = guarded(
        lambda: inference.cuda_graph_paths(models, evalset, reference, repeats, caps)
    )
    cache = out / "trt-cache"
    result["ort_tensorrt"] = guarded(
        lambda: inference.ort_tensorrt_paths(models, evalset, reference, cache, repeats, caps)
    )
    int8 = None
    if qdq and (not caps["ort_tensorrt"] or not caps["tensorrt"]):  # something here runs QDQ on TensorRT
        try:
            int8 = _quantize(entry["fp32"], dataset)
        except Exception as exc:
            result["int8_export"] = error_entry(exc)
    if caps["ort_tensorrt"] or not qdq:
        result["qdq_int8_flag"] = {"missing": caps["ort_tensorrt"] or "checked on the first model only"}
    elif int8 is not None:
        int8_ref = inference.cpu_reference({"int8": int8}, evalset)["int8"]
        result["qdq_int8_flag"] = guarded(
            lambda: inference.qdq_int8_flag(int8, evalset, int8_ref, cache, repeats, caps)
        )
    engines = {**models, "int8": int8} if int8 is not None else models
    result["tensorrt"] = guarded(
        lambda: inference.tensorrt_engine_paths(engines, evalset, reference, repeats, caps)
    )
    return result


def _quantize(fp32: Path, dataset) -> Path:
    from export.images import open_image_set
    from export.quantize import QuantizeConfig, int8_path, quantize_int8

    return quantize_int8(
        fp32, int8_path(fp32, "tensorrt"), open_image_set(str(dataset.root)).subset(16), QuantizeConfig()
    )


def _timed(result: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    started = time.perf_counter()
    result[name] = guarded(fn)
    result.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
    log.info("section %s done in %.1f s", name, result["seconds"][name])


def run(
    out: Path,
    quick: bool = False,
    sections: tuple[str, ...] = SECTIONS,
    checkpoint: Path | None = None,
    dataset: str | None = None,
    train_steps: int | None = None,
    model_names: tuple[str, ...] | None = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """Every requested section; a failing step is recorded as an error and the others still run.

    ``out`` receives ``gpu.json`` only; models, the world, maps, engines and training runs go to ``work``
    (default ``out/work``), so that a device run can bring back just the results.
    """
    from benchmarks.environment import machine_info
    from benchmarks.gpu import localize, probe, search, train

    out.mkdir(parents=True, exist_ok=True)
    results_dir, out = out, Path(work) if work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    caps = probe.capabilities()
    result: dict[str, Any] = {
        "machine": machine_info(),
        "device": probe.device_info(),
        "quick": quick,
        "capabilities": {k: v or "present" for k, v in caps.items()},
    }
    repeats = 10 if quick else 50
    world: dict[str, Any] = {"error": "not needed by these sections"}
    if {"inference", "localizer"} & set(sections) or (quick and "training" in sections):
        world = guarded(lambda: {"dataset": _world(out, quick, dataset)})
        if "error" in world:
            result["world"] = world
    models: dict[str, Any] = {}
    if {"inference", "localizer"} & set(sections):
        models = inference.build_models(out, quick, checkpoint, model_names)
        result["models"] = {name: e for name, e in models.items() if "error" in e}  # export failures
    if "inference" in sections:
        result["inference"] = {}
        for i, (name, entry) in enumerate(models.items()):
            if "error" in entry or "error" in world:
                continue  # the reason is under "models" or "world"
            _timed(
                result["inference"],
                name,
                lambda e=entry, first=i == 0: inference_section(
                    e, world["dataset"], out, caps, quick, repeats, qdq=first
                ),
            )
    if "localizer" in sections:
        first = next((e for e in models.values() if "fp32" in e), None)
        if first is None or "error" in world:
            result["localizer"] = {"error": "no model or dataset (see models / world)"}
        else:
            _timed(
                result,
                "localizer",
                lambda: localize.localizer_end_to_end(first["fp32"], world["dataset"], out, caps),
            )
    if "search" in sections:
        places = 100_000 if quick else 1_000_000
        _timed(result, "search", lambda: search.exact_search(places, 4096, repeats, caps))
        _timed(
            result, "ivfpq_gpu", lambda: search.ivfpq_on_gpu(20_000 if quick else 50_000, 4096, repeats, caps)
        )
    if "training" in sections:
        device = "cpu" if caps["torch_cuda"] else "cuda"
        steps = train_steps or (1 if quick else 10)
        preset, extra = ("tiny", ()) if quick else ("default", ("--synth-preset", "tiny"))
        ds = str(world["dataset"].root) if quick and "dataset" in world else None
        budget = 600.0 if quick else 180.0  # seconds per training command (CPU runs are slow, not failures)
        _timed(
            result, "training", lambda: train.training_steps(out, device, steps, preset, ds, extra, budget)
        )
    result["errors"] = collect_errors({k: v for k, v in result.items() if k != "errors"})
    atomic_write_text(results_dir / "gpu.json", json.dumps(result, indent=2, default=str) + "\n")
    return result


def _latency_rows(prefix: str, node: Any) -> list[str]:
    """One row per latency or parity entry under ``node`` (depth-first)."""
    rows: list[str] = []
    if not isinstance(node, dict):
        return rows
    if "p50_ms" in node:
        per = f"{node['per_item_p50_ms']:9.3f}" if node.get("batch", 1) > 1 else " " * 9
        return [f"{prefix:64s} {node['p50_ms']:9.3f} {node['p99_ms']:9.3f} {per}"]
    if "cosine_min" in node:
        mark = "ok" if node["passed"] else "FAIL " + "; ".join(node["failures"])
        return [
            f"{prefix:64s} cos min {node['cosine_min']:.5f} median {node['cosine_median']:.5f} "
            f"top-1 {node['top1_agreement']:.3f} {mark}"
        ]
    for key in ("missing", "error"):
        if isinstance(node.get(key), str):
            rows.append(f"{prefix:64s} {key}: {node[key][:90]}")
    for key, value in node.items():
        if key in ("trace", "seconds"):
            continue
        if isinstance(value, str) and key == "verdict":
            rows.append(f"{prefix + ' verdict':64s} {value}")
        rows += _latency_rows(f"{prefix} {key}".strip(), value)
    return rows


def summary_table(result: dict[str, Any]) -> str:
    """The short table printed last: every latency (ms p50, p99, per item), parity, what is missing."""
    device = result.get("device") or {}
    rows = [f"device: {device.get('name', 'no CUDA device')}"]
    rows += [f"missing {k}: {v}" for k, v in result["capabilities"].items() if v != "present"]
    rows.append(f"{'path':64s} {'p50 ms':>9s} {'p99 ms':>9s} {'/item ms':>9s}")
    for section in ("inference", "localizer", "search", "ivfpq_gpu", "training"):
        if section in result:
            rows += _latency_rows(section, result[section])
    training = result.get("training") or {}
    if "train_images_per_s" in training:
        rows.append(
            f"training on {training['device']}: {training['train_images_per_s']} images/s, mining-cache refresh "
            f"{training['refresh_images_per_s']} images/s, resumed {training['steps_before_resume']} -> "
            f"{training['steps_after_resume']} steps ({'ok' if training['resumed'] else 'FAIL'})"
        )
    rows.append(f"errors: {len(result['errors'])}")
    rows += [f"  {line[:150]}" for line in result["errors"]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu.h100", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/gpu"), help="folder for gpu.json and artifacts"
    )
    parser.add_argument("--work", type=Path, help="folder for models, maps, engines, runs (default OUT/work)")
    parser.add_argument("--quick", action="store_true", help="tiny model, small maps (the CPU smoke run)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="measure this trained model.pt instead of random weights"
    )
    parser.add_argument("--dataset", help="dataset for parity and the localizer (default: a synthetic world)")
    parser.add_argument(
        "--train-steps", type=int, help="training steps before the resume (default 10; quick 1)"
    )
    parser.add_argument(
        "--models",
        help=f"comma-separated subset of {','.join(inference.MODELS)} (default: all; not with --quick)",
    )
    args = parser.parse_args(argv)
    sections = tuple(s for s in args.sections.split(",") if s)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    unknown = set((args.models or "").split(",")) - set(inference.MODELS) - {""}
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {','.join(inference.MODELS)}")
    # Only the kit's INFO lines reach the console; other libraries' loggers are filtered, not re-levelled
    # (changing their levels here leaked into every later caller in the same process).
    configure_logging()
    try:
        names = tuple(m for m in (args.models or "").split(",") if m) or None
        result = run(
            args.out, args.quick, sections, args.checkpoint, args.dataset, args.train_steps, names, args.work
        )
    except Exception as exc:  # the run itself broke: still leave a JSON saying why
        args.out.mkdir(parents=True, exist_ok=True)
        failure = {"errors": [error_entry(exc)["error"]], **error_entry(exc)}
        atomic_write_text(args.out / "gpu.json", json.dumps(failure, indent=2) + "\n")
        raise
    print("\n" + summary_table(result))
    print(f"\nfull results: {args.out / 'gpu.json'}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
